package kwp

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os/exec"
	"strings"
	"testing"
)

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestRFC5649Vectors: the two examples of RFC 5649 §6.
func TestRFC5649Vectors(t *testing.T) {
	kek := "5840df6e29b02af1 ab493b705bf16ea1 ae8338f4dcc176a8"
	for _, tc := range []struct{ name, key, wrapped string }{
		{"20 bytes", "c37b7e6492584340 bed1220780894115 5068f738", "138bdeaa9b8fa7fc 61f97742e72248ee 5ae6ae5360d1ae6a 5f54f373fa543b6a"},
		{"7 bytes", "466f7250617369", "afbeb0f07dfbf541 9200f2ccb50bb24f"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Wrap(unhex(t, kek), unhex(t, tc.key))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, unhex(t, tc.wrapped)) {
				t.Fatalf("Wrap = %x, want %s", got, tc.wrapped)
			}
			back, err := Unwrap(unhex(t, kek), got)
			if err != nil || !bytes.Equal(back, unhex(t, tc.key)) {
				t.Fatalf("Unwrap = %x, %v", back, err)
			}
		})
	}
}

// TestRoundTripAndTamper: every length up to 80 bytes and every key size
// round-trips; flipping any bit, truncating, or another KEK fails.
func TestRoundTripAndTamper(t *testing.T) {
	for _, ks := range []int{16, 24, 32} {
		kek := make([]byte, ks)
		rand.Read(kek)
		other := make([]byte, ks)
		rand.Read(other)
		for n := 1; n <= 80; n++ {
			pt := make([]byte, n)
			rand.Read(pt)
			w, err := Wrap(kek, pt)
			if err != nil {
				t.Fatal(err)
			}
			if len(w) != 8+8*((n+7)/8) {
				t.Fatalf("len %d for %d bytes", len(w), n)
			}
			got, err := Unwrap(kek, w)
			if err != nil || !bytes.Equal(got, pt) {
				t.Fatalf("kek %d, n %d: %x, %v", ks, n, got, err)
			}
			for i := range w {
				bad := bytes.Clone(w)
				bad[i] ^= 0x10
				if _, err := Unwrap(kek, bad); !errors.Is(err, ErrUnwrap) {
					t.Fatalf("tampered byte %d unwrapped", i)
				}
			}
			if _, err := Unwrap(other, w); !errors.Is(err, ErrUnwrap) {
				t.Fatalf("other KEK unwrapped")
			}
			if _, err := Unwrap(kek, w[:len(w)-8]); err == nil {
				t.Fatalf("truncated unwrapped")
			}
		}
	}
	if _, err := Wrap(make([]byte, 20), []byte("x")); !errors.Is(err, ErrKeySize) {
		t.Fatalf("20-byte KEK: %v", err)
	}
	if _, err := Unwrap(make([]byte, 16), make([]byte, 12)); !errors.Is(err, ErrUnwrap) {
		t.Fatalf("12 bytes: %v", err)
	}
}

// TestOpenSSL: OpenSSL's id-aes256-wrap-pad (as AWS's import guide uses
// it) and Wrap agree byte for byte, both ways.
func TestOpenSSL(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Fatal("openssl not found; scripts/test.sh installs it")
	}
	kek := make([]byte, 32)
	rand.Read(kek)
	for _, n := range []int{1, 8, 9, 32, 1217} {
		pt := make([]byte, n)
		rand.Read(pt)
		cmd := exec.Command(openssl, "enc", "-id-aes256-wrap-pad", "-K", hex.EncodeToString(kek), "-iv", "A65959A6")
		cmd.Stdin = bytes.NewReader(pt)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("openssl: %v: %s", err, stderr.String())
		}
		mine, err := Wrap(kek, pt)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out, mine) {
			t.Fatalf("n %d: openssl %x, Wrap %x", n, out, mine)
		}
		cmd = exec.Command(openssl, "enc", "-d", "-id-aes256-wrap-pad", "-K", hex.EncodeToString(kek), "-iv", "A65959A6")
		cmd.Stdin = bytes.NewReader(mine)
		back, err := cmd.Output()
		if err != nil || !bytes.Equal(back, pt) {
			t.Fatalf("openssl unwrap: %v", err)
		}
	}
}

func FuzzUnwrap(f *testing.F) {
	f.Add(make([]byte, 16), make([]byte, 24))
	f.Fuzz(func(t *testing.T, kek, wrapped []byte) {
		if len(kek) != 16 && len(kek) != 24 && len(kek) != 32 {
			return
		}
		pt, err := Unwrap(kek, wrapped)
		if err != nil {
			return
		}
		w, err := Wrap(kek, pt)
		if err != nil || !bytes.Equal(w, wrapped) {
			t.Fatalf("unwrapped value does not wrap back")
		}
	})
}
