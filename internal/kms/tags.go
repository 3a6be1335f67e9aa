package kms

import (
	"strings"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/kmsapi"
)

const maxTags = 50

// The TagExceptions of TagResource and CreateKey. The reserved-prefix and
// count messages are AWS's (issue #14; LocalStack's AWS-validated tag tests
// and its implementation, localstack-core/localstack/services/kms/utils.py
// and models.py, say the same). [O] The duplicate-keys text is
// LocalStack's, whose test_tag_key_with_duplicate_tag_keys_raises_error is
// validated against AWS; the recorded AWS text itself was not seen.
var (
	errTagReserved   = kmsapi.NewException("TagException", "Tags beginning with aws: are reserved")
	errTagsTooMany   = kmsapi.NewException("TagException", "Too many tags")
	errTagsDuplicate = kmsapi.NewException("TagException", "Duplicate tag keys")
)

// checkTags merges add into existing with AWS's rules and returns the new
// set: no tag key twice in one request; no "aws:" prefix in any letter
// case; at most 50 tags on the key; a tag key already on the key gets the
// new value. Checks run in that order, duplicates first, as LocalStack
// found them in AWS.
func checkTags(existing []catalog.Tag, add []kmsapi.Tag) ([]catalog.Tag, error) {
	seen := make(map[string]bool, len(add))
	for _, t := range add {
		key := derefStr(t.TagKey)
		if seen[key] {
			return nil, errTagsDuplicate
		}
		seen[key] = true
	}
	if len(add) > maxTags {
		return nil, errTagsTooMany
	}
	out := append([]catalog.Tag(nil), existing...)
	for _, t := range add {
		key, val := derefStr(t.TagKey), derefStr(t.TagValue)
		if len(key) >= 4 && strings.EqualFold(key[:4], "aws:") {
			return nil, errTagReserved
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
		return nil, errTagsTooMany
	}
	return out, nil
}
