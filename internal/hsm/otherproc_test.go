//go:build cgo

package hsm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// softhsmModule is the package's SoftHSM2 module (tests share it: the
// library is loaded once per process), SOFTHSM2_CONF pointing at hsmDir.
func softhsmModule(t testing.TB) *module {
	t.Helper()
	s := openService(t.(*testing.T), true)
	toks, err := s.tokens()
	if err != nil {
		t.Fatal(err)
	}
	return toks.(*module)
}

func uniqueLabel(prefix string) string {
	b := make([]byte, 4)
	rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}

// util runs softhsm2-util, another process on the same token directory
// (as another kmsd node, or an operator, would).
func util(t testing.TB, args ...string) {
	t.Helper()
	out, err := exec.Command("softhsm2-util", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("softhsm2-util %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// TestTokenOfAnotherProcess: a token another process made after this one
// initialised the library (another kmsd node on a shared token directory)
// is found by the SO's calls — activation (SetSOPIN), the crypto user's
// creation (InitUserPIN) — not only by key operations and logins: the
// library is re-initialised when the label is not found (issue #16).
func TestTokenOfAnotherProcess(t *testing.T) {
	ctx := context.Background()
	m := softhsmModule(t)
	l := uniqueLabel("other")
	if err := m.Present(ctx, l); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("Present(%s) before it exists: %v", l, err)
	}
	util(t, "--init-token", "--free", "--label", l, "--so-pin", "sopin1234", "--pin", "userpin0")
	defer m.DeleteToken(ctx, l)
	if ok, err := m.UserPINInitialized(ctx, l); err != nil || !ok {
		t.Fatalf("UserPINInitialized(%s): %v, %v; want true, nil", l, ok, err)
	}
	// The library is re-initialised at most every probeReinitEvery.
	time.Sleep(2 * probeReinitEvery)
	l2 := uniqueLabel("other")
	util(t, "--init-token", "--free", "--label", l2, "--so-pin", "sopin1234", "--pin", "userpin0")
	defer m.DeleteToken(ctx, l2)
	if err := m.SetSOPIN(ctx, l2, "sopin1234", "sopin9999"); err != nil {
		t.Fatalf("SetSOPIN on another process's token: %v", err)
	}
	time.Sleep(2 * probeReinitEvery)
	l3 := uniqueLabel("other")
	util(t, "--init-token", "--free", "--label", l3, "--so-pin", "sopin1234", "--pin", "userpin0")
	defer m.DeleteToken(ctx, l3)
	if err := m.InitUserPIN(ctx, l3, "sopin1234", "userpin1"); err != nil {
		t.Fatalf("InitUserPIN on another process's token: %v", err)
	}
	if err := m.Login(ctx, l3, "userpin1"); err != nil {
		t.Fatal(err)
	}
	m.Logout(ctx, l3)
}
