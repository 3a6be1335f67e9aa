package xksproxy

import (
	"crypto/tls"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmsd/kmsd/e2e/e2etest"
	"github.com/kmsd/kmsd/internal/xks"
	"github.com/kmsd/kmsd/internal/xks/xksserver"
)

// TestMTLS: with a client CA and an expected subject, the handshake succeeds only for
// a certificate from that CA carrying that subject.
func TestMTLS(t *testing.T) {
	dir := t.TempDir()
	const subject = "cks.kms.us-east-1.amazonaws.com"
	good, err := xksserver.NewDevCerts(xksserver.DevCertOptions{Hosts: []string{"localhost", "127.0.0.1"}, ClientCN: subject})
	if err != nil {
		t.Fatal(err)
	}
	if err := good.Write(filepath.Join(dir, "good")); err != nil {
		t.Fatal(err)
	}
	other, _ := xksserver.NewDevCerts(xksserver.DevCertOptions{Hosts: []string{"localhost"}, ClientCN: subject})
	wrongCert, wrongKey, err := good.IssueClient("cks.kms.eu-west-1.amazonaws.com")
	if err != nil {
		t.Fatal(err)
	}
	keys, env := keyFile(t, dir)
	secret := writeFile(t, filepath.Join(dir, "secret"), secretA)
	g := filepath.Join(dir, "good")
	p := start(t, env, "--access-key-id", akidA, "--secret-access-key-file", secret, "--keys-file", keys,
		"--tls-cert", filepath.Join(g, "cert.pem"), "--tls-key", filepath.Join(g, "key.pem"),
		"--tls-client-ca", filepath.Join(g, "ca.pem"), "--tls-client-subject", subject)
	base := "https://localhost:" + p.Port()

	pair := func(cert, key []byte) []tls.Certificate {
		c, err := tls.X509KeyPair(cert, key)
		if err != nil {
			t.Fatal(err)
		}
		return []tls.Certificate{c}
	}
	for _, tc := range []struct {
		name  string
		certs []tls.Certificate
		ok    bool
	}{
		{"right CA and subject", pair(good.ClientCert, good.ClientKey), true},
		{"no client certificate", nil, false},
		{"other CA", pair(other.ClientCert, other.ClientKey), false},
		{"wrong subject", pair(wrongCert, wrongKey), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tlsTo(t, filepath.Join(g, "ca.pem"))
			cfg.Certificates = tc.certs
			_, err := newClient(t, base, akidA, secretA, cfg).health()
			if tc.ok && err != nil {
				t.Fatalf("rejected: %v", err)
			}
			if !tc.ok && err == nil {
				t.Fatal("accepted")
			}
			if !tc.ok && strings.Contains(err.Error(), "errorName") {
				t.Fatalf("reached the API instead of failing the handshake: %v", err)
			}
		})
	}
}

