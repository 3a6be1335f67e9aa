package keys

import (
	"crypto"
	"slices"
	"strings"
)

// Key usages (the KeyUsageType enum).
const (
	EncryptDecrypt    = "ENCRYPT_DECRYPT"
	SignVerify        = "SIGN_VERIFY"
	GenerateVerifyMAC = "GENERATE_VERIFY_MAC"
	KeyAgreement      = "KEY_AGREEMENT"
)

// Symmetric is the key spec of symmetric encryption keys.
const Symmetric = "SYMMETRIC_DEFAULT"

// SpecInfo is what a key spec allows: the usages CreateKey accepts for it
// and, per usage, the algorithms KeyMetadata and GetPublicKey list, in
// the order AWS lists them (spec §2.1).
type SpecInfo struct {
	Usages     []string
	Encryption []string // with ENCRYPT_DECRYPT
	Signing    []string // with SIGN_VERIFY
	MAC        []string // with GENERATE_VERIFY_MAC
	Agreement  []string // with KEY_AGREEMENT
	// ChinaOnly specs exist only in the cn- Regions (spec §2.3).
	ChinaOnly bool
}

var (
	rsaSigning = []string{"RSASSA_PKCS1_V1_5_SHA_256", "RSASSA_PKCS1_V1_5_SHA_384", "RSASSA_PKCS1_V1_5_SHA_512",
		"RSASSA_PSS_SHA_256", "RSASSA_PSS_SHA_384", "RSASSA_PSS_SHA_512"}
	rsaEncryption = []string{"RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"}
	ecdh          = []string{"ECDH"}
	signAgree     = []string{SignVerify, KeyAgreement}
	signOnly      = []string{SignVerify}
	rsaUsages     = []string{EncryptDecrypt, SignVerify}
	macOnly       = []string{GenerateVerifyMAC}
	mlDSA         = []string{"ML_DSA_SHAKE_256"}
)

// specs is the compatibility matrix of spec §2.1, the one place it lives.
var specs = map[string]SpecInfo{
	Symmetric:               {Usages: []string{EncryptDecrypt}, Encryption: []string{"SYMMETRIC_DEFAULT"}},
	"RSA_2048":              {Usages: rsaUsages, Encryption: rsaEncryption, Signing: rsaSigning},
	"RSA_3072":              {Usages: rsaUsages, Encryption: rsaEncryption, Signing: rsaSigning},
	"RSA_4096":              {Usages: rsaUsages, Encryption: rsaEncryption, Signing: rsaSigning},
	"ECC_NIST_P256":         {Usages: signAgree, Signing: []string{"ECDSA_SHA_256"}, Agreement: ecdh},
	"ECC_NIST_P384":         {Usages: signAgree, Signing: []string{"ECDSA_SHA_384"}, Agreement: ecdh},
	"ECC_NIST_P521":         {Usages: signAgree, Signing: []string{"ECDSA_SHA_512"}, Agreement: ecdh},
	"ECC_SECG_P256K1":       {Usages: signOnly, Signing: []string{"ECDSA_SHA_256"}},
	"ECC_NIST_EDWARDS25519": {Usages: signOnly, Signing: []string{"ED25519_SHA_512", "ED25519_PH_SHA_512"}},
	"ML_DSA_44":             {Usages: signOnly, Signing: mlDSA},
	"ML_DSA_65":             {Usages: signOnly, Signing: mlDSA},
	"ML_DSA_87":             {Usages: signOnly, Signing: mlDSA},
	"HMAC_224":              {Usages: macOnly, MAC: []string{"HMAC_SHA_224"}},
	"HMAC_256":              {Usages: macOnly, MAC: []string{"HMAC_SHA_256"}},
	"HMAC_384":              {Usages: macOnly, MAC: []string{"HMAC_SHA_384"}},
	"HMAC_512":              {Usages: macOnly, MAC: []string{"HMAC_SHA_512"}},
	"SM2": {Usages: []string{EncryptDecrypt, SignVerify, KeyAgreement}, Encryption: []string{"SM2PKE"},
		Signing: []string{"SM2DSA"}, Agreement: ecdh, ChinaOnly: true},
}

// Spec returns what key spec name allows; ok is false for an unknown spec.
func Spec(name string) (SpecInfo, bool) {
	s, ok := specs[name]
	return s, ok
}

// Allows reports whether a key of this spec may have usage u.
func (s SpecInfo) Allows(u string) bool { return slices.Contains(s.Usages, u) }

// Algorithms returns the algorithm list a key of this spec and usage
// carries, nil when the usage has none.
func (s SpecInfo) Algorithms(usage string) []string {
	switch usage {
	case EncryptDecrypt:
		return s.Encryption
	case SignVerify:
		return s.Signing
	case GenerateVerifyMAC:
		return s.MAC
	case KeyAgreement:
		return s.Agreement
	}
	return nil
}

