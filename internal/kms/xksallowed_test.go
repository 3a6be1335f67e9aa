package kms

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/kmsd/kmsd/internal/keystore"
	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/netallow"
)

// acceptRecorder is a loopback listener that counts the connections made
// to it and closes them.
type acceptRecorder struct {
	ln       net.Listener
	accepted atomic.Int32
}

func newAcceptRecorder(t *testing.T) *acceptRecorder {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &acceptRecorder{ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			r.accepted.Add(1)
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return r
}

func (r *acceptRecorder) port() string {
	_, p, _ := net.SplitHostPort(r.ln.Addr().String())
	return p
}

// staticResolver resolves every name to one address.
type staticResolver netip.Addr

func (r staticResolver) LookupNetIP(context.Context, string, string) ([]netip.Addr, error) {
	return []netip.Addr{netip.Addr(r)}, nil
}

// TestXKSAllowedEndpoints: with --xks-allowed-endpoints, a public proxy
// endpoint outside the list is never dialled, and CreateCustomKeyStore,
// UpdateCustomKeyStore and ConnectCustomKeyStore fail exactly as for a
// proxy that cannot be reached, so a caller learns nothing about which
// hosts and ports kmsd reaches. A name resolving to a loopback address is
// refused even when the name is allowed.
func TestXKSAllowedEndpoints(t *testing.T) {
	ctx := context.Background()
	f, _ := newXKSFixture(t)
	ext := f.svc.xks
	open := newAcceptRecorder(t) // an open port: dialling it would tell
	closed := freeLoopbackPort(t)
	allowed, err := netallow.Parse("*.corp.example,127.0.0.1:" + closed)
	if err != nil {
		t.Fatal(err)
	}
	ext.Allowed = allowed
	ext.Resolver = staticResolver(netip.MustParseAddr("127.0.0.1"))

	create := func(name, endpoint string) *kmsapi.Exception {
		t.Helper()
		_, err := f.svc.CreateCustomKeyStore(ctx, f.caller, xksReq(name, keystore.XKSPublic, endpoint, ""))
		if err == nil {
			t.Fatalf("CreateCustomKeyStore %s succeeded", endpoint)
		}
		return Exception(err)
	}
	// The reference: an allowed endpoint where nothing listens.
	want := create("ref", "https://127.0.0.1:"+closed)
	if want.Name != "XksProxyUriUnreachableException" {
		t.Fatalf("unreachable proxy: %s: %s", want.Name, want.Message)
	}
	for _, tt := range []struct{ name, endpoint string }{
		{"open loopback port, not listed", "https://127.0.0.1:" + open.port()},
		{"listed name resolving to loopback", "https://xks.corp.example:" + open.port()},
		{"unlisted name", "https://localhost:" + open.port()},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := create("s", tt.endpoint)
			if got.Name != want.Name || got.Message != want.Message {
				t.Fatalf("refused endpoint: %s: %q; unreachable proxy: %s: %q", got.Name, got.Message, want.Name, want.Message)
			}
			st := &keystore.Store{ID: "cks-1234567890abcdef0", Region: "us-east-1", Type: keystore.TypeExternal,
				XKS: &keystore.XKSConfig{Connectivity: keystore.XKSPublic, Endpoint: tt.endpoint, Path: "/kms/xks/v1", AccessKeyID: xksAKID}}
			_, err := ext.Connect(ctx, st, []byte(xksSecret), nil)
			var ce *keystore.ConnectError
			if !errors.As(err, &ce) || ce.Code != "XKS_PROXY_NOT_REACHABLE" {
				t.Fatalf("Connect = %v, want ConnectionErrorCode XKS_PROXY_NOT_REACHABLE", err)
			}
			if !errors.Is(err, netallow.ErrNotAllowed) {
				t.Fatalf("Connect = %v; the cause kmsd logs should say the endpoint is not allowed", err)
			}
		})
	}
	if n := open.accepted.Load(); n != 0 {
		t.Fatalf("kmsd connected %d times to endpoints outside --xks-allowed-endpoints", n)
	}

	// VPC endpoint services are the operator's: their mapped address is
	// dialled whatever the list says.
	vpc := &keystore.Store{ID: "cks-1234567890abcdef1", Region: "us-east-1", Type: keystore.TypeExternal,
		XKS: &keystore.XKSConfig{Connectivity: keystore.XKSVPC, Endpoint: "https://v.example", Path: "/kms/xks/v1",
			VpcServiceName: xksSvc, AccessKeyID: xksAKID}}
	ext.VPCServices[xksSvc] = "127.0.0.1:" + open.port()
	ext.Connect(ctx, vpc, []byte(xksSecret), nil)
	if n := open.accepted.Load(); n == 0 {
		t.Fatalf("the VPC endpoint service's mapped address was not dialled")
	}
}

// freeLoopbackPort is a loopback port nothing listens on.
func freeLoopbackPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, p, _ := net.SplitHostPort(ln.Addr().String())
	ln.Close()
	if _, err := strconv.Atoi(p); err != nil {
		t.Fatal(err)
	}
	return p
}
