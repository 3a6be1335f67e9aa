package kms

import (
	"context"
	"testing"

	"github.com/kmsd/kmsd/internal/kmsapi"
)

// The benchmarks below measure a service call of the operations kmsbench
// drives on asymmetric and HMAC keys, without HTTP or SigV4: what they
// cost above material's primitive benchmarks is the service's overhead.

func benchKey(b *testing.B, spec, usage string) (*fixture, *Caller, string) {
	b.Helper()
	t := &testing.T{}
	f := newFixture(t)
	out, err := f.svc.CreateKey(context.Background(), f.caller, &kmsapi.CreateKeyRequest{KeySpec: &spec, KeyUsage: &usage})
	if err != nil {
		b.Fatal(err)
	}
	return f, userCaller(t, "111122223333", "kmsd-admin", allowAll), *out.KeyMetadata.KeyId
}

func benchLoop(b *testing.B, c *Caller, call func() error) {
	b.Helper()
	b.ReportAllocs()
	for b.Loop() {
		c.Resources = c.Resources[:0]
		if err := call(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSign(b *testing.B) {
	for _, tc := range []struct{ spec, alg string }{
		{"ECC_NIST_P256", "ECDSA_SHA_256"},
		{"RSA_2048", "RSASSA_PSS_SHA_256"},
	} {
		b.Run(tc.spec, func(b *testing.B) {
			f, c, id := benchKey(b, tc.spec, "SIGN_VERIFY")
			in := &kmsapi.SignRequest{KeyId: &id, Message: make([]byte, 64), SigningAlgorithm: kmsapi.String(tc.alg)}
			benchLoop(b, c, func() error { _, err := f.svc.Sign(context.Background(), c, in); return err })
		})
	}
}

func BenchmarkVerify(b *testing.B) {
	f, c, id := benchKey(b, "ECC_NIST_P256", "SIGN_VERIFY")
	alg := kmsapi.String("ECDSA_SHA_256")
	msg := make([]byte, 64)
	out, err := f.svc.Sign(context.Background(), c, &kmsapi.SignRequest{KeyId: &id, Message: msg, SigningAlgorithm: alg})
	if err != nil {
		b.Fatal(err)
	}
	in := &kmsapi.VerifyRequest{KeyId: &id, Message: msg, SigningAlgorithm: alg, Signature: out.Signature}
	benchLoop(b, c, func() error { _, err := f.svc.Verify(context.Background(), c, in); return err })
}

func BenchmarkGenerateMac(b *testing.B) {
	f, c, id := benchKey(b, "HMAC_256", "GENERATE_VERIFY_MAC")
	in := &kmsapi.GenerateMacRequest{KeyId: &id, Message: make([]byte, 64), MacAlgorithm: kmsapi.String("HMAC_SHA_256")}
	benchLoop(b, c, func() error { _, err := f.svc.GenerateMac(context.Background(), c, in); return err })
}
