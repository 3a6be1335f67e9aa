package material

import (
	"bytes"
	"crypto"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha512"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"math/big"
	"testing"

	"github.com/kmsd/kmsd/internal/keys"
)

func digest(h crypto.Hash, m []byte) []byte {
	if h == 0 {
		return m
	}
	d := h.New()
	d.Write(m)
	return d.Sum(nil)
}

// TestSignVerify signs and verifies with every signing algorithm of every
// spec (SM2 in sm2_test.go), and checks a tampered input fails.
func TestSignVerify(t *testing.T) {
	msg := []byte("kmsd signs this")
	for _, spec := range []string{"RSA_2048", "ECC_NIST_P256", "ECC_NIST_P384", "ECC_NIST_P521",
		"ECC_SECG_P256K1", "ECC_NIST_EDWARDS25519", "ML_DSA_44", "ML_DSA_65", "ML_DSA_87"} {
		t.Run(spec, func(t *testing.T) {
			priv, pub, err := Generate(spec, rand.Reader)
			if err != nil {
				t.Fatalf("Generate: %v", err)
			}
			again, err := Public(spec, priv)
			if err != nil || !bytes.Equal(again, pub) {
				t.Fatalf("Public: %v; differs from Generate's: %v", err, !bytes.Equal(again, pub))
			}
			info, _ := keys.Spec(spec)
			for _, alg := range info.Signing {
				a, _ := keys.Signing(alg)
				in := digest(a.Hash, msg)
				if a.Scheme == keys.Ed25519ph {
					in = digest(crypto.SHA512, digest(crypto.SHA512, msg))
				}
				sig, err := Sign(spec, priv, alg, "RAW", in, rand.Reader)
				if err != nil {
					t.Fatalf("%s: Sign: %v", alg, err)
				}
				if ok, err := Verify(spec, pub, alg, in, sig); !ok || err != nil {
					t.Errorf("%s: Verify = %v, %v; want true", alg, ok, err)
				}
				bad := bytes.Clone(in)
				bad[0] ^= 1
				if ok, _ := Verify(spec, pub, alg, bad, sig); ok {
					t.Errorf("%s: Verify accepted a tampered input", alg)
				}
				if ok, _ := Verify(spec, pub, alg, in, sig[:len(sig)-1]); ok {
					t.Errorf("%s: Verify accepted a truncated signature", alg)
				}
			}
		})
	}
}

