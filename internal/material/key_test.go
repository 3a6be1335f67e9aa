package material

import (
	"bytes"
	"crypto/rand"
	"sync"
	"testing"

	"github.com/kmsd/kmsd/internal/keys"
)

// TestKeyReuse uses one parsed Key and PublicKey of every spec for many
// concurrent calls (run with -race): every signature verifies with the
// package's Verify, and MAC, ECDH and Decrypt answer as the package's
// functions over the private encoding do. A secp256k1 key in particular
// must survive a signature (the one-shot Sign zeroes its parsed key).
func TestKeyReuse(t *testing.T) {
	for _, spec := range []string{"RSA_2048", "ECC_NIST_P256", "ECC_NIST_P384", "ECC_SECG_P256K1",
		"ECC_NIST_EDWARDS25519", "ML_DSA_44", "SM2", "HMAC_224", "HMAC_256", "HMAC_384", "HMAC_512"} {
		t.Run(spec, func(t *testing.T) {
			priv, pub, err := Generate(spec, rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			// ParseKey keeps no reference to its input: the copy is
			// cleared before the key is used.
			cp := bytes.Clone(priv)
			k, err := ParseKey(spec, cp)
			if err != nil {
				t.Fatal(err)
			}
			clear(cp)
			var p *PublicKey
			if pub != nil {
				if p, err = ParsePublic(spec, pub); err != nil {
					t.Fatal(err)
				}
			}
			info, _ := keys.Spec(spec)
			var wg sync.WaitGroup
			for g := 0; g < 4; g++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; i < 3; i++ {
						reuse(t, spec, info, k, p, priv, pub)
					}
				}()
			}
			wg.Wait()
		})
	}
}

func reuse(t *testing.T, spec string, info keys.SpecInfo, k *Key, p *PublicKey, priv, pub []byte) {
	msg := []byte("kmsd signs this")
	for _, alg := range info.Signing {
		a, _ := keys.Signing(alg)
		in := digest(a.Hash, msg)
		if a.Scheme == keys.Ed25519ph || a.Scheme == keys.SM2DSA {
			continue // inputs of their own, covered by TestSignVerify and sm2_test.go
		}
		sig, err := k.Sign(alg, "RAW", in, rand.Reader)
		if err != nil {
			t.Errorf("%s: Sign: %v", alg, err)
			return
		}
		if ok, err := Verify(spec, pub, alg, in, sig); !ok || err != nil {
			t.Errorf("%s: Verify = %v, %v", alg, ok, err)
		}
		if ok, err := p.Verify(alg, in, sig); !ok || err != nil {
			t.Errorf("%s: PublicKey.Verify = %v, %v", alg, ok, err)
		}
		if ok, _ := p.Verify(alg, in, sig[:len(sig)-1]); ok {
			t.Errorf("%s: PublicKey.Verify accepted a truncated signature", alg)
		}
	}
	for _, alg := range info.MAC {
		got, err := k.MAC(alg, msg)
		want, werr := MAC(alg, priv, msg)
		if err != nil || werr != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: Key.MAC = %x, %v; MAC = %x, %v", alg, got, err, want, werr)
		}
	}
	for _, alg := range info.Encryption {
		ct, err := Encrypt(spec, pub, alg, msg, rand.Reader)
		if err != nil {
			t.Errorf("%s: Encrypt: %v", alg, err)
			return
		}
		if pt, err := k.Decrypt(alg, ct); err != nil || !bytes.Equal(pt, msg) {
			t.Errorf("%s: Key.Decrypt = %q, %v", alg, pt, err)
		}
	}
	if len(info.Agreement) > 0 {
		_, peer, err := Generate(spec, rand.Reader)
		if err != nil {
			t.Error(err)
			return
		}
		got, err := k.ECDH(peer)
		want, werr := ECDH(spec, priv, peer)
		if err != nil || werr != nil || !bytes.Equal(got, want) {
			t.Errorf("Key.ECDH = %x, %v; ECDH = %x, %v", got, err, want, werr)
		}
	}
}
