package kms

import (
	"context"

	"github.com/kmsd/kmsd/internal/kmsapi"
)

// DeleteCustomKeyStore deletes a DISCONNECTED store that holds no KMS keys
// (spec §5.6; checks in the order existence, state, keys). Only kmsd's
// record goes: the cluster, its users and keys are untouched.
func (s *Service) DeleteCustomKeyStore(ctx context.Context, c *Caller, in *kmsapi.DeleteCustomKeyStoreRequest) (*kmsapi.DeleteCustomKeyStoreResponse, error) {
	if err := s.storeAuthorize(c, "DeleteCustomKeyStore"); err != nil {
		return nil, err
	}
	m, err := s.keyStores()
	if err != nil {
		return nil, err
	}
	if err := m.Delete(ctx, c.Account, c.Region, *in.CustomKeyStoreId, s.storeHasKeys); err != nil {
		return nil, storeErr(err)
	}
	s.quota.Forget(*in.CustomKeyStoreId)
	return &kmsapi.DeleteCustomKeyStoreResponse{}, nil
}
