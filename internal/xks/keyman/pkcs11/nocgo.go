//go:build !cgo

package pkcs11

import (
	"context"

	"github.com/kmsd/kmsd/internal/xks/keyman"
)

// Available reports whether this build can use PKCS#11.
const Available = false

// Manager is unusable without cgo.
type Manager struct{}

var _ keyman.Manager = (*Manager)(nil)

// Open always fails with ErrNoCgo.
func Open(Config) (*Manager, error) { return nil, ErrNoCgo }

// Describe fails with ErrNoCgo.
func (*Manager) Describe(context.Context, string) (keyman.Key, error) { return keyman.Key{}, ErrNoCgo }

// Encrypt fails with ErrNoCgo.
func (*Manager) Encrypt(context.Context, string, []byte, []byte) (keyman.Sealed, error) {
	return keyman.Sealed{}, ErrNoCgo
}

// Decrypt fails with ErrNoCgo.
func (*Manager) Decrypt(context.Context, string, []byte, []byte, []byte, []byte) ([]byte, error) {
	return nil, ErrNoCgo
}

// Health reports UNAVAILABLE.
func (*Manager) Health(context.Context) keyman.Health {
	return keyman.Health{Vendor: "none", EKMs: []keyman.EKM{{ID: "pkcs11", Model: "unavailable (no cgo)", Status: keyman.Unavailable}}}
}

// Close does nothing.
func (*Manager) Close() error { return nil }

// KeySpec describes a key for CreateKey.
type KeySpec struct {
	Label            string
	Encrypt, Decrypt bool
	Material         []byte
}

// CreateKey fails with ErrNoCgo.
func CreateKey(Config, KeySpec) error { return ErrNoCgo }
