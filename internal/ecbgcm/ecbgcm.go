// Package ecbgcm composes AES-GCM (128-bit tag) from a
// block-encrypt oracle: a PKCS#11 token that has CKM_AES_ECB but not
// CKM_AES_GCM (openCryptoki's software token as Debian ships it) encrypts,
// in one call, the blocks GCM needs — the hash subkey's zero block and the
// counter blocks — and the rest of GCM (XOR, GHASH, the tag check) runs in
// Go's crypto/cipher. The key never leaves the token, but the keystream and
// the hash subkey pass through this process's memory, which a token's own
// GCM would not expose: callers use it only when the token lacks GCM, and
// say so.
package ecbgcm

import (
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"fmt"
)

// ECB encrypts whole 16-byte blocks with the token's key (CKM_AES_ECB).
type ECB func(blocks []byte) ([]byte, error)

// NonceSize is GCM's usual IV size, which costs one call to the token;
// other sizes (XKS decrypts 16-byte IVs) cost two. Overhead is the tag.
const (
	NonceSize = 12
	Overhead  = 16
)

// ErrOpen is a ciphertext or tag that does not authenticate.
var ErrOpen = errors.New("ecbgcm: message authentication failed")

// Seal returns ciphertext||tag.
func Seal(ecb ECB, iv, plaintext, aad []byte) ([]byte, error) {
	g, t, err := prepare(ecb, iv, len(plaintext))
	if err != nil {
		return nil, err
	}
	out := g.Seal(nil, iv, plaintext, aad)
	if t.missed {
		return nil, errMissed
	}
	return out, nil
}

// Open checks the tag at the end of in and returns the plaintext.
func Open(ecb ECB, iv, in, aad []byte) ([]byte, error) {
	if len(in) < Overhead {
		return nil, ErrOpen
	}
	g, t, err := prepare(ecb, iv, len(in)-Overhead)
	if err != nil {
		return nil, err
	}
	out, err := g.Open(nil, iv, in, aad)
	if t.missed {
		return nil, errMissed
	}
	if err != nil {
		return nil, ErrOpen
	}
	return out, nil
}

var errMissed = errors.New("ecbgcm: GCM asked for a block that was not encrypted")

// prepare has the token encrypt every block GCM will ask for a message of
// n bytes: the zero block (hash subkey), J0 (tag mask) and J0+1… (the
// keystream), and returns a GCM over them. With a 96-bit IV, J0 is the IV
// and a counter of 1; with another size it is a GHASH of the IV under the
// hash subkey, so the subkey is encrypted first and a dry run of Seal over
// n zero bytes collects the blocks GCM asks for (which depend on the IV
// and n only), which are then encrypted.
func prepare(ecb ECB, iv []byte, n int) (cipher.AEAD, *table, error) {
	if len(iv) == 0 {
		return nil, nil, fmt.Errorf("ecbgcm: empty IV")
	}
	if len(iv) != NonceSize {
		h, err := encrypt(ecb, make([]byte, 16))
		if err != nil {
			return nil, nil, err
		}
		t := &table{m: map[[16]byte][16]byte{{}: [16]byte(h)}, record: true}
		g, err := cipher.NewGCMWithNonceSize(t, len(iv))
		if err != nil {
			return nil, nil, err
		}
		g.Seal(nil, iv, make([]byte, n), nil)
		in := t.asked
		t.asked, t.record, t.missed = nil, false, false
		out, err := encrypt(ecb, in)
		if err != nil {
			return nil, nil, err
		}
		for i := 0; i < len(in); i += 16 {
			t.m[[16]byte(in[i:])] = [16]byte(out[i:])
		}
		return g, t, nil
	}
	count := 2 + (n+15)/16
	in := make([]byte, 16*count)
	var j0 [16]byte
	copy(j0[:], iv)
	for i := 1; i < count; i++ {
		b := in[16*i : 16*i+16]
		copy(b, j0[:12])
		binary.BigEndian.PutUint32(b[12:], uint32(i))
	}
	out, err := encrypt(ecb, in)
	if err != nil {
		return nil, nil, err
	}
	t := &table{m: make(map[[16]byte][16]byte, count)}
	for i := 0; i < count; i++ {
		t.m[[16]byte(in[16*i:])] = [16]byte(out[16*i:])
	}
	g, err := cipher.NewGCM(t)
	return g, t, err
}

// encrypt runs ecb and checks the length of its answer.
func encrypt(ecb ECB, in []byte) ([]byte, error) {
	out, err := ecb(in)
	if err != nil {
		return nil, err
	}
	if len(out) != len(in) {
		return nil, fmt.Errorf("ecbgcm: %d bytes encrypted for %d", len(out), len(in))
	}
	return out, nil
}

// table is a cipher.Block that knows the encryption of the blocks the
// token encrypted, and nothing else.
type table struct {
	m      map[[16]byte][16]byte
	missed bool
	record bool   // collect the blocks asked for that it does not know
	asked  []byte // those blocks, in order
}

func (t *table) BlockSize() int { return 16 }

func (t *table) Encrypt(dst, src []byte) {
	v, ok := t.m[[16]byte(src)]
	if !ok {
		t.missed = true
		if t.record {
			t.asked = append(t.asked, src[:16]...)
		}
	}
	copy(dst, v[:])
}

func (t *table) Decrypt(dst, src []byte) { panic("ecbgcm: GCM never decrypts a block") }