func TestAlgorithmMismatch(t *testing.T) {
	priv, _, err := Generate("ECC_NIST_P256", rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Sign("ECC_NIST_P256", priv, "RSASSA_PSS_SHA_256", "RAW", make([]byte, 32), rand.Reader); !errors.Is(err, ErrAlgorithm) {
		t.Errorf("Sign with an RSA algorithm on a P-256 key: %v, want ErrAlgorithm", err)
	}
}

// TestMAC checks the MAC against RFC 4231 test case 2.
func TestMAC(t *testing.T) {
	key, msg := []byte("Jefe"), []byte("what do ya want for nothing?")
	want := "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
	got, err := MAC("HMAC_SHA_256", key, msg)
	if err != nil || hex.EncodeToString(got) != want {
		t.Fatalf("MAC = %x, %v; want %s", got, err, want)
	}
	for spec, n := range hmacSizes {
		k, pub, err := Generate(spec, rand.Reader)
		if err != nil || len(k) != n || pub != nil {
			t.Errorf("Generate(%s): %d bytes, public %v, %v", spec, len(k), pub, err)
		}
	}
	m := hmac.New(sha512.New384, key)
	m.Write(msg)
	if got, _ := MAC("HMAC_SHA_384", key, msg); !hmac.Equal(got, m.Sum(nil)) {
		t.Error("HMAC_SHA_384 differs from crypto/hmac")
	}
}

// TestOAEP round-trips both OAEP algorithms at their plaintext limits and
// checks ciphertexts made by crypto/rsa alone decrypt.
func TestOAEP(t *testing.T) {
	priv, pub, err := Generate("RSA_2048", rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for alg, limit := range map[string]int{"RSAES_OAEP_SHA_1": 214, "RSAES_OAEP_SHA_256": 190} {
		t.Run(alg, func(t *testing.T) {
			if got := OAEPLimit("RSA_2048", alg); got != limit {
				t.Fatalf("OAEPLimit = %d, want %d", got, limit)
			}
			pt := bytes.Repeat([]byte{7}, limit)
			ct, err := EncryptOAEP(pub, alg, pt, rand.Reader)
			if err != nil || len(ct) != 256 {
				t.Fatalf("EncryptOAEP: %d bytes, %v", len(ct), err)
			}
			got, err := DecryptOAEP("RSA_2048", priv, alg, ct)
			if err != nil || !bytes.Equal(got, pt) {
				t.Fatalf("DecryptOAEP: %v", err)
			}
			other := "RSAES_OAEP_SHA_256"
			if alg == other {
				other = "RSAES_OAEP_SHA_1"
			}
			if _, err := DecryptOAEP("RSA_2048", priv, other, ct); !errors.Is(err, ErrDecrypt) {
				t.Errorf("decrypt with the other hash: %v, want ErrDecrypt", err)
			}
		})
	}
}

// TestGeneratePair checks each pair's PKCS #8 and SPKI belong together:
// the secp256k1 one is parsed by hand (x509 does not know the curve).
func TestGeneratePair(t *testing.T) {
	for _, spec := range []string{"RSA_2048", "ECC_NIST_P256", "ECC_NIST_P521", "ECC_SECG_P256K1", "ECC_NIST_EDWARDS25519"} {
		t.Run(spec, func(t *testing.T) {
			p8, pub, err := GeneratePair(spec, rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			if spec == "ECC_SECG_P256K1" {
				var info privateKeyInfo
				var ec ecPrivateKey
				if _, err := asn1.Unmarshal(p8, &info); err != nil || !info.Algorithm.Algorithm.Equal(oidECPublicKey) {
					t.Fatalf("PKCS #8: %v", err)
				}
				if _, err := asn1.Unmarshal(info.PrivateKey, &ec); err != nil || len(ec.PrivateKey) != 32 {
					t.Fatalf("ECPrivateKey: %v", err)
				}
				if again, err := Public(spec, ec.PrivateKey); err != nil || !bytes.Equal(again, pub) {
					t.Fatalf("public key does not match: %v", err)
				}
				return
			}
			k, err := x509.ParsePKCS8PrivateKey(p8)
			if err != nil {
				t.Fatal(err)
			}
			again, err := x509.MarshalPKIXPublicKey(k.(crypto.Signer).Public())
			if err != nil || !bytes.Equal(again, pub) {
				t.Fatalf("public key does not match: %v", err)
			}
		})
	}
	if _, _, err := GeneratePair("ML_DSA_44", rand.Reader); !errors.Is(err, ErrSpec) {
		t.Errorf("ML-DSA pair: %v, want ErrSpec", err)
	}
}

// TestSecp256k1SignaturesAreRandomAndNotNormalised checks AWS's observed
// behaviour (spec §5.1): two signatures of one digest differ, and some
// have s in the high half; all verify with the decred library.
func TestSecp256k1SignaturesAreRandomAndNotNormalised(t *testing.T) {
	priv, pub, err := Generate("ECC_SECG_P256K1", rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	digest := make([]byte, 32)
	high, seen := 0, map[string]bool{}
	for range 64 {
		sig, err := Sign("ECC_SECG_P256K1", priv, "ECDSA_SHA_256", "DIGEST", digest, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		if ok, err := Verify("ECC_SECG_P256K1", pub, "ECDSA_SHA_256", digest, sig); !ok || err != nil {
			t.Fatalf("Verify: %v, %v", ok, err)
		}
		seen[string(sig)] = true
		var rs struct{ R, S *big.Int }
		if _, err := asn1.Unmarshal(sig, &rs); err != nil {
			t.Fatal(err)
		}
		if rs.S.Cmp(secp256k1HalfOrder) > 0 {
			high++
		}
	}
	if len(seen) != 64 || high == 0 {
		t.Fatalf("%d distinct signatures of 64, %d with a high s", len(seen), high)
	}
}

var secp256k1HalfOrder, _ = new(big.Int).SetString("7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0", 16)
