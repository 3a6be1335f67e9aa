package kms

import (
	"context"

	"github.com/kmsd/kmsd/internal/kmsapi"
)

// DisableKey disables a key: it can no longer be used in cryptographic
// operations until enabled again.
func (s *Service) DisableKey(ctx context.Context, c *Caller, in *kmsapi.DisableKeyRequest) (*kmsapi.DisableKeyResponse, error) {
	if err := s.setEnabled(ctx, c, *in.KeyId, false); err != nil {
		return nil, err
	}
	return &kmsapi.DisableKeyResponse{}, nil
}
