package material

import (
	"crypto/x509/pkix"
	"encoding/asn1"
	"io"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
)

// GeneratePair makes a data key pair of a DataKeyPairSpec (spec §5.5):
// the private key as DER PKCS #8 and the public key as DER
// SubjectPublicKeyInfo. EC keys are RFC 5915 ECPrivateKeys inside, with
// the named curve; Ed25519 keys RFC 8410 CurvePrivateKeys.
func GeneratePair(spec string, rand io.Reader) (pkcs8, public []byte, err error) {
	if c := nistEncodings[spec]; c != nil {
		// The common case first, with one lookup instead of Generate's
		// walk through the other kinds of spec.
		return c.generate(rand)
	}
	if _, ok := oidMLDSA[spec]; ok || hmacSizes[spec] != 0 {
		return nil, nil, ErrSpec
	}
	private, public, err := Generate(spec, rand)
	if err != nil {
		return nil, nil, err
	}
	if spec != "ECC_SECG_P256K1" {
		return private, public, nil // already PKCS #8
	}
	defer clear(private)
	k := secp256k1.PrivKeyFromBytes(private)
	defer k.Zero()
	pub := k.PubKey().SerializeUncompressed()
	ec, err := asn1.Marshal(ecPrivateKey{Version: 1, PrivateKey: private,
		PublicKey: asn1.BitString{Bytes: pub, BitLength: 8 * len(pub)}})
	if err != nil {
		return nil, nil, err
	}
	defer clear(ec)
	pkcs8, err = asn1.Marshal(privateKeyInfo{
		Algorithm: pkix.AlgorithmIdentifier{Algorithm: oidECPublicKey,
			Parameters: asn1.RawValue{FullBytes: mustOID(oidSecp256k1)}},
		PrivateKey: ec,
	})
	return pkcs8, public, err
}

// privateKeyInfo is RFC 5958's OneAsymmetricKey, version 0.
type privateKeyInfo struct {
	Version    int
	Algorithm  pkix.AlgorithmIdentifier
	PrivateKey []byte
}

// ecPrivateKey is RFC 5915's ECPrivateKey; the curve is in the
// PrivateKeyInfo's algorithm, as x509.MarshalPKCS8PrivateKey does it.
type ecPrivateKey struct {
	Version    int
	PrivateKey []byte
	PublicKey  asn1.BitString `asn1:"optional,explicit,tag:1"`
}
