package material

import (
	"bytes"
	"crypto/rand"
	"errors"
	"testing"

	"filippo.io/mldsa"
	mldsax509 "filippo.io/mldsa/x509"
)

// pkcs8Of makes a key of spec and its PKCS #8 encoding, as a caller
// importing it would have it.
func pkcs8Of(t *testing.T, spec string) (pkcs8, public []byte) {
	t.Helper()
	if p, ok := mldsaParams[spec]; ok {
		k, err := mldsa.GenerateKey(p)
		if err != nil {
			t.Fatal(err)
		}
		der, err := mldsax509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		pub, err := Public(spec, k.Bytes())
		if err != nil {
			t.Fatal(err)
		}
		return der, pub
	}
	der, pub, err := GeneratePair(spec, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return der, pub
}

// TestImportPrivate: PKCS #8 of every asymmetric spec imports into the
// private encoding Sign uses, with the public key unchanged; the same
// bytes under any other spec are refused.
func TestImportPrivate(t *testing.T) {
	specs := []string{"RSA_2048", "ECC_NIST_P256", "ECC_NIST_P384", "ECC_NIST_P521", "ECC_SECG_P256K1",
		"ECC_NIST_EDWARDS25519", "ML_DSA_44", "ML_DSA_65", "ML_DSA_87", "SM2"}
	ders := map[string][]byte{}
	for _, spec := range specs {
		t.Run(spec, func(t *testing.T) {
			der, pub := pkcs8Of(t, spec)
			ders[spec] = der
			priv, gotPub, err := ImportPrivate(spec, der, rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(gotPub, pub) {
				t.Fatalf("public key differs")
			}
			if _, err := ParseKey(spec, priv); err != nil {
				t.Fatal(err)
			}
		})
	}
	for _, spec := range specs {
		for _, other := range specs {
			if other == spec || ders[other] == nil {
				continue
			}
			if _, _, err := ImportPrivate(spec, ders[other], rand.Reader); !errors.Is(err, ErrImport) {
				t.Errorf("%s material imported as %s: %v", other, spec, err)
			}
		}
	}
	if _, _, err := ImportPrivate("RSA_3072", ders["RSA_2048"], rand.Reader); !errors.Is(err, ErrImport) {
		t.Errorf("RSA_2048 as RSA_3072: %v", err)
	}
	bad := bytes.Clone(ders["RSA_2048"])
	bad[len(bad)-40] ^= 1 // inside the last CRT value: the key is inconsistent
	if _, _, err := ImportPrivate("RSA_2048", bad, rand.Reader); !errors.Is(err, ErrImport) {
		t.Errorf("inconsistent RSA key: %v", err)
	}
	if _, _, err := ImportPrivate("RSA_2048", []byte("junk"), rand.Reader); !errors.Is(err, ErrImport) {
		t.Errorf("junk: %v", err)
	}
}

func TestCheckImportedHMAC(t *testing.T) {
	for _, tc := range []struct {
		spec string
		n    int
		ok   bool
	}{
		{"HMAC_224", 27, false}, {"HMAC_224", 28, true}, {"HMAC_224", 64, true}, {"HMAC_224", 65, false},
		{"HMAC_256", 31, false}, {"HMAC_256", 32, true}, {"HMAC_384", 48, true}, {"HMAC_384", 129, false},
		{"HMAC_512", 63, false}, {"HMAC_512", 128, true},
	} {
		if err := CheckImportedHMAC(tc.spec, make([]byte, tc.n)); (err == nil) != tc.ok {
			t.Errorf("%s %d bytes: %v", tc.spec, tc.n, err)
		}
	}
}
