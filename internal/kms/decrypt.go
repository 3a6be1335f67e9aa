package kms

import (
	"context"

	"github.com/kmsd/kmsd/internal/kmsapi"
)

// Decrypt decrypts a ciphertext blob. KeyId is optional for symmetric keys,
// whose blobs name their key; RSA ciphertexts need it, and the algorithm.
func (s *Service) Decrypt(ctx context.Context, c *Caller, in *kmsapi.DecryptRequest) (*kmsapi.DecryptResponse, error) {
	if in.Recipient != nil {
		return nil, exc("UnsupportedOperationException", "Recipient (Nitro Enclaves attestation) is not supported by kmsd.")
	}
	k, pt, err := s.open(ctx, c, "kms:Decrypt", in.CiphertextBlob, in.KeyId, in.EncryptionContext, in.EncryptionAlgorithm, nil)
	if err != nil {
		return nil, err
	}
	if err := checkAlgorithm(k, in.EncryptionAlgorithm); err != nil {
		return nil, err
	}
	if err := dryRun(in.DryRun); err != nil {
		return nil, err
	}
	mid, err := s.blobMaterialID(k, in.CiphertextBlob)
	if err != nil {
		return nil, err
	}
	arn := k.ARN()
	return &kmsapi.DecryptResponse{
		KeyId:               &arn,
		Plaintext:           pt,
		EncryptionAlgorithm: kmsapi.String(encryptionAlgorithm(in.EncryptionAlgorithm)),
		KeyMaterialId:       mid,
	}, nil
}
