package xksproxy

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
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

// TestTokenAwayUnderLoad takes the SoftHSM2 token away from under the running proxy
// while clients decrypt at concurrency 8 — its directory moved out of the token
// directory, then back: the same token, serial number and keys, as when an HSM
// drops off the network and returns — and checks that no request hangs past its
// budget, that the outage answers only InternalException or
// DependencyTimeoutException (never KeyNotFoundException or InvalidCiphertextException,
// which KMS would pass on as a verdict on the key or the ciphertext), that health
// turns UNAVAILABLE and ACTIVE again, and that decryption resumes by itself within a
// few seconds of the token's return, without a restart of the proxy.
func TestTokenAwayUnderLoad(t *testing.T) {
	dir := t.TempDir()
	pk := pki(t, dir)
	conf := pkcs11test.NewConf(t, dir)
	const label, pin = "xks-restart", "4321"
	tk := pkcs11test.NewToken(t, conf, label, pin)
	tk.AddKey(t, "foo", true, true, nil)
	cfg := strings.NewReplacer("AKIDA", akidA, "PKI", pk, "DIR", dir, "MODULE", tk.Module, "COPIES", "").Replace(restartConfig)
	writeFile(t, filepath.Join(dir, "pin"), pin+"\n")
	writeFile(t, filepath.Join(dir, "secretA"), secretA)
	p := start(t, []string{"SOFTHSM2_CONF=" + conf}, "--config", writeFile(t, filepath.Join(dir, "xks-proxy.toml"), cfg))
	const conc = 8
	tc := tlsTo(t, filepath.Join(pk, "ca.pem"))
	hsm := &client{t: t, c: xksbench.NewClient("https://localhost:"+p.Port()+"/hsm", akidA, secretA, "us-east-1", tc, conc)}
	aad := []byte("away")
	e, err := hsm.encrypt("foo", []byte("made before the outage"), aad)
	if err != nil {
		t.Fatal(err)
	}
	health := func() string {
		t.Helper()
		h, err := hsm.health()
		if err != nil {
			t.Fatalf("health: %v", err)
		}
		return h.EkmFleetDetails[0].HealthStatus
	}
	waitHealth := func(want string) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); health() != want; time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("health never %s\n%s", want, p.Log)
			}
		}
	}

	// The load: conc clients decrypting until stopped (bounded by a deadline and a
	// request cap), each outcome counted by error name.
	var (
		mu      sync.Mutex
		counts  = map[string]int{}
		slowest time.Duration
		lastOK  time.Time
		stop    = make(chan struct{})
		wg      sync.WaitGroup
	)
	deadline := time.Now().Add(60 * time.Second)
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; n < 100_000 && time.Now().Before(deadline); n++ {
				select {
				case <-stop:
					return
				default:
				}
				t0 := time.Now()
				pt, err := hsm.decrypt("foo", e, aad)
				took := time.Since(t0)
				name := "OK"
				var ae *xksbench.APIError
				switch {
				case errors.As(err, &ae):
					name = ae.ErrorName
				case err != nil:
					name = "transport: " + err.Error()
				case string(pt) != "made before the outage":
					name = "wrong plaintext"
				}
				mu.Lock()
				counts[name]++
				slowest = max(slowest, took)
				if name == "OK" {
					lastOK = time.Now()
				}
				mu.Unlock()
				if name != "OK" {
					time.Sleep(10 * time.Millisecond) // no busy loop during the outage
				}
			}
		}()
	}
	snapshot := func() (map[string]int, time.Time) {
		mu.Lock()
		defer mu.Unlock()
		return maps.Clone(counts), lastOK
	}

	time.Sleep(500 * time.Millisecond)
	if c, _ := snapshot(); c["OK"] == 0 || len(c) != 1 {
		t.Fatalf("before the outage: %v", c)
	}
	tokens, _ := filepath.Glob(filepath.Join(dir, "tokens", "*"))
	if len(tokens) != 1 {
		t.Fatalf("token directories: %v", tokens)
	}
	away := filepath.Join(dir, "away")
	if err := os.Rename(tokens[0], away); err != nil {
		t.Fatal(err)
	}
	waitHealth(xks.HealthUnavailable)
	time.Sleep(time.Second) // the load meets the outage
	during, _ := snapshot()

	if err := os.Rename(away, tokens[0]); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	waitHealth(xks.HealthActive)
	for {
		if _, ok := snapshot(); ok.After(back) {
			break
		}
		if time.Since(back) > 10*time.Second {
			c, _ := snapshot()
			t.Fatalf("no decrypt succeeded within 10s of the token's return: %v\n%s", c, p.Log)
		}
		time.Sleep(20 * time.Millisecond)
	}
	recovered := time.Since(back)
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wg.Wait()
	after, _ := snapshot()
	t.Logf("outcomes: %v during the outage, %v in all; first success %v after the token came back; slowest request %v",
		during, after, recovered, slowest)

	if during[xks.InternalException]+during[xks.DependencyTimeoutException] == 0 {
		t.Errorf("the outage was not seen by the load: %v", during)
	}
	for name := range after {
		switch name {
		case "OK", xks.InternalException, xks.DependencyTimeoutException:
		default:
			t.Errorf("%d requests answered %s", after[name], name)
		}
	}
	if slowest > 2*time.Second {
		t.Errorf("a request took %v: the proxy hung on the missing token", slowest)
	}
	// After the return every request succeeds again.
	for range 20 {
		if pt, err := hsm.decrypt("foo", e, aad); err != nil || string(pt) != "made before the outage" {
			t.Fatalf("decrypt after the token came back: %q, %v", pt, err)
		}
	}
	select {
	case <-p.Done():
		t.Fatalf("xks-proxy exited:\n%s", p.Log)
	default:
	}
}
