package kms

import (
	"context"
	"encoding/json"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/keystore"
	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/xks/keyman/keyfile"
	"github.com/kmsd/kmsd/internal/xks/xksserver"
)

const (
	xksAKID   = "AKIDAAAAAAAAAAAAAAAAAAAA"
	xksSecret = "PleaseReplaceThisWithSomeSecretOfLength43To64"
	xksSvc    = "com.amazonaws.vpce.us-east-1.vpce-svc-0000000000000001"
	xksSvcDNS = "com.amazonaws.vpce.us-east-1.vpce-svc-0000000000000002" // private DNS name xks.example.com
)

// xksProxy is the XKS proxy's handler over a key file holding the
// external keys named in keys, each with its material (nil: random),
// accepting the credential xksAKID/xksSecret.
func xksProxy(t *testing.T, keys map[string][]byte) http.Handler {
	t.Helper()
	kf := filepath.Join(t.TempDir(), "keys.json")
	pass := []byte("pass")
	for id, material := range keys {
		if err := keyfile.CreateKey(kf, pass, keyfile.MinIterations, id, []string{"ENCRYPT", "DECRYPT"}, material, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	km, err := keyfile.Open(kf, pass, keyfile.Options{PollInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { km.Close() })
	h, err := xksserver.New(xksserver.Options{Stores: []xksserver.StoreConfig{{Manager: km, ManagerName: "file",
		Policy: xksserver.Policy{Credentials: []xksserver.Credential{{AccessKeyID: xksAKID, Secret: xksSecret}}}}}})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func newXKSFixture(t *testing.T) (*fixture, *keystore.Manager) {
	t.Helper()
	f := newFixture(t)
	st := f.db // the catalog's database, as in kmsd
	ext := &keystore.External{VPCServices: map[string]string{xksSvc: "127.0.0.1:1", xksSvcDNS: "127.0.0.1:1"},
		VPCPrivateDNS: map[string]string{xksSvcDNS: "xks.example.com"}}
	m, err := keystore.New(context.Background(), st, f.barrier, keystore.Config{
		Backings: map[string]keystore.Backing{keystore.TypeExternal: ext}, Now: f.clock.now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	f.svc.SetKeyStores(m, &fakeClusters{}, nil)
	f.svc.SetExternal(ext)
	return f, m
}

func xksReq(name, conn, endpoint, svc string) *kmsapi.CreateCustomKeyStoreRequest {
	r := &kmsapi.CreateCustomKeyStoreRequest{CustomKeyStoreName: str(name), CustomKeyStoreType: str(keystore.TypeExternal),
		XksProxyConnectivity: str(conn), XksProxyUriEndpoint: str(endpoint), XksProxyUriPath: str("/kms/xks/v1"),
		XksProxyAuthenticationCredential: &kmsapi.XksProxyAuthenticationCredentialType{AccessKeyId: str(xksAKID), RawSecretAccessKey: str(xksSecret)}}
	if svc != "" {
		r.XksProxyVpcEndpointServiceName = str(svc)
	}
	return r
}

// TestExternalStoreCreate covers what needs no proxy: validation, the VPC
// endpoint service map, an unreachable public proxy, Describe's members
// (never the secret), updates of a disconnected store, and CreateKey into a
// store that is not connected.
func TestExternalStoreCreate(t *testing.T) {
	ctx := context.Background()
	f, _ := newXKSFixture(t)
	create := func(r *kmsapi.CreateCustomKeyStoreRequest) (string, error) {
		out, err := f.svc.CreateCustomKeyStore(ctx, f.caller, r)
		if err != nil {
			return "", err
		}
		return *out.CustomKeyStoreId, nil
	}
	_, err := create(xksReq("a", keystore.XKSVPC, "https://v.example", "com.amazonaws.vpce.us-east-1.vpce-svc-0000000000000009"))
	wantException(t, err, "XksProxyVpcEndpointServiceNotFoundException")
	_, err = create(xksReq("a", keystore.XKSPublic, "https://127.0.0.1:1", ""))
	wantException(t, err, "XksProxyUriUnreachableException")
	r := xksReq("a", keystore.XKSPublic, "https://127.0.0.1:1", "")
	r.XksProxyAuthenticationCredential = nil
	_, err = create(r)
	wantException(t, err, "ValidationException")
	r = xksReq("a", keystore.XKSVPC, "https://v.example", xksSvc)
	r.KeyStorePassword = str("kmsPswd1")
	_, err = create(r)
	wantException(t, err, "ValidationException")
	_, err = create(xksReq("a", keystore.XKSVPC, "https://v.example/path", xksSvc))
	wantException(t, err, "ValidationException")

	id, err := create(xksReq("vpc", keystore.XKSVPC, "https://v.example", xksSvc))
	if err != nil {
		t.Fatal(err)
	}
	_, err = create(xksReq("vpc2", keystore.XKSVPC, "https://w.example", xksSvc))
	wantException(t, err, "XksProxyVpcEndpointServiceInUseException")
	_, err = create(xksReq("pub", keystore.XKSPublic, "https://v.example", ""))
	wantException(t, err, "XksProxyUriEndpointInUseException")
	// A service with a private DNS name (§10.4): the endpoint must be it.
	_, err = create(xksReq("dns", keystore.XKSVPC, "https://other.example.com", xksSvcDNS))
	wantException(t, err, "XksProxyVpcEndpointServiceInvalidConfigurationException")
	dnsID, err := create(xksReq("dns", keystore.XKSVPC, "https://xks.example.com", xksSvcDNS))
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.svc.UpdateCustomKeyStore(ctx, f.caller, &kmsapi.UpdateCustomKeyStoreRequest{CustomKeyStoreId: &dnsID,
		XksProxyUriEndpoint: str("https://other.example.com")})
	wantException(t, err, "XksProxyVpcEndpointServiceInvalidConfigurationException")

	ds, err := f.svc.DescribeCustomKeyStores(ctx, f.caller, &kmsapi.DescribeCustomKeyStoresRequest{CustomKeyStoreId: &id})
	if err != nil {
		t.Fatal(err)
	}
	e := ds.CustomKeyStores[0]
	x := e.XksProxyConfiguration
	if x == nil || *x.AccessKeyId != xksAKID || *x.UriEndpoint != "https://v.example" || *x.VpcEndpointServiceName != xksSvc ||
		*x.VpcEndpointServiceOwner != f.caller.Account || e.CloudHsmClusterId != nil {
		t.Fatalf("describe: %+v %+v", e, x)
	}
	if b, _ := json.Marshal(ds); strings.Contains(string(b), xksSecret) {
		t.Fatal("describe shows the secret")
	}
	// Disconnected VPC store: updates are saved without a probe.
	if _, err := f.svc.UpdateCustomKeyStore(ctx, f.caller, &kmsapi.UpdateCustomKeyStoreRequest{CustomKeyStoreId: &id,
		XksProxyUriPath: str("/p/kms/xks/v1"), XksProxyUriEndpoint: str("https://v2.example")}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.UpdateCustomKeyStore(ctx, f.caller, &kmsapi.UpdateCustomKeyStoreRequest{CustomKeyStoreId: &id,
		KeyStorePassword: str("kmsPswd1")}); err == nil {
		t.Fatal("KeyStorePassword accepted for an external key store")
	}
	_, err = f.svc.CreateKey(ctx, f.caller, &kmsapi.CreateKeyRequest{Origin: str("EXTERNAL_KEY_STORE"), CustomKeyStoreId: &id, XksKeyId: str("k1")})
	wantException(t, err, "CustomKeyStoreInvalidStateException")
	_, err = f.svc.CreateKey(ctx, f.caller, &kmsapi.CreateKeyRequest{XksKeyId: str("k1")})
	wantException(t, err, "UnsupportedOperationException")
}
