//go:build cgo

package pkcs11_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/xks/keyman"
	"github.com/kmsd/kmsd/internal/xks/keyman/keymantest"
	"github.com/kmsd/kmsd/internal/xks/keyman/pkcs11"
	"github.com/kmsd/kmsd/internal/xks/keyman/pkcs11/pkcs11test"
)

func setup(t *testing.T) (*pkcs11test.Token, *pkcs11.Manager) {
	return setupWith(t, false)
}

// setupWith makes a token with the keys of the conformance suite and opens a
// manager on it, with session-object copies of the keys when copies is set.
func setupWith(t *testing.T, copies bool) (*pkcs11test.Token, *pkcs11.Manager) {
	return setupOn(t, pkcs11test.SoftHSM2, copies)
}

// newToken makes a token of implementation impl; openCryptoki's is slot 3
// of the pkcsslotd scripts/opencryptoki.sh runs.
func newToken(t *testing.T, impl, label, pin string) *pkcs11test.Token {
	t.Helper()
	if impl == pkcs11test.OpenCryptoki {
		return pkcs11test.NewOpenCryptokiToken(t, "3", label, "so-"+pin, pin)
	}
	return pkcs11test.NewToken(t, pkcs11test.NewConf(t, t.TempDir()), label, pin)
}

// setupOn is setupWith on a token of implementation impl.
func setupOn(t *testing.T, impl string, copies bool) (*pkcs11test.Token, *pkcs11.Manager) {
	tk := newToken(t, impl, "xks-test", "1234")
	tk.AddKey(t, "both", true, true, nil)
	tk.AddKey(t, "enc", true, false, nil)
	tk.AddKey(t, "dec", false, true, nil)
	tk.AddKey(t, "none", false, false, nil)
	tk.AddKey(t, "vector", true, true, keymantest.VectorKey())
	tk.KeygenWithTool(t, "tool")
	cfg := tk.Config()
	cfg.SessionKeyCopies = copies
	m, err := pkcs11.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return tk, m
}

// modes runs a test with the keys used as token objects and as session copies.
func modes(t *testing.T, test func(t *testing.T, copies bool)) {
	t.Run("token objects", func(t *testing.T) { test(t, false) })
	t.Run("session copies", func(t *testing.T) { test(t, true) })
}

// TestConformance runs the key manager suite on each PKCS#11 implementation
// under test (KMSD_TEST_PKCS11), with token objects and session copies.
func TestConformance(t *testing.T) {
	for _, impl := range pkcs11test.Modules() {
		t.Run(impl, func(t *testing.T) { conformance(t, impl) })
	}
}

func conformance(t *testing.T, impl string) {
	modes(t, func(t *testing.T, copies bool) {
		_, m := setupOn(t, impl, copies)
		keymantest.Run(t, keymantest.Fixture{Manager: m, Both: "both", EncryptOnly: "enc", DecryptOnly: "dec",
			NoUsage: "none", Vector: "vector", Missing: "nope", Concurrency: 16, EnforceUsage: true})
		_, cp, _ := pkcs11.KeyHandles(m, "both")
		if copies != (cp != 0) {
			t.Errorf("copy handle %d with SessionKeyCopies %v", cp, copies)
		}
	})
}

func TestToolKeyAndDuplicates(t *testing.T) {
	tk, m := setup(t)
	ctx := context.Background()
	k, err := m.Describe(ctx, "tool")
	if err != nil || k.Spec != "AES_256" || !k.Can("ENCRYPT") || !k.Can("DECRYPT") {
		t.Fatalf("pkcs11-tool key = %+v, %v", k, err)
	}
	tk.AddKey(t, "twin", true, true, nil)
	tk.AddKey(t, "twin", true, true, nil)
	_, err = m.Describe(ctx, "twin")
	if err == nil || errors.Is(err, keyman.ErrKeyNotFound) {
		t.Fatalf("duplicate label err = %v, want an internal error", err)
	}
}

func TestSurvivesTokenRestart(t *testing.T) { modes(t, survivesTokenRestart) }

