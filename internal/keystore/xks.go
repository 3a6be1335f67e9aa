package keystore

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/kmsd/kmsd/internal/netallow"
	"github.com/kmsd/kmsd/internal/xks/xksclient"
)

// Connectivity of external key stores.
const (
	XKSPublic = "PUBLIC_ENDPOINT"
	XKSVPC    = "VPC_ENDPOINT_SERVICE"
)

// ConnectionErrorCodes of external key stores only kmsd itself decides.
const (
	CodeXKSVpcServiceNotFound      = "XKS_VPC_ENDPOINT_SERVICE_NOT_FOUND"
	CodeXKSVpcServiceInvalidConfig = "XKS_VPC_ENDPOINT_SERVICE_INVALID_CONFIGURATION"
)

// XKSConfig is an external key store's proxy configuration (spec §10.2,
// §10.3); the credential's secret is the store's sealed Password.
type XKSConfig struct {
	Connectivity    string `json:"connectivity"`
	Endpoint        string `json:"endpoint"`
	Path            string `json:"path"`
	VpcServiceName  string `json:"vpcServiceName,omitempty"`
	VpcServiceOwner string `json:"vpcServiceOwner,omitempty"`
	AccessKeyID     string `json:"accessKeyId"`
}

// Errors of external key store configurations (spec §5.1, §10.2).
var (
	ErrXKSURIInUse         = errors.New("keystore: XKS proxy endpoint and path already used by another external key store")
	ErrXKSEndpointInUse    = errors.New("keystore: XKS proxy endpoint already used by a VPC-connected external key store")
	ErrXKSVpcServiceInUse  = errors.New("keystore: VPC endpoint service already backs another external key store")
	ErrXKSVpcServiceNotFnd = errors.New("keystore: VPC endpoint service not found")
	// ErrXKSVpcServiceInvalid: the service breaks a requirement of spec §10.4 —
	// in kmsd, its private DNS name is not the store's endpoint host.
	ErrXKSVpcServiceInvalid = errors.New("keystore: VPC endpoint service configuration invalid")
)

// xksConflict reports whether external store st may not coexist with o
// (spec §10.2 uniqueness; st and o are in the same account and Region, a
// kmsd serves one "Region" per account view).
func xksConflict(st, o *Store) error {
	if st.ID == o.ID || st.XKS == nil || o.XKS == nil {
		return nil
	}
	a, b := st.XKS, o.XKS
	switch {
	case a.Connectivity == XKSVPC && b.Connectivity == XKSVPC && a.VpcServiceName == b.VpcServiceName:
		return fmt.Errorf("%w: %s backs %s", ErrXKSVpcServiceInUse, a.VpcServiceName, o.ID)
	case a.Endpoint == b.Endpoint && (a.Connectivity == XKSVPC || b.Connectivity == XKSVPC):
		return fmt.Errorf("%w: %s (store %s)", ErrXKSEndpointInUse, a.Endpoint, o.ID)
	case a.Endpoint == b.Endpoint && a.Path == b.Path:
		return fmt.Errorf("%w: %s%s (store %s)", ErrXKSURIInUse, a.Endpoint, a.Path, o.ID)
	}
	return nil
}

// External is the Backing of EXTERNAL_KEY_STORE stores: connecting is a
// signed GetHealthStatus to the proxy (spec §5.2); the store's proxy
// clients are kept here, one per configuration.
type External struct {
	// Region signs the proxy requests (the store's Region when empty).
	Region string
	// CABundle: PEM certificates trusted beside the system roots.
	CABundle []byte
	// VPCServices maps VPC endpoint service names to the address
	// ("host" or "host:port") kmsd dials for them.
	VPCServices map[string]string
	// VPCPrivateDNS maps VPC endpoint service names to their private DNS
	// names. A store on a service listed here must have that name as its
	// endpoint host (spec §10.4); services not listed are not checked.
	VPCPrivateDNS map[string]string
	// Timeout per proxy call; xksclient.DefaultTimeout when zero.
	Timeout time.Duration
	// Allowed, when not nil, is where PUBLIC_ENDPOINT stores' proxies may
	// be (--xks-allowed-endpoints): any other endpoint is never dialled
	// and fails exactly as an unreachable proxy does (KindUnreachable:
	// XksProxyUriUnreachableException, XKS_PROXY_NOT_REACHABLE), so that
	// callers cannot use kmsd to tell open ports from closed ones.
	// VPC_ENDPOINT_SERVICE stores dial the addresses the operator mapped
	// and are not checked.
	Allowed *netallow.List
	// Resolver resolves endpoint host names for the Allowed check
	// (net.DefaultResolver when nil); the checked addresses are the ones
	// dialled.
	Resolver netallow.Resolver

	mu      sync.Mutex
	clients map[string]xksEntry // by store id
}

