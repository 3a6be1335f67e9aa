// Package pkcs11 is the proxy's PKCS#11 key manager: AES-256 keys on any PKCS#11
// token, found by CKA_LABEL = external key id, used with CKM_AES_GCM and a 128-bit
// tag. Usage comes from CKA_ENCRYPT / CKA_DECRYPT. Sessions are pooled; the login and
// the slot are re-established after a token restart. Builds without cgo compile a stub
// whose Open reports PKCS#11 as unavailable.
package pkcs11

import (
	"errors"
	"io"
	"log/slog"
	"time"
)

// ErrNoCgo is returned by Open in builds without cgo.
var ErrNoCgo = errors.New("pkcs11: this xks-proxy was built without cgo; PKCS#11 is unavailable")

// Config selects a token and tunes the manager.
type Config struct {
	Module     string // path of the PKCS#11 library
	TokenLabel string // CKA_LABEL of the token (CK_TOKEN_INFO.label)
	PIN        string // CKU_USER PIN
	// PoolSize bounds the number of open sessions (default 16).
	PoolSize int
	// HealthKeyLabel names a dedicated AES key for the deep health check. Empty means
	// an ephemeral session key generated for each check, so customer keys never
	// appear in the HSM's logs for health checks.
	HealthKeyLabel string
	// KeyCacheTTL is how long a key's handle and attributes are reused (default 5s;
	// negative disables caching).
	KeyCacheTTL time.Duration
	// SessionKeyCopies runs the cryptography on a session-object copy of each token
	// key (C_CopyObject, CKA_TOKEN false), made when the key is resolved and
	// replaced when its cache entry is refreshed, instead of on the token object
	// itself. Modules that consult a token object's store on every operation
	// (SoftHSM2 reads the key's file on each C_EncryptInit and C_DecryptInit) then
	// do so once per KeyCacheTTL. The price: the token no longer sees each
	// operation, so a token key deleted or its usage changed, and on SoftHSM2 a
	// token deleted, is noticed at the next refresh, within KeyCacheTTL, rather than
	// at the next operation. Keys with CKA_COPYABLE false are used as before. It
	// needs caching (KeyCacheTTL > 0) and one session more than PoolSize.
	SessionKeyCopies bool
	Logger           *slog.Logger
	Rand             io.Reader // IV source; crypto/rand by default
}

func (c *Config) defaults() {
	if c.PoolSize <= 0 {
		c.PoolSize = 16
	}
	if c.KeyCacheTTL == 0 {
		c.KeyCacheTTL = 5 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}