// TestTLSPolicyAndReload: TLS 1.2+ only with the spec's suites, the certificate is
// re-read on SIGHUP, and plain HTTP needs --insecure-http.
func TestTLSPolicyAndReload(t *testing.T) {
	dir := t.TempDir()
	pk := pki(t, dir)
	keys, env := keyFile(t, dir)
	secret := writeFile(t, filepath.Join(dir, "secret"), secretA)
	cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	copyFile(t, filepath.Join(pk, "cert.pem"), cert)
	copyFile(t, filepath.Join(pk, "key.pem"), key)
	p := start(t, env, "--access-key-id", akidA, "--secret-access-key-file", secret, "--keys-file", keys,
		"--tls-cert", cert, "--tls-key", key)
	base := "https://localhost:" + p.Port()
	ca := filepath.Join(pk, "ca.pem")

	for _, tc := range []struct {
		name     string
		min, max uint16
		suites   []uint16
		ok       bool
	}{
		{"TLS 1.3", tls.VersionTLS13, tls.VersionTLS13, nil, true},
		{"TLS 1.2 ECDHE-ECDSA-AES256-GCM", tls.VersionTLS12, tls.VersionTLS12, []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384}, true},
		{"TLS 1.2 AES128 only", tls.VersionTLS12, tls.VersionTLS12, []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}, false},
		{"TLS 1.1", tls.VersionTLS10, tls.VersionTLS11, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tlsTo(t, ca)
			cfg.MinVersion, cfg.MaxVersion, cfg.CipherSuites = tc.min, tc.max, tc.suites
			_, err := newClient(t, base, akidA, secretA, cfg).health()
			if (err == nil) != tc.ok {
				t.Fatalf("ok=%v err=%v", tc.ok, err)
			}
		})
	}
	t.Run("plain HTTP to the TLS port", func(t *testing.T) {
		res, err := http.Post("http://"+p.Addr+"/kms/xks/v1/health", "application/json", strings.NewReader("{}"))
		if err == nil {
			body, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if strings.Contains(string(body), "errorName") {
				t.Fatalf("plain HTTP reached the API: %s", body)
			}
		}
	})
	t.Run("certificate reload", func(t *testing.T) {
		pk2 := filepath.Join(dir, "pki2")
		run(t, nil, "dev-cert", "--hostname", "localhost", "--out-dir", pk2)
		copyFile(t, filepath.Join(pk2, "cert.pem"), cert)
		copyFile(t, filepath.Join(pk2, "key.pem"), key)
		p.HUP(t)
		if _, err := newClient(t, base, akidA, secretA, tlsTo(t, filepath.Join(pk2, "ca.pem"))).health(); err != nil {
			t.Fatalf("new certificate not served: %v", err)
		}
		if _, err := newClient(t, base, akidA, secretA, tlsTo(t, ca)).health(); err == nil {
			t.Fatal("old certificate still served")
		}
	})
	t.Run("insecure HTTP needs the flag", func(t *testing.T) {
		cmd := []string{"serve", "--listen", e2etest.FreeAddr(t), "--access-key-id", akidA, "--secret-access-key-file", secret, "--keys-file", keys}
		out, err := runErr(env, cmd...)
		if err == nil || !strings.Contains(out, "--insecure-http") {
			t.Fatalf("started without TLS: %v %s", err, out)
		}
		ip := start(t, env, "--insecure-http", "--access-key-id", akidA, "--secret-access-key-file", secret, "--keys-file", keys)
		if _, err := newClient(t, "http://"+ip.Addr, akidA, secretA, nil).health(); err != nil {
			t.Fatal(err)
		}
	})
}

// TestCredentialRotation: a second credential is added and the first removed by
// editing the config file and sending SIGHUP, with no restart and no failed request.
func TestCredentialRotation(t *testing.T) {
	dir := t.TempDir()
	pk := pki(t, dir)
	keys, env := keyFile(t, dir)
	writeFile(t, filepath.Join(dir, "a"), secretA)
	writeFile(t, filepath.Join(dir, "b"), secretB)
	cfgPath := filepath.Join(dir, "cfg.toml")
	write := func(creds ...string) {
		c := `[tls]
cert_file = "` + pk + `/cert.pem"
key_file = "` + pk + `/key.pem"
[key_managers.soft]
type = "keyfile"
keys_file = "` + keys + `"
[[key_stores]]
uri_path_prefix = "/rot"
key_manager = "soft"
`
		for _, cr := range creds {
			akid := map[string]string{"a": akidA, "b": akidB}[cr]
			c += "  [[key_stores.credentials]]\n  access_key_id = \"" + akid + "\"\n  secret_access_key_file = \"" + filepath.Join(dir, cr) + "\"\n"
		}
		writeFile(t, cfgPath, c)
	}
	write("a")
	p := start(t, env, "--config", cfgPath)
	base := "https://localhost:" + p.Port() + "/rot"
	tc := tlsTo(t, filepath.Join(pk, "ca.pem"))
	a, b := newClient(t, base, akidA, secretA, tc), newClient(t, base, akidB, secretB, tc)
	check := func(c *client, ok bool) {
		t.Helper()
		_, err := c.encrypt("both", []byte("x"), nil)
		if ok && err != nil {
			t.Fatalf("%s rejected: %v", c.c.AccessKeyID, err)
		}
		if !ok {
			wantErr(t, err, xks.AuthenticationFailedException)
		}
	}
	check(a, true)
	check(b, false)
	write("a", "b")
	p.HUP(t)
	check(a, true)
	check(b, true)
	write("b")
	p.HUP(t)
	check(a, false)
	check(b, true)
	// A broken file is rejected and the running credentials stay.
	writeFile(t, cfgPath, "this is not toml = = =")
	p.HUP(t)
	check(b, true)
	if !strings.Contains(p.Log.String(), "configuration rejected") {
		t.Fatal("bad reload not logged")
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, to, string(b))
}

func runErr(env []string, args ...string) (string, error) {
	done := make(chan struct{})
	var out []byte
	var err error
	go func() {
		cmd := execCmd(env, args...)
		out, err = cmd.CombinedOutput()
		close(done)
	}()
	select {
	case <-done:
		return string(out), err
	case <-time.After(20 * time.Second):
		return "", os.ErrDeadlineExceeded
	}
}