type xksEntry struct {
	key string
	c   *xksclient.Client
}

var _ Backing = (*External)(nil)

// ClientConfig is the xksclient configuration of store st with secret.
func (b *External) ClientConfig(st *Store, secret []byte) (xksclient.Config, error) {
	x := st.XKS
	if x == nil {
		return xksclient.Config{}, errors.New("keystore: not an external key store: " + st.ID)
	}
	region := b.Region
	if region == "" {
		region = st.Region
	}
	cfg := xksclient.Config{Endpoint: x.Endpoint, URIPath: x.Path, AccessKeyID: x.AccessKeyID, Secret: string(secret),
		Region: region, CABundle: b.CABundle, Timeout: b.Timeout}
	if x.Connectivity == XKSVPC {
		if err := b.CheckVPCService(x); err != nil {
			return cfg, err
		}
		u, err := url.Parse(x.Endpoint)
		if err != nil {
			return cfg, err
		}
		cfg.Addresses = map[string]string{u.Hostname(): b.VPCServices[x.VpcServiceName]}
	} else if b.Allowed != nil {
		var r netallow.Resolver = net.DefaultResolver
		if b.Resolver != nil {
			r = b.Resolver
		}
		cfg.Dialer = b.Allowed.Dialer(&net.Dialer{KeepAlive: 30 * time.Second}, r)
	}
	return cfg, nil
}

// HasVPCService reports whether kmsd knows VPC endpoint service name.
func (b *External) HasVPCService(name string) bool {
	_, ok := b.VPCServices[name]
	return ok
}

// CheckVPCService checks the VPC endpoint service of a VPC-connected
// configuration as KMS does at create, update and connect: kmsd must know
// it (ErrXKSVpcServiceNotFnd), and when its private DNS name is known it
// must be the endpoint's host (ErrXKSVpcServiceInvalid, spec §10.4).
// Configurations of other connectivity pass.
func (b *External) CheckVPCService(x *XKSConfig) error {
	if x.Connectivity != XKSVPC {
		return nil
	}
	if !b.HasVPCService(x.VpcServiceName) {
		return fmt.Errorf("%w: %s", ErrXKSVpcServiceNotFnd, x.VpcServiceName)
	}
	dns, ok := b.VPCPrivateDNS[x.VpcServiceName]
	if !ok {
		return nil
	}
	u, err := url.Parse(x.Endpoint)
	if err != nil {
		return err
	}
	if host := strings.TrimSuffix(u.Hostname(), "."); !strings.EqualFold(host, strings.TrimSuffix(dns, ".")) {
		return fmt.Errorf("%w: the private DNS name of %s is %s, not the XksProxyUriEndpoint host %s",
			ErrXKSVpcServiceInvalid, x.VpcServiceName, dns, host)
	}
	return nil
}

// NewClient builds a fresh (uncached) client for st with secret.
func (b *External) NewClient(st *Store, secret []byte) (*xksclient.Client, error) {
	cfg, err := b.ClientConfig(st, secret)
	if err != nil {
		return nil, err
	}
	return xksclient.New(cfg)
}

// Probe is GetHealthStatus with st's configuration and secret, for
// CreateCustomKeyStore and UpdateCustomKeyStore (kmsOperation op).
func (b *External) Probe(ctx context.Context, st *Store, secret []byte, op string) error {
	c, err := b.NewClient(st, secret)
	if err != nil {
		return err
	}
	defer c.CloseIdleConnections()
	_, err = c.Health(ctx, xksclient.Meta{Operation: op})
	return err
}

