package xks

import (
	"io"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/kmsd/kmsd/e2e/e2etest"
)

// TestAllowedEndpoints is the security issue's repro for
// --xks-allowed-endpoints with the aws CLI v2: without it, any caller
// allowed kms:CreateCustomKeyStore can make kmsd dial any host and port and
// tell open ports from closed ones by the answer. With a list that does not
// allow the running xks-proxy, a PUBLIC_ENDPOINT create naming it gets the
// very answer a closed port gets (same exception, same message), and no
// TCP connection reaches it; with kmsd restarted on a list naming its
// address and port, the same create succeeds.
//
// The proxy is reached through a relay that counts accepted connections,
// so the test sees every connection attempt, not only the requests that
// would reach the proxy's access log.
func TestAllowedEndpoints(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	pk := filepath.Join(dir, "pki")
	proxyRun(t, "dev-cert", "--hostname", "localhost,127.0.0.1", "--out-dir", pk)
	keyFile := filepath.Join(dir, "keys.json")
	proxyRun(t, "keys", "create", "--keys-file", keyFile, "--id", "k1", "--kdf-iterations", "2000")
	p := startProxy(t, pk, keyFile)
	r := startRelay(t, p.Addr)
	_, port, _ := net.SplitHostPort(r.addr)
	_, closedPort, _ := net.SplitHostPort(e2etest.FreeAddr(t)) // nothing listens there
	ca := filepath.Join(pk, "ca.pem")
	const path = "/kms/xks/v1"
	proxyURI, closedURI := "https://127.0.0.1:"+port, "https://127.0.0.1:"+closedPort

	// The closed port is allowed (so it is dialled, and refused); the
	// proxy's port on the same address is not.
	k := startKMSD(t, "--xks-ca-bundle", ca, "--xks-health-interval", "0",
		"--xks-allowed-endpoints", "xks.example.com,127.0.0.1:"+closedPort)
	// Names never vouch for loopback addresses, so localhost is refused
	// as well.
	refused := []struct{ name, uri string }{
		{"the proxy by address", proxyURI},
		{"the proxy by name", "https://localhost:" + port},
	}
	calls := [][]string{createArgs(storeReq("closed", "PUBLIC_ENDPOINT", closedURI, path, akid, secret))}
	for i, c := range refused {
		calls = append(calls, createArgs(storeReq("refused-"+strconv.Itoa(i), "PUBLIC_ENDPOINT", c.uri, path, akid, secret)))
	}
	runs := k.cliBatch(calls...)
	closed := runs[0]
	closed.fails(t, "XksProxyUriUnreachableException")
	t.Logf("closed port: %s", strings.TrimSpace(closed.errs))
	for i, c := range refused {
		t.Run(c.name, func(t *testing.T) {
			if got := runs[i+1]; got.code != closed.code || got.errs != closed.errs {
				t.Errorf("%s: exit %d %q; want the closed port's answer", c.uri, got.code, got.errs)
			}
		})
	}
	if n := r.accepted.Load(); n != 0 {
		t.Fatalf("kmsd opened %d connections to the proxy, which --xks-allowed-endpoints does not allow", n)
	}
	if strings.Contains(p.Log.String(), `"xks request"`) {
		t.Fatalf("a request reached the proxy:\n%s", p.Log)
	}
	// The operator still sees why: kmsd's log tells the two apart.
	logged := string(mustRead(t, k.log))
	for what, want := range map[string]string{
		"a dial refused by the closed port":        "dial tcp 127.0.0.1:" + closedPort + ": connect: connection refused",
		"the proxy's address not allowed":          "netallow: destination not allowed: 127.0.0.1:" + port,
		"the proxy's name (localhost) not allowed": "netallow: destination not allowed: localhost:" + port,
	} {
		if !strings.Contains(logged, want) {
			t.Errorf("kmsd's log lacks %s (%q)", what, want)
		}
	}
	k.stop()

	// An address pattern with the proxy's port allows it.
	k = startKMSD(t, "--xks-ca-bundle", ca, "--xks-health-interval", "0", "--xks-allowed-endpoints", "127.0.0.1:"+port)
	id, errs, code := k.createStore(storeReq("allowed", "PUBLIC_ENDPOINT", proxyURI, path, akid, secret))
	if code != 0 || !strings.HasPrefix(id, "cks-") {
		t.Fatalf("create with the proxy allowed: exit %d %q", code, errs)
	}
	if r.accepted.Load() == 0 || !strings.Contains(p.Log.String(), `"xks request"`) {
		t.Fatalf("the create succeeded without reaching the proxy through the relay (%d connections)", r.accepted.Load())
	}
}

// relay is a TCP relay on a free loopback port to a target address that
// counts the connections it accepts.
type relay struct {
	addr     string
	accepted atomic.Int64
}

// startRelay relays to target until the test ends.
func startRelay(t *testing.T, target string) *relay {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &relay{addr: l.Addr().String()}
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	track := func(c net.Conn) {
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			r.accepted.Add(1)
			track(c)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				u, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				track(u)
				defer u.Close()
				go func() { io.Copy(u, c); u.Close() }()
				io.Copy(c, u)
			}()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return r
}
