package kms

import (
	"context"
	"slices"
	"testing"

	"github.com/kmsd/kmsd/internal/kmsapi"
)

// TestGrantOperationsPerKeyType checks that CreateGrant accepts exactly
// the operations of spec §12.2 for each key type.
func TestGrantOperationsPerKeyType(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	grantee := "arn:aws:iam::111122223333:user/bob"
	all := []string{"Decrypt", "Encrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext", "ReEncryptFrom", "ReEncryptTo",
		"Sign", "Verify", "GetPublicKey", "CreateGrant", "RetireGrant", "DescribeKey", "GenerateDataKeyPair",
		"GenerateDataKeyPairWithoutPlaintext", "GenerateMac", "VerifyMac", "DeriveSharedSecret"}
	base := []string{"CreateGrant", "RetireGrant", "DescribeKey"}
	for _, tc := range []struct {
		name, spec, usage string
		allowed           []string
	}{
		{"symmetric", "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT", []string{"Decrypt", "Encrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext",
			"GenerateDataKeyPair", "GenerateDataKeyPairWithoutPlaintext", "ReEncryptFrom", "ReEncryptTo"}},
		{"hmac", "HMAC_384", "GENERATE_VERIFY_MAC", []string{"GenerateMac", "VerifyMac"}},
		{"rsa encryption", "RSA_2048", "ENCRYPT_DECRYPT", []string{"Encrypt", "Decrypt", "ReEncryptFrom", "ReEncryptTo", "GetPublicKey"}},
		{"ecc signing", "ECC_NIST_P256", "SIGN_VERIFY", []string{"Sign", "Verify", "GetPublicKey"}},
		{"key agreement", "ECC_NIST_P521", "KEY_AGREEMENT", []string{"DeriveSharedSecret", "GetPublicKey"}},
	} {
		m := f.createSpec(t, tc.spec, tc.usage)
		for _, op := range all {
			t.Run(tc.name+"/"+op, func(t *testing.T) {
				_, err := f.svc.CreateGrant(ctx, f.caller, &kmsapi.CreateGrantRequest{KeyId: m.KeyId, GranteePrincipal: &grantee, Operations: []string{op}})
				if slices.Contains(tc.allowed, op) || slices.Contains(base, op) {
					if err != nil {
						t.Fatalf("CreateGrant: %v", err)
					}
					return
				}
				wantMessage(t, err, "ValidationException", "Grant operations "+op+" are not valid for the key spec "+tc.spec+" and key usage "+tc.usage+".")
			})
		}
	}
	t.Run("constraints on an asymmetric key", func(t *testing.T) {
		m := f.createSpec(t, "RSA_2048", "ENCRYPT_DECRYPT")
		_, err := f.svc.CreateGrant(ctx, f.caller, &kmsapi.CreateGrantRequest{KeyId: m.KeyId, GranteePrincipal: &grantee, Operations: []string{"Decrypt"},
			Constraints: &kmsapi.GrantConstraints{EncryptionContextSubset: map[string]string{"a": "b"}}})
		wantMessage(t, err, "ValidationException", "Grant constraints are not supported for asymmetric or HMAC KMS keys.")
	})
}

// TestGrantLetsGranteeSign checks a Sign grant is honoured at once, and
// that it does not extend to operations it does not name.
func TestGrantLetsGranteeSign(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	bob := userCaller(t, "111122223333", "bob")
	m := f.createSpec(t, "ECC_NIST_P256", "SIGN_VERIFY")
	sign := func() error {
		_, err := f.svc.Sign(ctx, bob, &kmsapi.SignRequest{KeyId: m.KeyId, Message: []byte("m"), SigningAlgorithm: str("ECDSA_SHA_256")})
		return err
	}
	wantException(t, sign(), "AccessDeniedException")
	if _, err := f.svc.CreateGrant(ctx, f.caller, &kmsapi.CreateGrantRequest{KeyId: m.KeyId, GranteePrincipal: &bob.ARN, Operations: []string{"Sign"}}); err != nil {
		t.Fatal(err)
	}
	if err := sign(); err != nil {
		t.Fatalf("Sign with a grant: %v", err)
	}
	_, err := f.svc.GetPublicKey(ctx, bob, &kmsapi.GetPublicKeyRequest{KeyId: m.KeyId})
	wantException(t, err, "AccessDeniedException")
}
