package xksclient_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/xks"
	"github.com/kmsd/kmsd/internal/xks/keyman/pkcs11/pkcs11test"
	"github.com/kmsd/kmsd/internal/xks/xksclient"
)

const config = `
region = "us-east-1"
health_cache = "1s"

[tls]
cert_file = "PKI/cert.pem"
key_file = "PKI/key.pem"

[key_managers.soft]
type = "keyfile"
keys_file = "DIR/keys.json"
passphrase_env = "XKS_PROXY_KEYS_PASSPHRASE"

[[key_stores]]
uri_path_prefix = "/soft"
key_manager = "soft"
ciphertext_metadata = "a2V5X3ZlcnNpb249MQ=="
  [[key_stores.credentials]]
  access_key_id = "AKID"
  secret_access_key_file = "DIR/secret"

[[key_stores]]
uri_path_prefix = "/authz"
key_manager = "soft"
  [[key_stores.credentials]]
  access_key_id = "AKID"
  secret_access_key_file = "DIR/secret"
  [[key_stores.authorization]]
  name = "only-account-111122223333"
  principals = ["arn:aws:iam::111122223333:*"]
  operations = ["Encrypt", "Decrypt", "GenerateDataKey*", "ReEncrypt", "CreateKey"]
`

// downConfig serves a SoftHSM2 token whose dedicated health key is missing: every
// deep health check fails, so the key manager reports UNAVAILABLE.
const downConfig = `
region = "us-east-1"

[tls]
cert_file = "PKI/cert.pem"
key_file = "PKI/key.pem"

[key_managers.hsm]
type = "pkcs11"
module = "MODULE"
token_label = "xksclient-e2e"
pin_file = "DIR/pin"
health_key_label = "no-such-health-key"

[[key_stores]]
uri_path_prefix = "/down"
key_manager = "hsm"
  [[key_stores.credentials]]
  access_key_id = "AKID"
  secret_access_key_file = "DIR/secret"
`

var meta = xksclient.Meta{Principal: "arn:aws:iam::111122223333:user/alice", RequestID: "e2e-req",
	KeyARN: "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"}

// outcome is what KMS would make of one failure.
type outcome struct{ code, store, createKey, crypto string }

func mapped(err error) outcome {
	return outcome{xksclient.ConnectionErrorCode(err), xksclient.StoreException(err),
		xksclient.CreateKeyException(err), xksclient.CryptoException(err)}
}

func want(t *testing.T, err error, kind xksclient.Kind, w outcome) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %v %+v", kind, w)
	}
	if got := xksclient.KindOf(err); got != kind {
		t.Fatalf("kind %v, want %v (err %v)", got, kind, err)
	}
	if got := mapped(err); got != w {
		t.Fatalf("mapped to %+v, want %+v (err %v)", got, w, err)
	}
	t.Logf("%v → %+v", err, w)
}

