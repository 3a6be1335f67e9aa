// Package material makes and uses the key material of every non-symmetric
// KMS key spec: RSA, NIST and secp256k1 ECC, Ed25519, ML-DSA and SM2 key
// pairs, and HMAC keys. It knows the byte encodings — DER SubjectPublicKeyInfo for
// public keys (spec §2.2), and the private encodings kmsd seals at rest —
// and nothing of storage or of the KMS API.
//
// Private encodings (always sealed by the barrier before storage):
// PKCS #8 DER for RSA, NIST ECC, Ed25519 and SM2; the 32-byte scalar for
// secp256k1; the 32-byte FIPS 204 seed ξ for ML-DSA; the raw key for HMAC.
package material

import (
	"crypto"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rsa"
	_ "crypto/sha256" // hashes named by the signing and MAC algorithms
	_ "crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"

	"filippo.io/mldsa"
	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	"github.com/emmansun/gmsm/sm2"
	"github.com/emmansun/gmsm/smx509"
	"github.com/kmsd/kmsd/internal/keys"
)

// Errors of this package.
var (
	ErrSpec      = errors.New("material: unsupported key spec")
	ErrAlgorithm = errors.New("material: algorithm does not fit the key")
	ErrKey       = errors.New("material: malformed key material")
	ErrInput     = errors.New("material: input of the wrong length")
)

// Object identifiers of the public keys x509 does not know (spec §2.2).
var (
	oidECPublicKey = asn1.ObjectIdentifier{1, 2, 840, 10045, 2, 1}
	oidSecp256k1   = asn1.ObjectIdentifier{1, 3, 132, 0, 10}
	oidMLDSA       = map[string]asn1.ObjectIdentifier{
		"ML_DSA_44": {2, 16, 840, 1, 101, 3, 4, 3, 17},
		"ML_DSA_65": {2, 16, 840, 1, 101, 3, 4, 3, 18},
		"ML_DSA_87": {2, 16, 840, 1, 101, 3, 4, 3, 19},
	}
)

// mldsaParams is the FIPS 204 parameter set of each ML-DSA key spec.
var mldsaParams = map[string]mldsa.Parameters{
	"ML_DSA_44": mldsa.MLDSA44(), "ML_DSA_65": mldsa.MLDSA65(), "ML_DSA_87": mldsa.MLDSA87(),
}

// MessageTypeMu is the MessageType whose input is ML-DSA's external μ
// (FIPS 204 Alg. 7 line 6) rather than the message; see Sign.
const MessageTypeMu = "EXTERNAL_MU"

// spki is RFC 5280's SubjectPublicKeyInfo.
type spki struct {
	Algorithm pkix.AlgorithmIdentifier
	PublicKey asn1.BitString
}

func marshalSPKI(alg pkix.AlgorithmIdentifier, key []byte) ([]byte, error) {
	return asn1.Marshal(spki{Algorithm: alg, PublicKey: asn1.BitString{Bytes: key, BitLength: 8 * len(key)}})
}

// hmacSizes is the length of generated HMAC key material: the digest
// length of the spec's hash (spec §6, a kmsd choice).
var hmacSizes = map[string]int{"HMAC_224": 28, "HMAC_256": 32, "HMAC_384": 48, "HMAC_512": 64}

var rsaBits = map[string]int{"RSA_2048": 2048, "RSA_3072": 3072, "RSA_4096": 4096}

var nistCurves = map[string]elliptic.Curve{
	"ECC_NIST_P256": elliptic.P256(), "ECC_NIST_P384": elliptic.P384(), "ECC_NIST_P521": elliptic.P521(),
}

// Generate makes new material of key spec spec. It returns the private
// encoding, to be sealed, and the public key as DER SubjectPublicKeyInfo
// (nil for HMAC keys).
func Generate(spec string, rand io.Reader) (private, public []byte, err error) {
	if n, ok := hmacSizes[spec]; ok {
		private = make([]byte, n)
		if _, err := io.ReadFull(rand, private); err != nil {
			return nil, nil, err
		}
		return private, nil, nil
	}
	var pub any
	switch {
	case rsaBits[spec] != 0:
		k, err := rsa.GenerateKey(rand, rsaBits[spec])
		if err != nil {
			return nil, nil, err
		}
		private, err = x509.MarshalPKCS8PrivateKey(k)
		pub = &k.PublicKey
		if err != nil {
			return nil, nil, err
		}
	case nistCurves[spec] != nil:
		return nistEncodings[spec].generate(rand)
	case spec == "ECC_NIST_EDWARDS25519":
		p, k, err := ed25519.GenerateKey(rand)
		if err != nil {
			return nil, nil, err
		}
		if private, err = x509.MarshalPKCS8PrivateKey(k); err != nil {
			return nil, nil, err
		}
		pub = p
	case spec == "ECC_SECG_P256K1":
		k, err := secp256k1.GeneratePrivateKeyFromRand(rand)
		if err != nil {
			return nil, nil, err
		}
		private = k.Serialize()
		k.Zero()
	case oidMLDSA[spec] != nil:
		private = make([]byte, 32)
		if _, err := io.ReadFull(rand, private); err != nil {
			return nil, nil, err
		}
	case spec == "SM2":
		return generateSM2(rand)
	default:
		return nil, nil, fmt.Errorf("%w: %s", ErrSpec, spec)
	}
	if pub != nil {
		public, err = x509.MarshalPKIXPublicKey(pub)
	} else {
		public, err = Public(spec, private)
	}
	if err != nil {
		clear(private)
		return nil, nil, err
	}
	return private, public, nil
}

