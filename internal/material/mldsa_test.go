package material

import (
	"bytes"
	"crypto/rand"
	"crypto/sha3"
	"encoding/asn1"
	"errors"
	"testing"

	"filippo.io/mldsa"
	"github.com/cloudflare/circl/sign/mldsa/mldsa44"
	"github.com/cloudflare/circl/sign/mldsa/mldsa65"
	"github.com/cloudflare/circl/sign/mldsa/mldsa87"
)

// circlPublic is the public key circl derives from a FIPS 204 seed ξ:
// the library kmsd used before filippo.io/mldsa, kept in tests as an
// independent implementation.
func circlPublic(t *testing.T, spec string, seed []byte) []byte {
	t.Helper()
	s := (*[32]byte)(seed)
	switch spec {
	case "ML_DSA_44":
		p, _ := mldsa44.NewKeyFromSeed(s)
		return p.Bytes()
	case "ML_DSA_65":
		p, _ := mldsa65.NewKeyFromSeed(s)
		return p.Bytes()
	case "ML_DSA_87":
		p, _ := mldsa87.NewKeyFromSeed(s)
		return p.Bytes()
	}
	t.Fatalf("no ML-DSA spec %s", spec)
	return nil
}

// circlVerify verifies a pure ML-DSA signature over msg with an empty
// context, using circl.
func circlVerify(t *testing.T, spec string, pub, msg, sig []byte) bool {
	t.Helper()
	switch spec {
	case "ML_DSA_44":
		var p mldsa44.PublicKey
		return p.UnmarshalBinary(pub) == nil && mldsa44.Verify(&p, msg, nil, sig)
	case "ML_DSA_65":
		var p mldsa65.PublicKey
		return p.UnmarshalBinary(pub) == nil && mldsa65.Verify(&p, msg, nil, sig)
	case "ML_DSA_87":
		var p mldsa87.PublicKey
		return p.UnmarshalBinary(pub) == nil && mldsa87.Verify(&p, msg, nil, sig)
	}
	t.Fatalf("no ML-DSA spec %s", spec)
	return false
}

var mldsaSpecs = []string{"ML_DSA_44", "ML_DSA_65", "ML_DSA_87"}

// TestMLDSASeedCompat proves that filippo.io/mldsa and circl expand the
// same 32-byte seed ξ to the same public key, so the seeds kmsd has
// already sealed keep their public keys (and GetPublicKey its answer)
// whichever library signs, and that circl verifies filippo's
// signatures. The fixed seeds pin edge values; the random
// ones cover the rest.
func TestMLDSASeedCompat(t *testing.T) {
	seeds := [][]byte{make([]byte, 32), bytes.Repeat([]byte{0xff}, 32)}
	for range 8 {
		s := make([]byte, 32)
		rand.Read(s)
		seeds = append(seeds, s)
	}
	params := map[string]mldsa.Parameters{"ML_DSA_44": mldsa.MLDSA44(), "ML_DSA_65": mldsa.MLDSA65(), "ML_DSA_87": mldsa.MLDSA87()}
	for _, spec := range mldsaSpecs {
		t.Run(spec, func(t *testing.T) {
			for _, seed := range seeds {
				k, err := mldsa.NewPrivateKey(params[spec], seed)
				if err != nil {
					t.Fatalf("NewPrivateKey: %v", err)
				}
				if got, want := k.PublicKey().Bytes(), circlPublic(t, spec, seed); !bytes.Equal(got, want) {
					t.Fatalf("seed %x: filippo.io/mldsa's public key differs from circl's", seed)
				}
				msg := []byte("signed by one library, verified by the other")
				sig, err := k.Sign(nil, msg, nil)
				if err != nil || !circlVerify(t, spec, k.PublicKey().Bytes(), msg, sig) {
					t.Fatalf("seed %x: circl does not verify filippo.io/mldsa's signature (%v)", seed, err)
				}
			}
		})
	}
}

