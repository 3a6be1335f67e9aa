package kms

import (
	"context"
	"sort"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/kmsapi"
)

// ListRetirableGrants lists the grants, on keys of the caller's account
// and region, whose retiring principal is the given one.
func (s *Service) ListRetirableGrants(ctx context.Context, c *Caller, in *kmsapi.ListRetirableGrantsRequest) (*kmsapi.ListGrantsResponse, error) {
	if err := s.authorizeIAM(c, "kms:ListRetirableGrants", nil); err != nil {
		return nil, err
	}
	type hit struct {
		k *catalog.Key
		g *catalog.Grant
	}
	var hits []hit
	err := s.cat.AllGrants(ctx, func(g *catalog.Grant) error {
		if g.RetiringPrincipal != *in.RetiringPrincipal {
			return nil
		}
		k, err := s.cat.Key(ctx, g.KeyName())
		if err != nil || k.Account != c.Account || k.Region != c.Region {
			return nil
		}
		hits = append(hits, hit{k, g})
		return nil
	})
	if err != nil {
		return nil, internal(err)
	}
	sort.Slice(hits, func(i, j int) bool { return hits[i].g.ID < hits[j].g.ID })
	limit := pageLimit(in.Limit, 50)
	out := &kmsapi.ListGrantsResponse{Grants: []kmsapi.GrantListEntry{}, Truncated: kmsapi.Bool(false)}
	for _, h := range hits {
		if in.Marker != nil && h.g.ID <= *in.Marker {
			continue
		}
		if len(out.Grants) == limit {
			out.Truncated = kmsapi.Bool(true)
			out.NextMarker = out.Grants[limit-1].GrantId
			break
		}
		out.Grants = append(out.Grants, grantEntry(h.k, h.g))
	}
	return out, nil
}
