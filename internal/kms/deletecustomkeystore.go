package kms

import (
	"context"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/keystore"
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
	// The keys are counted again in the delete's own transaction, so that
	// a key created meanwhile through another node is not left in a
	// deleted store (CreateKey checks the store in its transaction too).
	keys := &keystore.KeyCheck{Before: s.storeHasKeys, In: catalog.StoreHasKeysIn}
	if err := m.Delete(ctx, c.Account, c.Region, *in.CustomKeyStoreId, keys); err != nil {
		return nil, storeErr(err)
	}
	s.quota.Forget(*in.CustomKeyStoreId)
	return &kmsapi.DeleteCustomKeyStoreResponse{}, nil
}