// TestClientAgainstProxy drives every client method through the real xks-proxy and
// causes each failure of the task for real.
func TestClientAgainstProxy(t *testing.T) {
	dir := t.TempDir()
	pk := pki(t, filepath.Join(dir, "pki"), "localhost,127.0.0.1,xks.example.test", "")
	otherCA := read(t, filepath.Join(pki(t, filepath.Join(dir, "other"), "localhost,127.0.0.1", ""), "ca.pem"))
	ca := read(t, filepath.Join(pk, "ca.pem"))

	// Key file: "both" for round trips, "off" disabled in the key manager.
	keys := filepath.Join(dir, "keys.json")
	kenv := []string{"XKS_PROXY_KEYS_PASSPHRASE=" + pass}
	run(t, kenv, "keys", "create", "--keys-file", keys, "--id", "both", "--kdf-iterations", "2000")
	run(t, kenv, "keys", "create", "--keys-file", keys, "--id", "off")
	run(t, kenv, "keys", "disable", "--keys-file", keys, "--id", "off")

	write(t, filepath.Join(dir, "secret"), secret)
	cfg := write(t, filepath.Join(dir, "xks-proxy.toml"),
		strings.NewReplacer("PKI", pk, "DIR", dir, "AKID", akid).Replace(config))
	p := start(t, kenv, "--config", cfg)

	// Calls to the real proxy get a generous budget so that a loaded CI machine (-race,
	// packages in parallel) cannot turn them into timeouts; the 250 ms default is
	// exercised by "proxy slower than 250 ms".
	base := xksclient.Config{Endpoint: "https://localhost:" + p.Port(), URIPath: "/soft/kms/xks/v1",
		AccessKeyID: akid, Secret: secret, Region: "us-east-1", CABundle: ca, Timeout: 5 * time.Second}
	client := func(t *testing.T, edit func(*xksclient.Config)) *xksclient.Client {
		t.Helper()
		c := base
		if edit != nil {
			edit(&c)
		}
		cl, err := xksclient.New(c)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(cl.CloseIdleConnections)
		return cl
	}
	ctx := context.Background()
	soft := client(t, nil)

	t.Run("health", func(t *testing.T) {
		h, err := soft.Health(ctx, xksclient.Meta{Operation: xksclient.OpConnectCustomKeyStore})
		if err != nil || h.XksProxyVendor != "kmsd" || h.EkmFleetDetails[0].HealthStatus != xks.HealthActive {
			t.Fatalf("health = %+v, %v", h, err)
		}
	})
	t.Run("metadata", func(t *testing.T) {
		m, err := soft.Metadata(ctx, "both", meta)
		if err != nil || m.KeySpec != xks.KeySpecAES256 || m.KeyStatus != xks.StatusEnabled || xksclient.CheckKey(m) != nil {
			t.Fatalf("metadata = %+v, %v", m, err)
		}
		m, err = soft.Metadata(ctx, "off", meta)
		if err != nil || m.KeyStatus != xks.StatusDisabled {
			t.Fatalf("metadata of the disabled key = %+v, %v", m, err)
		}
		if exc := xksclient.CreateKeyException(xksclient.CheckKey(m)); exc != xksclient.ExcXksKeyInvalidConfiguration {
			t.Fatalf("CreateKey over a disabled external key: %s", exc)
		}
		_, err = soft.Metadata(ctx, "absent", meta)
		want(t, err, xksclient.KindProxy, outcome{xksclient.CodeInvalidResponse, xksclient.ExcProxyInvalidResponse,
			xksclient.ExcXksKeyNotFound, xksclient.ExcInvalidState})
	})
	t.Run("encrypt decrypt with AAD", func(t *testing.T) {
		pt, aad := bytes.Repeat([]byte("inner"), 800), []byte("blob header and encryption context")
		e, err := soft.Encrypt(ctx, "both", xksclient.EncryptInput{Plaintext: pt, AAD: aad}, meta)
		if err != nil {
			t.Fatal(err)
		}
		if len(e.Ciphertext) != len(pt) || len(e.IV) != 12 || len(e.Tag) != 16 || string(e.Metadata) != "key_version=1" || len(e.CDIV) != 32 {
			t.Fatalf("encrypt output: ct %d iv %d tag %d meta %q cdiv %d", len(e.Ciphertext), len(e.IV), len(e.Tag), e.Metadata, len(e.CDIV))
		}
		in := xksclient.DecryptInput{Ciphertext: e.Ciphertext, IV: e.IV, Tag: e.Tag, AAD: aad, Metadata: e.Metadata}
		got, err := soft.Decrypt(ctx, "both", in, meta)
		if err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("decrypt: %v", err)
		}
		// Another AAD: the proxy rejects the ciphertext; a crypto operation reports it
		// as KMSInvalidStateException (§2.4).
		in.AAD = []byte("other context")
		_, err = soft.Decrypt(ctx, "both", in, meta)
		want(t, err, xksclient.KindProxy, outcome{xksclient.CodeInvalidResponse, xksclient.ExcProxyInvalidResponse,
			xksclient.ExcCustomKeyStoreInvalidState, xksclient.ExcInvalidState})
		if xksclient.ProxyErrorName(err) != xks.InvalidCiphertextException {
			t.Fatalf("proxy error %q", xksclient.ProxyErrorName(err))
		}
	})
	t.Run("address map", func(t *testing.T) {
		c := client(t, func(c *xksclient.Config) {
			c.Endpoint = "https://xks.example.test:" + p.Port()
			c.Addresses = map[string]string{"xks.example.test": "127.0.0.1"}
		})
		if _, err := c.Health(ctx, xksclient.Meta{}); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("disabled key on encrypt", func(t *testing.T) {
		_, err := soft.Encrypt(ctx, "off", xksclient.EncryptInput{Plaintext: []byte("x")}, meta)
		want(t, err, xksclient.KindProxy, outcome{xksclient.CodeInvalidConfiguration, xksclient.ExcProxyInvalidConfiguration,
			xksclient.ExcXksKeyInvalidConfiguration, xksclient.ExcInvalidState})
		if xksclient.ProxyErrorName(err) != xks.InvalidStateException {
			t.Fatalf("proxy error %q", xksclient.ProxyErrorName(err))
		}
	})
	t.Run("wrong secret", func(t *testing.T) {
		c := client(t, func(c *xksclient.Config) { c.Secret = strings.Replace(secret, "Please", "Pleeze", 1) })
		_, err := c.Health(ctx, xksclient.Meta{Operation: xksclient.OpCreateCustomKeyStore})
		want(t, err, xksclient.KindProxy, outcome{xksclient.CodeInvalidCredentials, xksclient.ExcProxyIncorrectCredential,
			xksclient.ExcCustomKeyStoreInvalidState, xksclient.ExcInvalidState})
	})
	t.Run("authorization rule refuses the principal", func(t *testing.T) {
		c := client(t, func(c *xksclient.Config) { c.URIPath = "/authz/kms/xks/v1" })
		if _, err := c.Encrypt(ctx, "both", xksclient.EncryptInput{Plaintext: []byte("x")}, meta); err != nil {
			t.Fatalf("allowed principal refused: %v", err)
		}
		intruder := meta
		intruder.Principal = "arn:aws:iam::999999999999:role/intruder"
		_, err := c.Encrypt(ctx, "both", xksclient.EncryptInput{Plaintext: []byte("x")}, intruder)
		want(t, err, xksclient.KindProxy, outcome{xksclient.CodeAccessDenied, xksclient.ExcProxyInvalidConfiguration,
			xksclient.ExcCustomKeyStoreInvalidState, xksclient.ExcInvalidState})
		if _, err := c.Health(ctx, xksclient.Meta{}); err != nil {
			t.Fatalf("health is exempt from authorization: %v", err)
		}
	})
	t.Run("wrong path prefix", func(t *testing.T) {
		c := client(t, func(c *xksclient.Config) { c.URIPath = "/nope/kms/xks/v1" })
		_, err := c.Health(ctx, xksclient.Meta{})
		want(t, err, xksclient.KindProxy, outcome{xksclient.CodeInvalidConfiguration, xksclient.ExcProxyInvalidConfiguration,
			xksclient.ExcCustomKeyStoreInvalidState, xksclient.ExcInvalidState})
	})
	t.Run("untrusted CA", func(t *testing.T) {
		c := client(t, func(c *xksclient.Config) { c.CABundle = otherCA })
		_, err := c.Health(ctx, xksclient.Meta{})
		want(t, err, xksclient.KindTLS, outcome{xksclient.CodeInvalidTLSConfiguration, xksclient.ExcProxyUriUnreachable,
			xksclient.ExcCustomKeyStoreInvalidState, xksclient.ExcInvalidState})
	})
	t.Run("certificate for another host name", func(t *testing.T) {
		c := client(t, func(c *xksclient.Config) {
			c.Endpoint = "https://other.example.test:" + p.Port()
			c.Addresses = map[string]string{"other.example.test": "127.0.0.1"}
		})
		_, err := c.Health(ctx, xksclient.Meta{})
		want(t, err, xksclient.KindTLS, outcome{xksclient.CodeInvalidTLSConfiguration, xksclient.ExcProxyUriUnreachable,
			xksclient.ExcCustomKeyStoreInvalidState, xksclient.ExcInvalidState})
	})
	t.Run("garbage answer", func(t *testing.T) {
		srv := tlsServer(t, func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"xksProxyFleetSize":"plenty","ekmFleetDetails":{}}`)
		})
		_, err := srv.client(t).Health(ctx, xksclient.Meta{})
		want(t, err, xksclient.KindInvalidResponse, outcome{xksclient.CodeInvalidResponse, xksclient.ExcProxyInvalidResponse,
			xksclient.ExcCustomKeyStoreInvalidState, xksclient.ExcInvalidState})
	})
	t.Run("proxy slower than 250 ms", func(t *testing.T) {
		srv := tlsServer(t, func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-time.After(400 * time.Millisecond):
			case <-r.Context().Done():
			}
		})
		start := time.Now()
		_, err := srv.client(t).Health(ctx, xksclient.Meta{})
		want(t, err, xksclient.KindTimeout, outcome{xksclient.CodeTimedOut, xksclient.ExcProxyUriUnreachable,
			xksclient.ExcCustomKeyStoreInvalidState, xksclient.ExcInvalidState})
		if d := time.Since(start); d < xksclient.DefaultTimeout || d > 2*time.Second {
			t.Fatalf("gave up after %v", d)
		}
	})
}

// TestEveryKeyManagerUnavailable: the proxy answers GetHealthStatus with its only
// key manager UNAVAILABLE (a SoftHSM2 token whose health key is missing; a key file
// cannot be made UNAVAILABLE from outside: unreadable, it is DEGRADED while its keys
// stay in memory). KMS treats that as an unreachable proxy (spec §1.8, §2.4, §8.3).
func TestEveryKeyManagerUnavailable(t *testing.T) {
	dir := t.TempDir()
	pk := pki(t, filepath.Join(dir, "pki"), "localhost,127.0.0.1", "")
	conf := pkcs11test.NewConf(t, dir) // skips in a build without cgo
	tk := pkcs11test.NewToken(t, conf, "xksclient-e2e", "4321")
	write(t, filepath.Join(dir, "pin"), "4321\n")
	write(t, filepath.Join(dir, "secret"), secret)
	cfg := write(t, filepath.Join(dir, "xks-proxy.toml"),
		strings.NewReplacer("PKI", pk, "DIR", dir, "MODULE", tk.Module, "AKID", akid).Replace(downConfig))
	p := start(t, []string{"SOFTHSM2_CONF=" + conf}, "--config", cfg)
	c, err := xksclient.New(xksclient.Config{Endpoint: "https://localhost:" + p.Port(), URIPath: "/down/kms/xks/v1",
		AccessKeyID: akid, Secret: secret, Region: "us-east-1", CABundle: read(t, filepath.Join(pk, "ca.pem")),
		Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseIdleConnections()
	h, err := c.Health(context.Background(), xksclient.Meta{Operation: xksclient.OpConnectCustomKeyStore})
	want(t, err, xksclient.KindEKMUnavailable, outcome{xksclient.CodeNotReachable, xksclient.ExcProxyUriUnreachable,
		xksclient.ExcCustomKeyStoreInvalidState, xksclient.ExcInvalidState})
	if h == nil || h.EkmFleetDetails[0].HealthStatus != xks.HealthUnavailable {
		t.Fatalf("health answer %+v", h)
	}
}

// TestMTLSAndStoppedProxy: a proxy requiring mTLS accepts the configured client
// certificate and fails the handshake without one; once stopped, it is unreachable
// even for a client holding a pooled connection to it.
func TestMTLSAndStoppedProxy(t *testing.T) {
	dir := t.TempDir()
	const subject = "cks.kms.us-east-1.amazonaws.com"
	pk := pki(t, filepath.Join(dir, "pki"), "localhost,127.0.0.1", subject)
	keys := filepath.Join(dir, "keys.json")
	kenv := []string{"XKS_PROXY_KEYS_PASSPHRASE=" + pass}
	run(t, kenv, "keys", "create", "--keys-file", keys, "--id", "k", "--kdf-iterations", "2000")
	p := start(t, kenv, "--access-key-id", akid, "--secret-access-key-file", write(t, filepath.Join(dir, "secret"), secret),
		"--keys-file", keys, "--tls-cert", filepath.Join(pk, "cert.pem"), "--tls-key", filepath.Join(pk, "key.pem"),
		"--tls-client-ca", filepath.Join(pk, "ca.pem"), "--tls-client-subject", subject)
	cert, err := tls.LoadX509KeyPair(filepath.Join(pk, "client.pem"), filepath.Join(pk, "client-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := xksclient.Config{Endpoint: "https://localhost:" + p.Port(), URIPath: "/kms/xks/v1", AccessKeyID: akid,
		Secret: secret, Region: "us-east-1", CABundle: read(t, filepath.Join(pk, "ca.pem")), ClientCert: &cert,
		Timeout: 10 * time.Second}
	c, err := xksclient.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseIdleConnections()
	ctx := context.Background()
	if _, err := c.Health(ctx, xksclient.Meta{}); err != nil {
		t.Fatalf("with the client certificate: %v", err)
	}
	cfg.ClientCert = nil
	anon, err := xksclient.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, err = anon.Health(ctx, xksclient.Meta{})
	want(t, err, xksclient.KindTLS, outcome{xksclient.CodeInvalidTLSConfiguration, xksclient.ExcProxyUriUnreachable,
		xksclient.ExcCustomKeyStoreInvalidState, xksclient.ExcInvalidState})

	p.Stop()
	_, err = c.Health(ctx, xksclient.Meta{})
	want(t, err, xksclient.KindUnreachable, outcome{xksclient.CodeNotReachable, xksclient.ExcProxyUriUnreachable,
		xksclient.ExcCustomKeyStoreInvalidState, xksclient.ExcInvalidState})
	_, err = c.Encrypt(ctx, "k", xksclient.EncryptInput{Plaintext: []byte("x")}, meta)
	if xksclient.CryptoException(err) != xksclient.ExcInvalidState || xksclient.Message(err) == "" {
		t.Fatalf("encrypt against a stopped proxy: %v", err)
	}
}

// testServer is an HTTPS server standing in for a misbehaving proxy.
type testServer struct{ *httptest.Server }

func tlsServer(t *testing.T, h http.HandlerFunc) testServer {
	srv := httptest.NewTLSServer(h)
	t.Cleanup(srv.Close)
	return testServer{srv}
}

// client returns a client trusting the server's certificate, with the default budget.
func (s testServer) client(t *testing.T) *xksclient.Client {
	t.Helper()
	_, port, _ := net.SplitHostPort(s.Listener.Addr().String())
	c, err := xksclient.New(xksclient.Config{Endpoint: "https://127.0.0.1:" + port, URIPath: "/kms/xks/v1",
		AccessKeyID: akid, Secret: secret, Region: "us-east-1",
		CABundle: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.Certificate().Raw})})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.CloseIdleConnections)
	return c
}
