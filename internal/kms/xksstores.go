package kms

import (
	"context"
	"regexp"

	"github.com/kmsd/kmsd/internal/keystore"
	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/xks/xksclient"
)

// SetExternal gives the service the backing of external key stores (the
// proxy clients, trusted CAs and VPC endpoint services). Without it
// external key stores answer UnsupportedOperationException.
func (s *Service) SetExternal(b *keystore.External) { s.xks = b }

var (
	// XksProxyUriEndpoint: https://host (the model), or https://host:port
	// (a kmsd extension for self-hosted proxies).
	xksEndpointRe = regexp.MustCompile(`^https://[a-zA-Z0-9.-]+(:[0-9]{1,5})?$`)
	xksPathRe     = regexp.MustCompile(`^(/[a-zA-Z0-9/_-]+/kms/xks/v\d{1,2})$|^(/kms/xks/v\d{1,2})$`)
	xksAKIDRe     = regexp.MustCompile(`^[A-Z2-7]{20,30}$`)
	xksSecretRe   = regexp.MustCompile(`^[a-zA-Z0-9/+=]{43,64}$`)
	xksOwnerRe    = regexp.MustCompile(`^[0-9]{12}$`)
)

// xksExc is the exception of a failed proxy health check at create or
// update (spec §5.1, §10.7).
func (s *Service) xksStoreErr(st string, err error) error {
	name := xksclient.StoreException(err)
	s.log.Warn("kms: XKS proxy health check failed", "store", st, "exception", name, "err", err)
	if name == xksclient.ExcInternal {
		return internal(err)
	}
	return exc(name, xksclient.Message(err))
}

func checkXKSCredential(cr *kmsapi.XksProxyAuthenticationCredentialType) (akid, secret string, err error) {
	if cr == nil || cr.AccessKeyId == nil || cr.RawSecretAccessKey == nil {
		return "", "", validation("XksProxyAuthenticationCredential needs both AccessKeyId and RawSecretAccessKey.")
	}
	if !xksAKIDRe.MatchString(*cr.AccessKeyId) {
		return "", "", validation("XksProxyAuthenticationCredential.AccessKeyId must be 20-30 characters of A-Z and 2-7.")
	}
	if !xksSecretRe.MatchString(*cr.RawSecretAccessKey) {
		return "", "", validation("XksProxyAuthenticationCredential.RawSecretAccessKey must be 43-64 characters of A-Z, a-z, 0-9, +, / and =.")
	}
	return *cr.AccessKeyId, *cr.RawSecretAccessKey, nil
}

// checkXKSConfig validates a complete proxy configuration (spec §5.1,
// §10.2–10.4), including that kmsd knows a VPC endpoint service and that
// the service's private DNS name is the endpoint's host.
func (s *Service) checkXKSConfig(x *keystore.XKSConfig) error {
	switch x.Connectivity {
	case keystore.XKSPublic:
		if x.VpcServiceName != "" || x.VpcServiceOwner != "" {
			return validation("XksProxyVpcEndpointServiceName and XksProxyVpcEndpointServiceOwner are valid only with XksProxyConnectivity VPC_ENDPOINT_SERVICE.")
		}
	case keystore.XKSVPC:
		if x.VpcServiceName == "" {
			return validation("XksProxyVpcEndpointServiceName is required with XksProxyConnectivity VPC_ENDPOINT_SERVICE.")
		}
		if x.VpcServiceOwner != "" && !xksOwnerRe.MatchString(x.VpcServiceOwner) {
			return validation("XksProxyVpcEndpointServiceOwner must be a 12-digit account id.")
		}
	default:
		return validation("XksProxyConnectivity must be PUBLIC_ENDPOINT or VPC_ENDPOINT_SERVICE.")
	}
	if !xksEndpointRe.MatchString(x.Endpoint) || len(x.Endpoint) < 10 || len(x.Endpoint) > 128 {
		return validation("XksProxyUriEndpoint must be https:// and a host name (kmsd also accepts https://host:port).")
	}
	if !xksPathRe.MatchString(x.Path) || len(x.Path) > 128 {
		return validation("XksProxyUriPath must be /kms/xks/v<n> or /<prefix>/kms/xks/v<n>.")
	}
	// The endpoint service: known to kmsd, and its private DNS name (when
	// configured) is the endpoint host (§10.4). Before the external
	// stores are open (a seed file's check) that waits for the create.
	if s.xks == nil {
		return nil
	}
	if err := s.xks.CheckVPCService(x); err != nil {
		return storeErr(err)
	}
	return nil
}

