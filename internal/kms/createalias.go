package kms

import (
	"context"
	"errors"
	"time"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/kmsapi"
)

// CreateAlias gives a key a friendly name, unique in the account and region.
func (s *Service) CreateAlias(ctx context.Context, c *Caller, in *kmsapi.CreateAliasRequest) (*kmsapi.CreateAliasResponse, error) {
	if err := checkAliasName(*in.AliasName); err != nil {
		return nil, err
	}
	k, err := s.aliasTarget(ctx, c, *in.TargetKeyId)
	if err != nil {
		return nil, err
	}
	if err := s.authorizeKey(ctx, c, "kms:CreateAlias", k, nil, nil); err != nil {
		return nil, err
	}
	now := s.now().UTC().Truncate(time.Millisecond)
	err = s.cat.CreateAlias(ctx, &catalog.Alias{
		Name: *in.AliasName, Account: c.Account, Region: c.Region,
		KeyID: k.ID, Created: now, Updated: now,
	})
	if errors.Is(err, catalog.ErrExists) {
		return nil, exc("AlreadyExistsException", "An alias with the name "+keys.AliasARN(c.Region, c.Account, *in.AliasName)+" already exists")
	}
	if errors.Is(err, catalog.ErrNotFound) {
		// The key was deleted meanwhile, perhaps through another node.
		return nil, exc("NotFoundException", "Key '"+k.ARN()+"' does not exist")
	}
	if err != nil {
		return nil, internal(err)
	}
	return &kmsapi.CreateAliasResponse{}, nil
}
