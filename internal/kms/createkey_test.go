package kms

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/kmsd/kmsd/internal/kmsapi"
)

// createSpec creates a key of spec and usage and returns its metadata.
func (f *fixture) createSpec(t *testing.T, spec, usage string) *kmsapi.KeyMetadata {
	t.Helper()
	out, err := f.svc.CreateKey(context.Background(), f.caller, &kmsapi.CreateKeyRequest{KeySpec: &spec, KeyUsage: &usage})
	if err != nil {
		t.Fatalf("CreateKey(%s, %s): %v", spec, usage, err)
	}
	return out.KeyMetadata
}

func wantMessage(t *testing.T, err error, name, msg string) {
	t.Helper()
	var e *kmsapi.Exception
	if !errors.As(err, &e) || e.Name != name || e.Message != msg {
		t.Fatalf("error = %v\nwant    %s: %s", err, name, msg)
	}
}

var rsaSigning = []string{"RSASSA_PKCS1_V1_5_SHA_256", "RSASSA_PKCS1_V1_5_SHA_384", "RSASSA_PKCS1_V1_5_SHA_512",
	"RSASSA_PSS_SHA_256", "RSASSA_PSS_SHA_384", "RSASSA_PSS_SHA_512"}

// TestCreateKeyMatrix creates every KeySpec × KeyUsage pair spec §2.1
// allows and checks KeyMetadata carries exactly the algorithm list of the
// usage (spec §4).
func TestCreateKeyMatrix(t *testing.T) {
	f := newFixture(t)
	type lists struct{ enc, sig, mac, agree []string }
	for _, tc := range []struct {
		name, spec, usage string
		want              lists
	}{
		{"rsa 2048 encryption", "RSA_2048", "ENCRYPT_DECRYPT", lists{enc: []string{"RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"}}},
		{"rsa 2048 signing", "RSA_2048", "SIGN_VERIFY", lists{sig: rsaSigning}},
		{"rsa 3072 signing", "RSA_3072", "SIGN_VERIFY", lists{sig: rsaSigning}},
		{"rsa 4096 encryption", "RSA_4096", "ENCRYPT_DECRYPT", lists{enc: []string{"RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"}}},
		{"p256 signing", "ECC_NIST_P256", "SIGN_VERIFY", lists{sig: []string{"ECDSA_SHA_256"}}},
		{"p384 signing", "ECC_NIST_P384", "SIGN_VERIFY", lists{sig: []string{"ECDSA_SHA_384"}}},
		{"p521 signing", "ECC_NIST_P521", "SIGN_VERIFY", lists{sig: []string{"ECDSA_SHA_512"}}},
		{"p256 agreement", "ECC_NIST_P256", "KEY_AGREEMENT", lists{agree: []string{"ECDH"}}},
		{"p384 agreement", "ECC_NIST_P384", "KEY_AGREEMENT", lists{agree: []string{"ECDH"}}},
		{"p521 agreement", "ECC_NIST_P521", "KEY_AGREEMENT", lists{agree: []string{"ECDH"}}},
		{"secp256k1 signing", "ECC_SECG_P256K1", "SIGN_VERIFY", lists{sig: []string{"ECDSA_SHA_256"}}},
		{"ed25519 signing", "ECC_NIST_EDWARDS25519", "SIGN_VERIFY", lists{sig: []string{"ED25519_SHA_512", "ED25519_PH_SHA_512"}}},
		{"ml-dsa-44", "ML_DSA_44", "SIGN_VERIFY", lists{sig: []string{"ML_DSA_SHAKE_256"}}},
		{"ml-dsa-65", "ML_DSA_65", "SIGN_VERIFY", lists{sig: []string{"ML_DSA_SHAKE_256"}}},
		{"ml-dsa-87", "ML_DSA_87", "SIGN_VERIFY", lists{sig: []string{"ML_DSA_SHAKE_256"}}},
		{"hmac 224", "HMAC_224", "GENERATE_VERIFY_MAC", lists{mac: []string{"HMAC_SHA_224"}}},
		{"hmac 256", "HMAC_256", "GENERATE_VERIFY_MAC", lists{mac: []string{"HMAC_SHA_256"}}},
		{"hmac 384", "HMAC_384", "GENERATE_VERIFY_MAC", lists{mac: []string{"HMAC_SHA_384"}}},
		{"hmac 512", "HMAC_512", "GENERATE_VERIFY_MAC", lists{mac: []string{"HMAC_SHA_512"}}},
		{"symmetric", "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT", lists{enc: []string{"SYMMETRIC_DEFAULT"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := f.createSpec(t, tc.spec, tc.usage)
			d, err := f.svc.DescribeKey(context.Background(), f.caller, &kmsapi.DescribeKeyRequest{KeyId: m.KeyId})
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range []*kmsapi.KeyMetadata{m, d.KeyMetadata} {
				got := lists{m.EncryptionAlgorithms, m.SigningAlgorithms, m.MacAlgorithms, m.KeyAgreementAlgorithms}
				if !slices.Equal(got.enc, tc.want.enc) || !slices.Equal(got.sig, tc.want.sig) ||
					!slices.Equal(got.mac, tc.want.mac) || !slices.Equal(got.agree, tc.want.agree) {
					t.Errorf("algorithm lists = %+v, want %+v", got, tc.want)
				}
				if *m.KeySpec != tc.spec || *m.CustomerMasterKeySpec != tc.spec || *m.KeyUsage != tc.usage || *m.KeyState != "Enabled" {
					t.Errorf("KeySpec %s, CustomerMasterKeySpec %s, KeyUsage %s, KeyState %s", *m.KeySpec, *m.CustomerMasterKeySpec, *m.KeyUsage, *m.KeyState)
				}
			}
		})
	}
}

// TestCreateKeyRefusals checks AWS's exceptions, messages and check order
// for the requests CreateKey refuses (spec §3.1).
func TestCreateKeyRefusals(t *testing.T) {
	f := newFixture(t)
	for _, tc := range []struct {
		name   string
		region string
		in     kmsapi.CreateKeyRequest
		exc    string
		msg    string
	}{
		{"usage missing for rsa", "", kmsapi.CreateKeyRequest{KeySpec: str("RSA_2048")},
			"ValidationException", "You must specify a KeyUsage value for all KMS keys except for symmetric encryption keys."},
		{"usage missing for hmac", "", kmsapi.CreateKeyRequest{KeySpec: str("HMAC_256")},
			"ValidationException", "You must specify a KeyUsage value for all KMS keys except for symmetric encryption keys."},
		{"usage missing via the deprecated member", "", kmsapi.CreateKeyRequest{CustomerMasterKeySpec: str("ECC_NIST_P256")},
			"ValidationException", "You must specify a KeyUsage value for all KMS keys except for symmetric encryption keys."},
		{"rsa key agreement", "", kmsapi.CreateKeyRequest{KeySpec: str("RSA_2048"), KeyUsage: str("KEY_AGREEMENT")},
			"ValidationException", "KeyUsage KEY_AGREEMENT is not compatible with KeySpec RSA_2048"},
		{"secp256k1 key agreement", "", kmsapi.CreateKeyRequest{KeySpec: str("ECC_SECG_P256K1"), KeyUsage: str("KEY_AGREEMENT")},
			"ValidationException", "KeyUsage KEY_AGREEMENT is not compatible with KeySpec ECC_SECG_P256K1"},
		{"ed25519 encryption", "", kmsapi.CreateKeyRequest{KeySpec: str("ECC_NIST_EDWARDS25519"), KeyUsage: str("ENCRYPT_DECRYPT")},
			"ValidationException", "KeyUsage ENCRYPT_DECRYPT is not compatible with KeySpec ECC_NIST_EDWARDS25519"},
		{"hmac signing", "", kmsapi.CreateKeyRequest{KeySpec: str("HMAC_384"), KeyUsage: str("SIGN_VERIFY")},
			"ValidationException", "KeyUsage SIGN_VERIFY is not compatible with KeySpec HMAC_384"},
		{"ml-dsa mac", "", kmsapi.CreateKeyRequest{KeySpec: str("ML_DSA_65"), KeyUsage: str("GENERATE_VERIFY_MAC")},
			"ValidationException", "KeyUsage GENERATE_VERIFY_MAC is not compatible with KeySpec ML_DSA_65"},
		{"symmetric signing", "", kmsapi.CreateKeyRequest{KeyUsage: str("SIGN_VERIFY")},
			"ValidationException", "KeyUsage SIGN_VERIFY is not compatible with KeySpec SYMMETRIC_DEFAULT"},
		{"usage checked before region", "", kmsapi.CreateKeyRequest{KeySpec: str("SM2"), KeyUsage: str("GENERATE_VERIFY_MAC")},
			"ValidationException", "KeyUsage GENERATE_VERIFY_MAC is not compatible with KeySpec SM2"},
		{"sm2 outside china", "", kmsapi.CreateKeyRequest{KeySpec: str("SM2"), KeyUsage: str("SIGN_VERIFY")},
			"UnsupportedOperationException", "SM2 is not supported in this Region."},
		{"rsa in a custom key store", "", kmsapi.CreateKeyRequest{KeySpec: str("RSA_2048"), KeyUsage: str("SIGN_VERIFY"),
			Origin: str("AWS_CLOUDHSM"), CustomKeyStoreId: str("cks-1234567890abcdef0")},
			"UnsupportedOperationException", "KeySpec RSA_2048 is not supported for KMS keys in a custom key store. Only SYMMETRIC_DEFAULT keys are."},
		{"hmac in an external key store", "", kmsapi.CreateKeyRequest{KeySpec: str("HMAC_256"), KeyUsage: str("GENERATE_VERIFY_MAC"),
			Origin: str("EXTERNAL_KEY_STORE"), CustomKeyStoreId: str("cks-1234567890abcdef0"), XksKeyId: str("k1")},
			"UnsupportedOperationException", "KeySpec HMAC_256 is not supported for KMS keys in a custom key store. Only SYMMETRIC_DEFAULT keys are."},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := *f.caller
			if tc.region != "" {
				c.Region = tc.region
			}
			_, err := f.svc.CreateKey(context.Background(), &c, &tc.in)
			wantMessage(t, err, tc.exc, tc.msg)
		})
	}
}

