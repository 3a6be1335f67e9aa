//go:build cgo

package pkcs11_test

import (
	"context"
	"errors"
	"testing"

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
