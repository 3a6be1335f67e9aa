package xks

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/xks/keyman/pkcs11/pkcs11test"
)

// Misbehaving XKS proxies for the connection error codes kmsd can only see
// from a proxy that is not xks-proxy: each is an HTTPS server run by the
// test on a free 127.0.0.1 port, with a certificate of the dev-cert CA that
// kmsd trusts (pki/cert.pem), stopped when the test ends.

// tlsListen listens on a free loopback port with pki's server certificate.
func tlsListen(t *testing.T, pki string) net.Listener {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(filepath.Join(pki, "cert.pem"), filepath.Join(pki, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// serveHTTPS serves h over TLS until the test ends; it returns the address.
func serveHTTPS(t *testing.T, pki string, h http.HandlerFunc) string {
	t.Helper()
	l := tlsListen(t, pki)
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

// garbageProxy answers every request 200 with a body that is not JSON.
func garbageProxy(t *testing.T, pki string) string {
	return serveHTTPS(t, pki, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/html")
		io.WriteString(w, "<html><body>It works!</body></html>\n")
	})
}

// healthyAnswer is a well-formed GetHealthStatus answer (one ACTIVE EKM).
const healthyAnswer = `{"xksProxyFleetSize":1,"xksProxyVendor":"e2e","xksProxyModel":"slow","ekmVendor":"e2e",` +
	`"ekmFleetDetails":[{"id":"ekm-1","model":"e2e","healthStatus":"ACTIVE"}]}`

// slowProxy answers every request with a valid health answer, but only
// after delay — longer than the 250 ms KMS gives a proxy call.
func slowProxy(t *testing.T, pki string, delay time.Duration) string {
	return serveHTTPS(t, pki, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		select {
		case <-time.After(delay):
		case <-r.Context().Done(): // kmsd gave up
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, healthyAnswer)
	})
}

// dropProxy completes the TLS handshake, reads the whole request and closes
// the connection without answering: a connection that breaks after it was
// made (not a dial or handshake failure).
func dropProxy(t *testing.T, pki string) string {
	t.Helper()
	l := tlsListen(t, pki)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				if req, err := http.ReadRequest(bufio.NewReader(c)); err == nil {
					io.Copy(io.Discard, req.Body)
				}
			}()
		}
	}()
	t.Cleanup(func() { l.Close(); wg.Wait() })
	return l.Addr().String()
}

// switchProxy is an HTTPS server of the test in front of a real
// xks-proxy at upstream: in mode "pass" it forwards every request as it
// came (Host header included, so kmsd's SigV4 signature still holds), in
// the other modes it misbehaves as a broken proxy would while a store on
// it is CONNECTED — "garbage": 200 with an HTML page; "html500": 500 with
// an HTML page (an error body that is not the proxy API's JSON); "slow":
// no answer before kmsd's 250 ms are up; "drop": the connection closed
// after the request was read.
type switchProxy struct {
	addr string
	mode atomic.Value // string
}

func newSwitchProxy(t *testing.T, pki, upstream string) *switchProxy {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(mustRead(t, filepath.Join(pki, "ca.pem"))) {
		t.Fatal("no CA certificate in " + pki)
	}
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "https", Host: upstream})
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
	t.Cleanup(tr.CloseIdleConnections)
	rp.Transport = tr
	s := &switchProxy{}
	s.set("pass")
	s.addr = serveHTTPS(t, pki, func(w http.ResponseWriter, r *http.Request) {
		switch s.mode.Load() {
		case "pass":
			rp.ServeHTTP(w, r)
			return
		case "garbage", "html500":
			io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "text/html")
			if s.mode.Load() == "html500" {
				w.WriteHeader(http.StatusInternalServerError)
			}
			io.WriteString(w, "<html><body>Bad gateway, or so</body></html>\n")
		case "slow":
			io.Copy(io.Discard, r.Body)
			select {
			case <-time.After(5 * time.Second):
			case <-r.Context().Done(): // kmsd gave up
			}
		case "drop":
			io.Copy(io.Discard, r.Body)
			if c, _, err := w.(http.Hijacker).Hijack(); err == nil {
				c.Close()
			}
		}
	})
	return s
}

// set switches the proxy's behaviour for the requests that follow.
func (s *switchProxy) set(mode string) { s.mode.Store(mode) }

func (s *switchProxy) port() string { _, port, _ := net.SplitHostPort(s.addr); return port }

// unavailableProxy starts xks-proxy on a fresh SoftHSM2 token whose
// configured health key label does not exist: every deep health check
// fails, so its only key manager reports UNAVAILABLE. The key store is at
// /kms/xks/v1 with the test credential. SOFTHSM2_CONF is given to the
// proxy only, so the test may run in parallel.
func unavailableProxy(t *testing.T, dir, pki string) *proxy {
	t.Helper()
	tokens := filepath.Join(dir, "tokens")
	if err := os.MkdirAll(tokens, 0o700); err != nil {
		t.Fatal(err)
	}
	conf := writeFile(t, filepath.Join(dir, "softhsm2.conf"),
		"directories.tokendir = "+tokens+"\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n")
	tk := pkcs11test.NewToken(t, conf, "kmsd-xks-down", "4321") // skips only without cgo
	cfg := strings.NewReplacer("PKI", pki, "MODULE", tk.Module, "PIN", writeFile(t, filepath.Join(dir, "pin"), "4321\n"),
		"SECRET", writeFile(t, filepath.Join(dir, "secret"), secret), "AKID", akid).Replace(`
region = "us-east-1"
[tls]
cert_file = "PKI/cert.pem"
key_file = "PKI/key.pem"
[key_managers.hsm]
type = "pkcs11"
module = "MODULE"
token_label = "kmsd-xks-down"
pin_file = "PIN"
health_key_label = "no-such-health-key"
[[key_stores]]
uri_path_prefix = ""
key_manager = "hsm"
  [[key_stores.credentials]]
  access_key_id = "AKID"
  secret_access_key_file = "SECRET"
`)
	return startProxyArgs(t, []string{"SOFTHSM2_CONF=" + conf}, "--config", writeFile(t, filepath.Join(dir, "xks-proxy.toml"), cfg))
}

func writeFile(t *testing.T, path, content string) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
