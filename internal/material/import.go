package material

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"io"

	"filippo.io/mldsa"
	mldsax509 "filippo.io/mldsa/x509"
	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	"github.com/emmansun/gmsm/smx509"
	"github.com/kmsd/kmsd/internal/keys"
)

// ErrImport is returned by ImportPrivate and CheckImportedHMAC for key
// material that does not fit the key spec (spec §7.5): unparsable DER,
// another algorithm, curve or modulus size, an inconsistent key, a wrong
// length.
var ErrImport = errors.New("material: key material does not fit the key spec")

// hmacImportRange is the accepted length of imported HMAC material:
// from the digest length to the block size of the spec's hash (spec §7.5;
// the bounds are [U], LocalStack's).
var hmacImportRange = map[string][2]int{
	"HMAC_224": {28, 64}, "HMAC_256": {32, 64}, "HMAC_384": {48, 128}, "HMAC_512": {64, 128},
}

// CheckImportedHMAC checks the length of imported HMAC key material.
func CheckImportedHMAC(spec string, key []byte) error {
	r, ok := hmacImportRange[spec]
	if !ok || len(key) < r[0] || len(key) > r[1] {
		return ErrImport
	}
	return nil
}

// ImportPrivate checks imported asymmetric key material — the DER PKCS #8
// PrivateKeyInfo of a key of exactly spec — with a signature self-test,
// and returns it in kmsd's private encoding for spec (the package
// comment), which Sign, Decrypt and ECDH use as they use generated
// material, and the public key as DER SubjectPublicKeyInfo.
func ImportPrivate(spec string, pkcs8 []byte, rand io.Reader) (private, public []byte, err error) {
	private, err = importEncoding(spec, pkcs8)
	if err != nil {
		return nil, nil, ErrImport
	}
	if public, err = Public(spec, private); err != nil {
		clear(private)
		return nil, nil, ErrImport
	}
	if err := selfTest(spec, private, public, rand); err != nil {
		clear(private)
		return nil, nil, ErrImport
	}
	return private, public, nil
}

// importEncoding converts PKCS #8 to spec's private encoding, refusing a
// key of any other algorithm, curve or size.
func importEncoding(spec string, pkcs8 []byte) ([]byte, error) {
	switch {
	case rsaBits[spec] != 0:
		k, err := x509.ParsePKCS8PrivateKey(pkcs8)
		if err != nil {
			return nil, err
		}
		rk, ok := k.(*rsa.PrivateKey)
		if !ok || rk.N.BitLen() != rsaBits[spec] {
			return nil, ErrImport
		}
		return x509.MarshalPKCS8PrivateKey(rk)
	case nistCurves[spec] != nil:
		k, err := x509.ParsePKCS8PrivateKey(pkcs8)
		if err != nil {
			return nil, err
		}
		ek, ok := k.(*ecdsa.PrivateKey)
		if !ok || ek.Curve != nistCurves[spec] {
			return nil, ErrImport
		}
		return x509.MarshalPKCS8PrivateKey(ek)
	case spec == "ECC_NIST_EDWARDS25519":
		k, err := x509.ParsePKCS8PrivateKey(pkcs8)
		if err != nil {
			return nil, err
		}
		ek, ok := k.(ed25519.PrivateKey)
		if !ok {
			return nil, ErrImport
		}
		return x509.MarshalPKCS8PrivateKey(ek)
	case spec == "ECC_SECG_P256K1":
		return secp256k1Scalar(pkcs8)
	case oidMLDSA[spec] != nil:
		k, err := mldsax509.ParsePKCS8PrivateKey(pkcs8)
		if err != nil {
			return nil, err
		}
		mk, ok := k.(*mldsa.PrivateKey)
		if !ok || mk.PublicKey().Parameters() != mldsaParams[spec] {
			return nil, ErrImport
		}
		return mk.Bytes(), nil // the seed ξ
	case spec == "SM2":
		k, err := parseSM2(pkcs8)
		if err != nil {
			return nil, err
		}
		return smx509.MarshalPKCS8PrivateKey(k)
	}
	return nil, ErrSpec
}

// secp256k1Scalar reads the 32-byte scalar of a secp256k1 key from its
// PKCS #8 encoding (RFC 5915 ECPrivateKey inside, curve named in the
// PrivateKeyInfo's algorithm, as GeneratePair writes it), checking the
// public key when the ECPrivateKey has one.
func secp256k1Scalar(pkcs8 []byte) ([]byte, error) {
	var info privateKeyInfo
	if rest, err := asn1.Unmarshal(pkcs8, &info); err != nil || len(rest) != 0 {
		return nil, ErrImport
	}
	var curve asn1.ObjectIdentifier
	if rest, err := asn1.Unmarshal(info.Algorithm.Parameters.FullBytes, &curve); err != nil || len(rest) != 0 {
		return nil, ErrImport
	}
	if !info.Algorithm.Algorithm.Equal(oidECPublicKey) || !curve.Equal(oidSecp256k1) {
		return nil, ErrImport
	}
	var ec ecPrivateKey
	if rest, err := asn1.Unmarshal(info.PrivateKey, &ec); err != nil || len(rest) != 0 || ec.Version != 1 {
		return nil, ErrImport
	}
	if len(ec.PrivateKey) == 0 || len(ec.PrivateKey) > 32 {
		return nil, ErrImport
	}
	scalar := make([]byte, 32)
	copy(scalar[32-len(ec.PrivateKey):], ec.PrivateKey)
	var s secp256k1.ModNScalar
	if overflow := s.SetByteSlice(scalar); overflow || s.IsZero() {
		return nil, ErrImport
	}
	if len(ec.PublicKey.Bytes) > 0 {
		k := secp256k1.PrivKeyFromBytes(scalar)
		defer k.Zero()
		pub, err := secp256k1.ParsePubKey(ec.PublicKey.RightAlign())
		if err != nil || !pub.IsEqual(k.PubKey()) {
			return nil, ErrImport
		}
	}
	return scalar, nil
}

// selfTest signs with the decoded private key and verifies with the public
// key (spec §7.5 [R]): a key whose parts do not belong together fails.
func selfTest(spec string, private, public []byte, rand io.Reader) error {
	info, _ := keys.Spec(spec)
	if len(info.Signing) == 0 {
		return ErrSpec
	}
	alg := info.Signing[0]
	a, _ := keys.Signing(alg)
	input := []byte("kmsd imported key material self-test")
	switch {
	case a.Hash != 0:
		h := a.Hash.New()
		h.Write(input)
		input = h.Sum(nil)
	case a.DigestLen != 0:
		input = make([]byte, a.DigestLen)
		copy(input, "kmsd imported key material self-test")
	}
	k, err := ParseKey(spec, private)
	if err != nil {
		return err
	}
	defer k.zero()
	sig, err := k.Sign(alg, "RAW", input, rand)
	if err != nil {
		return err
	}
	p, err := ParsePublic(spec, public)
	if err != nil {
		return err
	}
	if ok, err := p.Verify(alg, input, sig); err != nil || !ok {
		return ErrImport
	}
	return nil
}
