//go:build unix

package material

import (
	"crypto/ecdh"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"syscall"
	"testing"
)

// The benchmarks below measure the bare primitives behind the operations
// cmd/kmsbench drives (sign-ecc, sign-rsa, verify-ecc, generatemac,
// gdkp-rsa, gdkp-ecc), with the same inputs — a 64-byte RAW message
// hashed with SHA-256 — so that kmsd's cost per request above the
// primitive can be computed. The plain names parse the key on every call;
// .../parsed use a Key or PublicKey decoded once, the calls kmsd makes
// with the keys its catalog keeps decoded: they are the primitives to
// subtract. Sign and Verify include the SHA-256 of the message, which
// kmsd computes once for a RAW message; GeneratePair does not include the
// AES-GCM seal of the private key that GenerateDataKeyPair adds (a few
// hundred ns, Encrypt's primitive; server's BenchmarkServe includes it).

// loop runs f b.N times and reports, beside the wall time, the CPU time
// the process spent per call (cpu-ns/op): on a shared machine wall time
// counts the waits for a core, while kmsbench reports the server's CPU
// time, which this is comparable to.
func loop(b *testing.B, f func() error) {
	b.Helper()
	cpu0 := cpuTime()
	for b.Loop() {
		if err := f(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
}

// cpuTime is the user and system CPU time the process has used, in ns.
func cpuTime() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

var benchMessage = func() []byte {
	m := make([]byte, 64)
	for i := range m {
		m[i] = byte(i)
	}
	return m
}()

func benchKey(b *testing.B, spec string) (private, public []byte) {
	b.Helper()
	private, public, err := Generate(spec, rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	return private, public
}

func BenchmarkSign(b *testing.B) {
	for _, tc := range []struct{ spec, alg string }{
		{"ECC_NIST_P256", "ECDSA_SHA_256"},
		{"RSA_2048", "RSASSA_PSS_SHA_256"},
	} {
		private, _ := benchKey(b, tc.spec)
		b.Run(tc.spec, func(b *testing.B) {
			loop(b, func() error {
				d := sha256.Sum256(benchMessage)
				_, err := Sign(tc.spec, private, tc.alg, "DIGEST", d[:], rand.Reader)
				return err
			})
		})
		k, err := ParseKey(tc.spec, private)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(tc.spec+"/parsed", func(b *testing.B) {
			loop(b, func() error {
				d := sha256.Sum256(benchMessage)
				_, err := k.Sign(tc.alg, "DIGEST", d[:], rand.Reader)
				return err
			})
		})
	}
}

func BenchmarkVerify(b *testing.B) {
	spec, alg := "ECC_NIST_P256", "ECDSA_SHA_256"
	private, public := benchKey(b, spec)
	d := sha256.Sum256(benchMessage)
	sig, err := Sign(spec, private, alg, "DIGEST", d[:], rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	errNotVerified := errors.New("not verified")
	b.Run(spec, func(b *testing.B) {
		loop(b, func() error {
			d := sha256.Sum256(benchMessage)
			if ok, err := Verify(spec, public, alg, d[:], sig); !ok || err != nil {
				return errors.Join(errNotVerified, err)
			}
			return nil
		})
	})
	p, err := ParsePublic(spec, public)
	if err != nil {
		b.Fatal(err)
	}
	b.Run(spec+"/parsed", func(b *testing.B) {
		loop(b, func() error {
			d := sha256.Sum256(benchMessage)
			if ok, err := p.Verify(alg, d[:], sig); !ok || err != nil {
				return errors.Join(errNotVerified, err)
			}
			return nil
		})
	})
}

func BenchmarkMAC(b *testing.B) {
	key, _ := benchKey(b, "HMAC_256")
	b.Run("HMAC_256", func(b *testing.B) {
		loop(b, func() error {
			_, err := MAC("HMAC_SHA_256", key, benchMessage)
			return err
		})
	})
	k, err := ParseKey("HMAC_256", key)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("HMAC_256/parsed", func(b *testing.B) {
		loop(b, func() error {
			_, err := k.MAC("HMAC_SHA_256", benchMessage)
			return err
		})
	})
}

// BenchmarkGeneratePair measures one pair of each spec GenerateDataKeyPair
// makes: the figures package pairpool's batch sizes are chosen from.
func BenchmarkGeneratePair(b *testing.B) {
	for _, spec := range []string{"RSA_2048", "ECC_NIST_P256", "ECC_NIST_P384", "ECC_NIST_P521", "ECC_SECG_P256K1", "ECC_NIST_EDWARDS25519", "SM2"} {
		b.Run(spec, func(b *testing.B) {
			loop(b, func() error {
				_, _, err := GeneratePair(spec, rand.Reader)
				return err
			})
		})
	}
	// The bare key generation, without the DER encodings GeneratePair
	// adds: what GeneratePair costs above it is encoding.
	b.Run("ECC_NIST_P256/keygen", func(b *testing.B) {
		loop(b, func() error {
			_, err := ecdh.P256().GenerateKey(rand.Reader)
			return err
		})
	})
}
