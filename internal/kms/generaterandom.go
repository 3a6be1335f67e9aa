package kms

import (
	"context"

	"github.com/kmsd/kmsd/internal/kmsapi"
)

// GenerateRandom returns random bytes: kmsd's own, or, with
// CustomKeyStoreId, drawn in the cluster of a CONNECTED CloudHSM key store.
func (s *Service) GenerateRandom(ctx context.Context, c *Caller, in *kmsapi.GenerateRandomRequest) (*kmsapi.GenerateRandomResponse, error) {
	if err := s.authorizeIAM(c, "kms:GenerateRandom", nil); err != nil {
		return nil, err
	}
	if in.Recipient != nil {
		return nil, exc("UnsupportedOperationException", "Recipient (Nitro Enclaves attestation) is not supported by kmsd.")
	}
	if in.NumberOfBytes == nil {
		// AWS's own text, not the model grammar (LocalStack snapshot
		// test_generate_random_invalid_number_of_bytes[None], recorded
		// against AWS 2023-04-13).
		return nil, exc("ValidationException", "NumberOfBytes is required.")
	}
	if in.CustomKeyStoreId != nil {
		b, err := s.storeRandom(ctx, c, *in.CustomKeyStoreId, int(*in.NumberOfBytes))
		if err != nil {
			return nil, err
		}
		return &kmsapi.GenerateRandomResponse{Plaintext: b}, nil
	}
	b, err := s.randomBytes(int(*in.NumberOfBytes))
	if err != nil {
		return nil, err
	}
	return &kmsapi.GenerateRandomResponse{Plaintext: b}, nil
}
