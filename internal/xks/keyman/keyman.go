// Package keyman is the contract between the XKS proxy and the external key managers
// (EKMs) behind it: a PKCS#11 token, or the proxy's own encrypted key file. A manager
// holds AES-256 keys named by external key id and performs AES-GCM with a 128-bit tag.
// keymantest holds the conformance suite every manager passes.
package keyman

import (
	"context"
	"errors"
	"slices"
)

// Errors a Manager returns, wrapped with %w. The proxy maps them to XKS error names;
// anything else is an InternalException.
var (
	// ErrKeyNotFound: no key with that id (KeyNotFoundException).
	ErrKeyNotFound = errors.New("keyman: key not found")
	// ErrInvalidCiphertext: authentication of ciphertext, IV, tag or AAD failed
	// (InvalidCiphertextException).
	ErrInvalidCiphertext = errors.New("keyman: invalid ciphertext")
	// ErrKeyUsage: the key manager refused the operation for this key
	// (InvalidKeyUsageException).
	ErrKeyUsage = errors.New("keyman: key usage not permitted")
	// ErrKeyDisabled: the key exists but is disabled (InvalidStateException).
	ErrKeyDisabled = errors.New("keyman: key disabled")
	// ErrUnavailable: the key manager cannot serve right now (InternalException).
	ErrUnavailable = errors.New("keyman: key manager unavailable")
	// ErrTimeout: the key manager did not answer before the context deadline
	// (DependencyTimeoutException).
	ErrTimeout = errors.New("keyman: key manager timed out")
)

// Key usages, as GetKeyMetadata reports them.
const (
	UsageEncrypt = "ENCRYPT"
	UsageDecrypt = "DECRYPT"
)

// Key describes an external key.
type Key struct {
	ID      string
	Spec    string   // "AES_256" for the only keys v1 can use
	Usage   []string // upper case, ENCRYPT and/or DECRYPT, possibly others
	Enabled bool
}

// Can reports whether k lists usage u.
func (k Key) Can(u string) bool { return slices.Contains(k.Usage, u) }

// Sealed is the output of an encryption: the IV the manager chose, the ciphertext
// (same length as the plaintext) and the 16-byte tag, split apart.
type Sealed struct {
	IV, Ciphertext, Tag []byte
}

// Status of one EKM as GetHealthStatus reports it.
type Status string

// The three EKM states of the spec.
const (
	Active      Status = "ACTIVE"
	Degraded    Status = "DEGRADED"
	Unavailable Status = "UNAVAILABLE"
)

// EKM is one key manager instance in a health report.
type EKM struct {
	ID     string
	Model  string
	Status Status
	Detail string // why it is not ACTIVE; for logs, never sent to KMS
}

// Health is the result of a deep health check.
type Health struct {
	Vendor string
	EKMs   []EKM // 1..10 entries
}

// Manager is an external key manager. Implementations are safe for concurrent use
// and honour the context's deadline, answering ErrTimeout when it passes.
type Manager interface {
	// Describe returns a key's attributes, or ErrKeyNotFound.
	Describe(ctx context.Context, id string) (Key, error)
	// Encrypt seals plaintext under key id with AES-256-GCM, a fresh 12-byte IV and
	// aad as the GCM additional data. It does not check Key.Usage: the caller does,
	// before any cryptography.
	Encrypt(ctx context.Context, id string, plaintext, aad []byte) (Sealed, error)
	// Decrypt opens a ciphertext (IV of 12 or 16 bytes, 16-byte tag), returning
	// ErrInvalidCiphertext when authentication fails.
	Decrypt(ctx context.Context, id string, iv, ciphertext, tag, aad []byte) ([]byte, error)
	// Health runs a deep check: a real encrypt/decrypt round trip with a dedicated
	// test key, never a customer key.
	Health(ctx context.Context) Health
	// Close releases the manager's resources.
	Close() error
}
