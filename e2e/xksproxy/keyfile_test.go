package xksproxy

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/kmsd/kmsd/e2e/e2etest"
	"github.com/kmsd/kmsd/internal/xks"
)

// TestKeyFileFromFlags runs a single key store from flags alone over the software key
// file: every API, key usage variants, the key CLI with disable/enable picked up on
// SIGHUP, the LB health path, metrics and the access log.
func TestKeyFileFromFlags(t *testing.T) {
	dir := t.TempDir()
	pk := pki(t, dir)
	keys, env := keyFile(t, dir)
	secret := writeFile(t, filepath.Join(dir, "secret"), secretA+"\n")
	healthAddr, metricsAddr := e2etest.FreeAddr(t), e2etest.FreeAddr(t)
	p := start(t, env, "--uri-path-prefix", "/tenant-a", "--access-key-id", akidA, "--secret-access-key-file", secret,
		"--tls-cert", filepath.Join(pk, "cert.pem"), "--tls-key", filepath.Join(pk, "key.pem"), "--keys-file", keys,
		"--health-listen", healthAddr, "--metrics-listen", metricsAddr)
	tc := tlsTo(t, filepath.Join(pk, "ca.pem"))
	c := newClient(t, "https://localhost:"+p.Port()+"/tenant-a", akidA, secretA, tc)

	list := run(t, env, "keys", "list", "--keys-file", keys)
	for _, want := range []string{"both", "DECRYPT,ENCRYPT", "enc ", "dec ", "none", "NONE", "ENABLED"} {
		if !strings.Contains(list, want) {
			t.Fatalf("keys list lacks %q:\n%s", want, list)
		}
	}

	t.Run("health", func(t *testing.T) {
		h, err := c.health()
		if err != nil || h.XksProxyFleetSize != 1 || h.EkmVendor == "" || len(h.EkmFleetDetails) != 1 ||
			h.EkmFleetDetails[0].HealthStatus != xks.HealthActive {
			t.Fatalf("health = %+v, %v", h, err)
		}
	})
	t.Run("metadata", func(t *testing.T) {
		for id, usage := range map[string][]string{"both": {"DECRYPT", "ENCRYPT"}, "enc": {"ENCRYPT"}, "dec": {"DECRYPT"}, "none": {}} {
			m, err := c.keyMetadata(id)
			if err != nil || m.KeySpec != "AES_256" || m.KeyStatus != "ENABLED" || !slices.Equal(m.KeyUsage, usage) {
				t.Errorf("metadata %s = %+v, %v", id, m, err)
			}
		}
		_, err := c.keyMetadata("absent")
		wantErr(t, err, xks.KeyNotFoundException)
	})
	t.Run("round trip", func(t *testing.T) { roundTrip(t, c, "both", nil) })
	t.Run("vectors", func(t *testing.T) { vectors(t, c, "vector") })
	t.Run("usage", func(t *testing.T) {
		_, err := c.encrypt("dec", []byte("x"), nil)
		wantErr(t, err, xks.InvalidKeyUsageException)
		_, err = c.encrypt("none", []byte("x"), nil)
		wantErr(t, err, xks.InvalidKeyUsageException)
		encryptOnly(t, c, "enc")
	})
	t.Run("disable and enable", func(t *testing.T) {
		e, err := c.encrypt("both", []byte("keep"), nil)
		if err != nil {
			t.Fatal(err)
		}
		run(t, env, "keys", "disable", "--keys-file", keys, "--id", "both")
		p.HUP(t)
		m, _ := c.keyMetadata("both")
		if m.KeyStatus != "DISABLED" {
			t.Fatalf("after disable: %+v", m)
		}
		_, err = c.encrypt("both", []byte("x"), nil)
		wantErr(t, err, xks.InvalidStateException)
		_, err = c.decrypt("both", e, nil)
		wantErr(t, err, xks.InvalidStateException)
		run(t, env, "keys", "enable", "--keys-file", keys, "--id", "both")
		p.HUP(t)
		if got, err := c.decrypt("both", e, nil); err != nil || string(got) != "keep" {
			t.Fatalf("after enable: %q %v", got, err)
		}
	})
	t.Run("errors", func(t *testing.T) {
		other := newClient(t, "https://localhost:"+p.Port()+"/tenant-b", akidA, secretA, tc)
		_, err := other.health()
		wantErr(t, err, xks.InvalidURIPathException)
		unsigned := newClient(t, "https://localhost:"+p.Port()+"/tenant-b", akidA, "wrong-but-long-enough-secret-wrong-but-long-enough", tc)
		_, err = unsigned.health() // unknown prefix wins over a bad signature
		wantErr(t, err, xks.InvalidURIPathException)
		bad := newClient(t, c.c.BaseURL, akidA, secretB, tc)
		_, err = bad.health()
		wantErr(t, err, xks.AuthenticationFailedException)
		err = c.call("/health", map[string]any{"requestMetadata": map[string]any{"kmsOperation": "KmsHealthCheck"}}, &struct{}{})
		wantErr(t, err, xks.ValidationException)
		_, err = c.encrypt("both", make([]byte, 9000), nil)
		wantErr(t, err, xks.UnsupportedOperationException)
		res, err := c.c.HTTP.Get(c.c.BaseURL + "/kms/xks/v1/keys/both/encrypt")
		if err != nil || res.StatusCode != http.StatusMethodNotAllowed {
			t.Fatalf("GET: %v %v", res, err)
		}
		res.Body.Close()
	})
	t.Run("lb health and metrics", func(t *testing.T) {
		for url, want := range map[string]string{
			"http://" + healthAddr + "/ping":                            "pong",
			"http://" + healthAddr + "/healthz":                         `"status":"ok"`,
			"http://" + metricsAddr + "/metrics":                        `xks_proxy_requests_total{operation="encrypt",outcome="OK",prefix="/tenant-a"}`,
			c.c.BaseURL[:strings.LastIndex(c.c.BaseURL, "/")] + "/ping": "pong",
		} {
			res, err := c.c.HTTP.Get(url)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode != 200 || !strings.Contains(string(body), want) {
				t.Errorf("GET %s = %d, lacks %q", url, res.StatusCode, want)
			}
		}
	})
	t.Run("access log", func(t *testing.T) {
		log := p.Log.String()
		found := false
		for _, line := range strings.Split(log, "\n") {
			var rec map[string]any
			if json.Unmarshal([]byte(line), &rec) != nil || rec["msg"] != "xks request" {
				continue
			}
			if rec["kmsRequestId"] == "bench" && rec["operation"] == "encrypt" && rec["principal"] != nil && rec["latency_ms"] != nil && rec["outcome"] == "OK" {
				found = true
			}
		}
		if !found {
			t.Fatal("no structured access log line with kmsRequestId, principal, outcome and latency")
		}
		pt := xks.Blob(bytes.Repeat([]byte("p"), 4300))
		enc, _ := pt.MarshalJSON()
		if strings.Contains(log, string(enc[1:40])) || strings.Contains(log, "a2VlcA==") {
			t.Fatal("plaintext in the log")
		}
	})
}
