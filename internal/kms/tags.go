package kms

import (
	"strings"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/kmsapi"
)

const maxTags = 50

// checkTags merges add into existing with AWS's rules (a tag key set
// again replaces its value; no "aws:" prefix; at most 50 tags) and
// returns the new set.
func checkTags(existing []catalog.Tag, add []kmsapi.Tag) ([]catalog.Tag, error) {
	out := append([]catalog.Tag(nil), existing...)
	for _, t := range add {
		key, val := derefStr(t.TagKey), derefStr(t.TagValue)
		if strings.HasPrefix(key, "aws:") {
			return nil, exc("TagException", "Tags beginning with aws: are reserved.")
		}
		replaced := false
		for i := range out {
			if out[i].Key == key {
				out[i].Value = val
				replaced = true
			}
		}
		if !replaced {
			out = append(out, catalog.Tag{Key: key, Value: val})
		}
	}
	if len(out) > maxTags {
		return nil, exc("TagException", "Too many tags. The maximum number of tags is 50.")
	}
	return out, nil
}
