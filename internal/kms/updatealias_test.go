package kms

import (
	"context"
	"testing"

	"github.com/kmsd/kmsd/internal/kmsapi"
)

// TestUpdateAliasKeepsKeyType checks spec §12.3: an alias moves only to
// a key of the same type and usage; RSA ↔ ECC with one usage is fine.
func TestUpdateAliasKeepsKeyType(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	sym := f.createKey(t)
	rsaSign := f.createSpec(t, "RSA_2048", "SIGN_VERIFY")
	ecSign := f.createSpec(t, "ECC_NIST_P256", "SIGN_VERIFY")
	ecAgree := f.createSpec(t, "ECC_NIST_P256", "KEY_AGREEMENT")
	h256 := f.createSpec(t, "HMAC_256", "GENERATE_VERIFY_MAC")
	h512 := f.createSpec(t, "HMAC_512", "GENERATE_VERIFY_MAC")
	for _, tc := range []struct {
		name     string
		from, to string
		ok       bool
	}{
		{"symmetric to rsa", sym, *rsaSign.KeyId, false},
		{"rsa to ecc, both signing", *rsaSign.KeyId, *ecSign.KeyId, true},
		{"signing to key agreement", *ecSign.KeyId, *ecAgree.KeyId, false},
		{"hmac to hmac of another size", *h256.KeyId, *h512.KeyId, true},
		{"hmac to symmetric", *h256.KeyId, sym, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			alias := "alias/" + tc.from[:8] + "-" + tc.to[:8]
			if _, err := f.svc.CreateAlias(ctx, f.caller, &kmsapi.CreateAliasRequest{AliasName: &alias, TargetKeyId: &tc.from}); err != nil {
				t.Fatal(err)
			}
			_, err := f.svc.UpdateAlias(ctx, f.caller, &kmsapi.UpdateAliasRequest{AliasName: &alias, TargetKeyId: &tc.to})
			if tc.ok {
				if err != nil {
					t.Fatalf("UpdateAlias: %v", err)
				}
				return
			}
			wantMessage(t, err, "ValidationException", "The target key arn:aws:kms:us-east-1:111122223333:key/"+tc.to+
				" must have the same key type and key usage as the key alias "+alias+" refers to.")
		})
	}
}
