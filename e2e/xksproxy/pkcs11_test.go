package xksproxy

import (
	"bytes"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/xks"
	"github.com/kmsd/kmsd/internal/xks/keyman/keymantest"
	"github.com/kmsd/kmsd/internal/xks/keyman/pkcs11/pkcs11test"
)

// hsmSetup makes a token of implementation impl (pkcs11test.SoftHSM2 or
// pkcs11test.OpenCryptoki, whose slot 2 this package uses) with the keys the
// tests use, and returns the env the proxy needs to see it.
func hsmSetup(t *testing.T, dir, impl string) (*pkcs11test.Token, []string) {
	t.Helper()
	var tk *pkcs11test.Token
	var env []string
	switch impl {
	case pkcs11test.SoftHSM2:
		conf := pkcs11test.NewConf(t, dir)
		tk = pkcs11test.NewToken(t, conf, "xks-e2e", "4321")
		env = []string{"SOFTHSM2_CONF=" + conf}
	case pkcs11test.OpenCryptoki:
		tk = pkcs11test.NewOpenCryptokiToken(t, "2", "xks-e2e", "so-4321", "4321")
	default:
		t.Fatalf("unknown PKCS#11 implementation %q", impl)
	}
	tk.KeygenWithTool(t, "foo") // as operators do, with OpenSC
	tk.AddKey(t, "enc", true, false, nil)
	tk.AddKey(t, "dec", false, true, nil)
	tk.AddKey(t, "vector", true, true, keymantest.VectorKey())
	tk.AddKey(t, "twin", true, true, nil)
	tk.AddKey(t, "twin", true, true, nil)
	return tk, env
}

const configTemplate = `
listen = "127.0.0.1:1"   # overridden by --listen
region = "us-east-1"
fleet_size = 2
health_cache = "2s"

[tls]
cert_file = "PKI/cert.pem"
key_file = "PKI/key.pem"

[key_managers.hsm]
type = "pkcs11"
module = "MODULE"
token_label = "xks-e2e"
pin_file = "DIR/pin"
session_pool_size = 8

[key_managers.soft]
type = "keyfile"
keys_file = "DIR/keys.json"
passphrase_env = "XKS_PROXY_KEYS_PASSPHRASE"

[[key_stores]]
uri_path_prefix = "/hsm"
key_manager = "hsm"
  [[key_stores.credentials]]
  access_key_id = "AKIDA"
  secret_access_key_file = "DIR/secretA"
  [[key_stores.credentials]]
  access_key_id = "AKIDB"
  secret_access_key_env = "E2E_SECRET_B"

[[key_stores]]
uri_path_prefix = "/soft"
key_manager = "soft"
ciphertext_metadata = "a2V5X3ZlcnNpb249MQ=="
  [[key_stores.credentials]]
  access_key_id = "AKIDA"
  secret_access_key_file = "DIR/secretA"

[[key_stores]]
uri_path_prefix = "/slow"
key_manager = "hsm"
ekm_timeout = "1ns"
  [[key_stores.credentials]]
  access_key_id = "AKIDA"
  secret_access_key_file = "DIR/secretA"

[[key_stores]]
uri_path_prefix = "/limited"
key_manager = "hsm"
keys = ["foo", "vector"]
disabled_keys = ["vector"]
  [[key_stores.credentials]]
  access_key_id = "AKIDA"
  secret_access_key_file = "DIR/secretA"

[[key_stores]]
uri_path_prefix = "/off"
key_manager = "hsm"
disabled = true
  [[key_stores.credentials]]
  access_key_id = "AKIDA"
  secret_access_key_file = "DIR/secretA"

[[key_stores]]
uri_path_prefix = "/throttled"
key_manager = "hsm"
rate_limit = 0.001
burst = 2
  [[key_stores.credentials]]
  access_key_id = "AKIDA"
  secret_access_key_file = "DIR/secretA"

[[key_stores]]
uri_path_prefix = "/authz"
key_manager = "hsm"
  [[key_stores.credentials]]
  access_key_id = "AKIDA"
  secret_access_key_file = "DIR/secretA"
  [[key_stores.authorization]]
  name = "bench-user-in-account"
  principals = ["arn:aws:iam::111122223333:*"]
  operations = ["Encrypt", "Decrypt", "GenerateDataKey*", "CreateKey"]
  [[key_stores.authorization]]
  name = "no-vpce-x"
  effect = "deny"
  source_vpces = ["vpce-x*"]
`

func writeConfig(t *testing.T, dir, pk, module string) string {
	t.Helper()
	cfg := strings.NewReplacer("AKIDA", akidA, "AKIDB", akidB, "PKI", pk, "DIR", dir, "MODULE", module).Replace(configTemplate)
	writeFile(t, filepath.Join(dir, "pin"), "4321\n")
	writeFile(t, filepath.Join(dir, "secretA"), secretA)
	return writeFile(t, filepath.Join(dir, "xks-proxy.toml"), cfg)
}

