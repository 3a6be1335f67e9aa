// Package xksproxy holds end-to-end tests of the xks-proxy binary: the real program
// is built once, started on loopback ports over HTTPS against SoftHSM2 tokens and
// software key files, and driven by a Go client, curl --aws-sigv4 and its own bench.
// Run e2e/xksproxy/deps.sh first to install SoftHSM2, OpenSC and curl.
package xksproxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmsd/kmsd/e2e/e2etest"
	"github.com/kmsd/kmsd/internal/xks"
	"github.com/kmsd/kmsd/internal/xks/xksbench"
)

var binPath string

func TestMain(m *testing.M) { e2etest.Main(m, map[string]*string{"xks-proxy": &binPath}) }

const (
	akidA   = "AKIDAAAAAAAAAAAAAAAAAAAA"
	secretA = "PleaseReplaceThisWithSomeSecretOfLength43To64"
	akidB   = "AKIDBBBBBBBBBBBBBBBBBBBB"
	secretB = "AnotherSecretThatIsLongEnoughToBeAcceptedHere=="
	pass    = "e2e key file passphrase"
)

// run runs the binary to completion.
func run(t *testing.T, env []string, args ...string) string {
	t.Helper()
	cmd := exec.Command(binPath, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("xks-proxy %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// proxy is a running xks-proxy serve.
type proxy = e2etest.Proxy

// start runs `xks-proxy serve` with args plus --listen on a free loopback port, waits
// until it accepts connections, and stops it (by pid) when the test ends.
func start(t *testing.T, env []string, args ...string) *proxy {
	t.Helper()
	return e2etest.StartProxy(t, binPath, env, args...)
}

// pki writes a development PKI with the binary's dev-cert command.
func pki(t *testing.T, dir string) string {
	t.Helper()
	out := filepath.Join(dir, "pki")
	run(t, nil, "dev-cert", "--hostname", "localhost,127.0.0.1", "--out-dir", out)
	for _, f := range []string{"ca.pem", "cert.pem", "key.pem"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func tlsTo(t *testing.T, caFile string) *tls.Config {
	t.Helper()
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
}

func writeFile(t *testing.T, path, content string) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// keyFile creates a software key file with the binary's keys command.
func keyFile(t *testing.T, dir string) (path string, env []string) {
	t.Helper()
	path = filepath.Join(dir, "keys.json")
	env = []string{"XKS_PROXY_KEYS_PASSPHRASE=" + pass}
	vec := writeFile(t, filepath.Join(dir, "vector.hex"), "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n")
	for _, k := range [][]string{
		{"--id", "both", "--kdf-iterations", "2000"},
		{"--id", "enc", "--usage", "ENCRYPT"},
		{"--id", "dec", "--usage", "DECRYPT"},
		{"--id", "none", "--usage", "NONE"},
		{"--id", "vector", "--material-file", vec},
	} {
		run(t, env, append([]string{"keys", "create", "--keys-file", path}, k...)...)
	}
	return path, env
}

// client is a Go XKS client for one key store.
type client struct {
	t *testing.T
	c *xksbench.Client
}

func newClient(t *testing.T, base, akid, secret string, tc *tls.Config) *client {
	return &client{t: t, c: xksbench.NewClient(base, akid, secret, "us-east-1", tc, 4)}
}

func (c *client) call(path string, req, resp any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return c.c.Call(ctx, path, req, resp)
}

func metadata(op string) *xks.RequestMetadata { return xksbench.Metadata(op) }

func (c *client) health() (xks.HealthResponse, error) {
	var h xks.HealthResponse
	err := c.call("/health", &xks.HealthRequest{RequestMetadata: &xks.RequestMetadata{KMSRequestID: "hc-1", KMSOperation: "KmsHealthCheck"}}, &h)
	return h, err
}

func (c *client) keyMetadata(id string) (xks.MetadataResponse, error) {
	var m xks.MetadataResponse
	err := c.call("/keys/"+id+"/metadata", &xks.MetadataRequest{RequestMetadata: metadata("CreateKey")}, &m)
	return m, err
}

// encrypt asks for a CDIV, as KMS does.
func (c *client) encrypt(id string, pt, aad []byte) (xks.EncryptResponse, error) {
	return c.encryptCDIV(id, pt, aad, "SHA_256")
}

// encryptCDIV is encrypt with ciphertextDataIntegrityValueAlgorithm alg
// ("" for none).
func (c *client) encryptCDIV(id string, pt, aad []byte, alg string) (xks.EncryptResponse, error) {
	var r xks.EncryptResponse
	err := c.call("/keys/"+id+"/encrypt", &xks.EncryptRequest{RequestMetadata: metadata("Encrypt"), Plaintext: pt,
		EncryptionAlgorithm: "AES_GCM", AdditionalAuthenticatedData: aad, CiphertextDataIntegrityValueAlgorithm: alg}, &r)
	return r, err
}

// encryptOnly checks what an encrypt-only key does: with a CDIV asked for,
// with and without AAD, InvalidKeyUsageException (no trial decrypt can back
// the CDIV); without one, a ciphertext that the key then cannot decrypt.
func encryptOnly(t *testing.T, c *client, id string) {
	t.Helper()
	for _, aad := range [][]byte{nil, []byte("project=nile")} {
		_, err := c.encrypt(id, []byte("x"), aad)
		wantErr(t, err, xks.InvalidKeyUsageException)
	}
	e, err := c.encryptCDIV(id, []byte("x"), []byte("aad"), "")
	if err != nil {
		t.Fatalf("encrypt-only key without a CDIV: %v", err)
	}
	if e.CiphertextDataIntegrityValue != nil {
		t.Fatal("a CDIV nobody asked for")
	}
	_, err = c.decrypt(id, e, []byte("aad"))
	wantErr(t, err, xks.InvalidKeyUsageException)
}

func (c *client) decrypt(id string, e xks.EncryptResponse, aad []byte) ([]byte, error) {
	var r xks.DecryptResponse
	err := c.call("/keys/"+id+"/decrypt", &xks.DecryptRequest{RequestMetadata: metadata("Decrypt"), Ciphertext: e.Ciphertext,
		EncryptionAlgorithm: "AES_GCM", InitializationVector: e.InitializationVector, AuthenticationTag: e.AuthenticationTag,
		AdditionalAuthenticatedData: aad, CiphertextMetadata: e.CiphertextMetadata}, &r)
	return r.Plaintext, err
}

// wantErr checks that err is the XKS error name with its spec status.
func wantErr(t *testing.T, err error, name string) {
	t.Helper()
	var ae *xksbench.APIError
	if !errors.As(err, &ae) {
		t.Fatalf("err = %v, want %s", err, name)
	}
	if ae.ErrorName != name || ae.Status != xks.Status(name) {
		t.Fatalf("got %d %s (%s), want %d %s", ae.Status, ae.ErrorName, ae.ErrorMessage, xks.Status(name), name)
	}
}

// roundTrip encrypts with AAD, checks shapes and the CDIV, and decrypts.
func roundTrip(t *testing.T, c *client, id string, wantMeta []byte) {
	t.Helper()
	pt, aad := bytes.Repeat([]byte("p"), 4300), bytes.Repeat([]byte("a"), 8192)
	e, err := c.encrypt(id, pt, aad)
	if err != nil {
		t.Fatalf("encrypt %s: %v", id, err)
	}
	if len(e.Ciphertext) != len(pt) || len(e.InitializationVector) != 12 || len(e.AuthenticationTag) != 16 {
		t.Fatalf("encrypt shapes: ct %d iv %d tag %d", len(e.Ciphertext), len(e.InitializationVector), len(e.AuthenticationTag))
	}
	if !bytes.Equal(e.CiphertextMetadata, wantMeta) {
		t.Fatalf("ciphertextMetadata = %q, want %q", e.CiphertextMetadata, wantMeta)
	}
	cdiv := xks.CDIV(aad, e.CiphertextMetadata, e.InitializationVector, e.Ciphertext, e.AuthenticationTag)
	if !bytes.Equal(cdiv, e.CiphertextDataIntegrityValue) {
		t.Fatal("CDIV mismatch")
	}
	got, err := c.decrypt(id, e, aad)
	if err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("decrypt %s: %v", id, err)
	}
	// Wrong AAD, flipped tag, and (when present) missing metadata all fail.
	_, err = c.decrypt(id, e, []byte("other"))
	wantErr(t, err, xks.InvalidCiphertextException)
	bad := e
	bad.AuthenticationTag = bytes.Clone(e.AuthenticationTag)
	bad.AuthenticationTag[3] ^= 0x40
	_, err = c.decrypt(id, bad, aad)
	wantErr(t, err, xks.InvalidCiphertextException)
	if len(e.CiphertextMetadata) > 0 {
		bad = e
		bad.CiphertextMetadata = nil
		_, err = c.decrypt(id, bad, aad)
		wantErr(t, err, xks.InvalidCiphertextException)
	}
}

// vectors decrypts the spec notes' AES-GCM vectors with the key holding 00..1f.
func vectors(t *testing.T, c *client, id string) {
	t.Helper()
	for _, v := range []struct{ aad, meta, tag string }{
		{"project=nile,department=marketing", "key_version=1", "z16Jpi+YEVrPfy7xOkRNVw=="},
		{"project=nile,department=marketing", "", "oD3KqtYrMSdh/L3FQun+ag=="},
		{"", "", "+DX8ZJOvQVMTeK7gwOAsdg=="},
	} {
		var r xks.DecryptResponse
		body := fmt.Sprintf(`{"ciphertext":"D2e6d6rFlXT/LfOq","initializationVector":"AAECAwQFBgcICQoL","authenticationTag":%q}`, v.tag)
		var req xks.DecryptRequest
		if err := jsonUnmarshal(body, &req); err != nil {
			t.Fatal(err)
		}
		req.RequestMetadata, req.EncryptionAlgorithm = metadata("Decrypt"), "AES_GCM"
		if v.aad != "" {
			req.AdditionalAuthenticatedData = []byte(v.aad)
		}
		if v.meta != "" {
			req.CiphertextMetadata = []byte(v.meta)
		}
		if err := c.call("/keys/"+id+"/decrypt", &req, &r); err != nil || string(r.Plaintext) != "Hello World!" {
			t.Fatalf("vector %q/%q: %q %v", v.aad, v.meta, r.Plaintext, err)
		}
	}
}

func execCmd(env []string, args ...string) *exec.Cmd {
	cmd := exec.Command(binPath, args...)
	cmd.Env = append(os.Environ(), env...)
	return cmd
}
