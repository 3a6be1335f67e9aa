package material

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"testing"
)

// TestNISTEncoding: the private and public encodings of generated NIST
// keys are byte for byte what x509 makes of the same key, for 256 random
// keys of each curve (scalars and coordinates with leading zero bytes
// among them), so that moving off x509 changed nothing a client or the
// database sees; and clearing the private key, which shares an array with
// the public key, leaves the public key whole.
func TestNISTEncoding(t *testing.T) {
	for spec := range nistEncodings {
		t.Run(spec, func(t *testing.T) {
			for range 256 {
				private, public, err := Generate(spec, rand.Reader)
				if err != nil {
					t.Fatal(err)
				}
				k, err := x509.ParsePKCS8PrivateKey(private)
				if err != nil {
					t.Fatalf("ParsePKCS8PrivateKey: %v", err)
				}
				ek, ok := k.(*ecdsa.PrivateKey)
				if !ok || ek.Curve != nistCurves[spec] {
					t.Fatalf("parsed %T, want an ECDSA key on %s", k, spec)
				}
				want, err := x509.MarshalPKCS8PrivateKey(ek)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(private, want) {
					t.Fatalf("private key\n got %x\nwant %x", private, want)
				}
				wantPub, err := x509.MarshalPKIXPublicKey(&ek.PublicKey)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(public, wantPub) {
					t.Fatalf("public key\n got %x\nwant %x", public, wantPub)
				}
				clear(private)
				if !bytes.Equal(public, wantPub) {
					t.Fatalf("clearing the private key changed the public key to %x", public)
				}
			}
		})
	}
}
