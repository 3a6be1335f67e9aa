package kms

import (
	"slices"
	"testing"
)

// awsCrossAccount is every KMS operation AWS documents with "Cross-account
// use: Yes" in its API reference (ReEncrypt's two halves included), and
// no other. GetKeyLastUsage is not cross-account (spec
// kms-key-types-import-multiregion.md §10); neither is any custom key
// store operation.
var awsCrossAccount = []string{
	"CreateGrant", "Decrypt", "DeriveSharedSecret", "DescribeKey", "Encrypt",
	"GenerateDataKey", "GenerateDataKeyPair", "GenerateDataKeyPairWithoutPlaintext",
	"GenerateDataKeyWithoutPlaintext", "GenerateMac", "GetKeyRotationStatus", "GetPublicKey",
	"ListGrants", "ReEncrypt", "ReEncryptFrom", "ReEncryptTo", "RetireGrant", "RevokeGrant",
	"Sign", "Verify", "VerifyMac",
}

// TestCrossAccountOperations: the table's cross-account set is AWS's.
func TestCrossAccountOperations(t *testing.T) {
	var got []string
	for op, a := range Authorizations {
		if a.CrossAccount {
			got = append(got, op)
		}
	}
	slices.Sort(got)
	want := slices.Sorted(slices.Values(awsCrossAccount))
	for _, op := range want {
		if !slices.Contains(got, op) {
			t.Errorf("%s: AWS documents it as cross-account, the table does not", op)
		}
	}
	for _, op := range got {
		if !slices.Contains(want, op) {
			t.Errorf("%s: the table allows it across accounts, AWS does not", op)
		}
		if a := Authorizations[op]; a.Scope != KeyScope {
			t.Errorf("%s: cross-account with scope %v, want KeyScope", op, a.Scope)
		}
	}
}
