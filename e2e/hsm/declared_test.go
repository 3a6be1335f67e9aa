package hsm

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/xks/keyman/pkcs11/pkcs11test"
)

// softHSM is a SoftHSM2 token directory of the test's own, described by
// its softhsm2.conf: the operator's tokens a declared cluster is made of.
type softHSM struct{ conf, dir string }

func newSoftHSM(t *testing.T) softHSM {
	t.Helper()
	tmp := t.TempDir()
	h := softHSM{conf: filepath.Join(tmp, "softhsm2.conf"), dir: filepath.Join(tmp, "tokens")}
	if err := os.Mkdir(h.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	write(t, h.conf, "directories.tokendir = "+h.dir+"\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n")
	return h
}

func (h softHSM) env() []string { return append(os.Environ(), "SOFTHSM2_CONF="+h.conf) }

// initToken is the operator's preparation: the token with its SO PIN and
// user PIN.
func (h softHSM) initToken(t *testing.T, label, so, pin string) {
	t.Helper()
	if out, errs, code := run(t, h.env(), "softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin", so, "--pin", pin); code != 0 {
		t.Fatalf("softhsm2-util --init-token %s: %s %s", label, out, errs)
	}
}

// tokenDir is the directory SoftHSM2 keeps token label in.
func (h softHSM) tokenDir(t *testing.T, label string) string {
	t.Helper()
	ds, _ := filepath.Glob(filepath.Join(h.dir, "*", "token.object"))
	for _, f := range ds {
		if b, err := os.ReadFile(f); err == nil && bytes.Contains(b, []byte(label)) {
			return filepath.Dir(f)
		}
	}
	t.Fatalf("no token directory for %s in %s", label, h.dir)
	return ""
}

func hsmStates(c map[string]any) map[string]string {
	out := map[string]string{}
	hs, _ := c["Hsms"].([]any)
	for _, h := range hs {
		m := h.(map[string]any)
		out[m["AvailabilityZone"].(string)] = m["State"].(string)
	}
	return out
}

// TestDeclaredCluster declares a cluster over two tokens prepared
// beforehand, as an operator would over a real HSM's partitions: kmsd shows
// it ACTIVE, refuses to change its hardware, runs the crypto user's login
// and keys on the tokens themselves, and picks up a token that goes away
// and comes back without a restart.
//
// On openCryptoki (KMSD_TEST_PKCS11) the tokens are slots 0 and 1, and no
// token goes away: a slot there can vanish only with the machine-wide
// pkcsslotd (README, PKCS#11 modules).
func TestDeclaredCluster(t *testing.T) {
	requireTools(t)
	for _, impl := range pkcs11test.Modules() {
		t.Run(impl, func(t *testing.T) { testDeclaredCluster(t, impl) })
	}
}

func testDeclaredCluster(t *testing.T, impl string) {
	var sh softHSM
	mod, p11env := module, os.Environ()
	switch impl {
	case pkcs11test.SoftHSM2:
		sh = newSoftHSM(t)
		sh.initToken(t, "payments-a", "adminPw1", "kmsPswd1")
		sh.initToken(t, "payments-b", "adminPw1", "kmsPswd1")
		p11env = sh.env()
	case pkcs11test.OpenCryptoki:
		pkcs11test.NewOpenCryptokiToken(t, "0", "payments-a", "adminPw1", "kmsPswd1")
		pkcs11test.NewOpenCryptokiToken(t, "1", "payments-b", "adminPw1", "kmsPswd1")
		mod = pkcs11test.OpenCryptokiModule
	default:
		t.Fatalf("unknown PKCS#11 implementation %q", impl)
	}
	p11 := func(args ...string) (string, int) {
		out, errs, code := run(t, p11env, "pkcs11-tool", append([]string{"--module", mod}, args...)...)
		return out + errs, code
	}
	// secretKeys lists token label's secret keys, logged in as its user.
	secretKeys := func(label, pin string) string {
		t.Helper()
		out, code := p11("--token-label", label, "--login", "--pin", pin, "--list-objects", "--type", "secrkey")
		if code != 0 {
			t.Fatalf("pkcs11-tool --list-objects on %s: %s", label, out)
		}
		return out
	}
	dir := t.TempDir()
	soFile := write(t, filepath.Join(dir, "so.pin"), "adminPw1\n")
	cfg := write(t, filepath.Join(dir, "hsm.toml"), `
[[cluster]]
name = "payments"
module = "`+mod+`"
so_pin = "file:`+soFile+`"
crypto_user_pin = "env:PAYMENTS_KMSUSER_PIN"

[[cluster.hsm]]
token = "payments-a"
availability_zone = "us-east-1a"

[[cluster.hsm]]
token = "payments-b"
availability_zone = "us-east-1b"
`)
	env := []string{"KMSD_HSM_PROBE_INTERVAL=200ms", "PAYMENTS_KMSUSER_PIN=kmsPswd1"}
	if sh.conf != "" {
		env = append(env, "SOFTHSM2_CONF="+sh.conf)
	}
	k := startWith(t, kmsdBin, env, "--hsm-config", cfg)

	cs := list(k.aws(t, "describe-clusters")["Clusters"])
	if len(cs) != 1 {
		t.Fatalf("describe-clusters: %v", cs)
	}
	c := cs[0].(map[string]any)
	id := c["ClusterId"].(string)
	if c["State"] != "ACTIVE" || fmt.Sprint(hsmStates(c)) != "map[us-east-1a:ACTIVE us-east-1b:ACTIVE]" {
		t.Fatalf("declared cluster: %v", c)
	}
	if tags := fmt.Sprint(c["TagList"]); !strings.Contains(tags, "Value:payments") {
		t.Fatalf("no Name tag: %v", tags)
	}
	for _, b := range [][]byte{[]byte("adminPw1"), []byte("kmsPswd1")} {
		if log, _ := os.ReadFile(filepath.Join(filepath.Dir(k.dataDir), "kmsd.log")); bytes.Contains(log, b) {
			t.Fatalf("kmsd's log shows a PIN")
		}
	}

	// The hardware is managed outside kmsd.
	hsms := hsmIDs(c)
	for _, args := range [][]string{
		{"create-hsm", "--cluster-id", id, "--availability-zone", "us-east-1a"},
		{"delete-hsm", "--cluster-id", id, "--hsm-id", hsms[0]},
		{"delete-cluster", "--cluster-id", id},
	} {
		k.awsFails(t, "CloudHsmInvalidRequestException", args...)
	}
	k.cliFails(t, "InvalidRequestException", "user", "delete", "--cluster-id", id, "--username", "kmsuser", "--role", "crypto-user")

	// The crypto user's login is a C_Login on the tokens.
	k.cliFails(t, "InvalidCredentialsException", "login", "--cluster-id", id, "--username", "kmsuser", "--role", "crypto-user", "--password", "wrongPswd")
	k.cliOK(t, "login", "--cluster-id", id, "--username", "kmsuser", "--role", "crypto-user", "--password", "kmsPswd1")
	k.cliOK(t, "key", "generate-symmetric", "aes", "--cluster-id", id, "--label", "key-one", "--key-length-bytes", "32")
	for _, tok := range []string{"payments-a", "payments-b"} {
		if o := secretKeys(tok, "kmsPswd1"); !strings.Contains(o, "key-one") {
			t.Fatalf("key-one missing on %s:\n%s", tok, o)
		}
		// Generated on one token, copied to the other: neither readable.
		unreadableKey(t, p11, tok, "kmsPswd1", "key-one", "declared cluster")
	}
	keysOn := func() map[string]int {
		out := map[string]int{}
		for _, kv := range k.cliOK(t, "key", "list", "--cluster-id", id).(map[string]any)["Keys"].([]any) {
			m := kv.(map[string]any)
			out[m["Label"].(string)] = len(list(m["Hsms"]))
		}
		return out
	}
	if got := fmt.Sprint(keysOn()); got != "map[key-one:2]" {
		t.Fatalf("key list: %s", got)
	}
	k.cliOK(t, "user", "change-password", "--cluster-id", id, "--username", "kmsuser", "--role", "crypto-user", "--password", "kmsPswd2")
	for _, tok := range []string{"payments-a", "payments-b"} {
		secretKeys(tok, "kmsPswd2")
	}

	if impl == pkcs11test.SoftHSM2 {
		waitHSMs := func(want string) {
			t.Helper()
			for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
				c := cluster(t, k, id)
				if got := fmt.Sprint(hsmStates(c)); got == want {
					return
				} else if time.Now().After(deadline) {
					t.Fatalf("HSM states %s, want %s: %v", got, want, c)
				}
			}
		}

		// Token payments-b goes away: its HSM is DEGRADED, and the cluster
		// works on the other; a key made meanwhile is on payments-a only.
		// (Out of the token directory: SoftHSM2 takes any directory in it
		// for a token.)
		bdir, away := sh.tokenDir(t, "payments-b"), filepath.Join(t.TempDir(), "away")
		if err := os.Rename(bdir, away); err != nil {
			t.Fatal(err)
		}
		waitHSMs("map[us-east-1a:ACTIVE us-east-1b:DEGRADED]")
		if st := cluster(t, k, id)["State"]; st != "ACTIVE" {
			t.Fatalf("cluster with one token away: %v", st)
		}
		k.cliOK(t, "key", "generate-symmetric", "aes", "--cluster-id", id, "--label", "key-two", "--key-length-bytes", "32")
		if got := fmt.Sprint(keysOn()); got != "map[key-one:1 key-two:1]" {
			t.Fatalf("key list with payments-b away: %s", got)
		}

		// It comes back: kmsd finds it again without a restart and gives it
		// the key it missed.
		if err := os.Rename(away, bdir); err != nil {
			t.Fatal(err)
		}
		waitHSMs("map[us-east-1a:ACTIVE us-east-1b:ACTIVE]")
		if got := fmt.Sprint(keysOn()); got != "map[key-one:2 key-two:2]" {
			t.Fatalf("key list after payments-b came back: %s", got)
		}
		if o := secretKeys("payments-b", "kmsPswd2"); !strings.Contains(o, "key-two") {
			t.Fatalf("key-two missing on payments-b:\n%s", o)
		}
	} else {
		k.cliOK(t, "key", "generate-symmetric", "aes", "--cluster-id", id, "--label", "key-two", "--key-length-bytes", "32")
		if got := fmt.Sprint(keysOn()); got != "map[key-one:2 key-two:2]" {
			t.Fatalf("key list: %s", got)
		}
	}
	k.cliOK(t, "key", "generate-symmetric", "aes", "--cluster-id", id, "--label", "key-three", "--key-length-bytes", "32")
	if got := fmt.Sprint(keysOn()); got != "map[key-one:2 key-three:2 key-two:2]" {
		t.Fatalf("key list: %s", got)
	}
	k.cliOK(t, "key", "delete", "--cluster-id", id, "--filter", "attr.label=key-three")
	k.cliOK(t, "logout", "--cluster-id", id)
	k.cliFails(t, "UserNotLoggedInException", "key", "list", "--cluster-id", id)

	// The audit log names the operations and never holds a password.
	want := []string{`"eventSource":"cloudhsm.amazonaws.com","eventName":"DescribeClusters"`,
		`"eventSource":"kmsd-admin","eventName":"Login"`, `"eventSource":"kmsd-admin","eventName":"ChangePassword"`,
		`"errorCode":"InvalidCredentialsException"`, `"arn":"arn:aws:iam::111122223333:user/kmsd-admin"`}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		b, _ := os.ReadFile(filepath.Join(k.dataDir, "audit.log"))
		missing := ""
		for _, w := range want {
			if !bytes.Contains(b, []byte(w)) {
				missing = w
			}
		}
		if bytes.Contains(b, []byte("Pswd")) {
			t.Fatalf("the audit log holds a password:\n%s", b)
		}
		if missing == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("audit log lacks %s:\n%s", missing, b)
		}
	}
}
