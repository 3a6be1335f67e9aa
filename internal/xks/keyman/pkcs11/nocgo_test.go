//go:build !cgo

package pkcs11_test

import (
	"errors"
	"testing"

	"github.com/kmsd/kmsd/internal/xks/keyman/pkcs11"
)

// TestNoCgo: a build without cgo compiles and says PKCS#11 is unavailable
// (scripts/test.sh runs it with CGO_ENABLED=0).
func TestNoCgo(t *testing.T) {
	if _, err := pkcs11.Open(pkcs11.Config{Module: "/nonexistent.so", TokenLabel: "t"}); !errors.Is(err, pkcs11.ErrNoCgo) {
		t.Fatalf("Open without cgo = %v, want ErrNoCgo", err)
	}
	if err := pkcs11.CreateKey(pkcs11.Config{}, pkcs11.KeySpec{}); !errors.Is(err, pkcs11.ErrNoCgo) {
		t.Fatalf("CreateKey without cgo = %v, want ErrNoCgo", err)
	}
}
