package kms

import (
	"context"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/kmsapi"
)

// UpdateKeyDescription replaces a key's description.
func (s *Service) UpdateKeyDescription(ctx context.Context, c *Caller, in *kmsapi.UpdateKeyDescriptionRequest) (*kmsapi.UpdateKeyDescriptionResponse, error) {
	k, err := s.resolveKeyID(ctx, c, *in.KeyId)
	if err != nil {
		return nil, err
	}
	if err := s.authorizeKey(ctx, c, "kms:UpdateKeyDescription", k, nil, nil); err != nil {
		return nil, err
	}
	if err := notPendingDeletion(k); err != nil {
		return nil, err
	}
	_, err = s.cat.UpdateKey(ctx, k.Name(), func(k *catalog.Key) error {
		k.Description = *in.Description
		return nil
	})
	if err != nil {
		return nil, internal(err)
	}
	return &kmsapi.UpdateKeyDescriptionResponse{}, nil
}
