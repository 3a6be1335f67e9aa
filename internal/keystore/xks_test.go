package keystore

import (
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/xks/xksclient"
)

func xksStore(name, conn, endpoint, path, svc string) *Store {
	return &Store{Account: "111122223333", Region: "us-east-1", Name: name, Type: TypeExternal,
		XKS: &XKSConfig{Connectivity: conn, Endpoint: endpoint, Path: path, VpcServiceName: svc, AccessKeyID: "AKIDAAAAAAAAAAAAAAAAAAAA"}}
}

// TestExternalUniqueness is spec §10.2's table.
func TestExternalUniqueness(t *testing.T) {
	s, b := open(t, t.TempDir())
	m, err := New(context.Background(), s, b, Config{Backings: map[string]Backing{TypeExternal: &External{}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	ctx := context.Background()
	const sec = "PleaseReplaceThisWithSomeSecretOfLength43To64"
	pub, err := m.Create(ctx, xksStore("pub", XKSPublic, "https://a.example", "/kms/xks/v1", ""), sec)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Create(ctx, xksStore("vpc", XKSVPC, "https://v.example", "/kms/xks/v1", "svc-1"), sec); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		st   *Store
		want error
	}{
		{xksStore("x1", XKSPublic, "https://a.example", "/kms/xks/v1", ""), ErrXKSURIInUse},
		{xksStore("x2", XKSPublic, "https://v.example", "/other/kms/xks/v1", ""), ErrXKSEndpointInUse},
		{xksStore("x3", XKSVPC, "https://v.example", "/p/kms/xks/v1", "svc-2"), ErrXKSEndpointInUse},
		{xksStore("x4", XKSVPC, "https://w.example", "/kms/xks/v1", "svc-1"), ErrXKSVpcServiceInUse},
		{xksStore("pub", XKSPublic, "https://b.example", "/kms/xks/v1", ""), ErrNameInUse},
	} {
		if err := m.CheckExternal(c.st); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.st.Name, err, c.want)
		}
		if _, err := m.Create(ctx, c.st, sec); !errors.Is(err, c.want) {
			t.Errorf("create %s: %v, want %v", c.st.Name, err, c.want)
		}
	}
	// Public stores may share an endpoint with other paths.
	if _, err := m.Create(ctx, xksStore("pub2", XKSPublic, "https://a.example", "/two/kms/xks/v1", ""), sec); err != nil {
		t.Fatal(err)
	}
	// The limit per account and Region is known before any proxy call.
	m.cfg.Limit = 3
	if err := m.CheckExternal(xksStore("fourth", XKSPublic, "https://c.example", "/kms/xks/v1", "")); !errors.Is(err, ErrLimitExceeded) {
		t.Errorf("a fourth store with a limit of 3: %v, want %v", err, ErrLimitExceeded)
	}
	m.cfg.Limit = 10
	// Updates: the endpoint needs DISCONNECTED; uniqueness holds; the secret is resealed.
	x := *pub.XKS
	x.Path = "/two/kms/xks/v1"
	if err := m.UpdateExternal(ctx, pub.Account, pub.Region, pub.ID, ExternalUpdate{XKS: &x, Op: OpUpdateLive}); !errors.Is(err, ErrXKSURIInUse) {
		t.Fatalf("update onto another store's URI: %v", err)
	}
	x.Path = "/three/kms/xks/v1"
	sec2 := "AnotherSecretOfLength43To64AnotherSecretOfLen"
	if err := m.UpdateExternal(ctx, pub.Account, pub.Region, pub.ID, ExternalUpdate{XKS: &x, Secret: &sec2, Op: OpUpdateLive}); err != nil {
		t.Fatal(err)
	}
	got := state(t, m, pub.ID)
	if got.XKS.Path != x.Path {
		t.Fatalf("path %s", got.XKS.Path)
	}
	if pw, err := m.Password(got); err != nil || string(pw) != sec2 {
		t.Fatalf("secret after update: %q %v", pw, err)
	}
	if string(got.Password) == sec2 {
		t.Fatal("secret stored in the clear")
	}
}

