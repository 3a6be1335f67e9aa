package kms

import (
	"context"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/kmsapi"
)

// setEnabled moves a key between Enabled and Disabled.
func (s *Service) setEnabled(ctx context.Context, c *Caller, keyID string, enable bool) error {
	action := "kms:DisableKey"
	if enable {
		action = "kms:EnableKey"
	}
	k, err := s.resolveKeyID(ctx, c, keyID)
	if err != nil {
		return err
	}
	if err := s.authorizeKey(ctx, c, action, k, nil, nil); err != nil {
		return err
	}
	_, err = s.cat.UpdateKey(ctx, k.Name(), func(k *catalog.Key) error {
		switch k.State {
		case keys.Enabled, keys.Disabled:
		default:
			return settled(k)
		}
		if enable {
			k.State = keys.Enabled
		} else {
			k.State = keys.Disabled
		}
		return nil
	})
	return internal(err)
}

// EnableKey enables a disabled key.
func (s *Service) EnableKey(ctx context.Context, c *Caller, in *kmsapi.EnableKeyRequest) (*kmsapi.EnableKeyResponse, error) {
	if err := s.setEnabled(ctx, c, *in.KeyId, true); err != nil {
		return nil, err
	}
	return &kmsapi.EnableKeyResponse{}, nil
}
