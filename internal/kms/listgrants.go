package kms

import (
	"context"

	"github.com/kmsd/kmsd/internal/kmsapi"
)

// ListGrants lists the grants of a key, oldest first, optionally only one
// grant id or one grantee; the marker is the last grant id returned.
func (s *Service) ListGrants(ctx context.Context, c *Caller, in *kmsapi.ListGrantsRequest) (*kmsapi.ListGrantsResponse, error) {
	k, err := s.resolveCross(ctx, c, *in.KeyId)
	if err != nil {
		return nil, err
	}
	if err := s.authorizeKey(ctx, c, "kms:ListGrants", k, nil, notForAWSResource); err != nil {
		return nil, err
	}
	list, err := s.cat.Grants(ctx, k.Name())
	if err != nil {
		return nil, internal(err)
	}
	limit := pageLimit(in.Limit, 50)
	out := &kmsapi.ListGrantsResponse{Grants: []kmsapi.GrantListEntry{}, Truncated: kmsapi.Bool(false)}
	skipping := in.Marker != nil
	found := false
	for _, g := range list {
		if skipping {
			if g.ID == *in.Marker {
				skipping, found = false, true
			}
			continue
		}
		if (in.GrantId != nil && g.ID != *in.GrantId) || (in.GranteePrincipal != nil && g.GranteePrincipal != *in.GranteePrincipal) {
			continue
		}
		if len(out.Grants) == limit {
			out.Truncated = kmsapi.Bool(true)
			out.NextMarker = out.Grants[limit-1].GrantId
			break
		}
		out.Grants = append(out.Grants, grantEntry(k, g))
	}
	if in.Marker != nil && !found {
		return nil, exc("InvalidMarkerException", "Invalid marker")
	}
	return out, nil
}