func survivesTokenRestart(t *testing.T, copies bool) {
	_, m := setupWith(t, copies)
	ctx := context.Background()
	s, err := m.Encrypt(ctx, "both", []byte("before"), []byte("a"))
	if err != nil {
		t.Fatal(err)
	}
	// Closing every session of the application ends the login, as a token restart
	// does; object handles may go stale too.
	if err := pkcs11.SimulateRestart(m); err != nil {
		t.Fatal(err)
	}
	got, err := m.Decrypt(ctx, "both", s.IV, s.Ciphertext, s.Tag, []byte("a"))
	if err != nil || string(got) != "before" {
		t.Fatalf("decrypt after restart = %q, %v", got, err)
	}
	if h := m.Health(ctx); h.EKMs[0].Status != keyman.Active {
		t.Fatalf("health after restart = %+v", h)
	}
	if copies {
		// The copies went with their owner session: the next key resolved
		// gets a copy in a new one.
		pkcs11.Forget(m, "both")
		roundTrip(t, m, "both")
		if _, cp, _ := pkcs11.KeyHandles(m, "both"); cp == 0 {
			t.Fatal("no key copy after the restart")
		}
		sessionKeys(t, m, "both", 1)
	}
}

func TestWrongPIN(t *testing.T) {
	for _, impl := range pkcs11test.Modules() {
		t.Run(impl, func(t *testing.T) { wrongPIN(t, impl) })
	}
}

func wrongPIN(t *testing.T, impl string) {
	tk := newToken(t, impl, "xks-pin", "1234")
	cfg := tk.Config()
	cfg.PIN = "9999"
	if _, err := pkcs11.Open(cfg); err == nil {
		t.Fatal("wrong PIN accepted")
	}
	cfg = tk.Config()
	cfg.TokenLabel = "absent"
	if _, err := pkcs11.Open(cfg); err == nil {
		t.Fatal("absent token accepted")
	}
}

// PKCS#11 calls run in the caller's goroutine; once one overruns its deadline (a
// hanging token), later callers must still get ErrTimeout at theirs rather than wait
// for the token.
func TestHangingTokenTimesOut(t *testing.T) { modes(t, hangingTokenTimesOut) }

