package catalog

import (
	"context"
	"fmt"
	mrand "math/rand/v2"
	"testing"
)

// BenchmarkCachedRandomKey reads random keys as Encrypt does (record,
// AES-GCM instance, one seal) from a catalog holding every key of its
// store, 1,000 keys against KMSD_BENCH_KEYS (default 100,000): what the
// cache's memory costs a random key once nothing is read from storage,
// without the rest of a request. On a million keys (~1.4 µs more than on
// 1,000 on this machine) that is the index's map, the cache slot, the
// record, the id's bytes and the AES-GCM instance, each read from memory
// in turn. It isolates those reads, and so overstates what a change to
// them saves a request: a request's other memory and the collector's
// work over the cache are not in it (scripts/scale-ab.sh is the judge).
//
//	KMSD_BENCH_DIR=/tmp/kb KMSD_BENCH_KEYS=1000000 go test -run - -bench CachedRandomKey -cpu 1 -benchtime 2000000x ./internal/catalog/
func BenchmarkCachedRandomKey(b *testing.B) {
	large := envInt(b, "KMSD_BENCH_KEYS", 100_000)
	for _, n := range []int{1000, large} {
		b.Run(fmt.Sprintf("keys=%d", n), func(b *testing.B) {
			c, _ := benchStore(b, n)
			c.SetCacheSize(n + n/10)
			if got, err := c.Preload(context.Background()); err != nil || got != n {
				b.Fatalf("preloaded %d of %d keys: %v", got, n, err)
			}
			id := []byte("00000000-0000-4000-8000-000000000000")
			nonce := make([]byte, 12)
			var dst [64]byte
			cpu0 := cpuTime()
			b.ResetTimer()
			for range b.N {
				// The id is made here, not read from a slice of a million
				// strings: a request brings its key id in its own buffer.
				k, err := c.Key(context.Background(), benchID(id, mrand.IntN(n)))
				if err != nil {
					b.Fatal(err)
				}
				a, err := c.AEAD(k, 1)
				if err != nil {
					b.Fatal(err)
				}
				a.Seal(dst[:0], nonce, []byte(k.ID), nil)
			}
			b.StopTimer()
			b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
		})
	}
}

// benchID is benchStore's id of key i, written into b.
func benchID(b []byte, i int) string {
	for j := 7; j >= 0; j-- {
		b[j] = byte('0' + i%10)
		i /= 10
	}
	return string(b)
}
