package material

import (
	"crypto/ecdsa"
	"encoding/asn1"
	"errors"
	"io"
	"math/big"

	"github.com/emmansun/gmsm/sm2"
	"github.com/emmansun/gmsm/sm3"
	"github.com/emmansun/gmsm/smx509"
)

// SM2 (GB/T 32918, the GM/T 0003 family) is done by github.com/emmansun/gmsm
// (MIT, pure Go). An SM2 key's private encoding is DER PKCS #8 with
// id-ecPublicKey and the SM2 named curve 1.2.156.10197.1.301, which is also
// what GenerateDataKeyPair hands out (spec §2.2, §7.5); the public key is
// DER SubjectPublicKeyInfo with the same algorithm identifier.

// sm2ID is the default distinguishing identifier of GM/T 0009, with which
// KMS computes Z_A for SM2DSA over a RAW message (spec §5.1).
var sm2ID = []byte("1234567812345678")

// SM2PKELimit is the longest plaintext SM2PKE encrypts (spec §5.4).
const SM2PKELimit = 1024

// ErrCiphertext means a ciphertext does not have the structure of its
// algorithm (as opposed to ErrDecrypt: well formed, but not for this key).
var ErrCiphertext = errors.New("material: malformed ciphertext")

func generateSM2(rand io.Reader) (private, public []byte, err error) {
	k, err := sm2.GenerateKey(rand)
	if err != nil {
		return nil, nil, err
	}
	if private, err = smx509.MarshalPKCS8PrivateKey(k); err != nil {
		return nil, nil, err
	}
	if public, err = smx509.MarshalPKIXPublicKey(&k.PublicKey); err != nil {
		clear(private)
		return nil, nil, err
	}
	return private, public, nil
}

// parseSM2 decodes the PKCS #8 encoding of an SM2 private key; a key on
// any other curve is malformed material.
func parseSM2(private []byte) (*sm2.PrivateKey, error) {
	k, err := smx509.ParsePKCS8PrivateKey(private)
	if err != nil {
		return nil, ErrKey
	}
	sk, ok := k.(*sm2.PrivateKey)
	if !ok {
		return nil, ErrKey
	}
	return sk, nil
}

// parseSM2Public decodes an SM2 SubjectPublicKeyInfo; ok is false for
// anything else, another curve's key included.
func parseSM2Public(public []byte) (*ecdsa.PublicKey, bool) {
	p, err := smx509.ParsePKIXPublicKey(public)
	if err != nil {
		return nil, false
	}
	pub, ok := p.(*ecdsa.PublicKey)
	if !ok || !sm2.IsSM2PublicKey(pub) {
		return nil, false
	}
	return pub, true
}

// SM2Digest is e = SM3(Z_A ‖ msg), Z_A computed from the SM2 public key
// public (DER SubjectPublicKeyInfo) and the default distinguishing ID: what
// SM2DSA signs for a RAW message, and what a DIGEST message must be.
func SM2Digest(public, msg []byte) ([]byte, error) {
	pub, ok := parseSM2Public(public)
	if !ok {
		return nil, ErrKey
	}
	za, err := sm2.CalculateZA(pub, sm2ID)
	if err != nil {
		return nil, err
	}
	h := sm3.New()
	h.Write(za)
	h.Write(msg)
	return h.Sum(nil), nil
}

// encryptSM2 is SM2 public-key encryption (GB/T 32918.4) with its output
// in the GM/T 0009 ASN.1 form SEQUENCE{x, y, C3 hash, C2 ciphertext}, the
// C1C3C2 order in DER. [U] AWS documents only "SM2PKE"; DER is what
// common SM2 tooling (gmssl, BouncyCastle's SM2 cipher in ASN.1 mode)
// exchanges.
func encryptSM2(public, plaintext []byte, rand io.Reader) ([]byte, error) {
	pub, ok := parseSM2Public(public)
	if !ok {
		return nil, ErrKey
	}
	return sm2.EncryptASN1(rand, pub, plaintext)
}

// sm2Ciphertext is the GM/T 0009 ASN.1 SM2 ciphertext.
type sm2Ciphertext struct {
	X, Y       *big.Int
	Hash       []byte
	Ciphertext []byte
}

// sm2WellFormed reports whether ct has the structure of an SM2 ciphertext:
// the DER form kmsd makes, or the raw C1C3C2 concatenation
// 04‖x‖y‖C3‖C2, which decryption also accepts [R].
func sm2WellFormed(ct []byte) bool {
	if len(ct) > 0 && ct[0] == 0x30 {
		var c sm2Ciphertext
		rest, err := asn1.Unmarshal(ct, &c)
		return err == nil && len(rest) == 0 && len(c.Hash) == 32 && len(c.Ciphertext) > 0 &&
			c.X.Sign() >= 0 && c.Y.Sign() >= 0
	}
	return len(ct) > 1+64+32 && ct[0] == 0x04
}

// EncryptLimit is the longest plaintext encryption algorithm alg
// encrypts under a key of spec (spec §5.4); 0 when they do not fit.
func EncryptLimit(spec, alg string) int {
	if spec == "SM2" {
		if alg == "SM2PKE" {
			return SM2PKELimit
		}
		return 0
	}
	return OAEPLimit(spec, alg)
}

// Encrypt encrypts plaintext with the public key public (DER
// SubjectPublicKeyInfo) of an asymmetric key of spec: raw RSAES-OAEP for
// RSA, SM2PKE for SM2.
func Encrypt(spec string, public []byte, alg string, plaintext []byte, rand io.Reader) ([]byte, error) {
	if spec == "SM2" {
		if alg != "SM2PKE" {
			return nil, ErrAlgorithm
		}
		return encryptSM2(public, plaintext, rand)
	}
	return EncryptOAEP(public, alg, plaintext, rand)
}

// Decrypt decrypts a ciphertext of an asymmetric key of spec with its
// private encoding: ErrCiphertext when the bytes cannot be a ciphertext of
// the key (an RSA ciphertext not of the modulus length, SM2 bytes of the
// wrong structure), ErrDecrypt when they are but do not decrypt.
func Decrypt(spec string, private []byte, alg string, ct []byte) ([]byte, error) {
	if spec == "SM2" {
		if alg != "SM2PKE" {
			return nil, ErrAlgorithm
		}
		if !sm2WellFormed(ct) {
			return nil, ErrCiphertext
		}
		k, err := ParseKey(spec, private)
		if err != nil {
			return nil, err
		}
		return k.Decrypt(alg, ct)
	}
	if len(ct) != ModulusLen(spec) {
		return nil, ErrCiphertext
	}
	return DecryptOAEP(spec, private, alg, ct)
}
