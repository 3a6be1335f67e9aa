package material

import (
	"bytes"
	"crypto/rand"
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
