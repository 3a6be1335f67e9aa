package kms

import (
	"context"

	"github.com/kmsd/kmsd/internal/kmsapi"
)

// GenerateRandom returns random bytes.
func (s *Service) GenerateRandom(ctx context.Context, c *Caller, in *kmsapi.GenerateRandomRequest) (*kmsapi.GenerateRandomResponse, error) {
	if err := s.authorizeIAM(c, "kms:GenerateRandom", nil); err != nil {
		return nil, err
	}
	if in.CustomKeyStoreId != nil {
		return nil, exc("CustomKeyStoreNotFoundException", "Custom key store "+*in.CustomKeyStoreId+" does not exist.")
	}
	if in.Recipient != nil {
		return nil, exc("UnsupportedOperationException", "Recipient (Nitro Enclaves attestation) is not supported by kmsd.")
	}
	if in.NumberOfBytes == nil {
		return nil, validation("Value null at 'numberOfBytes' failed to satisfy constraint: Member must not be null")
	}
	b, err := s.randomBytes(int(*in.NumberOfBytes))
	if err != nil {
		return nil, err
	}
	return &kmsapi.GenerateRandomResponse{Plaintext: b}, nil
}
