package pkcs11test

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
)

// The PKCS#11 implementations the tests run against. KMSD_TEST_PKCS11
// chooses: "softhsm2" (the default), "opencryptoki", or a comma-separated
// list. scripts/test.sh runs the whole suite on SoftHSM2 and then the tests
// parameterised by module once more with KMSD_TEST_PKCS11=opencryptoki:
// one implementation per process, since openCryptoki 3.8's C_Initialize
// crashes (SIGSEGV) in a process that has loaded and released SoftHSM2.
const (
	SoftHSM2     = "softhsm2"
	OpenCryptoki = "opencryptoki"
)

// OpenCryptokiModule is where Debian's opencryptoki package installs the
// PKCS#11 library (it talks to the pkcsslotd daemon).
const OpenCryptokiModule = "/usr/lib/x86_64-linux-gnu/pkcs11/libopencryptoki.so"

// Modules returns the implementations to test, from KMSD_TEST_PKCS11.
func Modules() []string {
	if v := os.Getenv("KMSD_TEST_PKCS11"); v != "" {
		return splitComma(v)
	}
	return []string{SoftHSM2}
}

func splitComma(s string) []string {
	var out []string
	start := 0
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == ',' {
			if i > start {
				out = append(out, s[start:i])
			}
			start = i + 1
		}
	}
	return out
}

// Script is scripts/opencryptoki.sh of this repository.
func Script(t testing.TB) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	p := filepath.Join(filepath.Dir(file), "..", "..", "..", "..", "..", "scripts", "opencryptoki.sh")
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("scripts/opencryptoki.sh: %v", err)
	}
	return p
}

// RequireOpenCryptoki fails (never skips) unless the library is installed
// and pkcsslotd runs: scripts/test.sh installs the package and starts the
// daemon with scripts/opencryptoki.sh start.
func RequireOpenCryptoki(t testing.TB) string {
	t.Helper()
	if _, err := os.Stat(OpenCryptokiModule); err != nil {
		t.Fatalf("openCryptoki is not installed (%s); run scripts/test.sh (Debian package opencryptoki)", OpenCryptokiModule)
	}
	if out, err := exec.Command(Script(t), "status").CombinedOutput(); err != nil {
		t.Fatalf("pkcsslotd is not running; start it with scripts/opencryptoki.sh start: %v %s", err, out)
	}
	return OpenCryptokiModule
}

// NewOpenCryptokiToken (re)initialises the software token of openCryptoki
// slot slot as label with user PIN pin and SO PIN soPIN (openCryptoki's
// PINs are 4 to 8 bytes). Its slots are fixed by the daemon's
// configuration, so test packages that run at once use different slots
// (scripts/opencryptoki.sh configures ten): e2e/hsm 0 and 1 (and 4 to 9,
// the pool its tests hand kmsd's CreateHsm, wiped there), e2e/xksproxy 2,
// internal/xks/keyman/pkcs11 3.
func NewOpenCryptokiToken(t testing.TB, slot, label, soPIN, pin string) *Token {
	t.Helper()
	mod := RequireOpenCryptoki(t)
	if out, err := exec.Command(Script(t), "init-token", slot, label, soPIN, pin).CombinedOutput(); err != nil {
		t.Fatalf("scripts/opencryptoki.sh init-token %s %s: %v\n%s", slot, label, err, out)
	}
	return &Token{Module: mod, Label: label, PIN: pin}
}