// Connect probes the proxy (GetHealthStatus, kmsOperation
// ConnectCustomKeyStore); it never rotates the credential.
func (b *External) Connect(ctx context.Context, st *Store, secret, next []byte) (bool, error) {
	cfg, err := b.ClientConfig(st, secret)
	if errors.Is(err, ErrXKSVpcServiceNotFnd) {
		return false, &ConnectError{Code: CodeXKSVpcServiceNotFound, Err: err}
	}
	if errors.Is(err, ErrXKSVpcServiceInvalid) {
		return false, &ConnectError{Code: CodeXKSVpcServiceInvalidConfig, Err: err}
	}
	if err != nil {
		return false, &ConnectError{Code: CodeInternalError, Err: err}
	}
	c, err := xksclient.New(cfg)
	if err != nil {
		return false, &ConnectError{Code: CodeInternalError, Err: err}
	}
	if err := connectHealth(ctx, c); err != nil {
		c.CloseIdleConnections()
		return false, &ConnectError{Code: xksclient.ConnectionErrorCode(err), Err: err}
	}
	b.mu.Lock()
	if b.clients == nil {
		b.clients = map[string]xksEntry{}
	}
	old := b.clients[st.ID]
	b.clients[st.ID] = xksEntry{key: clientKey(st), c: c}
	b.mu.Unlock()
	if old.c != nil {
		old.c.CloseIdleConnections()
	}
	return false, nil
}

// Connect's GetHealthStatus is tried up to connectAttempts times, the
// waits between doubling from connectRetryWait, while its failure is one
// that may pass (a timeout, throttling, a broken or refused connection):
// AWS's connect takes minutes, so one slow answer — a proxy or a kmsd
// busy for a moment, say 100 stores connecting at once — is not its
// outcome [R]. A proxy that is always slow is still XKS_PROXY_TIMED_OUT,
// within a second; a lasting failure's code is its last attempt's.
const (
	connectAttempts  = 3
	connectRetryWait = 100 * time.Millisecond
)

