package kms

import (
	"context"

	"github.com/kmsd/kmsd/internal/keystore"
	"github.com/kmsd/kmsd/internal/kmsapi"
)

// UpdateCustomKeyStore changes a CloudHSM store's name (CONNECTED or
// DISCONNECTED), kmsuser password or cluster (DISCONNECTED only; the new
// cluster must share the original's backup lineage and meet the
// create-time requirements). All or nothing (spec §5.5).
func (s *Service) UpdateCustomKeyStore(ctx context.Context, c *Caller, in *kmsapi.UpdateCustomKeyStoreRequest) (*kmsapi.UpdateCustomKeyStoreResponse, error) {
	if err := s.storeAuthorize(c, "UpdateCustomKeyStore"); err != nil {
		return nil, err
	}
	m, err := s.keyStores()
	if err != nil {
		return nil, err
	}
	// Read from the database: the state decides what may change, and this
	// node's copy may be behind another node's connect or disconnect.
	st, err := m.GetFresh(ctx, c.Account, c.Region, *in.CustomKeyStoreId)
	if err != nil {
		return nil, storeErr(err)
	}
	if st.Type == keystore.TypeExternal {
		return s.updateExternalStore(ctx, c, m, st, in)
	}
	if in.XksProxyUriEndpoint != nil || in.XksProxyUriPath != nil || in.XksProxyVpcEndpointServiceName != nil ||
		in.XksProxyVpcEndpointServiceOwner != nil || in.XksProxyAuthenticationCredential != nil || in.XksProxyConnectivity != nil {
		return nil, validation("XksProxy* parameters are not valid for a custom key store of type " + st.Type + ".")
	}
	if in.NewCustomKeyStoreName == nil && in.KeyStorePassword == nil && in.CloudHsmClusterId == nil {
		return nil, validation("The request does not change the custom key store: give NewCustomKeyStoreName, KeyStorePassword or CloudHsmClusterId.")
	}
	u := keystore.Update{Name: in.NewCustomKeyStoreName, Password: in.KeyStorePassword, ClusterID: in.CloudHsmClusterId}
	op := keystore.OpUpdateLive
	if u.Password != nil || u.ClusterID != nil {
		op = keystore.OpUpdate
	}
	if !st.State.Allows(op) {
		return nil, storeErr(&keystore.StateError{Op: op, State: st.State, ID: st.ID})
	}
	if u.ClusterID != nil && *u.ClusterID != st.ClusterID {
		cert, err := s.clusters.CheckCluster(c.Account, c.Region, *u.ClusterID, "")
		if err != nil {
			return nil, storeErr(err)
		}
		if cert == "" || cert != st.ClusterCert {
			return nil, storeErr(keystore.ErrClusterNotRelated)
		}
		u.ClusterCert = cert
	}
	if err := m.Update(ctx, c.Account, c.Region, st.ID, u); err != nil {
		return nil, storeErr(err)
	}
	return &kmsapi.UpdateCustomKeyStoreResponse{}, nil
}