// Public derives the DER SubjectPublicKeyInfo from a private encoding.
func Public(spec string, private []byte) ([]byte, error) {
	signer, err := parse(spec, private)
	if err != nil {
		return nil, err
	}
	switch k := signer.(type) {
	case *secp256k1.PrivateKey:
		return marshalSPKI(pkix.AlgorithmIdentifier{Algorithm: oidECPublicKey,
			Parameters: asn1.RawValue{FullBytes: mustOID(oidSecp256k1)}}, k.PubKey().SerializeUncompressed())
	case *mldsa.PrivateKey:
		return marshalSPKI(pkix.AlgorithmIdentifier{Algorithm: oidMLDSA[spec]}, k.PublicKey().Bytes())
	case *sm2.PrivateKey:
		return smx509.MarshalPKIXPublicKey(&k.PublicKey)
	case crypto.Signer:
		return x509.MarshalPKIXPublicKey(k.Public())
	}
	return nil, ErrKey
}

func mustOID(o asn1.ObjectIdentifier) []byte {
	b, err := asn1.Marshal(o)
	if err != nil {
		panic(err)
	}
	return b
}

// parse decodes a private encoding: *rsa.PrivateKey, *ecdsa.PrivateKey,
// ed25519.PrivateKey, *secp256k1.PrivateKey, *mldsa.PrivateKey or
// *sm2.PrivateKey.
func parse(spec string, private []byte) (any, error) {
	switch {
	case spec == "SM2":
		return parseSM2(private)
	case rsaBits[spec] != 0 || nistCurves[spec] != nil || spec == "ECC_NIST_EDWARDS25519":
		k, err := x509.ParsePKCS8PrivateKey(private)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrKey, err)
		}
		return k, nil
	case spec == "ECC_SECG_P256K1":
		if len(private) != 32 {
			return nil, ErrKey
		}
		return secp256k1.PrivKeyFromBytes(private), nil
	case oidMLDSA[spec] != nil:
		// filippo.io/mldsa expands the seed ξ as circl, kmsd's library
		// before it, did (TestMLDSASeedCompat): stored keys keep working.
		k, err := mldsa.NewPrivateKey(mldsaParams[spec], private)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrKey, err)
		}
		return k, nil
	}
	return nil, fmt.Errorf("%w: %s", ErrSpec, spec)
}

// Sign signs input with the private key of spec under signing algorithm
// alg. input is what the scheme signs: the digest for RSA and ECDSA, the
// message for Ed25519 and ML-DSA, the SHA-512 prehash for Ed25519ph, e =
// SM3(Z_A ‖ M) for SM2DSA (see SM2Digest). messageType is the request's
// MessageType, and matters only as MessageTypeMu: then input is ML-DSA's
// 64-byte μ, signed as it is (spec §5.1), and any other algorithm is
// ErrAlgorithm. The signature is the same kind as one over the message:
// it verifies over M with an empty context.
//
// ML-DSA signing is hedged, with randomness filippo.io/mldsa draws from
// crypto/rand itself: rand is not used for it.
func Sign(spec string, private []byte, alg, messageType string, input []byte, rand io.Reader) ([]byte, error) {
	if _, ok := keys.Signing(alg); !ok {
		return nil, ErrAlgorithm
	}
	k, err := ParseKey(spec, private)
	if err != nil {
		return nil, err
	}
	defer k.zero()
	return k.Sign(alg, messageType, input, rand)
}

// Verify reports whether sig is a valid signature of input (as for Sign)
// under the public key public (DER SubjectPublicKeyInfo) of spec. A
// malformed signature is simply not valid. For ML-DSA input is always the
// message, never μ: neither filippo.io/mldsa nor circl verifies from μ in
// its public API.
func Verify(spec string, public []byte, alg string, input, sig []byte) (bool, error) {
	if _, ok := keys.Signing(alg); !ok {
		return false, ErrAlgorithm
	}
	p, err := ParsePublic(spec, public)
	if err != nil {
		return false, err
	}
	return p.Verify(alg, input, sig)
}

// MAC computes HMAC (RFC 2104) of msg under key with MAC algorithm alg.
func MAC(alg string, key, msg []byte) ([]byte, error) {
	h, ok := keys.MACHash(alg)
	if !ok {
		return nil, ErrAlgorithm
	}
	m := hmac.New(h.New, key)
	m.Write(msg)
	return m.Sum(nil), nil
}
