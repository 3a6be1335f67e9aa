// Package kwp is AES key wrap with padding (RFC 5649, NIST SP 800-38F
// KWP), the second half of the RSA_AES_KEY_WRAP_* wrapping algorithms of
// KMS's ImportKeyMaterial: the caller wraps the key material under a fresh
// AES key with KWP and that AES key under RSA-OAEP. The Go standard library
// has no key wrap; this is RFC 3394's W over AES with RFC 5649's alternative
// initial value, byte for byte what OpenSSL's id-aesNNN-wrap-pad does.
package kwp

import (
	"crypto/aes"
	"crypto/subtle"
	"encoding/binary"
	"errors"
)

// ErrUnwrap is returned for a wrapped key that fails the integrity
// check: a wrong key, a corrupted value or one that is not KWP at all.
// It does not say which.
var ErrUnwrap = errors.New("kwp: integrity check failed")

// ErrKeySize is returned for a key-encryption key that is not 16, 24 or 32
// bytes.
var ErrKeySize = errors.New("kwp: key-encryption key must be 16, 24 or 32 bytes")

// aivPrefix is RFC 5649's alternative initial value, before the 32-bit
// message length indicator.
var aivPrefix = [4]byte{0xA6, 0x59, 0x59, 0xA6}

// maxLen bounds the plaintext length: the MLI is 32 bits.
const maxLen = 1<<32 - 1

// Wrap wraps plaintext (1 to 2^32−1 bytes) under kek.
func Wrap(kek, plaintext []byte) ([]byte, error) {
	b, err := newCipher(kek)
	if err != nil {
		return nil, err
	}
	if len(plaintext) == 0 || uint64(len(plaintext)) > maxLen {
		return nil, errors.New("kwp: plaintext length out of range")
	}
	n := (len(plaintext) + 7) / 8 // semiblocks of padded plaintext
	var a [8]byte
	copy(a[:], aivPrefix[:])
	binary.BigEndian.PutUint32(a[4:], uint32(len(plaintext)))
	out := make([]byte, 8+8*n)
	copy(out[8:], plaintext) // zero padding is already there
	if n == 1 {
		// RFC 5649 §4.1: one semiblock is encrypted in one AES block.
		copy(out[:8], a[:])
		b.Encrypt(out, out)
		return out, nil
	}
	// RFC 3394 §2.2.1, index-based form.
	var blk [16]byte
	for j := 0; j < 6; j++ {
		for i := 1; i <= n; i++ {
			copy(blk[:8], a[:])
			copy(blk[8:], out[8*i:8*i+8])
			b.Encrypt(blk[:], blk[:])
			t := uint64(n*j + i)
			binary.BigEndian.PutUint64(a[:], binary.BigEndian.Uint64(blk[:8])^t)
			copy(out[8*i:8*i+8], blk[8:])
		}
	}
	copy(out[:8], a[:])
	return out, nil
}

// Unwrap unwraps a value made by Wrap under kek, checking its integrity
// and padding.
func Unwrap(kek, wrapped []byte) ([]byte, error) {
	b, err := newCipher(kek)
	if err != nil {
		return nil, err
	}
	if len(wrapped) < 16 || len(wrapped)%8 != 0 {
		return nil, ErrUnwrap
	}
	n := len(wrapped)/8 - 1
	var a [8]byte
	p := make([]byte, 8*n)
	if n == 1 {
		var blk [16]byte
		b.Decrypt(blk[:], wrapped)
		copy(a[:], blk[:8])
		copy(p, blk[8:])
		clear(blk[:])
	} else {
		copy(a[:], wrapped[:8])
		copy(p, wrapped[8:])
		var blk [16]byte
		for j := 5; j >= 0; j-- {
			for i := n; i >= 1; i-- {
				t := uint64(n*j + i)
				binary.BigEndian.PutUint64(blk[:8], binary.BigEndian.Uint64(a[:])^t)
				copy(blk[8:], p[8*(i-1):8*i])
				b.Decrypt(blk[:], blk[:])
				copy(a[:], blk[:8])
				copy(p[8*(i-1):8*i], blk[8:])
			}
		}
		clear(blk[:])
	}
	// RFC 5649 §3: the prefix, a length within the last semiblock, and
	// zero padding. All three are checked before failing, without early
	// exit on the secret-dependent parts.
	ok := subtle.ConstantTimeCompare(a[:4], aivPrefix[:])
	mli := int(binary.BigEndian.Uint32(a[4:]))
	if mli <= 8*(n-1) || mli > 8*n {
		ok = 0
		mli = 8 * n
	}
	var pad byte
	for _, c := range p[mli:] {
		pad |= c
	}
	ok &= subtle.ConstantTimeByteEq(pad, 0)
	if ok != 1 {
		clear(p)
		return nil, ErrUnwrap
	}
	return p[:mli], nil
}

type block interface {
	Encrypt(dst, src []byte)
	Decrypt(dst, src []byte)
}

func newCipher(kek []byte) (block, error) {
	switch len(kek) {
	case 16, 24, 32:
	default:
		return nil, ErrKeySize
	}
	return aes.NewCipher(kek)
}
