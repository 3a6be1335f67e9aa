package keys_test

import (
	"slices"
	"testing"

	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/kmsapi"
)

// TestSpecMatrixCoversTheModel keeps the matrix complete: every KeySpec
// of the model has an entry whose usages are model values, every
// algorithm it lists is a model value, and every signing and MAC
// algorithm of the model is known.
func TestSpecMatrixCoversTheModel(t *testing.T) {
	for _, spec := range kmsapi.EnumKeySpec {
		info, ok := keys.Spec(spec)
		if !ok {
			t.Errorf("KeySpec %s has no entry", spec)
			continue
		}
		if len(info.Usages) == 0 {
			t.Errorf("%s allows no usage", spec)
		}
		for _, u := range info.Usages {
			if !slices.Contains(kmsapi.EnumKeyUsageType, u) {
				t.Errorf("%s: usage %s is not in the model", spec, u)
			}
			if len(info.Algorithms(u)) == 0 {
				t.Errorf("%s with %s lists no algorithm", spec, u)
			}
		}
		for alg, set := range map[*[]string][]string{
			&info.Encryption: kmsapi.EnumEncryptionAlgorithmSpec, &info.Signing: kmsapi.EnumSigningAlgorithmSpec,
			&info.MAC: kmsapi.EnumMacAlgorithmSpec, &info.Agreement: {"ECDH"},
		} {
			for _, a := range *alg {
				if !slices.Contains(set, a) {
					t.Errorf("%s lists %s, not a model value", spec, a)
				}
			}
		}
	}
	for _, alg := range kmsapi.EnumSigningAlgorithmSpec {
		if _, ok := keys.Signing(alg); !ok {
			t.Errorf("signing algorithm %s is unknown", alg)
		}
	}
	for _, alg := range kmsapi.EnumMacAlgorithmSpec {
		if _, ok := keys.MACHash(alg); !ok {
			t.Errorf("MAC algorithm %s is unknown", alg)
		}
	}
}

// TestSpecMatrix spot-checks the pairs AWS refuses or allows (spec §2.1).
func TestSpecMatrix(t *testing.T) {
	for _, tc := range []struct {
		spec, usage string
		ok          bool
	}{
		{"ECC_SECG_P256K1", "KEY_AGREEMENT", false},
		{"ECC_NIST_P521", "KEY_AGREEMENT", true},
		{"RSA_4096", "KEY_AGREEMENT", false},
		{"RSA_3072", "ENCRYPT_DECRYPT", true},
		{"ECC_NIST_EDWARDS25519", "SIGN_VERIFY", true},
		{"ML_DSA_87", "ENCRYPT_DECRYPT", false},
		{"HMAC_224", "GENERATE_VERIFY_MAC", true},
		{"SYMMETRIC_DEFAULT", "GENERATE_VERIFY_MAC", false},
		{"SM2", "KEY_AGREEMENT", true},
	} {
		info, _ := keys.Spec(tc.spec)
		if got := info.Allows(tc.usage); got != tc.ok {
			t.Errorf("%s with %s: allowed %v, want %v", tc.spec, tc.usage, got, tc.ok)
		}
	}
}
