package kms

import (
	"context"
	"strconv"

	"github.com/kmsd/kmsd/internal/kmsapi"
)

// ListResourceTags lists a key's tags; the marker is an offset.
func (s *Service) ListResourceTags(ctx context.Context, c *Caller, in *kmsapi.ListResourceTagsRequest) (*kmsapi.ListResourceTagsResponse, error) {
	k, err := s.resolveKeyID(ctx, c, *in.KeyId)
	if err != nil {
		return nil, err
	}
	if err := s.authorizeKey(ctx, c, "kms:ListResourceTags", k, nil, nil); err != nil {
		return nil, err
	}
	limit := pageLimit(in.Limit, 50)
	start := 0
	if in.Marker != nil {
		if start, err = strconv.Atoi(*in.Marker); err != nil || start < 0 || start > len(k.Tags) {
			return nil, exc("InvalidMarkerException", "Invalid marker")
		}
	}
	out := &kmsapi.ListResourceTagsResponse{Tags: []kmsapi.Tag{}, Truncated: kmsapi.Bool(false)}
	end := min(start+limit, len(k.Tags))
	for _, t := range k.Tags[start:end] {
		out.Tags = append(out.Tags, kmsapi.Tag{TagKey: kmsapi.String(t.Key), TagValue: kmsapi.String(t.Value)})
	}
	if end < len(k.Tags) {
		out.Truncated = kmsapi.Bool(true)
		out.NextMarker = kmsapi.String(strconv.Itoa(end))
	}
	return out, nil
}