// TestRotationOfNonSymmetricKeys is spec §8's column for asymmetric and
// HMAC keys, with the state checked first (spec §1.4).
func TestRotationOfNonSymmetricKeys(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	for _, tc := range []struct{ spec, usage string }{
		{"ECC_NIST_P256", "SIGN_VERIFY"}, {"HMAC_256", "GENERATE_VERIFY_MAC"}, {"ECC_NIST_P384", "KEY_AGREEMENT"},
	} {
		t.Run(tc.spec, func(t *testing.T) {
			m := f.createSpec(t, tc.spec, tc.usage)
			arn := *m.Arn
			_, err := f.svc.EnableKeyRotation(ctx, f.caller, &kmsapi.EnableKeyRotationRequest{KeyId: m.KeyId})
			wantMessage(t, err, "UnsupportedOperationException", arn+" origin or key spec does not support rotation.")
			_, err = f.svc.RotateKeyOnDemand(ctx, f.caller, &kmsapi.RotateKeyOnDemandRequest{KeyId: m.KeyId})
			wantMessage(t, err, "UnsupportedOperationException", "")
			st, err := f.svc.GetKeyRotationStatus(ctx, f.caller, &kmsapi.GetKeyRotationStatusRequest{KeyId: m.KeyId})
			if err != nil || *st.KeyRotationEnabled || st.RotationPeriodInDays != nil {
				t.Fatalf("GetKeyRotationStatus = %+v, %v; want false", st, err)
			}
			if _, err := f.svc.DisableKey(ctx, f.caller, &kmsapi.DisableKeyRequest{KeyId: m.KeyId}); err != nil {
				t.Fatal(err)
			}
			_, err = f.svc.RotateKeyOnDemand(ctx, f.caller, &kmsapi.RotateKeyOnDemandRequest{KeyId: m.KeyId})
			wantMessage(t, err, "DisabledException", arn+" is disabled.")
		})
	}
}

