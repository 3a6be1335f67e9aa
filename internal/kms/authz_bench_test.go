package kms

import (
	"context"
	"testing"

	"github.com/kmsd/kmsd/internal/kmsapi"
)

func BenchmarkEncryptAuthz(b *testing.B) {
	t := &testing.T{}
	f := newFixture(t)
	ctx := context.Background()
	out, _ := f.svc.CreateKey(ctx, f.caller, &kmsapi.CreateKeyRequest{})
	id := *out.KeyMetadata.KeyId
	c := userCaller(t, "111122223333", "kmsd-admin", allowAll)
	in := &kmsapi.EncryptRequest{KeyId: &id, Plaintext: make([]byte, 64), EncryptionContext: map[string]string{"purpose": "kmsbench", "tenant": "t-0001"}}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c.Resources = c.Resources[:0]
		if _, err := f.svc.Encrypt(ctx, c, in); err != nil {
			b.Fatal(err)
		}
	}
}
