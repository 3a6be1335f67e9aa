package xksproxy

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/xks"
	"github.com/kmsd/kmsd/internal/xks/keyman/pkcs11/pkcs11test"
	"github.com/kmsd/kmsd/internal/xks/xksbench"
)

const restartConfig = `
listen = "127.0.0.1:1"   # overridden by --listen
region = "us-east-1"
health_cache = "100ms"

[tls]
cert_file = "PKI/cert.pem"
key_file = "PKI/key.pem"

[key_managers.hsm]
type = "pkcs11"
module = "MODULE"
token_label = "xks-restart"
pin_file = "DIR/pin"
key_cache_ttl = "500ms"
COPIES

[[key_stores]]
uri_path_prefix = "/hsm"
key_manager = "hsm"
  [[key_stores.credentials]]
  access_key_id = "AKIDA"
  secret_access_key_file = "DIR/secretA"
`

// TestTokenRestart restarts the SoftHSM2 token under a running proxy: the token is
// deleted and initialised again with the same label, PIN and key material, so that
// its serial number, slot id and object handles change. The proxy, not restarted,
// must answer during the outage with InternalException and an UNAVAILABLE health
// status (rather than hang, crash or claim the key does not exist), and afterwards
// report ACTIVE again, encrypt, and decrypt what it encrypted before the restart.
// With session key copies (the default), SoftHSM2 goes on serving the copies of the
// deleted token's keys until the key cache (500 ms here) is refreshed, so the
// outage shows within that time rather than at the next request.
func TestTokenRestart(t *testing.T) {
	t.Run("session key copies", func(t *testing.T) { tokenRestart(t, true) })
	t.Run("token objects", func(t *testing.T) { tokenRestart(t, false) })
}

func tokenRestart(t *testing.T, copies bool) {
	dir := t.TempDir()
	pk := pki(t, dir)
	conf := pkcs11test.NewConf(t, dir)
	const label, pin = "xks-restart", "4321"
	material := bytes.Repeat([]byte{0x5a}, 32)
	tk := pkcs11test.NewToken(t, conf, label, pin)
	tk.AddKey(t, "foo", true, true, material)
	setting := "" // the default
	if !copies {
		setting = "session_key_copies = false"
	}
	cfg := strings.NewReplacer("AKIDA", akidA, "PKI", pk, "DIR", dir, "MODULE", tk.Module, "COPIES", setting).Replace(restartConfig)
	writeFile(t, filepath.Join(dir, "pin"), pin+"\n")
	writeFile(t, filepath.Join(dir, "secretA"), secretA)
	p := start(t, []string{"SOFTHSM2_CONF=" + conf}, "--config", writeFile(t, filepath.Join(dir, "xks-proxy.toml"), cfg))
	hsm := newClient(t, "https://localhost:"+p.Port()+"/hsm", akidA, secretA, tlsTo(t, filepath.Join(pk, "ca.pem")))
	if want := fmt.Sprintf(`"session_key_copies":%v`, copies); !strings.Contains(p.Log.String(), want) {
		t.Fatalf("the key manager was not opened with %s:\n%s", want, p.Log)
	}

	status := func() string {
		t.Helper()
		h, err := hsm.health()
		if err != nil {
			t.Fatalf("health: %v", err)
		}
		return h.EkmFleetDetails[0].HealthStatus
	}
	// waitHealth polls until health reports want; the bound only keeps a broken
	// proxy from stalling the suite.
	waitHealth := func(want string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for got := status(); got != want; got = status() {
			if time.Now().After(deadline) {
				t.Fatalf("health stays %s, want %s\n%s", got, want, p.Log)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	softhsm := func(args ...string) {
		t.Helper()
		cmd := exec.Command("softhsm2-util", args...)
		cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+conf)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("softhsm2-util %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}

	waitHealth(xks.HealthActive)
	pt, aad := []byte("made before the restart"), []byte("restart")
	before, err := hsm.encrypt("foo", pt, aad)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := hsm.decrypt("foo", before, aad); err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("decrypt before the restart = %q, %v", got, err)
	}

	softhsm("--delete-token", "--token", label)
	if copies {
		// The copies serve until the cache entry (500 ms) is refreshed; the
		// bound only keeps a broken proxy from stalling the suite.
		deadline := time.Now().Add(10 * time.Second)
		for {
			_, err := hsm.encrypt("foo", []byte("x"), nil)
			if err != nil {
				wantErr(t, err, xks.InternalException)
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the deleted token's key still serves after 10s:\n%s", p.Log)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	// Requests while the token is away fail as the key manager failing, every
	// time (the proxy re-initialises the module now and then meanwhile), and do
	// not turn into KeyNotFoundException.
	for range 5 {
		_, err := hsm.encrypt("foo", []byte("x"), nil)
		wantErr(t, err, xks.InternalException)
		_, err = hsm.decrypt("foo", before, aad)
		wantErr(t, err, xks.InternalException)
		time.Sleep(300 * time.Millisecond)
	}
	waitHealth(xks.HealthUnavailable)

	tk = pkcs11test.NewToken(t, conf, label, pin)
	tk.AddKey(t, "foo", true, true, material)
	waitHealth(xks.HealthActive)
	after, err := hsm.encrypt("foo", pt, aad)
	if err != nil {
		t.Fatalf("encrypt after the restart: %v", err)
	}
	for name, e := range map[string]xks.EncryptResponse{"before": before, "after": after} {
		if got, err := hsm.decrypt("foo", e, aad); err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("decrypt of the ciphertext made %s the restart = %q, %v", name, got, err)
		}
	}
	select {
	case <-p.Done():
		t.Fatalf("xks-proxy exited:\n%s", p.Log)
	default:
	}
	if !strings.Contains(p.Log.String(), "pkcs11: token found") {
		t.Errorf("no log line about finding the token again:\n%s", p.Log)
	}
	var ae *xksbench.APIError
	if _, err := hsm.encrypt("absent", []byte("x"), nil); !errors.As(err, &ae) || ae.ErrorName != xks.KeyNotFoundException {
		t.Errorf("missing key on the restarted token = %v, want KeyNotFoundException", err)
	}
}
