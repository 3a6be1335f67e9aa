package kms

import (
	"context"
	"errors"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/kmsapi"
)

// RevokeGrant deletes a grant; who may is decided by policy
// (kms:RevokeGrant on the key).
func (s *Service) RevokeGrant(ctx context.Context, c *Caller, in *kmsapi.RevokeGrantRequest) (*kmsapi.RevokeGrantResponse, error) {
	k, err := s.resolveCross(ctx, c, *in.KeyId)
	if err != nil {
		return nil, err
	}
	if err := s.authorizeKey(ctx, c, "kms:RevokeGrant", k, nil, notForAWSResource); err != nil {
		return nil, err
	}
	if err := dryRun(in.DryRun); err != nil {
		return nil, err
	}
	if err := s.cat.DeleteGrant(ctx, k.Name(), *in.GrantId); err != nil {
		if errors.Is(err, catalog.ErrNotFound) {
			return nil, grantNotFound(*in.GrantId)
		}
		return nil, internal(err)
	}
	return &kmsapi.RevokeGrantResponse{}, nil
}
