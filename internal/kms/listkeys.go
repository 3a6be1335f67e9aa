package kms

import (
	"context"

	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/kmsapi"
)

// pageLimit turns an optional Limit into a page size (default 100).
func pageLimit(l *int32, def int) int {
	if l == nil {
		return def
	}
	return int(*l)
}

// ListKeys lists the keys of the caller's account and region, in key id
// order; the marker is the last key id of the previous page.
func (s *Service) ListKeys(ctx context.Context, c *Caller, in *kmsapi.ListKeysRequest) (*kmsapi.ListKeysResponse, error) {
	limit := pageLimit(in.Limit, 100)
	if err := s.authorizeIAM(c, "kms:ListKeys", nil); err != nil {
		return nil, err
	}
	after := ""
	if in.Marker != nil {
		after = *in.Marker
		if !keys.IsKeyID(after) {
			return nil, exc("InvalidMarkerException", "Invalid marker")
		}
	}
	ids, err := s.cat.ListKeys(ctx, c.Account, c.Region, after, limit+1)
	if err != nil {
		return nil, internal(err)
	}
	out := &kmsapi.ListKeysResponse{Keys: []kmsapi.KeyListEntry{}, Truncated: kmsapi.Bool(false)}
	if len(ids) > limit {
		ids = ids[:limit]
		out.Truncated = kmsapi.Bool(true)
		out.NextMarker = kmsapi.String(ids[len(ids)-1])
	}
	for _, id := range ids {
		out.Keys = append(out.Keys, kmsapi.KeyListEntry{
			KeyId:  kmsapi.String(id),
			KeyArn: kmsapi.String(keys.KeyARN(c.Region, c.Account, id)),
		})
	}
	return out, nil
}