func hangingTokenTimesOut(t *testing.T, copies bool) {
	_, m := setupWith(t, copies)
	slow, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := pkcs11.Call(slow, m, func() error { <-slow.Done(); return nil }); err != nil {
		t.Fatalf("overrunning call = %v", err)
	}
	release := make(chan struct{})
	hung, cancel2 := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel2()
	err := pkcs11.Call(hung, m, func() error { <-release; return nil })
	close(release)
	if !errors.Is(err, keyman.ErrTimeout) {
		t.Fatalf("call on a hanging token = %v, want ErrTimeout", err)
	}
	ctx := context.Background()
	s, err := m.Encrypt(ctx, "both", []byte("after"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := m.Decrypt(ctx, "both", s.IV, s.Ciphertext, s.Tag, nil); err != nil || string(got) != "after" {
		t.Fatalf("decrypt after the hang = %q, %v", got, err)
	}
}

// A token deleted and initialised again (same label, PIN and key material; new
// serial, slot and handles) is found again without reopening the manager. SoftHSM2
// shows the new token only after C_Finalize and C_Initialize, which end the sessions
// of another manager on the same module too: that one must carry on regardless.
//
// With session copies, SoftHSM2 keeps serving the copies of the deleted token's keys
// until the manager refreshes them, within KeyCacheTTL.
func TestTokenReinitialised(t *testing.T) { modes(t, tokenReinitialised) }

func tokenReinitialised(t *testing.T, copies bool) {
	const ttl = 300 * time.Millisecond
	conf := pkcs11test.NewConf(t, t.TempDir())
	material := bytes.Repeat([]byte{7}, 32)
	a := pkcs11test.NewToken(t, conf, "xks-a", "1234")
	a.AddKey(t, "k", true, true, material)
	b := pkcs11test.NewToken(t, conf, "xks-b", "1234")
	b.AddKey(t, "k", true, true, nil)
	open := func(tk *pkcs11test.Token) *pkcs11.Manager {
		cfg := tk.Config()
		if copies {
			cfg.SessionKeyCopies, cfg.KeyCacheTTL = true, ttl
		}
		m, err := pkcs11.Open(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		return m
	}
	ma, mb := open(a), open(b)
	ctx := context.Background()
	sealed, err := ma.Encrypt(ctx, "k", []byte("before"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mb.Encrypt(ctx, "k", []byte("b"), nil); err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command("softhsm2-util", "--delete-token", "--token", "xks-a")
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+conf)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if copies {
		// The bound only keeps a broken manager from stalling the suite.
		for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(ttl / 4) {
			if _, err := ma.Encrypt(ctx, "k", []byte("x"), nil); err != nil {
				break
			}
		}
	}
	if _, err := ma.Encrypt(ctx, "k", []byte("x"), nil); !errors.Is(err, keyman.ErrUnavailable) {
		t.Fatalf("encrypt on the deleted token = %v, want ErrUnavailable", err)
	}
	if h := ma.Health(ctx); h.EKMs[0].Status != keyman.Unavailable {
		t.Fatalf("health of the deleted token = %+v", h)
	}
	a = pkcs11test.NewToken(t, conf, "xks-a", "1234")
	a.AddKey(t, "k", true, true, material)

	// The manager re-initialises the module at most once a second; the bound
	// only keeps a broken manager from stalling the suite.
	deadline := time.Now().Add(20 * time.Second)
	for ma.Health(ctx).EKMs[0].Status != keyman.Active {
		if time.Now().After(deadline) {
			t.Fatalf("token not found again: %+v", ma.Health(ctx))
		}
		time.Sleep(50 * time.Millisecond)
	}
	got, err := ma.Decrypt(ctx, "k", sealed.IV, sealed.Ciphertext, sealed.Tag, nil)
	if err != nil || string(got) != "before" {
		t.Fatalf("decrypt after the restart = %q, %v", got, err)
	}
	if _, err := mb.Encrypt(ctx, "k", []byte("b"), nil); err != nil {
		t.Fatalf("other token after the module was re-initialised: %v", err)
	}
	if h := mb.Health(ctx); h.EKMs[0].Status != keyman.Active {
		t.Fatalf("other token's health = %+v", h)
	}
}

func setupTTL(t *testing.T, ttl time.Duration) *pkcs11.Manager {
	conf := pkcs11test.NewConf(t, t.TempDir())
	tk := pkcs11test.NewToken(t, conf, "xks-copies", "1234")
	tk.AddKey(t, "both", true, true, nil)
	tk.AddKey(t, "other", true, true, nil)
	cfg := tk.Config()
	cfg.KeyCacheTTL, cfg.SessionKeyCopies = ttl, true
	m, err := pkcs11.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func roundTrip(t *testing.T, m *pkcs11.Manager, id string) {
	t.Helper()
	ctx := context.Background()
	s, err := m.Encrypt(ctx, id, []byte("copy"), []byte("a"))
	if err != nil {
		t.Fatalf("encrypt with %s: %v", id, err)
	}
	if got, err := m.Decrypt(ctx, id, s.IV, s.Ciphertext, s.Tag, []byte("a")); err != nil || string(got) != "copy" {
		t.Fatalf("decrypt with %s = %q, %v", id, got, err)
	}
}

func sessionKeys(t *testing.T, m *pkcs11.Manager, label string, want int) {
	t.Helper()
	n, err := pkcs11.SessionKeys(m, label)
	if err != nil || n != want {
		t.Fatalf("session objects labelled %s = %d, %v; want %d", label, n, err, want)
	}
}

// Operations run on a session-object copy of the token key, made once per cache
// entry; a refreshed or forgotten entry's copy is destroyed.
func TestSessionKeyCopies(t *testing.T) {
	const ttl = 300 * time.Millisecond
	m := setupTTL(t, ttl)
	sessionKeys(t, m, "both", 0)
	first := time.Now()
	roundTrip(t, m, "both")
	tok, cp, ok := pkcs11.KeyHandles(m, "both")
	if !ok || cp == 0 || cp == tok {
		t.Fatalf("key handles = %d, %d, %v; want a copy", tok, cp, ok)
	}
	sessionKeys(t, m, "both", 1)
	for range 20 {
		roundTrip(t, m, "both")
	}
	if _, cp2, _ := pkcs11.KeyHandles(m, "both"); cp2 != cp && time.Since(first) < ttl {
		t.Fatalf("copy %d replaced by %d within the TTL", cp, cp2)
	}
	sessionKeys(t, m, "both", 1)

	time.Sleep(ttl + 50*time.Millisecond)
	roundTrip(t, m, "both")
	if _, cp2, _ := pkcs11.KeyHandles(m, "both"); cp2 == 0 || cp2 == cp {
		t.Fatalf("copy after the TTL = %d, want a new one (old %d)", cp2, cp)
	}
	sessionKeys(t, m, "both", 1)

	roundTrip(t, m, "other")
	sessionKeys(t, m, "other", 1)
	pkcs11.Forget(m, "both")
	sessionKeys(t, m, "both", 0)
	sessionKeys(t, m, "other", 1)
	roundTrip(t, m, "both")
	sessionKeys(t, m, "both", 1)

	// A key unused for twice the TTL loses its copy when another is resolved.
	time.Sleep(2*ttl + 50*time.Millisecond)
	roundTrip(t, m, "both")
	sessionKeys(t, m, "other", 0)
	sessionKeys(t, m, "both", 1)
}

// Without SessionKeyCopies no session object is made.
func TestNoCopiesByDefault(t *testing.T) {
	_, m := setup(t)
	roundTrip(t, m, "both")
	if tok, cp, ok := pkcs11.KeyHandles(m, "both"); !ok || tok == 0 || cp != 0 {
		t.Fatalf("key handles = %d, %d, %v; want the token object alone", tok, cp, ok)
	}
	sessionKeys(t, m, "both", 0)
}

// A key the token refuses to copy is used as the token object.
func TestUncopyableKeyFallsBack(t *testing.T) {
	m := setupTTL(t, 5*time.Second)
	if err := pkcs11.AddUncopyableKey(m, "pinned"); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		roundTrip(t, m, "pinned")
	}
	tok, cp, ok := pkcs11.KeyHandles(m, "pinned")
	if !ok || tok == 0 || cp != 0 {
		t.Fatalf("key handles = %d, %d, %v; want the token object alone", tok, cp, ok)
	}
	sessionKeys(t, m, "pinned", 0)
	roundTrip(t, m, "both")
	sessionKeys(t, m, "both", 1)
}

// Deleting a token key, or changing its usage, takes effect within KeyCacheTTL
// (the copy made before carries on until then), and the copy goes with it.
func TestTokenKeyChangesWithinTTL(t *testing.T) {
	const ttl = 300 * time.Millisecond
	m := setupTTL(t, ttl)
	ctx := context.Background()
	roundTrip(t, m, "both")
	roundTrip(t, m, "other")

	if err := pkcs11.SetKeyUsage(m, "other", false, true); err != nil {
		t.Fatal(err)
	}
	if err := pkcs11.DeleteKey(m, "both"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(ttl)
	_, err := m.Encrypt(ctx, "both", []byte("x"), nil)
	if !errors.Is(err, keyman.ErrKeyNotFound) {
		t.Fatalf("encrypt with the deleted key after the TTL = %v, want ErrKeyNotFound", err)
	}
	sessionKeys(t, m, "both", 0)
	if _, err := m.Encrypt(ctx, "other", []byte("x"), nil); !errors.Is(err, keyman.ErrKeyUsage) {
		t.Fatalf("encrypt with a key no longer for encryption = %v, want ErrKeyUsage", err)
	}
	if k, err := m.Describe(ctx, "other"); err != nil || k.Can("ENCRYPT") || !k.Can("DECRYPT") {
		t.Fatalf("describe after the usage change = %+v, %v", k, err)
	}
	sessionKeys(t, m, "other", 1)
}
