package keystore

import (
	"context"
	"errors"
	"testing"

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