// TestExternalConnectCodes: a VPC store whose endpoint service kmsd does
// not know fails with XKS_VPC_ENDPOINT_SERVICE_NOT_FOUND; one whose
// service's private DNS name is not its endpoint host with
// XKS_VPC_ENDPOINT_SERVICE_INVALID_CONFIGURATION; one whose proxy is
// unreachable with XKS_PROXY_NOT_REACHABLE.
func TestExternalConnectCodes(t *testing.T) {
	ext := &External{VPCServices: map[string]string{"svc-dead": "127.0.0.1:1", "svc-dns": "127.0.0.1:1"},
		VPCPrivateDNS: map[string]string{"svc-dns": "xks.example.com"}}
	const sec = "PleaseReplaceThisWithSomeSecretOfLength43To64"
	for _, c := range []struct {
		st   *Store
		want string
	}{
		{xksStore("a", XKSVPC, "https://v.example", "/kms/xks/v1", "svc-unknown"), CodeXKSVpcServiceNotFound},
		{xksStore("b", XKSVPC, "https://v.example", "/kms/xks/v1", "svc-dead"), xksclient.CodeNotReachable},
		{xksStore("c", XKSVPC, "https://v.example", "/kms/xks/v1", "svc-dns"), CodeXKSVpcServiceInvalidConfig},
		{xksStore("d", XKSVPC, "https://XKS.example.com.:8443", "/kms/xks/v1", "svc-dns"), xksclient.CodeNotReachable},
	} {
		_, err := ext.Connect(context.Background(), c.st, []byte(sec), nil)
		if code(err) != c.want {
			t.Errorf("%s: %v, want %s", c.st.Name, err, c.want)
		}
	}
}

// TestConnectRetries: connect tries GetHealthStatus again after a failure
// that may pass (503, 429), up to three times, and not after one that
// will not (401); the code is the last attempt's.
func TestConnectRetries(t *testing.T) {
	const healthy = `{"xksProxyFleetSize":1,"xksProxyVendor":"t","xksProxyModel":"t","ekmVendor":"t",` +
		`"ekmFleetDetails":[{"id":"e","model":"t","healthStatus":"ACTIVE"}]}`
	tests := []struct {
		name     string
		failures int // answers before a healthy one
		status   int
		errName  string
		calls    int
		code     string // "" for CONNECTED
	}{
		{"one 503, then healthy", 1, 503, "DependencyTimeoutException", 2, ""},
		{"two 429s, then healthy", 2, 429, "ThrottlingException", 3, ""},
		{"503 each time", 9, 503, "DependencyTimeoutException", 3, xksclient.CodeTimedOut},
		{"401 is not tried again", 9, 401, "AuthenticationFailedException", 1, xksclient.CodeInvalidCredentials},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var calls atomic.Int32
			srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				if int(calls.Add(1)) <= tc.failures {
					w.WriteHeader(tc.status)
					fmt.Fprintf(w, `{"errorName":%q}`, tc.errName)
					return
				}
				io.WriteString(w, healthy)
			}))
			defer srv.Close()
			b := &External{CABundle: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), Timeout: 2 * time.Second}
			st := xksStore("s", XKSPublic, srv.URL, "/kms/xks/v1", "")
			st.ID = "cks-00000000000000001"
			_, err := b.Connect(context.Background(), st, []byte("PleaseReplaceThisWithSomeSecretOfLength43To64"), nil)
			var ce *ConnectError
			switch {
			case tc.code == "" && err != nil:
				t.Fatalf("connect: %v", err)
			case tc.code != "" && (!errors.As(err, &ce) || ce.Code != tc.code):
				t.Fatalf("connect: %v, want %s", err, tc.code)
			}
			if n := int(calls.Load()); n != tc.calls {
				t.Fatalf("%d health calls, want %d", n, tc.calls)
			}
			b.Disconnect(context.Background(), st)
		})
	}
}
