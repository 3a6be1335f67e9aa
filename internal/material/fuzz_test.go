package material

import (
	"crypto/rand"
	"testing"
)

// FuzzVerify feeds arbitrary signatures, and arbitrary public keys, to
// Verify for every signing spec: it must answer, never panic, and never
// accept what it did not sign.
func FuzzVerify(f *testing.F) {
	specs := []string{"ECC_NIST_P256", "ECC_SECG_P256K1", "ECC_NIST_EDWARDS25519", "ML_DSA_44", "RSA_2048", "SM2"}
	algs := []string{"ECDSA_SHA_256", "ECDSA_SHA_256", "ED25519_SHA_512", "ML_DSA_SHAKE_256", "RSASSA_PSS_SHA_256", "SM2DSA"}
	pubs := make([][]byte, len(specs))
	for i, spec := range specs {
		_, pub, err := Generate(spec, rand.Reader)
		if err != nil {
			f.Fatal(err)
		}
		pubs[i] = pub
		f.Add(uint8(i), []byte{0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01}, false)
		f.Add(uint8(i), pub, true)
	}
	f.Fuzz(func(t *testing.T, i uint8, b []byte, asKey bool) {
		n := int(i) % len(specs)
		pub, sig := pubs[n], b
		if asKey {
			pub, sig = b, []byte{1, 2, 3}
		}
		if ok, _ := Verify(specs[n], pub, algs[n], make([]byte, 32), sig); ok {
			t.Fatalf("%s accepted a made-up signature", specs[n])
		}
	})
}

// FuzzECDH feeds arbitrary peer public keys to ECDH.
func FuzzECDH(f *testing.F) {
	priv, pub, err := Generate("ECC_NIST_P256", rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(pub)
	f.Add([]byte{0x30, 0x00})
	f.Fuzz(func(t *testing.T, peer []byte) {
		ECDH("ECC_NIST_P256", priv, peer) // an error is fine; a panic is not
	})
}
