package kms

import (
	"context"

	"github.com/kmsd/kmsd/internal/kmsapi"
)

// GenerateDataKeyPairWithoutPlaintext is GenerateDataKeyPair without the
// private key in plaintext.
func (s *Service) GenerateDataKeyPairWithoutPlaintext(ctx context.Context, c *Caller, in *kmsapi.GenerateDataKeyPairWithoutPlaintextRequest) (*kmsapi.GenerateDataKeyPairWithoutPlaintextResponse, error) {
	k, priv, pub, blob, err := s.dataKeyPair(ctx, c, "kms:GenerateDataKeyPairWithoutPlaintext", *in.KeyId, *in.KeyPairSpec, in.EncryptionContext, false, in.DryRun)
	if err != nil {
		return nil, err
	}
	clear(priv)
	mid, err := s.materialID(k, k.Current)
	if err != nil {
		return nil, err
	}
	return &kmsapi.GenerateDataKeyPairWithoutPlaintextResponse{
		KeyMaterialId:            mid,
		PrivateKeyCiphertextBlob: blob,
		PublicKey:                pub,
		KeyId:                    kmsapi.String(k.ARN()),
		KeyPairSpec:              in.KeyPairSpec,
	}, nil
}
