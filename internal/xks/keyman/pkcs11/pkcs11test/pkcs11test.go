// Package pkcs11test creates throw-away SoftHSM2 tokens for tests: a token directory
// and a softhsm2.conf in a temporary directory, selected through SOFTHSM2_CONF.
package pkcs11test

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/kmsd/kmsd/internal/xks/keyman/pkcs11"
)

// DefaultModule is where Debian's softhsm2 package installs the module.
const DefaultModule = "/usr/lib/softhsm/libsofthsm2.so"

// Token is an initialised SoftHSM2 token.
type Token struct {
	Conf   string // path of the softhsm2.conf to put in SOFTHSM2_CONF
	Module string
	Label  string
	PIN    string
}

// Module returns the SoftHSM2 module path (env SOFTHSM2_MODULE overrides). It
// skips only in a build without cgo, where PKCS#11 is absent by design; a
// missing SoftHSM2 fails the test, since scripts/test.sh installs it.
func Module(t testing.TB) string {
	t.Helper()
	if !pkcs11.Available {
		t.Skip("built without cgo: PKCS#11 unavailable")
	}
	mod := os.Getenv("SOFTHSM2_MODULE")
	if mod == "" {
		mod = DefaultModule
	}
	if _, err := os.Stat(mod); err != nil {
		t.Fatalf("SoftHSM2 module not installed (%s); run scripts/test.sh or e2e/xksproxy/deps.sh", mod)
	}
	if _, err := exec.LookPath("softhsm2-util"); err != nil {
		t.Fatal("softhsm2-util not installed; run scripts/test.sh or e2e/xksproxy/deps.sh")
	}
	return mod
}

// NewConf writes a softhsm2.conf with its own token directory under dir and points
// SOFTHSM2_CONF of this process at it (t.Setenv, so the test must not be parallel).
func NewConf(t testing.TB, dir string) string {
	t.Helper()
	tokens := filepath.Join(dir, "tokens")
	if err := os.MkdirAll(tokens, 0o700); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	body := "directories.tokendir = " + tokens + "\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n"
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SOFTHSM2_CONF", conf)
	return conf
}

// NewToken initialises a token labelled label with user PIN pin in the SoftHSM2
// configuration conf.
func NewToken(t testing.TB, conf, label, pin string) *Token {
	t.Helper()
	mod := Module(t)
	cmd := exec.Command("softhsm2-util", "--init-token", "--free", "--label", label, "--pin", pin, "--so-pin", "so-"+pin)
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+conf)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("softhsm2-util --init-token: %v\n%s", err, out)
	}
	return &Token{Conf: conf, Module: mod, Label: label, PIN: pin}
}

// Config returns a manager configuration for the token.
func (tk *Token) Config() pkcs11.Config {
	return pkcs11.Config{Module: tk.Module, TokenLabel: tk.Label, PIN: tk.PIN}
}

// AddKey creates an AES-256 key on the token from this process (material nil means
// generated in the token).
func (tk *Token) AddKey(t testing.TB, label string, encrypt, decrypt bool, material []byte) {
	t.Helper()
	if err := pkcs11.CreateKey(tk.Config(), pkcs11.KeySpec{Label: label, Encrypt: encrypt, Decrypt: decrypt, Material: material}); err != nil {
		t.Fatalf("create key %s: %v", label, err)
	}
}

// KeygenWithTool creates an AES-256 key with OpenSC's pkcs11-tool, the way operators
// provision tokens (CKA_ENCRYPT and CKA_DECRYPT set).
func (tk *Token) KeygenWithTool(t testing.TB, label string) {
	t.Helper()
	if _, err := exec.LookPath("pkcs11-tool"); err != nil {
		t.Fatal("pkcs11-tool not installed; run scripts/test.sh or e2e/xksproxy/deps.sh")
	}
	cmd := exec.Command("pkcs11-tool", "--module", tk.Module, "--token-label", tk.Label, "--login", "--pin", tk.PIN,
		"--keygen", "--key-type", "AES:32", "--label", label, "--usage-decrypt")
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+tk.Conf)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("pkcs11-tool --keygen: %v\n%s", err, out)
	}
}