// TestSymmetricOperationsRefuseOtherKeys checks Encrypt and
// GenerateDataKey with the new key types: usage first, naming the
// operation, then the algorithm (spec §1.3, §5.4).
func TestSymmetricOperationsRefuseOtherKeys(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	sig := f.createSpec(t, "ECC_NIST_P256", "SIGN_VERIFY")
	mac := f.createSpec(t, "HMAC_256", "GENERATE_VERIFY_MAC")
	rsa := f.createSpec(t, "RSA_2048", "ENCRYPT_DECRYPT")
	_, err := f.svc.Encrypt(ctx, f.caller, &kmsapi.EncryptRequest{KeyId: sig.KeyId, Plaintext: []byte("x")})
	wantMessage(t, err, "InvalidKeyUsageException", *sig.Arn+" key usage is SIGN_VERIFY which is not valid for Encrypt.")
	_, err = f.svc.GenerateDataKey(ctx, f.caller, &kmsapi.GenerateDataKeyRequest{KeyId: mac.KeyId, KeySpec: str("AES_256")})
	wantMessage(t, err, "InvalidKeyUsageException", *mac.Arn+" key usage is GENERATE_VERIFY_MAC which is not valid for GenerateDataKey.")
	_, err = f.svc.Encrypt(ctx, f.caller, &kmsapi.EncryptRequest{KeyId: rsa.KeyId, Plaintext: []byte("x")})
	wantMessage(t, err, "InvalidKeyUsageException", "Algorithm SYMMETRIC_DEFAULT is incompatible with key spec RSA_2048.")
	_, err = f.svc.GenerateDataKey(ctx, f.caller, &kmsapi.GenerateDataKeyRequest{KeyId: rsa.KeyId, KeySpec: str("AES_256")})
	wantMessage(t, err, "InvalidKeyUsageException", "Algorithm SYMMETRIC_DEFAULT is incompatible with key spec RSA_2048.")
	sym := f.createKey(t)
	_, err = f.svc.Encrypt(ctx, f.caller, &kmsapi.EncryptRequest{KeyId: &sym, Plaintext: []byte("x"), EncryptionAlgorithm: str("RSAES_OAEP_SHA_256")})
	wantMessage(t, err, "InvalidKeyUsageException", "Algorithm RSAES_OAEP_SHA_256 is incompatible with key spec SYMMETRIC_DEFAULT.")
}
