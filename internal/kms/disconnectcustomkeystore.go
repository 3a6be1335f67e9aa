package kms

import (
	"context"

	"github.com/kmsd/kmsd/internal/kmsapi"
)

// DisconnectCustomKeyStore starts disconnecting a CONNECTED, CONNECTING or
// FAILED store (spec §5.4): DISCONNECTING, then DISCONNECTED with its
// error code cleared. The backing store itself is left as it is.
func (s *Service) DisconnectCustomKeyStore(ctx context.Context, c *Caller, in *kmsapi.DisconnectCustomKeyStoreRequest) (*kmsapi.DisconnectCustomKeyStoreResponse, error) {
	if err := s.storeAuthorize(c, "DisconnectCustomKeyStore"); err != nil {
		return nil, err
	}
	m, err := s.keyStores()
	if err != nil {
		return nil, err
	}
	if err := m.Disconnect(ctx, c.Account, c.Region, *in.CustomKeyStoreId); err != nil {
		return nil, storeErr(err)
	}
	return &kmsapi.DisconnectCustomKeyStoreResponse{}, nil
}
