package kms

import (
	"context"

	"github.com/kmsd/kmsd/internal/kmsapi"
)

// ConnectCustomKeyStore starts connecting a store (spec §5.2): it answers
// {} at once with the store CONNECTING; the connector records CONNECTED or
// FAILED with a ConnectionErrorCode. CONNECTED and CONNECTING stores are
// left as they are; FAILED and DISCONNECTING ones are refused.
func (s *Service) ConnectCustomKeyStore(ctx context.Context, c *Caller, in *kmsapi.ConnectCustomKeyStoreRequest) (*kmsapi.ConnectCustomKeyStoreResponse, error) {
	if err := s.storeAuthorize(c, "ConnectCustomKeyStore"); err != nil {
		return nil, err
	}
	m, err := s.keyStores()
	if err != nil {
		return nil, err
	}
	if err := m.Connect(ctx, c.Account, c.Region, *in.CustomKeyStoreId); err != nil {
		return nil, storeErr(err)
	}
	return &kmsapi.ConnectCustomKeyStoreResponse{}, nil
}