func connectHealth(ctx context.Context, c *xksclient.Client) error {
	wait := connectRetryWait
	for i := 1; ; i++ {
		_, err := c.Health(ctx, xksclient.Meta{Operation: xksclient.OpConnectCustomKeyStore})
		if err == nil || i == connectAttempts || !xksclient.Retryable(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		wait *= 2
	}
}

// Disconnect drops the store's client.
func (b *External) Disconnect(ctx context.Context, st *Store) error {
	b.mu.Lock()
	e := b.clients[st.ID]
	delete(b.clients, st.ID)
	b.mu.Unlock()
	if e.c != nil {
		e.c.CloseIdleConnections()
	}
	return nil
}

// clientKey identifies a store's proxy configuration, secret included
// (through its sealed form, which changes with it).
func clientKey(st *Store) string {
	x := st.XKS
	if x == nil {
		return ""
	}
	h := sha256.Sum256(st.Password)
	return x.Connectivity + "\x00" + x.Endpoint + "\x00" + x.Path + "\x00" + x.VpcServiceName + "\x00" + x.AccessKeyID + "\x00" + string(h[:])
}

// ClientFor returns the proxy client of external store st of m, made
// again when the store's configuration changed since it was cached.
// (b is passed explicitly: m's backings may be wrapped, e.g. for fault
// injection.)
func (b *External) ClientFor(m *Manager, st *Store) (*xksclient.Client, error) {
	if b == nil {
		return nil, errors.New("keystore: no backing for external key stores")
	}
	key := clientKey(st)
	b.mu.Lock()
	e, ok := b.clients[st.ID]
	b.mu.Unlock()
	if ok && e.key == key {
		return e.c, nil
	}
	secret, err := m.Password(st)
	if err != nil {
		return nil, err
	}
	defer clear(secret)
	c, err := b.NewClient(st, secret)
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	if b.clients == nil {
		b.clients = map[string]xksEntry{}
	}
	if cur, ok := b.clients[st.ID]; ok && cur.key == key {
		b.mu.Unlock()
		c.CloseIdleConnections()
		return cur.c, nil
	}
	old := b.clients[st.ID]
	b.clients[st.ID] = xksEntry{key: key, c: c}
	b.mu.Unlock()
	if old.c != nil {
		old.c.CloseIdleConnections()
	}
	return c, nil
}

// ExternalUpdate is a change to an external key store; nil members stay.
type ExternalUpdate struct {
	Name   *string
	XKS    *XKSConfig // the whole new configuration, when any member changes
	Secret *string
	// Op is OpUpdateLive when only the name, path or credential change,
	// OpUpdate otherwise (spec §6.3).
	Op Op
}

// UpdateExternal applies u to external store id, all or nothing, under
// the state rules and the uniqueness rules of spec §10.2.
func (m *Manager) UpdateExternal(ctx context.Context, account, region, id string, u ExternalUpdate) error {
	m.wmu.Lock()
	defer m.wmu.Unlock()
	cur, err := m.getFresh(ctx, account, region, id)
	if err != nil {
		return err
	}
	if !cur.State.Allows(u.Op) {
		return &StateError{Op: u.Op, State: cur.State, ID: id}
	}
	return m.update(ctx, id, func(st *Store, others []*Store) error {
		if st.State != cur.State {
			return &StateError{Op: u.Op, State: st.State, ID: id}
		}
		// The uniqueness rules, against the other stores as this
		// transaction reads them.
		probe := clone(st)
		if u.XKS != nil {
			x := *u.XKS
			probe.XKS = &x
		}
		for _, o := range others {
			if u.Name != nil && o.Name == *u.Name {
				return fmt.Errorf("%w: %s", ErrNameInUse, *u.Name)
			}
			if u.XKS != nil {
				if err := xksConflict(probe, o); err != nil {
					return err
				}
			}
		}
		if u.Name != nil {
			st.Name = *u.Name
		}
		if u.XKS != nil {
			x := *u.XKS
			st.XKS = &x
		}
		if u.Secret != nil {
			sealed, err := m.sealPassword(id, []byte(*u.Secret))
			if err != nil {
				return err
			}
			st.Password = sealed
			settled(st)
		}
		return nil
	})
}

// PollExternal checks every CONNECTED external key store's proxy every
// interval (GetHealthStatus, kmsOperation KmsHealthCheck) until ctx ends or
// the manager closes; it returns then. A failure is logged and reported;
// the store stays CONNECTED, as AWS's do (spec §6.2). report may be nil.
// kmsd runs it on the controller only.
func (m *Manager) PollExternal(ctx context.Context, b *External, interval time.Duration, report func(st *Store, err error)) {
	if interval <= 0 || b == nil {
		return
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(m.ctx, cancel)()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		m.mu.RLock()
		var live []*Store
		for _, st := range m.stores {
			if st.Type == TypeExternal && st.State == Connected {
				live = append(live, clone(st))
			}
		}
		m.mu.RUnlock()
		for _, st := range live {
			c, err := b.ClientFor(m, st)
			if err == nil {
				_, err = c.Health(ctx, xksclient.Meta{Operation: xksclient.OpKmsHealthCheck})
			}
			if err != nil && ctx.Err() == nil {
				m.log.Warn("keystore: XKS proxy health check failed", "store", st.ID,
					"code", xksclient.ConnectionErrorCode(err), "err", err)
			} else if err == nil {
				m.log.Debug("keystore: XKS proxy healthy", "store", st.ID)
			}
			if report != nil && ctx.Err() == nil {
				report(st, err)
			}
		}
	}
}

// CheckExternal reports whether a new external store st would break a
// uniqueness rule (name, spec §10.2) or the limit of stores per account
// and Region (spec §11), before its proxy is probed, so that a create
// refused anyway makes no call to the proxy; Create checks again.
func (m *Manager) CheckExternal(st *Store) error {
	others := m.List(st.Account, st.Region)
	for _, o := range others {
		if o.Name == st.Name {
			return fmt.Errorf("%w: %s", ErrNameInUse, st.Name)
		}
		if err := xksConflict(st, o); err != nil {
			return err
		}
	}
	if len(others) >= m.cfg.Limit {
		return ErrLimitExceeded
	}
	return nil
}
