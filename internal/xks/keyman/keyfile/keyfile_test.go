package keyfile

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/xks/keyman"
	"github.com/kmsd/kmsd/internal/xks/keyman/keymantest"
)

var pass = []byte("correct horse battery staple")

func newFile(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "keys.json")
	now := time.Now()
	for _, k := range []struct {
		id, usage string
		material  []byte
	}{
		{"both", "ENCRYPT,DECRYPT", nil},
		{"enc", "ENCRYPT", nil},
		{"dec", "DECRYPT", nil},
		{"none", "", nil},
		{"vector", "DECRYPT,ENCRYPT", keymantest.VectorKey()},
		{"off", "ENCRYPT,DECRYPT", nil},
	} {
		usage, err := ParseUsage(k.usage)
		if err != nil {
			t.Fatal(err)
		}
		if err := CreateKey(path, pass, MinIterations, k.id, usage, k.material, now); err != nil {
			t.Fatal(err)
		}
	}
	if err := SetEnabled(path, pass, "off", false); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestConformance(t *testing.T) {
	path := newFile(t)
	m, err := Open(path, pass, Options{PollInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	keymantest.Run(t, keymantest.Fixture{Manager: m, Both: "both", EncryptOnly: "enc", DecryptOnly: "dec",
		NoUsage: "none", Vector: "vector", Disabled: "off", Missing: "nope"})
}

func TestFileIsEncryptedAndPrivate(t *testing.T) {
	path := newFile(t)
	raw, _ := os.ReadFile(path)
	if bytes.Contains(raw, []byte("both")) || bytes.Contains(raw, keymantest.VectorKey()) {
		t.Fatal("key file reveals ids or material")
	}
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode = %v", fi.Mode())
	}
	if _, err := Load(path, []byte("wrong")); !errors.Is(err, ErrBadPassphrase) {
		t.Fatalf("wrong passphrase: %v", err)
	}
}

func TestTamperedHeaderFails(t *testing.T) {
	path := newFile(t)
	raw, _ := os.ReadFile(path)
	var env map[string]any
	json.Unmarshal(raw, &env)
	env["kdf"].(map[string]any)["iterations"] = 1001 // same passphrase, weaker claim
	raw, _ = json.Marshal(env)
	os.WriteFile(path, raw, 0o600)
	if _, err := Load(path, pass); err == nil {
		t.Fatal("tampered header accepted")
	}
}

func TestCreateErrors(t *testing.T) {
	path := newFile(t)
	if err := CreateKey(path, pass, 0, "both", nil, nil, time.Now()); !errors.Is(err, ErrKeyExists) {
		t.Errorf("duplicate: %v", err)
	}
	if err := CreateKey(path, pass, 0, "bad/id", nil, nil, time.Now()); err == nil {
		t.Error("bad id accepted")
	}
	if err := SetEnabled(path, pass, "nope", true); !errors.Is(err, ErrNoKey) {
		t.Errorf("enable missing: %v", err)
	}
	if _, err := ParseUsage("ENCRYPT,SIGN"); err == nil {
		t.Error("SIGN accepted")
	}
	if u, _ := ParseUsage("decrypt, encrypt,ENCRYPT"); len(u) != 2 || u[0] != "DECRYPT" {
		t.Errorf("ParseUsage = %v", u)
	}
}

func TestReloadSeesChangesAndSurvivesCorruption(t *testing.T) {
	path := newFile(t)
	m, err := Open(path, pass, Options{PollInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ctx := context.Background()
	if err := SetEnabled(path, pass, "both", false); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(3 * time.Second)
	for {
		k, _ := m.Describe(ctx, "both")
		if !k.Enabled {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("disable not picked up by polling")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := m.Encrypt(ctx, "both", []byte("x"), nil); !errors.Is(err, keyman.ErrKeyDisabled) {
		t.Fatalf("Encrypt(disabled) = %v", err)
	}
	os.WriteFile(path, []byte("garbage"), 0o600)
	if err := m.Reload(); err == nil {
		t.Fatal("corrupt file accepted")
	}
	if _, err := m.Describe(ctx, "vector"); err != nil {
		t.Fatalf("keys lost after failed reload: %v", err)
	}
	if h := m.Health(ctx); h.EKMs[0].Status != keyman.Degraded {
		t.Fatalf("health after failed reload = %+v", h)
	}
}
