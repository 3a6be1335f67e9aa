package hsm

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/xks/keyman/pkcs11/pkcs11test"
)

// declaredTokens prepares two tokens of implementation impl, as an operator
// would, with SO PIN so and user PIN pin (openCryptoki's PINs are 4 to 8
// bytes), and returns the module, kmsd's extra environment and a function
// that reports whether the token labelled label takes the user PIN pin
// (pkcs11-tool, outside kmsd). openCryptoki's tokens are slots 0 and 1 of
// the pkcsslotd that scripts/opencryptoki.sh runs.
func declaredTokens(t *testing.T, impl string, labels [2]string, so, pin string) (module string, env []string, userLogin func(label, pin string) bool) {
	t.Helper()
	switch impl {
	case pkcs11test.SoftHSM2:
		sh := newSoftHSM(t)
		for _, l := range labels {
			sh.initToken(t, l, so, pin)
		}
		return pkcs11test.DefaultModule, []string{"SOFTHSM2_CONF=" + sh.conf}, func(label, pin string) bool {
			_, _, code := run(t, sh.env(), "pkcs11-tool", "--module", pkcs11test.DefaultModule, "--token-label", label, "--login", "--pin", pin, "--list-objects")
			return code == 0
		}
	case pkcs11test.OpenCryptoki:
		for i, l := range labels {
			pkcs11test.NewOpenCryptokiToken(t, []string{"0", "1"}[i], l, so, pin)
		}
		return pkcs11test.OpenCryptokiModule, nil, func(label, pin string) bool {
			_, _, code := run(t, os.Environ(), "pkcs11-tool", "--module", pkcs11test.OpenCryptokiModule, "--token-label", label, "--login", "--pin", pin, "--list-objects")
			return code == 0
		}
	}
	t.Fatalf("unknown PKCS#11 implementation %q", impl)
	return "", nil, nil
}

// TestDeclaredKeyStore runs a CloudHSM key store's life over a cluster
// declared on two tokens of each PKCS#11 implementation under test
// (KMSD_TEST_PKCS11: SoftHSM2, openCryptoki's software token): connect
// (a C_Login and a rotation of kmsuser's PIN on the tokens), a key made in
// the HSMs, Encrypt and Decrypt through the aws CLI, disconnect and
// reconnect (a second rotation), a wrong password that fails the connect
// with INVALID_CREDENTIALS and then USER_LOCKED_OUT, and the admin's reset.
func TestDeclaredKeyStore(t *testing.T) {
	requireTools(t)
	for _, impl := range pkcs11test.Modules() {
		t.Run(impl, func(t *testing.T) { testDeclaredKeyStore(t, impl) })
	}
}

