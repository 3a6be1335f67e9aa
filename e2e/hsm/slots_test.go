package hsm

import (
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/xks/keyman/pkcs11/pkcs11test"
)

// The openCryptoki slots (of the ten scripts/opencryptoki.sh configures)
// kmsd's CreateHsm takes tokens from: slots 4 to 9 are this package's
// pool, no other package uses them, and the tests of a package run one
// after another, each wiping its pool before and after it.
var (
	// poolSlots: TestCreatedHSMKeyStore's two HSMs.
	poolSlots = []string{"4", "5"}
	// lifecyclePool: TestClusterLifecycle's three HSMs.
	lifecyclePool = []string{"4", "5", "6"}
	// backupPool: TestBackupRepairPath's six HSMs (three clusters),
	// TestBackupCrash's three.
	backupPool = []string{"4", "5", "6", "7", "8", "9"}
)

// TestCreatedHSMKeyStore runs a CloudHSM key store over a cluster whose
// HSMs kmsd itself created (CreateHsm), on each PKCS#11 implementation
// under test (KMSD_TEST_PKCS11). On SoftHSM2 kmsd creates the tokens; on
// openCryptoki, whose slots its own configuration fixes, CreateHsm takes
// the free (uninitialised) tokens of a pool of slots (KMSD_HSM_SLOTS=4,5),
// initialising each with the software token's shipped SO PIN
// (KMSD_HSM_FACTORY_SO_PIN) and changing it to the cluster's at once.
// Then, through the aws CLI: the cluster initialized and activated,
// kmsuser created, the store connected (kmsuser's PIN rotated on both
// tokens), a key made in the HSMs, Encrypt, Decrypt and GenerateRandom,
// the health probe keeping the cluster and its HSMs ACTIVE, a disconnect
// and reconnect, and a kmsd restart that resumes the store.
func TestCreatedHSMKeyStore(t *testing.T) {
	requireTools(t)
	for _, impl := range pkcs11test.Modules() {
		t.Run(impl, func(t *testing.T) { testCreatedHSMKeyStore(t, impl) })
	}
}