// createExternalStore is CreateCustomKeyStore for EXTERNAL_KEY_STORE
// (spec §5.1): validate, check uniqueness, probe a public proxy with the
// new credential (GetHealthStatus), then record the store DISCONNECTED
// with the secret sealed.
func (s *Service) createExternalStore(ctx context.Context, c *Caller, m *keystore.Manager, in *kmsapi.CreateCustomKeyStoreRequest) (*kmsapi.CreateCustomKeyStoreResponse, error) {
	if s.xks == nil {
		return nil, exc("UnsupportedOperationException", "External key stores are not available in this kmsd.")
	}
	x, secret, err := s.checkExternalRequest(c, in)
	if err != nil {
		return nil, err
	}
	st := &keystore.Store{Account: c.Account, Region: c.Region, Name: *in.CustomKeyStoreName, Type: keystore.TypeExternal, XKS: x}
	// Uniqueness first (cheap, and AWS reports it before reachability).
	if err := m.CheckExternal(st); err != nil {
		return nil, storeErr(err)
	}
	if x.Connectivity == keystore.XKSPublic {
		if err := s.xks.Probe(ctx, st, []byte(secret), xksclient.OpCreateCustomKeyStore); err != nil {
			return nil, s.xksStoreErr("(new)", err)
		}
	}
	created, err := m.Create(ctx, st, secret)
	if err != nil {
		return nil, storeErr(err)
	}
	return &kmsapi.CreateCustomKeyStoreResponse{CustomKeyStoreId: &created.ID}, nil
}

// checkExternalRequest checks a CreateCustomKeyStore request for an
// external store — AWS's rules for its parameters, and the endpoint
// service if kmsd's external stores are open — and returns the proxy
// configuration it asks for and the credential's secret. Nothing is
// contacted or written: the seed file's stores are checked with it
// before anything of the file is applied.
func (s *Service) checkExternalRequest(c *Caller, in *kmsapi.CreateCustomKeyStoreRequest) (*keystore.XKSConfig, string, error) {
	if in.CloudHsmClusterId != nil || in.TrustAnchorCertificate != nil || in.KeyStorePassword != nil {
		return nil, "", validation("CloudHsmClusterId, TrustAnchorCertificate and KeyStorePassword are not valid for a custom key store of type EXTERNAL_KEY_STORE.")
	}
	for _, p := range []struct {
		ok   bool
		name string
	}{{in.XksProxyConnectivity != nil, "xksProxyConnectivity"}, {in.XksProxyUriEndpoint != nil, "xksProxyUriEndpoint"},
		{in.XksProxyUriPath != nil, "xksProxyUriPath"}, {in.XksProxyAuthenticationCredential != nil, "xksProxyAuthenticationCredential"}} {
		if !p.ok {
			return nil, "", validation("Value null at '" + p.name + "' failed to satisfy constraint: Member must not be null for a custom key store of type EXTERNAL_KEY_STORE")
		}
	}
	akid, secret, err := checkXKSCredential(in.XksProxyAuthenticationCredential)
	if err != nil {
		return nil, "", err
	}
	x := &keystore.XKSConfig{Connectivity: *in.XksProxyConnectivity, Endpoint: *in.XksProxyUriEndpoint, Path: *in.XksProxyUriPath,
		VpcServiceName: derefStr(in.XksProxyVpcEndpointServiceName), AccessKeyID: akid}
	if in.XksProxyVpcEndpointServiceOwner != nil {
		x.VpcServiceOwner = *in.XksProxyVpcEndpointServiceOwner
	}
	if x.Connectivity == keystore.XKSVPC && x.VpcServiceOwner == "" {
		x.VpcServiceOwner = c.Account
	}
	if err := s.checkXKSConfig(x); err != nil {
		return nil, "", err
	}
	return x, secret, nil
}

