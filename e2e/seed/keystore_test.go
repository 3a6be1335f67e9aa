package seed

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const hsmKeyID = "6f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0"

const softhsmModule = "/usr/lib/softhsm/libsofthsm2.so" // Debian's softhsm2, which scripts/test.sh installs

func run(t *testing.T, env []string, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = env
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// TestSeedKeyStore: a seed file declares an HSM cluster over two SoftHSM2
// tokens prepared beforehand, and a CloudHSM key store over it connected
// at start; keys made in the store work, a second start keeps the store
// as it is, and after a reset the store is made and connected again
// (with the crypto user's password as kmsd rotated it).
func TestSeedKeyStore(t *testing.T) {
	for _, tool := range []string{"softhsm2-util", "openssl", softhsmModule} {
		if _, err := exec.LookPath(tool); err != nil {
			if _, serr := os.Stat(tool); serr != nil {
				t.Fatalf("%s is required: %v", tool, err)
			}
		}
	}
	dir := t.TempDir()
	conf, tokens := filepath.Join(dir, "softhsm2.conf"), filepath.Join(dir, "tokens")
	if err := os.Mkdir(tokens, 0o700); err != nil {
		t.Fatal(err)
	}
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("softhsm2.conf", "directories.tokendir = "+tokens+"\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n")
	hsmEnv := append(os.Environ(), "SOFTHSM2_CONF="+conf)
	for _, label := range []string{"seed-a", "seed-b"} {
		run(t, hsmEnv, "softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin", "adminPw1", "--pin", "kmsPswd1")
	}
	anchor := filepath.Join(dir, "ca.crt")
	run(t, hsmEnv, "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", filepath.Join(dir, "ca.key"), "-out", anchor,
		"-days", "3", "-subj", "/CN=seedCA")
	so := write("so.pin", "adminPw1\n")
	file := write("seed.yaml", `Clusters:
  - Name: seeded
    Module: `+softhsmModule+`
    SoPin: file:`+so+`
    CryptoUserPin: env:SEED_KMSUSER_PIN
    TrustAnchor: `+anchor+`
    Hsms:
      - {Token: seed-a, AvailabilityZone: us-east-1a}
      - {Token: seed-b, AvailabilityZone: us-east-1b}
CustomKeyStores:
  - CustomKeyStoreName: seeded-store
    ClusterName: seeded
    KeyStorePassword: env:SEED_KMSUSER_PIN
    Connect: true
Keys:
  - KeyId: `+hsmKeyID+`
    Description: in the HSM
    Origin: AWS_CLOUDHSM
    CustomKeyStoreName: seeded-store
`)
	data := filepath.Join(dir, "data")
	extra := []string{"SOFTHSM2_CONF=" + conf, "SEED_KMSUSER_PIN=kmsPswd1", "KMSD_KEYSTORE_CONNECT_DELAY=50ms"}
	var storeID string
	useStore := func(e *env, phase string) {
		t.Helper()
		st := waitConnected(t, e, "seeded-store")
		if storeID == "" {
			storeID = st["CustomKeyStoreId"].(string)
		}
		if phase != "reset" && st["CustomKeyStoreId"] != storeID {
			t.Fatalf("%s: store %v, was %s", phase, st, storeID)
		}
		// The file's key, with its fixed id, made in the store at start.
		md := e.ok("kms", "describe-key", "--key-id", hsmKeyID)["KeyMetadata"].(map[string]any)
		if md["Origin"] != "AWS_CLOUDHSM" || md["CustomKeyStoreId"] != st["CustomKeyStoreId"] || md["Description"] != "in the HSM" {
			t.Fatalf("%s: seeded key %v", phase, md)
		}
		hct := b64(t, e.ok("kms", "encrypt", "--key-id", hsmKeyID, "--plaintext", fileb(t, []byte("seeded in the HSM"))), "CiphertextBlob")
		if pt := b64(t, e.ok("kms", "decrypt", "--ciphertext-blob", fileb(t, hct)), "Plaintext"); string(pt) != "seeded in the HSM" {
			t.Fatalf("%s: decrypt with the seeded key %q", phase, pt)
		}
		id := e.ok("kms", "create-key", "--origin", "AWS_CLOUDHSM", "--custom-key-store-id", st["CustomKeyStoreId"].(string))["KeyMetadata"].(map[string]any)["KeyId"].(string)
		ct := b64(t, e.ok("kms", "encrypt", "--key-id", id, "--plaintext", fileb(t, []byte("in the HSM"))), "CiphertextBlob")
		if pt := b64(t, e.ok("kms", "decrypt", "--ciphertext-blob", fileb(t, ct)), "Plaintext"); string(pt) != "in the HSM" {
			t.Fatalf("%s: decrypt %q", phase, pt)
		}
	}
	for n := 1; n <= 2; n++ {
		e := startEnv(t, data, "us-east-1", extra, "--auth", "emulator", "--seed", file)
		useStore(e, fmt.Sprint("start ", n))
		if n == 2 {
			if !strings.Contains(e.k.Log(), "seed: custom key stores applied\" created=0 existing=1 differences=0") {
				t.Fatalf("second start's report:\n%s", e.k.Log())
			}
			if code, body := post(t, "POST", e.k.Endpoint+"/_kmsd/reset"); code != 200 {
				t.Fatalf("reset: %d %v", code, body)
			}
			// The reset made the store and its seeded key again.
			if ks := e.keyIDs(); len(ks) != 1 || ks[0] != hsmKeyID {
				t.Fatalf("keys after reset: %v", ks)
			}
			useStore(e, "reset")
		}
		if strings.Contains(e.k.Log(), "kmsPswd1") || strings.Contains(e.k.Log(), "adminPw1") {
			t.Fatal("a PIN in the log")
		}
		e.k.Stop()
	}
}

func waitConnected(t *testing.T, e *env, name string) map[string]any {
	t.Helper()
	var st map[string]any
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(300 * time.Millisecond) {
		ss := e.ok("kms", "describe-custom-key-stores", "--custom-key-store-name", name)["CustomKeyStores"].([]any)
		if len(ss) == 1 {
			st = ss[0].(map[string]any)
			if st["ConnectionState"] == "CONNECTED" {
				return st
			}
		}
	}
	t.Fatalf("store %s never CONNECTED: %v", name, st)
	return nil
}
