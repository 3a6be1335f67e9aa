package kms

import (
	"context"
	"errors"
	"slices"

	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/kmsapi"
)

var errNoPublicKey = errors.New("kms: asymmetric key without a public key")

// GetPublicKey returns the public key of an asymmetric key as DER
// SubjectPublicKeyInfo, with the facts a caller needs to use it offline.
func (s *Service) GetPublicKey(ctx context.Context, c *Caller, in *kmsapi.GetPublicKeyRequest) (*kmsapi.GetPublicKeyResponse, error) {
	k, err := s.resolveCross(ctx, c, *in.KeyId)
	if err != nil {
		return nil, err
	}
	if err := s.authorizeKey(ctx, c, "kms:GetPublicKey", k, nil, aliasKey(*in.KeyId)); err != nil {
		return nil, err
	}
	// Spec §5.3 and §11.2: a disabled key gives DisabledException (the
	// key-state table; see the conflict noted there).
	if err := usable(k); err != nil {
		return nil, err
	}
	if !keys.IsAsymmetric(k.KeySpec) {
		// [U] AWS's text is not recorded.
		return nil, exc("UnsupportedOperationException", k.ARN()+" key spec is "+k.KeySpec+" which is not valid for GetPublicKey.")
	}
	v := k.Version(k.Current)
	if v == nil || v.Public == nil {
		return nil, internal(errNoPublicKey)
	}
	out := &kmsapi.GetPublicKeyResponse{
		KeyId:                 kmsapi.String(k.ARN()),
		PublicKey:             slices.Clone(v.Public),
		CustomerMasterKeySpec: kmsapi.String(k.KeySpec),
		KeySpec:               kmsapi.String(k.KeySpec),
		KeyUsage:              kmsapi.String(k.KeyUsage),
	}
	out.EncryptionAlgorithms, out.SigningAlgorithms, _, out.KeyAgreementAlgorithms = algorithmLists(k)
	return out, nil
}
