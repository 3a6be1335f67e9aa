package kms

import (
	"context"
	"errors"
	"time"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/kmsapi"
)

// UpdateAlias points an existing alias at another key of the same key
// type and usage.
func (s *Service) UpdateAlias(ctx context.Context, c *Caller, in *kmsapi.UpdateAliasRequest) (*kmsapi.UpdateAliasResponse, error) {
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
	k, err := s.aliasTarget(ctx, c, *in.TargetKeyId)
	if err != nil {
		return nil, err
	}
	if err := s.authorizeKey(ctx, c, "kms:UpdateAlias", k, nil, nil); err != nil {
		return nil, err
	}
	if old, err := s.cat.Key(ctx, catalog.Name(a.Region, a.KeyID)); err == nil {
		if err := s.authorizeKey(ctx, c, "kms:UpdateAlias", old, nil, nil); err != nil {
			return nil, err
		}
		if keyType(old.KeySpec) != keyType(k.KeySpec) || old.KeyUsage != k.KeyUsage {
			// Spec §12.3; [U] AWS's text is not recorded.
			return nil, exc("ValidationException", "The target key "+k.ARN()+" must have the same key type and key usage as the key alias "+*in.AliasName+" refers to.")
		}
	}
	next := *a
	next.KeyID = k.ID
	next.Updated = s.now().UTC().Truncate(time.Millisecond)
	if err := s.cat.PutAlias(ctx, &next); errors.Is(err, catalog.ErrNotFound) {
		// Deleted meanwhile, perhaps through another node.
		return nil, exc("NotFoundException", "Alias "+keys.AliasARN(c.Region, c.Account, *in.AliasName)+" is not found.")
	} else if err != nil {
		return nil, internal(err)
	}
	return &kmsapi.UpdateAliasResponse{}, nil
}

// keyType is the class of key an alias may move within (spec §12.3):
// symmetric encryption, HMAC or asymmetric. RSA and ECC keys of the same
// usage are the same type.
func keyType(spec string) string {
	switch {
	case spec == keys.Symmetric:
		return "symmetric"
	case keys.IsHMAC(spec):
		return "hmac"
	}
	return "asymmetric"
}