// TestConfigFileSoftHSMAndKeyFile runs several logical key stores from a config file,
// over a PKCS#11 token and a key file, and reaches every error of the spec's table
// through the real binary; once per PKCS#11 implementation (SoftHSM2 and
// openCryptoki's software token; KMSD_TEST_PKCS11 picks).
func TestConfigFileSoftHSMAndKeyFile(t *testing.T) {
	for _, impl := range pkcs11test.Modules() {
		t.Run(impl, func(t *testing.T) { testConfigFile(t, impl) })
	}
}

// vendors and defaultUsage tell the implementations apart: the EKM vendor the
// proxy reports, and the usage pkcs11-tool's --keygen leaves on a key besides
// ENCRYPT and DECRYPT.
var (
	vendors      = map[string]string{pkcs11test.SoftHSM2: "SoftHSM", pkcs11test.OpenCryptoki: "IBM"}
	defaultUsage = map[string]string{pkcs11test.SoftHSM2: "ENCRYPT,DECRYPT,SIGN,VERIFY,WRAP,UNWRAP", pkcs11test.OpenCryptoki: "ENCRYPT,DECRYPT,SIGN,VERIFY,WRAP,UNWRAP"}
)

func testConfigFile(t *testing.T, impl string) {
	dir := t.TempDir()
	pk := pki(t, dir)
	tk, hsmEnv := hsmSetup(t, dir, impl)
	_, kfEnv := keyFile(t, dir)
	cfg := writeConfig(t, dir, pk, tk.Module)
	env := append(append(hsmEnv, kfEnv...), "E2E_SECRET_B="+secretB)
	p := start(t, env, "--config", cfg)
	tc := tlsTo(t, filepath.Join(pk, "ca.pem"))
	base := "https://localhost:" + p.Port()
	store := func(prefix string) *client { return newClient(t, base+prefix, akidA, secretA, tc) }
	hsm := store("/hsm")
	seen := map[string]bool{}
	expect := func(t *testing.T, err error, name string) {
		t.Helper()
		wantErr(t, err, name)
		seen[name] = true
	}

	t.Run("health", func(t *testing.T) {
		h, err := hsm.health()
		if err != nil || h.XksProxyFleetSize != 2 || !strings.Contains(h.EkmVendor, vendors[impl]) ||
			h.EkmFleetDetails[0].HealthStatus != "ACTIVE" || !strings.HasPrefix(h.EkmFleetDetails[0].ID, "xks-e2e/") {
			t.Fatalf("health = %+v, %v", h, err)
		}
	})
	t.Run("second credential", func(t *testing.T) {
		if _, err := newClient(t, base+"/hsm", akidB, secretB, tc).health(); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("metadata", func(t *testing.T) {
		// pkcs11-tool leaves the module's defaults (SoftHSM2: SIGN, VERIFY, WRAP,
		// UNWRAP) on "foo": the proxy reports them as they are.
		for id, usage := range map[string]string{"foo": defaultUsage[impl], "enc": "ENCRYPT", "dec": "DECRYPT"} {
			m, err := hsm.keyMetadata(id)
			if err != nil || m.KeySpec != "AES_256" || m.KeyStatus != "ENABLED" || strings.Join(m.KeyUsage, ",") != usage {
				t.Errorf("metadata %s = %+v, %v", id, m, err)
			}
		}
	})
	t.Run("hsm round trip", func(t *testing.T) { roundTrip(t, hsm, "foo", nil) })
	t.Run("hsm vectors", func(t *testing.T) { vectors(t, hsm, "vector") })
	t.Run("key file round trip with metadata", func(t *testing.T) { roundTrip(t, store("/soft"), "both", []byte("key_version=1")) })
	t.Run("curl interop", func(t *testing.T) {
		if _, err := exec.LookPath("curl"); err != nil {
			t.Fatal("curl not installed; run scripts/test.sh or e2e/xksproxy/deps.sh")
		}
		for prefix, key := range map[string]string{"/hsm": "foo", "/soft": "both"} {
			out, err := exec.Command("sh", "curl-roundtrip.sh", base+prefix, akidA, filepath.Join(dir, "secretA"),
				filepath.Join(pk, "ca.pem"), key, "attack at dawn", "project=nile,department=marketing").CombinedOutput()
			if err != nil || !strings.HasPrefix(string(out), "attack at dawn\n") {
				t.Fatalf("curl round trip on %s: %v\n%s", prefix, err, out)
			}
			if prefix == "/soft" && !strings.Contains(string(out), "metadata=a2V5X3ZlcnNpb249MQ==") {
				t.Fatalf("curl round trip lost the metadata: %s", out)
			}
		}
	})
	t.Run("errors", func(t *testing.T) {
		err := hsm.call("/keys/foo/encrypt", map[string]any{"requestMetadata": metadata("Encrypt"), "encryptionAlgorithm": "AES_GCM"}, &struct{}{})
		expect(t, err, xks.ValidationException)
		_, err = store("/off").health()
		expect(t, err, xks.InvalidStateException)
		_, err = store("/limited").encrypt("vector", []byte("x"), nil)
		expect(t, err, xks.InvalidStateException)
		if m, _ := store("/limited").keyMetadata("vector"); m.KeyStatus != "DISABLED" {
			t.Errorf("allow-listed disabled key: %+v", m)
		}
		e, err := hsm.encrypt("foo", []byte("secret"), []byte("aad"))
		if err != nil {
			t.Fatal(err)
		}
		e.Ciphertext[0] ^= 1
		_, err = hsm.decrypt("foo", e, []byte("aad"))
		expect(t, err, xks.InvalidCiphertextException)
		_, err = hsm.encrypt("dec", []byte("x"), nil)
		expect(t, err, xks.InvalidKeyUsageException)
		encryptOnly(t, hsm, "enc")
		_, err = newClient(t, base+"/hsm", akidB, secretA, tc).health()
		expect(t, err, xks.AuthenticationFailedException)
		authz := store("/authz")
		if _, err := authz.encrypt("foo", []byte("x"), nil); err != nil {
			t.Fatalf("authorized principal: %v", err)
		}
		md := metadata("Encrypt")
		md.AWSPrincipalARN = "arn:aws:iam::999999999999:role/intruder"
		err = authz.call("/keys/foo/encrypt", &xks.EncryptRequest{RequestMetadata: md, Plaintext: []byte("x"), EncryptionAlgorithm: "AES_GCM"}, &xks.EncryptResponse{})
		expect(t, err, xks.AccessDeniedException)
		md = metadata("Encrypt")
		md.AWSSourceVPCE = "vpce-x123"
		err = authz.call("/keys/foo/encrypt", &xks.EncryptRequest{RequestMetadata: md, Plaintext: []byte("x"), EncryptionAlgorithm: "AES_GCM"}, &xks.EncryptResponse{})
		expect(t, err, xks.AccessDeniedException)
		md = metadata("ReEncrypt")
		err = authz.call("/keys/foo/encrypt", &xks.EncryptRequest{RequestMetadata: md, Plaintext: []byte("x"), EncryptionAlgorithm: "AES_GCM"}, &xks.EncryptResponse{})
		expect(t, err, xks.AccessDeniedException)
		if _, err := authz.health(); err != nil {
			t.Fatalf("health must bypass authorization: %v", err)
		}
		_, err = hsm.encrypt("absent", []byte("x"), nil)
		expect(t, err, xks.KeyNotFoundException)
		_, err = store("/limited").encrypt("enc", []byte("x"), nil)
		expect(t, err, xks.KeyNotFoundException)
		_, err = store("/nope").health()
		expect(t, err, xks.InvalidURIPathException)
		throttled := store("/throttled")
		for i := range 3 {
			_, err = throttled.health()
			if i < 2 && err != nil {
				t.Fatalf("within burst: %v", err)
			}
		}
		expect(t, err, xks.ThrottlingException)
		_, err = hsm.encrypt("twin", []byte("x"), nil)
		expect(t, err, xks.InternalException)
		_, err = hsm.encrypt("foo", make([]byte, 8193), nil)
		expect(t, err, xks.UnsupportedOperationException)
		_, err = store("/slow").encrypt("foo", []byte("x"), nil)
		expect(t, err, xks.DependencyTimeoutException)
		for _, n := range xks.ErrorNames() {
			if !seen[n] {
				t.Errorf("error %s not reached through the binary", n)
			}
		}
	})
	t.Run("concurrent", func(t *testing.T) {
		errs := make(chan error, 16)
		for g := range 16 {
			go func() {
				pt := bytes.Repeat([]byte{byte(g)}, 100)
				e, err := hsm.encrypt("foo", pt, pt)
				if err == nil {
					var got []byte
					got, err = hsm.decrypt("foo", e, pt)
					if err == nil && !bytes.Equal(got, pt) {
						err = errMismatch
					}
				}
				errs <- err
			}()
		}
		deadline := time.After(20 * time.Second)
		for range 16 {
			select {
			case err := <-errs:
				if err != nil {
					t.Error(err)
				}
			case <-deadline:
				t.Fatal("concurrent requests hung")
			}
		}
	})
}

type mismatch struct{}

func (mismatch) Error() string { return "plaintext mismatch" }

var errMismatch error = mismatch{}
