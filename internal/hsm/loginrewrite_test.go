//go:build cgo

package hsm

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestLoginDuringRewrite: a login whose re-initialisation meets the
// token's token.object mid-rewrite — another process's C_Login or
// C_SetPIN, which SoftHSM2 2.6.1 writes after truncating the file — and
// so reads the token without its user PIN (CKR_USER_PIN_NOT_INITIALIZED)
// re-initialises again after probeReinitEvery and logs in (issue #16:
// three nodes on one token directory, one rotating kmsuser's password
// while another resumed its login, left that node's custom key store
// without a login). A token that really has no user is refused after a
// bounded number of re-initialisations.
func TestLoginDuringRewrite(t *testing.T) {
	ctx := context.Background()
	m := softhsmModule(t)
	l := uniqueLabel("login")
	if err := m.InitToken(ctx, l, "sopin1234", FreeSlots{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.DeleteToken(ctx, l) })
	obj := filepath.Join(tokenDir(t, l), "token.object")
	noUser, err := os.ReadFile(obj) // the token as it is without its user PIN
	if err != nil {
		t.Fatal(err)
	}
	// A real token without a user: refused, after 1+loginRetries
	// re-initialisations at most.
	inits, torn := 0, 0
	var readAs func(b []byte, orig func() error) error
	hookInitialize(t, m, func(orig func() error) error {
		inits++
		if torn > 0 {
			torn--
			return readAs(noUser, orig)
		}
		return orig()
	})
	if err := m.Login(ctx, l, "userpin0"); !errors.Is(err, ErrUserNotFound) {
		t.Fatalf("Login to a token without a user = %v, want ErrUserNotFound", err)
	}
	if inits > 1+loginRetries {
		t.Errorf("%d initialisations for a token without a user, want at most %d", inits, 1+loginRetries)
	}

	if err := m.InitUserPIN(ctx, l, "sopin1234", "userpin0"); err != nil {
		t.Fatal(err)
	}
	withUser, err := os.ReadFile(obj)
	if err != nil {
		t.Fatal(err)
	}
	// This process's view is made stale (the token read without its
	// user), and the first re-initialisation after it meets the file
	// mid-rewrite in the same way; later ones read it whole.
	readAs = func(b []byte, orig func() error) error {
		if err := os.WriteFile(obj, b, 0o600); err != nil {
			return err
		}
		err := orig()
		if werr := os.WriteFile(obj, withUser, 0o600); werr != nil {
			t.Error(werr)
		}
		return err
	}
	torn = 1
	if !reinitNow(m, l) {
		t.Fatal("token not found")
	}
	time.Sleep(probeReinitEvery) // the login's own re-initialisation is not rate-limited away
	torn, inits = 1, 0
	if err := m.Login(ctx, l, "userpin0"); err != nil {
		t.Fatalf("Login after a re-initialisation met the token mid-rewrite: %v (%d initialisations)", err, inits)
	}
	if inits != 2 {
		t.Errorf("%d initialisations, want 2", inits)
	}
	if _, err := m.ListKeys(ctx, l); err != nil {
		t.Errorf("ListKeys after the login: %v", err)
	}
}
