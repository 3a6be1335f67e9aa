package ecbgcm

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"testing"
)

// TestAgainstAES compares the composed GCM with crypto/aes's own, over
// lengths around block boundaries, with and without AAD.
func TestAgainstAES(t *testing.T) {
	key := make([]byte, 32)
	rand.Read(key)
	blk, _ := aes.NewCipher(key)
	std, _ := cipher.NewGCM(blk)
	ecb := func(in []byte) ([]byte, error) {
		out := make([]byte, len(in))
		for i := 0; i < len(in); i += 16 {
			blk.Encrypt(out[i:], in[i:])
		}
		return out, nil
	}
	for _, n := range []int{0, 1, 15, 16, 17, 32, 100, 4096, 8192} {
		for _, aad := range [][]byte{nil, []byte("context")} {
			iv, pt := make([]byte, 12), make([]byte, n)
			rand.Read(iv)
			rand.Read(pt)
			got, err := Seal(ecb, iv, pt, aad)
			if err != nil {
				t.Fatalf("n=%d: %v", n, err)
			}
			if want := std.Seal(nil, iv, pt, aad); !bytes.Equal(got, want) {
				t.Fatalf("n=%d aad=%q: Seal differs from crypto/aes", n, aad)
			}
			back, err := Open(ecb, iv, got, aad)
			if err != nil || !bytes.Equal(back, pt) {
				t.Fatalf("n=%d: Open: %v", n, err)
			}
			got[len(got)-1] ^= 1
			if _, err := Open(ecb, iv, got, aad); !errors.Is(err, ErrOpen) {
				t.Fatalf("n=%d: tampered tag: %v", n, err)
			}
			got[len(got)-1] ^= 1
			if _, err := Open(ecb, iv, got, []byte("other")); !errors.Is(err, ErrOpen) {
				t.Fatalf("n=%d: wrong AAD: %v", n, err)
			}
		}
	}
	// Other IV sizes (XKS decrypts 16-byte ones) take the two-call path.
	for _, ivLen := range []int{1, 8, 16, 60} {
		std, _ := cipher.NewGCMWithNonceSize(blk, ivLen)
		for _, n := range []int{0, 17, 100} {
			iv, pt := make([]byte, ivLen), make([]byte, n)
			rand.Read(iv)
			rand.Read(pt)
			got, err := Seal(ecb, iv, pt, []byte("aad"))
			if err != nil || !bytes.Equal(got, std.Seal(nil, iv, pt, []byte("aad"))) {
				t.Fatalf("IV of %d bytes, n=%d: Seal differs from crypto/aes (%v)", ivLen, n, err)
			}
			if back, err := Open(ecb, iv, got, []byte("aad")); err != nil || !bytes.Equal(back, pt) {
				t.Fatalf("IV of %d bytes, n=%d: Open: %v", ivLen, n, err)
			}
		}
	}
	if _, err := Seal(ecb, nil, nil, nil); err == nil {
		t.Fatal("an empty IV was accepted")
	}
	if _, err := Open(ecb, make([]byte, 12), make([]byte, 15), nil); !errors.Is(err, ErrOpen) {
		t.Fatalf("short input: %v", err)
	}
}
