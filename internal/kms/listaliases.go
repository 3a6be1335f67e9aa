package kms

import (
	"context"

	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/kmsapi"
)

// ListAliases lists the aliases of the caller's account and region, or of
// one key, in name order; the marker is the last alias name returned.
func (s *Service) ListAliases(ctx context.Context, c *Caller, in *kmsapi.ListAliasesRequest) (*kmsapi.ListAliasesResponse, error) {
	limit := pageLimit(in.Limit, 100)
	if err := s.authorizeIAM(c, "kms:ListAliases", nil); err != nil {
		return nil, err
	}
	var keyID string
	if in.KeyId != nil {
		k, err := s.resolveKeyID(ctx, c, *in.KeyId)
		if err != nil {
			return nil, err
		}
		keyID = k.ID
	}
	all, err := s.cat.ListAliases(ctx, c.Account, c.Region)
	if err != nil {
		return nil, internal(err)
	}
	out := &kmsapi.ListAliasesResponse{Aliases: []kmsapi.AliasListEntry{}, Truncated: kmsapi.Bool(false)}
	after := derefStr(in.Marker)
	for _, a := range all {
		if (keyID != "" && a.KeyID != keyID) || (after != "" && a.Name <= after) {
			continue
		}
		if len(out.Aliases) == limit {
			out.Truncated = kmsapi.Bool(true)
			out.NextMarker = out.Aliases[limit-1].AliasName
			break
		}
		out.Aliases = append(out.Aliases, kmsapi.AliasListEntry{
			AliasName:       kmsapi.String(a.Name),
			AliasArn:        kmsapi.String(keys.AliasARN(c.Region, c.Account, a.Name)),
			TargetKeyId:     kmsapi.String(a.KeyID),
			CreationDate:    kmsapi.NewTime(a.Created),
			LastUpdatedDate: kmsapi.NewTime(a.Updated),
		})
	}
	return out, nil
}