// updateExternalStore is UpdateCustomKeyStore for an external store (spec
// §5.5, §6.3): name, path and credential in CONNECTED or DISCONNECTED;
// endpoint, connectivity and the VPC service only in DISCONNECTED. A
// public store (or a connected VPC one) is health-checked with the new
// values before anything is saved.
func (s *Service) updateExternalStore(ctx context.Context, c *Caller, m *keystore.Manager, st *keystore.Store, in *kmsapi.UpdateCustomKeyStoreRequest) (*kmsapi.UpdateCustomKeyStoreResponse, error) {
	if s.xks == nil {
		return nil, exc("UnsupportedOperationException", "External key stores are not available in this kmsd.")
	}
	if in.KeyStorePassword != nil || in.CloudHsmClusterId != nil {
		return nil, validation("KeyStorePassword and CloudHsmClusterId are not valid for a custom key store of type EXTERNAL_KEY_STORE.")
	}
	u := keystore.ExternalUpdate{Name: in.NewCustomKeyStoreName, Op: keystore.OpUpdateLive}
	x := *st.XKS
	changed := false
	if in.XksProxyUriPath != nil {
		x.Path, changed = *in.XksProxyUriPath, true
	}
	var secret []byte
	if in.XksProxyAuthenticationCredential != nil {
		akid, sec, err := checkXKSCredential(in.XksProxyAuthenticationCredential)
		if err != nil {
			return nil, err
		}
		x.AccessKeyID, changed = akid, true
		u.Secret, secret = &sec, []byte(sec)
	}
	if in.XksProxyUriEndpoint != nil || in.XksProxyConnectivity != nil || in.XksProxyVpcEndpointServiceName != nil || in.XksProxyVpcEndpointServiceOwner != nil {
		u.Op, changed = keystore.OpUpdate, true
		if in.XksProxyConnectivity != nil && *in.XksProxyConnectivity != x.Connectivity {
			if in.XksProxyUriEndpoint == nil {
				return nil, validation("Changing XksProxyConnectivity needs a new XksProxyUriEndpoint.")
			}
			x.Connectivity = *in.XksProxyConnectivity
			if x.Connectivity == keystore.XKSPublic {
				x.VpcServiceName, x.VpcServiceOwner = "", ""
			}
		}
		if in.XksProxyUriEndpoint != nil {
			x.Endpoint = *in.XksProxyUriEndpoint
		}
		if in.XksProxyVpcEndpointServiceName != nil {
			x.VpcServiceName = *in.XksProxyVpcEndpointServiceName
		}
		if in.XksProxyVpcEndpointServiceOwner != nil {
			x.VpcServiceOwner = *in.XksProxyVpcEndpointServiceOwner
		}
		if x.Connectivity == keystore.XKSVPC && x.VpcServiceOwner == "" {
			x.VpcServiceOwner = c.Account
		}
	}
	if !changed && u.Name == nil {
		return nil, validation("The request does not change the custom key store.")
	}
	if !st.State.Allows(u.Op) {
		return nil, storeErr(&keystore.StateError{Op: u.Op, State: st.State, ID: st.ID})
	}
	if changed {
		if err := s.checkXKSConfig(&x); err != nil {
			return nil, err
		}
		u.XKS = &x
		if x.Connectivity == keystore.XKSPublic || st.State == keystore.Connected {
			if secret == nil {
				var err error
				if secret, err = m.Password(st); err != nil {
					return nil, internal(err)
				}
				defer clear(secret)
			}
			probe := *st
			probe.XKS = &x
			if err := s.xks.Probe(ctx, &probe, secret, xksclient.OpUpdateCustomKeyStore); err != nil {
				return nil, s.xksStoreErr(st.ID, err)
			}
		}
	}
	if err := m.UpdateExternal(ctx, c.Account, c.Region, st.ID, u); err != nil {
		return nil, storeErr(err)
	}
	return &kmsapi.UpdateCustomKeyStoreResponse{}, nil
}

// xksEntry is an external store's XksProxyConfiguration: never the secret.
func xksEntry(x *keystore.XKSConfig) *kmsapi.XksProxyConfigurationType {
	e := &kmsapi.XksProxyConfigurationType{Connectivity: ptr(x.Connectivity), AccessKeyId: ptr(x.AccessKeyID),
		UriEndpoint: ptr(x.Endpoint), UriPath: ptr(x.Path)}
	if x.Connectivity == keystore.XKSVPC {
		e.VpcEndpointServiceName, e.VpcEndpointServiceOwner = ptr(x.VpcServiceName), ptr(x.VpcServiceOwner)
	}
	return e
}
