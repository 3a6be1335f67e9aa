package barrier

import (
	"crypto/subtle"
	"errors"
)

// CheckRecord is the storage key under which kmsd keeps the check value of
// its root key, and the additional data it is sealed with.
const CheckRecord = "barrier/check"

// checkPlaintext is the known value the check value seals. It is not a
// secret: the check value proves which key sealed it, nothing more.
var checkPlaintext = []byte("kmsd root key check value, version 1")

// ErrWrongKey is returned by VerifyCheck for a check value that the
// barrier's root key did not seal.
var ErrWrongKey = errors.New("barrier: the root key does not open the check value")

// SealCheck returns a check value for b's root key: a fixed, known
// plaintext sealed under it. Stored beside the data at first start, it lets
// a later start tell a wrong or replaced root key from a good one before
// anything else is read, without storing the key or anything derived from
// it but an AES-GCM ciphertext.
func (b *Barrier) SealCheck() ([]byte, error) {
	return b.Seal(CheckRecord, checkPlaintext)
}

// VerifyCheck returns nil if sealed is a check value made by SealCheck
// under b's root key, and an error wrapping ErrWrongKey otherwise.
func (b *Barrier) VerifyCheck(sealed []byte) error {
	pt, err := b.Open(CheckRecord, sealed)
	if err != nil {
		return errors.Join(ErrWrongKey, err)
	}
	if subtle.ConstantTimeCompare(pt, checkPlaintext) != 1 {
		return ErrWrongKey
	}
	return nil
}
