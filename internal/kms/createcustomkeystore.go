package kms

import (
	"context"

	"github.com/kmsd/kmsd/internal/keystore"
	"github.com/kmsd/kmsd/internal/kmsapi"
)

// CreateCustomKeyStore creates a CloudHSM key store, DISCONNECTED (spec
// §5.1). The cluster must exist, be ACTIVE, have active HSMs in two
// Availability Zones, have been initialized with the trust anchor given and
// back no other store; kmsuser's password is only checked at connect.
// External key stores are not implemented yet.
func (s *Service) CreateCustomKeyStore(ctx context.Context, c *Caller, in *kmsapi.CreateCustomKeyStoreRequest) (*kmsapi.CreateCustomKeyStoreResponse, error) {
	if err := s.storeAuthorize(c, "CreateCustomKeyStore"); err != nil {
		return nil, err
	}
	m, err := s.keyStores()
	if err != nil {
		return nil, err
	}
	typ := keystore.TypeCloudHSM
	if in.CustomKeyStoreType != nil {
		typ = *in.CustomKeyStoreType
	}
	if typ == keystore.TypeExternal {
		return s.createExternalStore(ctx, c, m, in)
	}
	if in.XksProxyUriEndpoint != nil || in.XksProxyUriPath != nil || in.XksProxyVpcEndpointServiceName != nil ||
		in.XksProxyVpcEndpointServiceOwner != nil || in.XksProxyAuthenticationCredential != nil || in.XksProxyConnectivity != nil {
		return nil, validation("XksProxy* parameters are not valid for a custom key store of type AWS_CLOUDHSM.")
	}
	for _, p := range []struct {
		v    *string
		name string
	}{{in.CloudHsmClusterId, "cloudHsmClusterId"}, {in.TrustAnchorCertificate, "trustAnchorCertificate"}, {in.KeyStorePassword, "keyStorePassword"}} {
		if p.v == nil {
			return nil, validation("Value null at '" + p.name + "' failed to satisfy constraint: Member must not be null for a custom key store of type AWS_CLOUDHSM")
		}
	}
	cert, err := s.clusters.CheckCluster(c.Account, c.Region, *in.CloudHsmClusterId, *in.TrustAnchorCertificate)
	if err != nil {
		return nil, storeErr(err)
	}
	st, err := m.Create(ctx, &keystore.Store{Account: c.Account, Region: c.Region, Name: *in.CustomKeyStoreName, Type: typ,
		ClusterID: *in.CloudHsmClusterId, TrustAnchor: *in.TrustAnchorCertificate, ClusterCert: cert}, *in.KeyStorePassword)
	if err != nil {
		return nil, storeErr(err)
	}
	return &kmsapi.CreateCustomKeyStoreResponse{CustomKeyStoreId: &st.ID}, nil
}
