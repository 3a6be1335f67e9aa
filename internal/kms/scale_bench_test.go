package kms

import (
	"context"
	"crypto/rand"
	mrand "math/rand/v2"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/policy"
)

// BenchmarkDescribeKeyRandom is DescribeKey on a random one of many keys
// the catalog has not read yet (a store written by another process): the
// cost of a first read, which on a store of a million keys most requests
// pay. go test -run '^$' -bench DescribeKeyRandom -cpuprofile cpu.out ./internal/kms/
func BenchmarkDescribeKeyRandom(b *testing.B) {
	t := &testing.T{}
	f := newFixture(t)
	ctx := context.Background()
	pol := policy.DefaultKeyPolicy("111122223333")
	const n = 50000
	ids := make([]string, 0, n)
	material := make([]byte, 32)
	for len(ids) < n {
		var ks []*catalog.Key
		for range 1000 {
			id := uuid.NewString()
			rand.Read(material)
			sealed, err := f.cat.Seal(id, 1, material)
			if err != nil {
				b.Fatal(err)
			}
			now := time.Now().UTC()
			ks = append(ks, &catalog.Key{ID: id, Account: "111122223333", Region: "us-east-1", Created: now,
				KeyUsage: keys.EncryptDecrypt, KeySpec: keys.Symmetric, Origin: "AWS_KMS", State: keys.Enabled, Policy: pol, Current: 1,
				Versions: []catalog.Version{{Number: 1, Created: now, Sealed: sealed, MaterialID: f.cat.MaterialID(id, material)}}})
			ids = append(ids, id)
		}
		if err := f.cat.CreateKeys(ctx, ks); err != nil {
			b.Fatal(err)
		}
	}
	c := userCaller(t, "111122223333", "kmsd-admin", allowAll)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c.Resources = c.Resources[:0]
		id := ids[mrand.IntN(n)]
		if _, err := f.svc.DescribeKey(ctx, c, &kmsapi.DescribeKeyRequest{KeyId: &id}); err != nil {
			b.Fatal(err)
		}
	}
}
