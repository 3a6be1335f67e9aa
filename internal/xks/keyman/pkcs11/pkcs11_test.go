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
	conf := pkcs11test.NewConf(t, t.TempDir())
	tk := pkcs11test.NewToken(t, conf, "xks-test", "1234")
	tk.AddKey(t, "both", true, true, nil)
	tk.AddKey(t, "enc", true, false, nil)
	tk.AddKey(t, "dec", false, true, nil)
	tk.AddKey(t, "none", false, false, nil)
	tk.AddKey(t, "vector", true, true, keymantest.VectorKey())
	tk.KeygenWithTool(t, "tool")
	m, err := pkcs11.Open(tk.Config())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return tk, m
}

func TestConformance(t *testing.T) {
	_, m := setup(t)
	keymantest.Run(t, keymantest.Fixture{Manager: m, Both: "both", EncryptOnly: "enc", DecryptOnly: "dec",
		NoUsage: "none", Vector: "vector", Missing: "nope", Concurrency: 16, EnforceUsage: true})
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

func TestSurvivesTokenRestart(t *testing.T) {
	_, m := setup(t)
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
}

func TestWrongPIN(t *testing.T) {
	conf := pkcs11test.NewConf(t, t.TempDir())
	tk := pkcs11test.NewToken(t, conf, "xks-pin", "1234")
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
func TestHangingTokenTimesOut(t *testing.T) {
	_, m := setup(t)
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
func TestTokenReinitialised(t *testing.T) {
	conf := pkcs11test.NewConf(t, t.TempDir())
	material := bytes.Repeat([]byte{7}, 32)
	a := pkcs11test.NewToken(t, conf, "xks-a", "1234")
	a.AddKey(t, "k", true, true, material)
	b := pkcs11test.NewToken(t, conf, "xks-b", "1234")
	b.AddKey(t, "k", true, true, nil)
	open := func(tk *pkcs11test.Token) *pkcs11.Manager {
		m, err := pkcs11.Open(tk.Config())
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
