package kms

import (
	"context"
	"errors"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/kmsapi"
)

// DeleteAlias deletes an alias; the key is not affected.
func (s *Service) DeleteAlias(ctx context.Context, c *Caller, in *kmsapi.DeleteAliasRequest) (*kmsapi.DeleteAliasResponse, error) {
	if reservedAlias(*in.AliasName) {
		return nil, errAliasReserved
	}
	a, err := s.cat.Alias(ctx, c.Account, c.Region, *in.AliasName)
	if errors.Is(err, catalog.ErrNotFound) {
		return nil, exc("NotFoundException", "Alias "+keys.AliasARN(c.Region, c.Account, *in.AliasName)+" is not found.")
	}
	if err != nil {
		return nil, internal(err)
	}
	if k, err := s.cat.Key(ctx, catalog.Name(a.Region, a.KeyID)); err == nil {
		if err := s.authorizeKey(ctx, c, "kms:DeleteAlias", k, nil, nil); err != nil {
			return nil, err
		}
	}
	if err := s.cat.DeleteAlias(ctx, c.Account, c.Region, *in.AliasName); errors.Is(err, catalog.ErrNotFound) {
		// Deleted meanwhile, perhaps through another node.
		return nil, exc("NotFoundException", "Alias "+keys.AliasARN(c.Region, c.Account, *in.AliasName)+" is not found.")
	} else if err != nil {
		return nil, internal(err)
	}
	return &kmsapi.DeleteAliasResponse{}, nil
}