func testCreatedHSMKeyStore(t *testing.T, impl string) {
	env := []string{"KMSD_KEYSTORE_CONNECT_DELAY=100ms", "KMSD_HSM_PROBE_INTERVAL=250ms"}
	var p11 func(args ...string) (string, int) // pkcs11-tool on the module's tokens
	switch impl {
	case pkcs11test.SoftHSM2:
	case pkcs11test.OpenCryptoki:
		mod := pkcs11test.RequireOpenCryptoki(t)
		for _, s := range poolSlots {
			if out, err := exec.Command(pkcs11test.Script(t), "wipe-token", s).CombinedOutput(); err != nil {
				t.Fatalf("scripts/opencryptoki.sh wipe-token %s: %v\n%s", s, err, out)
			}
		}
		env = append(env, "KMSD_HSM_MODULE="+mod, "KMSD_HSM_SLOTS="+strings.Join(poolSlots, ","), "KMSD_HSM_FACTORY_SO_PIN=87654321")
		p11 = func(args ...string) (string, int) {
			out, errs, code := run(t, nil, "pkcs11-tool", append([]string{"--module", mod}, args...)...)
			return out + errs, code
		}
	default:
		t.Fatalf("unknown PKCS#11 implementation %q", impl)
	}
	k := startWith(t, kmsdBin, env)
	if p11 == nil {
		p11 = func(args ...string) (string, int) { return k.p11(t, args...) }
	}
	dir := t.TempDir()
	id, caCrt := newActiveCluster(t, k, dir, "created")
	hsms := hsmIDs(cluster(t, k, id))
	if len(hsms) != 2 {
		t.Fatalf("cluster %s: HSMs %v", id, hsms)
	}
	// Each HSM is a token labelled with its id; on openCryptoki, in a pool
	// slot.
	for _, h := range hsms {
		if impl == pkcs11test.OpenCryptoki {
			found := false
			for _, s := range poolSlots {
				if out, _ := p11("--slot", s, "--list-token-slots"); strings.Contains(out, h) {
					found = true
				}
			}
			if !found {
				out, _ := p11("--list-token-slots")
				t.Fatalf("HSM %s is in none of the pool's slots %v:\n%s", h, poolSlots, out)
			}
		} else if out, _ := p11("--list-token-slots"); !strings.Contains(out, h) {
			t.Fatalf("no token %s in:\n%s", h, out)
		}
	}
	userLogin := func(h, pin string) bool {
		_, code := p11("--token-label", h, "--login", "--pin", pin, "--list-objects")
		return code == 0
	}
	// A key generated in one HSM and copied (unwrapped) into the other is
	// sensitive and not extractable on both: the crypto user cannot read
	// it through PKCS#11 (openCryptoki's C_UnwrapKey ignores the template,
	// so kmsd makes its copies itself there; issue #15).
	k.cliOK(t, "login", "--cluster-id", id, "--username", "kmsuser", "--role", "crypto-user", "--password", "kmsPswd1")
	k.cliOK(t, "key", "generate-symmetric", "aes", "--cluster-id", id, "--label", "copy-check", "--key-length-bytes", "32")
	unreadable := func(what string) {
		t.Helper()
		for _, h := range hsms {
			unreadableKey(t, p11, h, "kmsPswd1", "copy-check", what)
		}
	}
	unreadable("after the copy")
	k.cliOK(t, "logout", "--cluster-id", id, "--username", "kmsuser", "--role", "crypto-user")

	store := k.kms(t, "create-custom-key-store", "--custom-key-store-name", "created", "--cloud-hsm-cluster-id", id,
		"--trust-anchor-certificate", "file://"+caCrt, "--key-store-password", "kmsPswd1")["CustomKeyStoreId"].(string)
	k.kms(t, "connect-custom-key-store", "--custom-key-store-id", store)
	k.storeIs(t, store, "CONNECTED", "")
	for _, h := range hsms {
		if userLogin(h, "kmsPswd1") {
			t.Fatalf("kmsuser still logs in to %s with the password given at create: the connect rotated nothing", h)
		}
	}
	key := k.kms(t, "create-key", "--origin", "AWS_CLOUDHSM", "--custom-key-store-id", store)["KeyMetadata"].(map[string]any)["KeyId"].(string)
	pt := write(t, filepath.Join(dir, "pt"), "kept in "+impl)
	ct := write(t, filepath.Join(dir, "ct"), k.kms(t, "encrypt", "--key-id", key, "--plaintext", "fileb://"+pt,
		"--encryption-context", "impl="+impl)["CiphertextBlob"].(string))
	decrypts := func(what string) {
		t.Helper()
		got := k.kms(t, "decrypt", "--ciphertext-blob", "fileb://"+decodeB64(t, dir, ct), "--encryption-context", "impl="+impl)["Plaintext"]
		if got != base64.StdEncoding.EncodeToString([]byte("kept in "+impl)) {
			t.Fatalf("decrypt %s: %v", what, got)
		}
	}
	decrypts("after the connect")
	if n := len(k.kms(t, "generate-random", "--number-of-bytes", "32", "--custom-key-store-id", store)["Plaintext"].(string)); n != 44 {
		t.Fatalf("generate-random: %d base64 characters", n)
	}

	// Several probe intervals: the probe finds both tokens, the cluster
	// and its HSMs stay ACTIVE, the keys work.
	time.Sleep(time.Second)
	if c := cluster(t, k, id); states(c) != "ACTIVE ACTIVE ACTIVE" {
		t.Fatalf("after probes: cluster and HSMs %s, want all ACTIVE", states(c))
	}
	decrypts("after probes")

	k.kms(t, "disconnect-custom-key-store", "--custom-key-store-id", store)
	k.storeIs(t, store, "DISCONNECTED", "")
	k.kms(t, "connect-custom-key-store", "--custom-key-store-id", store)
	k.storeIs(t, store, "CONNECTED", "")
	decrypts("after a reconnect")

	// A restarted kmsd resumes the store over the same tokens; the key
	// works on both HSMs (Decrypt takes them in turn), the generated one
	// and the copy: both kept their value through the module's reload.
	k.proc.Stop()
	k = k.restart(t, env...)
	k.storeIs(t, store, "CONNECTED", "")
	for range 4 {
		decrypts("after kmsd restarted")
	}
}

