// Package keymantest is the conformance suite for keyman.Manager implementations.
package keymantest

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/xks"
	"github.com/kmsd/kmsd/internal/xks/keyman"
)

// VectorKey is the key material the Fixture's VectorKey must hold: bytes 0x00..0x1f,
// the key of the spec notes' AES-GCM test vectors.
func VectorKey() []byte {
	k := make([]byte, 32)
	for i := range k {
		k[i] = byte(i)
	}
	return k
}

// Fixture names the keys a manager under test must hold. Every key is AES-256.
type Fixture struct {
	Manager      keyman.Manager
	Both         string // ENCRYPT and DECRYPT, enabled
	EncryptOnly  string
	DecryptOnly  string
	NoUsage      string
	Vector       string // ENCRYPT and DECRYPT, material VectorKey()
	Disabled     string // optional: a disabled key
	Missing      string // an id that does not exist
	Concurrency  int    // goroutines for the parallel test (default 8)
	EnforceUsage bool   // the manager itself refuses operations the key's usage forbids
}

// Run runs the conformance suite.
func Run(t *testing.T, f Fixture) {
	ctx := context.Background()
	m := f.Manager
	t.Run("Describe", func(t *testing.T) {
		tests := []struct {
			id    string
			usage []string
		}{
			{f.Both, []string{"DECRYPT", "ENCRYPT"}},
			{f.EncryptOnly, []string{"ENCRYPT"}},
			{f.DecryptOnly, []string{"DECRYPT"}},
			{f.NoUsage, nil},
		}
		for _, tc := range tests {
			k, err := m.Describe(ctx, tc.id)
			if err != nil {
				t.Fatalf("Describe(%s): %v", tc.id, err)
			}
			// Other usages (SIGN, WRAP…) may be listed; ENCRYPT/DECRYPT must be exact.
			var got []string
			for _, u := range []string{keyman.UsageDecrypt, keyman.UsageEncrypt} {
				if k.Can(u) {
					got = append(got, u)
				}
			}
			if k.ID != tc.id || k.Spec != xks.KeySpecAES256 || !k.Enabled || !slices.Equal(got, tc.usage) {
				t.Errorf("Describe(%s) = %+v, want usage %v", tc.id, k, tc.usage)
			}
		}
		if _, err := m.Describe(ctx, f.Missing); !errors.Is(err, keyman.ErrKeyNotFound) {
			t.Errorf("Describe(missing) err = %v", err)
		}
		if f.Disabled != "" {
			k, err := m.Describe(ctx, f.Disabled)
			if err != nil || k.Enabled {
				t.Errorf("Describe(disabled) = %+v, %v", k, err)
			}
		}
	})
	t.Run("RoundTrip", func(t *testing.T) {
		for _, n := range []int{1, 12, 4300, 8192} {
			pt := bytes.Repeat([]byte{byte(n)}, n)
			aad := []byte(fmt.Sprintf("aad-%d", n))
			s, err := m.Encrypt(ctx, f.Both, pt, aad)
			if err != nil {
				t.Fatalf("Encrypt(%d): %v", n, err)
			}
			if len(s.IV) != 12 || len(s.Tag) != 16 || len(s.Ciphertext) != n {
				t.Fatalf("Encrypt(%d) shapes iv=%d ct=%d tag=%d", n, len(s.IV), len(s.Ciphertext), len(s.Tag))
			}
			got, err := m.Decrypt(ctx, f.Both, s.IV, s.Ciphertext, s.Tag, aad)
			if err != nil || !bytes.Equal(got, pt) {
				t.Fatalf("Decrypt(%d) = %v", n, err)
			}
		}
	})
	t.Run("FreshIVs", func(t *testing.T) {
		a, err1 := m.Encrypt(ctx, f.Both, []byte("x"), nil)
		b, err2 := m.Encrypt(ctx, f.Both, []byte("x"), nil)
		if err1 != nil || err2 != nil || bytes.Equal(a.IV, b.IV) {
			t.Fatalf("IVs repeat or errors: %v %v", err1, err2)
		}
	})
	t.Run("Tamper", func(t *testing.T) {
		pt, aad := []byte("attack at dawn"), []byte("context")
		s, err := m.Encrypt(ctx, f.Both, pt, aad)
		if err != nil {
			t.Fatal(err)
		}
		flip := func(b []byte) []byte { c := bytes.Clone(b); c[0] ^= 1; return c }
		cases := map[string]func() ([]byte, error){
			"ciphertext": func() ([]byte, error) { return m.Decrypt(ctx, f.Both, s.IV, flip(s.Ciphertext), s.Tag, aad) },
			"iv":         func() ([]byte, error) { return m.Decrypt(ctx, f.Both, flip(s.IV), s.Ciphertext, s.Tag, aad) },
			"tag":        func() ([]byte, error) { return m.Decrypt(ctx, f.Both, s.IV, s.Ciphertext, flip(s.Tag), aad) },
			"aad":        func() ([]byte, error) { return m.Decrypt(ctx, f.Both, s.IV, s.Ciphertext, s.Tag, flip(aad)) },
			"no aad":     func() ([]byte, error) { return m.Decrypt(ctx, f.Both, s.IV, s.Ciphertext, s.Tag, nil) },
			"other key":  func() ([]byte, error) { return m.Decrypt(ctx, f.Vector, s.IV, s.Ciphertext, s.Tag, aad) },
		}
		for name, fn := range cases {
			if _, err := fn(); !errors.Is(err, keyman.ErrInvalidCiphertext) {
				t.Errorf("%s: err = %v, want ErrInvalidCiphertext", name, err)
			}
		}
		// The manager still works after failures (no operation left active).
		if got, err := m.Decrypt(ctx, f.Both, s.IV, s.Ciphertext, s.Tag, aad); err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("Decrypt after tamper: %v", err)
		}
	})
	t.Run("Vectors", func(t *testing.T) {
		// The spec notes' vectors: IV 00..0b, plaintext "Hello World!".
		iv := []byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}
		eff, _ := xks.EffectiveAAD([]byte("project=nile,department=marketing"), []byte("key_version=1"))
		ct := []byte{0x0f, 0x67, 0xba, 0x77, 0xaa, 0xc5, 0x95, 0x74, 0xff, 0x2d, 0xf3, 0xaa}
		tag := []byte{0xcf, 0x5e, 0x89, 0xa6, 0x2f, 0x98, 0x11, 0x5a, 0xcf, 0x7f, 0x2e, 0xf1, 0x3a, 0x44, 0x4d, 0x57}
		got, err := m.Decrypt(ctx, f.Vector, iv, ct, tag, eff)
		if err != nil || string(got) != "Hello World!" {
			t.Fatalf("vector decrypt = %q, %v", got, err)
		}
		// A 16-byte IV, sealed here with crypto/cipher.
		block, _ := aes.NewCipher(VectorKey())
		gcm, _ := cipher.NewGCMWithNonceSize(block, 16)
		iv16 := bytes.Repeat([]byte{7}, 16)
		out := gcm.Seal(nil, iv16, []byte("sixteen byte iv"), eff)
		got, err = m.Decrypt(ctx, f.Vector, iv16, out[:len(out)-16], out[len(out)-16:], eff)
		if err != nil || string(got) != "sixteen byte iv" {
			t.Fatalf("16-byte IV decrypt = %q, %v", got, err)
		}
		// And the manager's own output opens with crypto/cipher.
		s, err := m.Encrypt(ctx, f.Vector, []byte("Hello World!"), eff)
		if err != nil {
			t.Fatal(err)
		}
		gcm12, _ := cipher.NewGCM(block)
		if p, err := gcm12.Open(nil, s.IV, append(bytes.Clone(s.Ciphertext), s.Tag...), eff); err != nil || string(p) != "Hello World!" {
			t.Fatalf("crypto/cipher cannot open manager output: %v", err)
		}
	})
	t.Run("NotFound", func(t *testing.T) {
		if _, err := m.Encrypt(ctx, f.Missing, []byte("x"), nil); !errors.Is(err, keyman.ErrKeyNotFound) {
			t.Errorf("Encrypt(missing) = %v", err)
		}
		if _, err := m.Decrypt(ctx, f.Missing, make([]byte, 12), []byte("x"), make([]byte, 16), nil); !errors.Is(err, keyman.ErrKeyNotFound) {
			t.Errorf("Decrypt(missing) = %v", err)
		}
	})
	if f.EnforceUsage {
		t.Run("Usage", func(t *testing.T) {
			if _, err := m.Encrypt(ctx, f.DecryptOnly, []byte("x"), nil); !errors.Is(err, keyman.ErrKeyUsage) {
				t.Errorf("Encrypt(decrypt-only) = %v", err)
			}
			if _, err := m.Decrypt(ctx, f.EncryptOnly, make([]byte, 12), []byte("x"), make([]byte, 16), nil); !errors.Is(err, keyman.ErrKeyUsage) {
				t.Errorf("Decrypt(encrypt-only) = %v", err)
			}
		})
	}
	t.Run("Deadline", func(t *testing.T) {
		dctx, cancel := context.WithDeadline(ctx, time.Now().Add(-time.Second))
		defer cancel()
		if _, err := m.Encrypt(dctx, f.Both, []byte("x"), nil); !errors.Is(err, keyman.ErrTimeout) {
			t.Errorf("Encrypt past deadline = %v", err)
		}
	})
	t.Run("Parallel", func(t *testing.T) {
		n := f.Concurrency
		if n == 0 {
			n = 8
		}
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for g := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 50 {
					pt := []byte(fmt.Sprintf("g%d-i%d", g, i))
					s, err := m.Encrypt(ctx, f.Both, pt, pt)
					if err != nil {
						errs <- err
						return
					}
					got, err := m.Decrypt(ctx, f.Both, s.IV, s.Ciphertext, s.Tag, pt)
					if err != nil || !bytes.Equal(got, pt) {
						errs <- fmt.Errorf("decrypt: %v", err)
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
	t.Run("Health", func(t *testing.T) {
		h := m.Health(ctx)
		if h.Vendor == "" || len(h.EKMs) < 1 || len(h.EKMs) > 10 {
			t.Fatalf("Health = %+v", h)
		}
		for _, e := range h.EKMs {
			if e.ID == "" || e.Model == "" || e.Status != keyman.Active {
				t.Errorf("EKM = %+v", e)
			}
		}
	})
}