// externalMu computes FIPS 204's μ for message msg and an empty context
// as a KMS client does (spec §5.1): μ = SHAKE256(tr ‖ 0x00 ‖ 0x00 ‖ M, 64)
// with tr = SHAKE256(encoded public key, 64).
func externalMu(pub, msg []byte) []byte {
	tr := sha3.SumSHAKE256(pub, 64)
	return sha3.SumSHAKE256(append(append(tr, 0, 0), msg...), 64)
}

// rawPublic is the public key inside a DER SubjectPublicKeyInfo.
func rawPublic(t *testing.T, spki []byte) []byte {
	t.Helper()
	var info struct {
		Alg asn1.RawValue
		Key asn1.BitString
	}
	if _, err := asn1.Unmarshal(spki, &info); err != nil {
		t.Fatal(err)
	}
	return info.Key.RightAlign()
}

// TestSignMu signs a μ computed outside kmsd and checks the signature is
// an ordinary ML-DSA signature over the message: circl, filippo.io/mldsa
// and Verify all accept it over M with an empty context, and refuse it
// over another message.
func TestSignMu(t *testing.T) {
	msg := []byte("kmsd signs the mu of this")
	for _, spec := range mldsaSpecs {
		t.Run(spec, func(t *testing.T) {
			priv, pub, err := Generate(spec, rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			key := rawPublic(t, pub)
			sig, err := Sign(spec, priv, "ML_DSA_SHAKE_256", MessageTypeMu, externalMu(key, msg), rand.Reader)
			if err != nil {
				t.Fatalf("Sign: %v", err)
			}
			if !circlVerify(t, spec, key, msg, sig) {
				t.Error("circl does not verify the signature over M")
			}
			p, err := mldsa.NewPublicKey(mldsaParams[spec], key)
			if err != nil {
				t.Fatal(err)
			}
			if err := mldsa.Verify(p, msg, sig, nil); err != nil {
				t.Errorf("filippo.io/mldsa does not verify the signature over M: %v", err)
			}
			if ok, err := Verify(spec, pub, "ML_DSA_SHAKE_256", msg, sig); !ok || err != nil {
				t.Errorf("Verify over M = %v, %v; want true", ok, err)
			}
			if ok, _ := Verify(spec, pub, "ML_DSA_SHAKE_256", []byte("another message"), sig); ok {
				t.Error("Verify accepted the signature over another message")
			}
			again, err := Sign(spec, priv, "ML_DSA_SHAKE_256", MessageTypeMu, externalMu(key, msg), rand.Reader)
			if err != nil || bytes.Equal(again, sig) {
				t.Errorf("signing μ twice gave the same signature (%v): signing is not hedged", err)
			}
		})
	}
}

// TestSignMuRefusals checks Sign's answers to a μ it cannot sign.
func TestSignMuRefusals(t *testing.T) {
	ml, _, err := Generate("ML_DSA_44", rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p256, _, err := Generate("ECC_NIST_P256", rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, spec string
		priv       []byte
		alg        string
		mu         []byte
		want       error
	}{
		{"63 bytes", "ML_DSA_44", ml, "ML_DSA_SHAKE_256", make([]byte, 63), ErrInput},
		{"65 bytes", "ML_DSA_44", ml, "ML_DSA_SHAKE_256", make([]byte, 65), ErrInput},
		{"ecdsa", "ECC_NIST_P256", p256, "ECDSA_SHA_256", make([]byte, 64), ErrAlgorithm},
		{"ml-dsa algorithm on p-256", "ECC_NIST_P256", p256, "ML_DSA_SHAKE_256", make([]byte, 64), ErrAlgorithm},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Sign(tc.spec, tc.priv, tc.alg, MessageTypeMu, tc.mu, rand.Reader); !errors.Is(err, tc.want) {
				t.Errorf("Sign = %v, want %v", err, tc.want)
			}
		})
	}
}
