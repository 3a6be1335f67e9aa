package kms

import (
	"context"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/material"
	"github.com/kmsd/kmsd/internal/policy"
)

// GenerateDataKeyPair returns a fresh key pair: the public key (DER SPKI),
// the private key (DER PKCS #8) in plaintext and encrypted under a
// symmetric KMS key, exactly as Encrypt would encrypt it.
func (s *Service) GenerateDataKeyPair(ctx context.Context, c *Caller, in *kmsapi.GenerateDataKeyPairRequest) (*kmsapi.GenerateDataKeyPairResponse, error) {
	k, priv, pub, blob, err := s.dataKeyPair(ctx, c, "kms:GenerateDataKeyPair", *in.KeyId, *in.KeyPairSpec, in.EncryptionContext, in.Recipient != nil, in.DryRun)
	if err != nil {
		return nil, err
	}
	mid, err := s.materialID(k, k.Current)
	if err != nil {
		return nil, err
	}
	return &kmsapi.GenerateDataKeyPairResponse{
		KeyMaterialId:            mid,
		PrivateKeyCiphertextBlob: blob,
		PrivateKeyPlaintext:      priv,
		PublicKey:                pub,
		KeyId:                    kmsapi.String(k.ARN()),
		KeyPairSpec:              in.KeyPairSpec,
	}, nil
}

// dataKeyPair makes the checks of spec §5.5 in its order — SM2 outside
// China, key, authorization, state, custom key store, usage and spec,
// Recipient, DryRun — then the pair and the encrypted private key.
func (s *Service) dataKeyPair(ctx context.Context, c *Caller, action, keyID, spec string, ec map[string]string, recipient bool, dry *bool) (k *catalog.Key, priv, pub, blob []byte, err error) {
	if info, _ := keys.Spec(spec); info.ChinaOnly && !keys.InChina(c.Region) {
		return nil, nil, nil, nil, exc("UnsupportedOperationException", spec+" is not supported in this Region.")
	}
	if k, err = s.resolveCross(ctx, c, keyID); err != nil {
		return nil, nil, nil, nil, err
	}
	if err := s.authorizeKey(ctx, c, action, k, ecOrEmpty(ec), both(cryptoKeys(&keyID, nil), func(r *policy.Request) {
		r.Set(policy.KeyDataKeyPairSpec, spec)
	})); err != nil {
		return nil, nil, nil, nil, err
	}
	if err := usable(k); err != nil {
		return nil, nil, nil, nil, err
	}
	if k.CustomKeyStoreID != "" {
		// [U] AWS's text is not recorded (spec §5.5 check 4).
		return nil, nil, nil, nil, exc("UnsupportedOperationException", k.ARN()+" is in a custom key store, which does not support data key pairs.")
	}
	if err := checkEncryptUsage(k, action); err != nil {
		return nil, nil, nil, nil, err
	}
	if err := checkAlgorithm(k, nil); err != nil {
		return nil, nil, nil, nil, err
	}
	if recipient {
		return nil, nil, nil, nil, exc("UnsupportedOperationException", "Recipient (Nitro Enclaves attestation) is not supported by kmsd.")
	}
	if err := dryRun(dry); err != nil {
		return nil, nil, nil, nil, err
	}
	if pair, ok := s.pairs.Take(spec); ok {
		priv, pub = pair.Private, pair.Public
	} else if priv, pub, err = material.GeneratePair(spec, s.rand); err != nil {
		return nil, nil, nil, nil, internal(err)
	}
	if blob, err = s.seal(withCaller(ctx, c, action), k, priv, ec); err != nil {
		clear(priv)
		return nil, nil, nil, nil, err
	}
	return k, priv, pub, blob, nil
}
