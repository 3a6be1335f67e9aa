package kms

import (
	"context"
	"errors"

	"github.com/kmsd/kmsd/internal/keystore"
)

// ClusterChecker checks a CloudHSM cluster for a key store
// (*keystore.CloudHSM).
type ClusterChecker interface {
	CheckCluster(account, region, id, trustAnchor string) (clusterCert string, err error)
}

// SetKeyStores gives the service its custom key stores, the check of
// CloudHSM clusters and the cryptography of keys in them. Call it before
// serving; without it the custom key store operations answer
// UnsupportedOperationException.
func (s *Service) SetKeyStores(m *keystore.Manager, clusters ClusterChecker, hsmKeys HSMKeys) {
	s.stores, s.clusters, s.hsmKeys = m, clusters, hsmKeys
}

// keyStores returns the manager, or the exception of a kmsd without one.
func (s *Service) keyStores() (*keystore.Manager, error) {
	if s.stores == nil {
		return nil, exc("UnsupportedOperationException", "Custom key stores are not available in this kmsd.")
	}
	return s.stores, nil
}

// storeExceptions maps the keystore package's errors to KMS exceptions
// (the one table; keystore_test.go checks it is complete).
var storeExceptions = []struct {
	err  error
	name string
	msg  string
}{
	{keystore.ErrNotFound, "CustomKeyStoreNotFoundException", "The specified custom key store does not exist."},
	{keystore.ErrNameInUse, "CustomKeyStoreNameInUseException", "The specified custom key store name is already assigned to another custom key store in the account and Region."},
	{keystore.ErrClusterInUse, "CloudHsmClusterInUseException", "The specified CloudHSM cluster is already associated with a custom key store or it shares a backup history with a cluster that is associated with a custom key store."},
	{keystore.ErrHasKeys, "CustomKeyStoreHasCMKsException", "The custom key store contains KMS keys. Delete them and wait for their deletion before deleting the custom key store."},
	{keystore.ErrInvalidState, "CustomKeyStoreInvalidStateException", ""},
	{keystore.ErrLimitExceeded, "LimitExceededException", "The request would exceed the limit of custom key stores in this account and Region."},
	{keystore.ErrClusterNotFound, "CloudHsmClusterNotFoundException", "The specified CloudHSM cluster does not exist in this account and Region."},
	{keystore.ErrClusterNotActive, "CloudHsmClusterNotActiveException", "The CloudHSM cluster is not active. Initialize and activate the cluster and try again."},
	{keystore.ErrClusterInvalidConfig, "CloudHsmClusterInvalidConfigurationException", ""},
	{keystore.ErrIncorrectTrustAnchor, "IncorrectTrustAnchorException", "The trust anchor certificate does not match the trust anchor certificate of the specified CloudHSM cluster."},
	{keystore.ErrXKSURIInUse, "XksProxyUriInUseException", "The combination of XksProxyUriEndpoint and XksProxyUriPath is already used by another external key store in this account and Region."},
	{keystore.ErrXKSEndpointInUse, "XksProxyUriEndpointInUseException", "The XksProxyUriEndpoint is already used by another external key store with VPC endpoint service connectivity."},
	{keystore.ErrXKSVpcServiceInUse, "XksProxyVpcEndpointServiceInUseException", "The VPC endpoint service is already associated with another external key store in this Region."},
	{keystore.ErrXKSVpcServiceNotFnd, "XksProxyVpcEndpointServiceNotFoundException", "The VPC endpoint service was not found (kmsd maps endpoint service names with --xks-vpc-endpoint-services)."},
	{keystore.ErrXKSVpcServiceInvalid, "XksProxyVpcEndpointServiceInvalidConfigurationException", "The VPC endpoint service does not meet the requirements for an external key store: its private DNS name must be the host of XksProxyUriEndpoint (kmsd maps endpoint service names with --xks-vpc-endpoint-services name=private.dns.name@host:port)."},
	{keystore.ErrClusterNotRelated, "CloudHsmClusterNotRelatedException", "The specified CloudHSM cluster does not share a backup history with the original cluster of the custom key store."},
}

// storeErr is the exception of a keystore error; others are internal.
func storeErr(err error) error {
	if err == nil {
		return nil
	}
	var se *keystore.StateError
	if errors.As(err, &se) {
		return exc("CustomKeyStoreInvalidStateException", invalidStateMessage(se))
	}
	for _, e := range storeExceptions {
		if errors.Is(err, e.err) {
			msg := e.msg
			if msg == "" {
				msg = trimPrefix(err.Error())
			}
			return exc(e.name, msg)
		}
	}
	return internal(err)
}

func trimPrefix(s string) string {
	const p = "keystore: "
	for len(s) > len(p) && s[:len(p)] == p {
		s = s[len(p):]
	}
	return s
}

func invalidStateMessage(se *keystore.StateError) string {
	switch se.Op {
	case keystore.OpConnect:
		return "Custom key store " + se.ID + " is in state " + string(se.State) + ". A key store in a FAILED state must be disconnected before it can be connected; one that is DISCONNECTING must finish first."
	case keystore.OpDisconnect:
		return "Custom key store " + se.ID + " is in state " + string(se.State) + " and cannot be disconnected."
	case keystore.OpCreateKey:
		return "Custom key store " + se.ID + " is in state " + string(se.State) + "; keys can be created only while it is CONNECTED."
	case keystore.OpDelete:
		return "Custom key store " + se.ID + " is in state " + string(se.State) + ". Disconnect it before deleting it."
	case keystore.OpUpdate:
		return "Custom key store " + se.ID + " is in state " + string(se.State) + ". Disconnect it before changing its password or cluster."
	case keystore.OpUpdateLive:
		return "Custom key store " + se.ID + " is in state " + string(se.State) + ". It can be renamed only while CONNECTED or DISCONNECTED."
	}
	return "Custom key store " + se.ID + " is in state " + string(se.State) + "."
}

// storeHasKeys reports whether any KMS key, in any key state (pending
// deletion included), lives in custom key store id: one entry of the
// catalog's store index, not a read of every key.
func (s *Service) storeHasKeys(ctx context.Context, id string) (bool, error) {
	return s.cat.StoreHasKeys(ctx, id)
}

// storeAuthorize decides a custom key store operation (StoreScope).
func (s *Service) storeAuthorize(c *Caller, op string) error {
	return authorizeStore(s, c, Authorizations[op].Action, "*", "")
}

// SetStoreQuota sets the request quota of custom key stores (spec §11;
// nil: no limit, the default of a Service). kmsd gives it
// keystore.DefaultRPS unless told otherwise (--custom-key-store-rps).
func (s *Service) SetStoreQuota(q *keystore.Quota) { s.quota = q }

// errThrottled is AWS KMS's answer to a request over a rate quota (the
// text AWS sends for its cryptographic quotas; spec §1.5 lists the code).
var errThrottled = exc("ThrottlingException", "You have exceeded the rate at which you may call KMS. Reduce the frequency of your calls.")

// throttle takes one request of store st's quota for a call to its
// backing, or answers ThrottlingException. Spec §5.9 orders it after the
// key-state checks and right before the backing store is called, so a
// refused request never reaches the HSM or the proxy.
func (s *Service) throttle(st *keystore.Store) error {
	if s.quota.Allow(st.ID) {
		return nil
	}
	return errThrottled
}
