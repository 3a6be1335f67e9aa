package kms

import (
	"context"
	"errors"

	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/material"
	"github.com/kmsd/kmsd/internal/policy"
)

// DeriveSharedSecret computes the ECDH shared secret of a KEY_AGREEMENT
// key and a peer's public key: the raw Z, as OpenSSL or crypto/ecdh give
// it with the peer's private key and the KMS public key.
func (s *Service) DeriveSharedSecret(ctx context.Context, c *Caller, in *kmsapi.DeriveSharedSecretRequest) (*kmsapi.DeriveSharedSecretResponse, error) {
	k, err := s.resolveCross(ctx, c, *in.KeyId)
	if err != nil {
		return nil, err
	}
	if err := s.authorizeKey(ctx, c, "kms:DeriveSharedSecret", k, nil, both(aliasKey(*in.KeyId), func(r *policy.Request) {
		r.Set(policy.KeyKeyAgreementAlgorithm, *in.KeyAgreementAlgorithm)
	})); err != nil {
		return nil, err
	}
	if err := usable(k); err != nil {
		return nil, err
	}
	if err := checkUsage(k, keys.KeyAgreement, "kms:DeriveSharedSecret"); err != nil {
		return nil, err
	}
	if in.Recipient != nil {
		return nil, exc("UnsupportedOperationException", "Recipient (Nitro Enclaves attestation) is not supported by kmsd.")
	}
	priv, err := s.privateKey(k)
	if err != nil {
		return nil, internal(err)
	}
	// The peer key is checked before DryRun; deriving is cheap, so it is
	// done here and its result dropped under DryRun.
	z, err := priv.ECDH(in.PublicKey)
	switch {
	case errors.Is(err, material.ErrPeerKey):
		return nil, exc("ValidationException", "") // AWS sends no message [S]
	case errors.Is(err, material.ErrPeerCurve):
		// [U] AWS's text is not recorded.
		return nil, exc("ValidationException", "The PublicKey is not a valid public key of the key spec "+k.KeySpec+".")
	case err != nil:
		return nil, internal(err)
	}
	if err := dryRun(in.DryRun); err != nil {
		clear(z)
		return nil, err
	}
	return &kmsapi.DeriveSharedSecretResponse{
		KeyId:                 kmsapi.String(k.ARN()),
		SharedSecret:          z,
		KeyAgreementAlgorithm: in.KeyAgreementAlgorithm,
		KeyOrigin:             kmsapi.String(k.Origin),
	}, nil
}