// IsHMAC reports whether spec is one of the HMAC key specs.
func IsHMAC(spec string) bool { return strings.HasPrefix(spec, "HMAC_") }

// IsAsymmetric reports whether spec names a key pair (RSA, ECC, Ed25519,
// ML-DSA, SM2).
func IsAsymmetric(spec string) bool { return spec != Symmetric && !IsHMAC(spec) }

// InChina reports whether region is one of the China Regions, the only
// ones with SM2 keys.
func InChina(region string) bool { return strings.HasPrefix(region, "cn-") }

// Scheme is the signature scheme family of a signing algorithm.
type Scheme int

// The signature schemes of the SigningAlgorithmSpec enum.
const (
	PKCS1v15 Scheme = iota + 1
	PSS
	ECDSA
	Ed25519
	Ed25519ph
	MLDSA
	SM2DSA
)

// SigningAlgorithm says how a signing algorithm treats its input (spec
// §5.1): the hash KMS applies to a RAW message (0 when the scheme hashes
// internally) and the length a DIGEST must have (0: DIGEST not allowed).
type SigningAlgorithm struct {
	Scheme    Scheme
	Hash      crypto.Hash
	DigestLen int
	// Raw says whether MessageType RAW is allowed.
	Raw bool
}

var signingAlgorithms = map[string]SigningAlgorithm{
	"RSASSA_PKCS1_V1_5_SHA_256": {PKCS1v15, crypto.SHA256, 32, true},
	"RSASSA_PKCS1_V1_5_SHA_384": {PKCS1v15, crypto.SHA384, 48, true},
	"RSASSA_PKCS1_V1_5_SHA_512": {PKCS1v15, crypto.SHA512, 64, true},
	"RSASSA_PSS_SHA_256":        {PSS, crypto.SHA256, 32, true},
	"RSASSA_PSS_SHA_384":        {PSS, crypto.SHA384, 48, true},
	"RSASSA_PSS_SHA_512":        {PSS, crypto.SHA512, 64, true},
	"ECDSA_SHA_256":             {ECDSA, crypto.SHA256, 32, true},
	"ECDSA_SHA_384":             {ECDSA, crypto.SHA384, 48, true},
	"ECDSA_SHA_512":             {ECDSA, crypto.SHA512, 64, true},
	"ED25519_SHA_512":           {Ed25519, 0, 0, true},
	// Ed25519ph takes only DIGEST: the 64 bytes are the message that the
	// SHA-512 prehash is applied to (spec §5.1).
	"ED25519_PH_SHA_512": {Ed25519ph, 0, 64, false},
	"ML_DSA_SHAKE_256":   {MLDSA, 0, 0, true},
	"SM2DSA":             {SM2DSA, 0, 32, true},
}

// Signing returns the facts of signing algorithm name.
func Signing(name string) (SigningAlgorithm, bool) {
	a, ok := signingAlgorithms[name]
	return a, ok
}

// MACHash is the hash of MAC algorithm name (HMAC_SHA_224 … HMAC_SHA_512).
func MACHash(name string) (crypto.Hash, bool) {
	switch name {
	case "HMAC_SHA_224":
		return crypto.SHA224, true
	case "HMAC_SHA_256":
		return crypto.SHA256, true
	case "HMAC_SHA_384":
		return crypto.SHA384, true
	case "HMAC_SHA_512":
		return crypto.SHA512, true
	}
	return 0, false
}

// EncryptionHash is the hash (for OAEP and its MGF1 alike) of an RSA
// encryption algorithm; 0 for the others.
func EncryptionHash(alg string) crypto.Hash {
	switch alg {
	case "RSAES_OAEP_SHA_1":
		return crypto.SHA1
	case "RSAES_OAEP_SHA_256":
		return crypto.SHA256
	}
	return 0
}

// GrantOperations is the set of operations a grant on a non-symmetric key
// of this spec and usage may allow (spec §12.2); symmetric keys' set is
// kept with the grant code. [R] The KEY_AGREEMENT row is inferred.
func GrantOperations(spec, usage string) []string {
	common := []string{"CreateGrant", "DescribeKey", "RetireGrant"}
	switch {
	case IsHMAC(spec):
		return append(common, "GenerateMac", "VerifyMac")
	case usage == EncryptDecrypt:
		return append(common, "Encrypt", "Decrypt", "ReEncryptFrom", "ReEncryptTo", "GetPublicKey")
	case usage == SignVerify:
		return append(common, "Sign", "Verify", "GetPublicKey")
	case usage == KeyAgreement:
		return append(common, "DeriveSharedSecret", "GetPublicKey")
	}
	return common
}