// unreadableKey fails t unless the secret key keyLabel on token h is
// sensitive and not extractable: pkcs11-tool, logged in as the crypto
// user with pin in a process of its own, lists it without "extractable"
// among its access flags and cannot read its value (C_GetAttributeValue
// answers CKR_ATTRIBUTE_SENSITIVE).
func unreadableKey(t *testing.T, p11 func(args ...string) (string, int), h, pin, keyLabel, what string) {
	t.Helper()
	o, code := p11("--token-label", h, "--login", "--pin", pin, "--list-objects", "--type", "secrkey", "--label", keyLabel)
	if code != 0 || !strings.Contains(o, "label:      "+keyLabel) {
		t.Fatalf("%s: list %s on %s: exit %d\n%s", what, keyLabel, h, code, o)
	}
	for _, line := range strings.Split(o, "\n") {
		if a, ok := strings.CutPrefix(strings.TrimSpace(line), "Access:"); ok &&
			(!strings.Contains(a, "sensitive") || strings.Contains(strings.ReplaceAll(a, "never extractable", ""), "extractable")) {
			t.Fatalf("%s: %s on %s is readable (%s):\n%s", what, keyLabel, h, strings.TrimSpace(a), o)
		}
	}
	o, code = p11("--token-label", h, "--login", "--pin", pin, "--read-object", "--type", "secrkey", "--label", keyLabel)
	if code == 0 || !strings.Contains(o, "CKR_ATTRIBUTE_SENSITIVE") {
		t.Fatalf("%s: read the value of %s from %s (exit %d):\n%s", what, keyLabel, h, code, o)
	}
}

// hsmModule is the PKCS#11 implementation a test's kmsd creates its HSMs'
// tokens on (KMSD_TEST_PKCS11): SoftHSM2, where kmsd makes and deletes the
// tokens itself, or openCryptoki, whose fixed slots pool lends kmsd's
// CreateHsm (KMSD_HSM_SLOTS).
type hsmModule struct {
	impl string
	env  []string // for kmsd
	mod  string   // openCryptoki's library; "" on SoftHSM2
}

// newHSMModule prepares impl for a test. On openCryptoki the pool's
// tokens are wiped now and again when the test ends (after its kmsd
// stopped: cleanups run last registered first, so call this before
// starting kmsd), since DeleteHsm leaves a token initialised.
func newHSMModule(t *testing.T, impl string, pool []string) hsmModule {
	t.Helper()
	switch impl {
	case pkcs11test.SoftHSM2:
		return hsmModule{impl: impl}
	case pkcs11test.OpenCryptoki:
		mod := pkcs11test.RequireOpenCryptoki(t)
		wipe := func() error {
			for _, s := range pool {
				if out, err := exec.Command(pkcs11test.Script(t), "wipe-token", s).CombinedOutput(); err != nil {
					return fmt.Errorf("scripts/opencryptoki.sh wipe-token %s: %v\n%s", s, err, out)
				}
			}
			return nil
		}
		if err := wipe(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := wipe(); err != nil {
				t.Error(err)
			}
		})
		return hsmModule{impl: impl, mod: mod,
			env: []string{"KMSD_HSM_MODULE=" + mod, "KMSD_HSM_SLOTS=" + strings.Join(pool, ","), "KMSD_HSM_FACTORY_SO_PIN=87654321"}}
	default:
		t.Fatalf("unknown PKCS#11 implementation %q", impl)
		return hsmModule{}
	}
}

// p11 runs pkcs11-tool on k's tokens.
func (m hsmModule) p11(t *testing.T, k *kmsd, args ...string) (string, int) {
	t.Helper()
	if m.mod == "" {
		return k.p11(t, args...)
	}
	out, errs, code := run(t, nil, "pkcs11-tool", append([]string{"--module", m.mod}, args...)...)
	return out + errs, code
}

// lockAfter is how many wrong kmsuser passwords in a row kmsd reports as
// INVALID_CREDENTIALS before USER_LOCKED_OUT: kmsd's count of five
// (CloudHSM's), or three on openCryptoki, whose token locks its user PIN
// after three wrong PINs by itself.
func (m hsmModule) lockAfter() int {
	if m.impl == pkcs11test.OpenCryptoki {
		return 3
	}
	return 5
}

// pin is the token PIN kmsd sets for password pw: pw itself, or on
// openCryptoki (PINs of at most 8 bytes) a longer pw's derived PIN, the
// first 8 characters of the base64url SHA-256 of it (README, PKCS#11
// modules).
func (m hsmModule) pin(pw string) string {
	if m.mod == "" || len(pw) <= 8 {
		return pw
	}
	sum := sha256.Sum256([]byte(pw))
	return base64.RawURLEncoding.EncodeToString(sum[:])[:8]
}
