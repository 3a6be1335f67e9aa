package material

import (
	"crypto/rsa"
	_ "crypto/sha1" // RSAES_OAEP_SHA_1
	"crypto/x509"
	"fmt"
	"io"

	"github.com/kmsd/kmsd/internal/keys"
)

// OAEPLimit is the longest plaintext RSAES-OAEP with alg encrypts under a
// key of spec: k − 2·hLen − 2 bytes, k the modulus length (spec §5.4); 0
// when alg is not an RSA encryption algorithm or spec not an RSA spec.
func OAEPLimit(spec, alg string) int {
	h := keys.EncryptionHash(alg)
	if h == 0 || rsaBits[spec] == 0 {
		return 0
	}
	return rsaBits[spec]/8 - 2*h.Size() - 2
}

// ModulusLen is the length in bytes of an RSA spec's modulus, hence of
// its ciphertexts; 0 for other specs.
func ModulusLen(spec string) int { return rsaBits[spec] / 8 }

// EncryptOAEP encrypts plaintext with the RSA public key public (DER
// SubjectPublicKeyInfo): raw RSAES-OAEP, hash and MGF1 both the hash of
// alg, empty label.
func EncryptOAEP(public []byte, alg string, plaintext []byte, rand io.Reader) ([]byte, error) {
	h := keys.EncryptionHash(alg)
	if h == 0 {
		return nil, ErrAlgorithm
	}
	pub, err := x509.ParsePKIXPublicKey(public)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrKey, err)
	}
	p, ok := pub.(*rsa.PublicKey)
	if !ok {
		return nil, ErrAlgorithm
	}
	return rsa.EncryptOAEP(h.New(), rand, p, plaintext, nil)
}

// ErrDecrypt means decryption failed (OAEP decoding, or the SM2 C3 check):
// wrong key, wrong algorithm or corrupted ciphertext — indistinguishable
// by design.
var ErrDecrypt = fmt.Errorf("material: asymmetric decryption failed")

// DecryptOAEP decrypts a raw RSAES-OAEP ciphertext with the private
// encoding of an RSA key of spec.
func DecryptOAEP(spec string, private []byte, alg string, ciphertext []byte) ([]byte, error) {
	if keys.EncryptionHash(alg) == 0 || rsaBits[spec] == 0 {
		return nil, ErrAlgorithm
	}
	k, err := ParseKey(spec, private)
	if err != nil {
		return nil, err
	}
	return k.Decrypt(alg, ciphertext)
}
