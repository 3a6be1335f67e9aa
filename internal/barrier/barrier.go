// Package barrier encrypts every secret kmsd keeps at rest — key material,
// HSM crypto-user passwords, XKS proxy credentials — under one root key, in
// the manner of OpenBao's vault/barrier, so that the database never holds a
// secret in clear.
//
// Each value is sealed with AES-256-GCM under a fresh random nonce. The
// caller names the record the value belongs to (its storage key, say) as
// associated data, so a sealed value copied to another record does not open
// there. A sealed value is
//
//	version (1 byte) | key term (4 bytes, big-endian) | nonce (12 bytes) | ciphertext | tag (16 bytes)
//
// The version and the term are authenticated too. The term numbers the root
// key a value was sealed under, so that rotating the root key can later keep
// older terms readable while sealing under the newest; today there is one,
// term 1.
//
// Random 96-bit nonces keep a key safe for about 2^32 seals; rotation by
// term is the remedy long before a KMS gets there.
package barrier

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
)

// ErrOpen is returned by Open for a sealed value that was tampered with,
// moved to another record (different aad), or sealed under another key.
// It deliberately does not say which.
var ErrOpen = errors.New("barrier: cannot open sealed value")

// KeySize is the length of a root key: AES-256.
const KeySize = 32

const (
	version1   = 1
	termSize   = 4
	nonceSize  = 12
	tagSize    = 16
	headerSize = 1 + termSize + nonceSize

	// currentTerm is the term of the only root key until rotation exists.
	currentTerm = 1
)

// Barrier seals and opens values under a root key. It is safe for
// concurrent use.
type Barrier struct {
	aead cipher.AEAD
	term uint32
	rand io.Reader
	// derive is the HKDF pseudorandom key of the root key, from which
	// Derive makes purpose-bound secrets.
	derive []byte
}

// Option configures a Barrier.
type Option func(*Barrier)

// WithRand makes the Barrier draw nonces from r instead of crypto/rand.
// It is for tests that need a fixed output; anything else must use a
// cryptographically secure source, since a repeated nonce breaks AES-GCM.
func WithRand(r io.Reader) Option {
	return func(b *Barrier) { b.rand = r }
}

// New returns a Barrier sealing under rootKey, which must be KeySize bytes.
// The Barrier does not keep rootKey, so the caller may wipe it afterwards.
func New(rootKey []byte, opts ...Option) (*Barrier, error) {
	if len(rootKey) != KeySize {
		return nil, fmt.Errorf("barrier: root key must be %d bytes, got %d", KeySize, len(rootKey))
	}
	block, err := aes.NewCipher(rootKey)
	if err != nil {
		return nil, fmt.Errorf("barrier: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("barrier: %w", err)
	}
	prk, err := hkdf.Extract(sha256.New, rootKey, []byte("kmsd barrier derive v1"))
	if err != nil {
		return nil, fmt.Errorf("barrier: %w", err)
	}
	b := &Barrier{aead: aead, term: currentTerm, rand: rand.Reader, derive: prk}
	for _, opt := range opts {
		opt(b)
	}
	if b.rand == nil {
		return nil, errors.New("barrier: nil random source")
	}
	return b, nil
}

// Seal encrypts plaintext for the record named by aad, which must not be
// empty: an unbound value could be moved anywhere.
func (b *Barrier) Seal(aad string, plaintext []byte) ([]byte, error) {
	if err := checkAAD(aad); err != nil {
		return nil, fmt.Errorf("barrier: seal: %w", err)
	}
	out := make([]byte, headerSize, headerSize+len(plaintext)+tagSize)
	out[0] = version1
	binary.BigEndian.PutUint32(out[1:], b.term)
	nonce := out[1+termSize : headerSize]
	if _, err := io.ReadFull(b.rand, nonce); err != nil {
		return nil, fmt.Errorf("barrier: seal: reading nonce: %w", err)
	}
	return b.aead.Seal(out, nonce, plaintext, additionalData(out[0], b.term, aad)), nil
}

// Open decrypts a value sealed by Seal for the same aad, or returns an
// error wrapping ErrOpen.
func (b *Barrier) Open(aad string, sealed []byte) ([]byte, error) {
	if err := checkAAD(aad); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrOpen, err)
	}
	if len(sealed) < headerSize+tagSize {
		return nil, fmt.Errorf("%w: %d bytes is too short", ErrOpen, len(sealed))
	}
	if v := sealed[0]; v != version1 {
		return nil, fmt.Errorf("%w: unknown version %d", ErrOpen, v)
	}
	term := binary.BigEndian.Uint32(sealed[1:])
	if term != b.term {
		return nil, fmt.Errorf("%w: unknown key term %d", ErrOpen, term)
	}
	nonce := sealed[1+termSize : headerSize]
	pt, err := b.aead.Open(nil, nonce, sealed[headerSize:], additionalData(sealed[0], term, aad))
	if err != nil {
		return nil, ErrOpen
	}
	if pt == nil {
		pt = []byte{}
	}
	return pt, nil
}

func checkAAD(aad string) error {
	switch {
	case aad == "":
		return errors.New("empty aad")
	case uint64(len(aad)) > math.MaxUint32:
		return errors.New("aad too long")
	}
	return nil
}

// additionalData binds the version, the term and the caller's aad, each
// part of fixed size or length-prefixed so that no two different triples
// encode alike.
func additionalData(version byte, term uint32, aad string) []byte {
	ad := make([]byte, 0, 1+termSize+4+len(aad))
	ad = append(ad, version)
	ad = binary.BigEndian.AppendUint32(ad, term)
	ad = binary.BigEndian.AppendUint32(ad, uint32(len(aad)))
	return append(ad, aad...)
}

// Derive returns a 32-byte secret bound to the root key and to purpose
// (HKDF-SHA256 expand), for keyed derivations that must be stable for the
// deployment — key-material ids, working keys of imported material —
// without storing another secret. Distinct purposes give independent
// secrets; the caller clears the result after use.
func (b *Barrier) Derive(purpose string) []byte {
	out, err := hkdf.Expand(sha256.New, b.derive, purpose, 32)
	if err != nil {
		panic("barrier: derive: " + err.Error()) // only for lengths HKDF refuses
	}
	return out
}