func testDeclaredKeyStore(t *testing.T, impl string) {
	labels := [2]string{"ks-a", "ks-b"}
	mod, env, userLogin := declaredTokens(t, impl, labels, "adminPw1", "kmsPswd1")
	dir := t.TempDir()
	anchor, _ := ca(t, dir, "customerCA")
	soFile := write(t, filepath.Join(dir, "so.pin"), "adminPw1\n")
	cfg := write(t, filepath.Join(dir, "hsm.toml"), `
[[cluster]]
name = "keystore"
module = "`+mod+`"
so_pin = "file:`+soFile+`"
crypto_user_pin = "env:KS_KMSUSER_PIN"
trust_anchor = "`+anchor+`"

[[cluster.hsm]]
token = "ks-a"
availability_zone = "us-east-1a"

[[cluster.hsm]]
token = "ks-b"
availability_zone = "us-east-1b"
`)
	k := startWith(t, kmsdBin, append(env, "KS_KMSUSER_PIN=kmsPswd1"), "--hsm-config", cfg)
	cs := list(k.aws(t, "describe-clusters")["Clusters"])
	if len(cs) != 1 || cs[0].(map[string]any)["State"] != "ACTIVE" {
		t.Fatalf("declared cluster: %v", cs)
	}
	clusterID := cs[0].(map[string]any)["ClusterId"].(string)

	kms := func(args ...string) map[string]any {
		t.Helper()
		args = append([]string{"--endpoint-url", k.endpoint, "--output", "json", "kms"}, args...)
		out, errs, code := run(t, k.env, awsCLI, args...)
		if code != 0 {
			t.Fatalf("aws %s: exit %d\n%s", strings.Join(args, " "), code, errs)
		}
		var v map[string]any
		if strings.TrimSpace(out) != "" {
			if err := json.Unmarshal([]byte(out), &v); err != nil {
				t.Fatalf("aws %s: %v\n%s", strings.Join(args, " "), err, out)
			}
		}
		return v
	}
	kmsFails := func(code string, args ...string) {
		t.Helper()
		args = append([]string{"--endpoint-url", k.endpoint, "--output", "json", "kms"}, args...)
		_, errs, rc := run(t, k.env, awsCLI, args...)
		if rc == 0 || !strings.Contains(errs, "("+code+")") {
			t.Fatalf("aws %s: exit %d, stderr %q; want %s", strings.Join(args, " "), rc, errs, code)
		}
	}
	waitStore := func(id, state, code string) {
		t.Helper()
		var s map[string]any
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			s = kms("describe-custom-key-stores", "--custom-key-store-id", id)["CustomKeyStores"].([]any)[0].(map[string]any)
			got, _ := s["ConnectionErrorCode"].(string)
			if s["ConnectionState"] == state && got == code {
				return
			}
		}
		t.Fatalf("store %s: %v, want %s %s", id, s, state, code)
	}

	id := kms("create-custom-key-store", "--custom-key-store-name", "ks", "--cloud-hsm-cluster-id", clusterID,
		"--trust-anchor-certificate", "file://"+anchor, "--key-store-password", "kmsPswd1")["CustomKeyStoreId"].(string)
	kms("connect-custom-key-store", "--custom-key-store-id", id)
	waitStore(id, "CONNECTED", "")
	for _, l := range labels {
		if userLogin(l, "kmsPswd1") {
			t.Fatalf("kmsuser still logs in to %s with the password given at create", l)
		}
	}

	md := kms("create-key", "--origin", "AWS_CLOUDHSM", "--custom-key-store-id", id)["KeyMetadata"].(map[string]any)
	if md["Origin"] != "AWS_CLOUDHSM" || md["CloudHsmClusterId"] != clusterID {
		t.Fatalf("create-key: %v", md)
	}
	arn := md["Arn"].(string)
	ct := kms("encrypt", "--key-id", arn, "--plaintext", "aGVsbG8gSFNN", "--encryption-context", "a=b")["CiphertextBlob"].(string)
	if pt := kms("decrypt", "--ciphertext-blob", ct, "--encryption-context", "a=b")["Plaintext"]; pt != "aGVsbG8gSFNN" {
		t.Fatalf("decrypt: %v", pt)
	}
	kmsFails("InvalidCiphertextException", "decrypt", "--ciphertext-blob", ct, "--encryption-context", "a=c")
	big := strings.Repeat("QUJD", 1000) // 3000 bytes: many GCM blocks
	ct2 := kms("encrypt", "--key-id", arn, "--plaintext", big)["CiphertextBlob"].(string)
	if pt := kms("decrypt", "--ciphertext-blob", ct2)["Plaintext"]; pt != big {
		t.Fatal("decrypt of 3000 bytes differs")
	}
	if n := len(kms("generate-random", "--number-of-bytes", "32", "--custom-key-store-id", id)["Plaintext"].(string)); n != 44 {
		t.Fatalf("generate-random: %d base64 characters", n)
	}

	// Disconnect and connect again: a second rotation, and the key made
	// on the tokens still decrypts.
	kms("disconnect-custom-key-store", "--custom-key-store-id", id)
	waitStore(id, "DISCONNECTED", "")
	kms("connect-custom-key-store", "--custom-key-store-id", id)
	waitStore(id, "CONNECTED", "")
	if pt := kms("decrypt", "--ciphertext-blob", ct, "--encryption-context", "a=b")["Plaintext"]; pt != "aGVsbG8gSFNN" {
		t.Fatalf("decrypt after reconnect: %v", pt)
	}

	// A password the tokens do not take: INVALID_CREDENTIALS.
	kms("disconnect-custom-key-store", "--custom-key-store-id", id)
	waitStore(id, "DISCONNECTED", "")
	kms("update-custom-key-store", "--custom-key-store-id", id, "--key-store-password", "wrongPw1")
	kms("connect-custom-key-store", "--custom-key-store-id", id)
	waitStore(id, "FAILED", "INVALID_CREDENTIALS")

	// More wrong logins lock kmsuser out: by kmsd's count of five on
	// SoftHSM2, by the token's own earlier lock (CKR_PIN_LOCKED after three)
	// on openCryptoki; either way USER_LOCKED_OUT.
	locked := false
	for i := 0; i < 6 && !locked; i++ {
		kms("disconnect-custom-key-store", "--custom-key-store-id", id)
		waitStore(id, "DISCONNECTED", "")
		kms("connect-custom-key-store", "--custom-key-store-id", id)
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			s := kms("describe-custom-key-stores", "--custom-key-store-id", id)["CustomKeyStores"].([]any)[0].(map[string]any)
			if s["ConnectionState"] == "FAILED" {
				locked = s["ConnectionErrorCode"] == "USER_LOCKED_OUT"
				if !locked && s["ConnectionErrorCode"] != "INVALID_CREDENTIALS" {
					t.Fatalf("wrong password: %v", s)
				}
				break
			}
		}
	}
	if !locked {
		t.Fatal("six more connects with a wrong password never reached USER_LOCKED_OUT")
	}
	// The admin resets the password (an SO C_InitPIN, which also lifts the
	// token's lock); the store takes it and connects.
	kms("disconnect-custom-key-store", "--custom-key-store-id", id)
	waitStore(id, "DISCONNECTED", "")
	k.cliOK(t, "user", "change-password", "--cluster-id", clusterID, "--username", "kmsuser", "--role", "crypto-user", "--password", "kmsPswd3")
	kms("update-custom-key-store", "--custom-key-store-id", id, "--key-store-password", "kmsPswd3")
	kms("connect-custom-key-store", "--custom-key-store-id", id)
	waitStore(id, "CONNECTED", "")
	if pt := kms("decrypt", "--ciphertext-blob", ct, "--encryption-context", "a=b")["Plaintext"]; pt != "aGVsbG8gSFNN" {
		t.Fatalf("decrypt after the reset: %v", pt)
	}
}
