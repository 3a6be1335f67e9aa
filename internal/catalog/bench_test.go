package catalog

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"github.com/kmsd/kmsd/internal/barrier"
	"github.com/kmsd/kmsd/internal/storage/sqlite"
)

// benchStore opens (making it on first use, under KMSD_BENCH_DIR if set,
// so that a large one is made once) a SQLite store of n keys as Generate
// in e2e/scale makes them, and returns a fresh catalog on it with its ids.
func benchStore(b *testing.B, n int) (*Catalog, []string) {
	b.Helper()
	dir := os.Getenv("KMSD_BENCH_DIR")
	if dir == "" {
		dir = b.TempDir()
	}
	dir = filepath.Join(dir, strconv.Itoa(n))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		b.Fatal(err)
	}
	rootFile := filepath.Join(dir, "root")
	root, err := os.ReadFile(rootFile)
	fresh := err != nil
	if fresh {
		root = make([]byte, 32)
		rand.Read(root)
		os.Remove(filepath.Join(dir, "kmsd.db"))
	}
	st, err := sqlite.Open(context.Background(), filepath.Join(dir, "kmsd.db"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	bar, err := barrier.New(root)
	if err != nil {
		b.Fatal(err)
	}
	c := New(st, bar)
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("%08d-0000-4000-8000-000000000000", i)
	}
	if fresh {
		makeKeys(b, c, n)
		if err := os.WriteFile(rootFile, root, 0o600); err != nil {
			b.Fatal(err)
		}
		c = New(st, bar) // nothing cached
	}
	return c, ids
}

// BenchmarkRandomKey reads random keys as Encrypt does (record and
// AES-GCM instance) from 16 goroutines, on a store of 1,000 keys (all
// cached after the first reads) and one of KMSD_BENCH_KEYS (default
// 100,000), whose random reads mostly miss the cache; KMSD_BENCH_CACHE
// sets the catalog's cache size (default DefaultCacheSize), so that a
// smaller store's reads miss too:
//
//	KMSD_BENCH_DIR=/tmp/kb KMSD_BENCH_KEYS=1000000 go test -run - -bench RandomKey -benchtime 5s ./internal/catalog/
func BenchmarkRandomKey(b *testing.B) {
	large := envInt(b, "KMSD_BENCH_KEYS", 100_000)
	for _, n := range []int{1000, large} {
		b.Run(fmt.Sprintf("keys=%d", n), func(b *testing.B) {
			c, ids := benchStore(b, n)
			if os.Getenv("KMSD_BENCH_CACHE") != "" {
				c.SetCacheSize(envInt(b, "KMSD_BENCH_CACHE", 0))
			}
			// Warm as the e2e test does: a second of reads.
			for range min(n, 20000) {
				readKey(b, c, ids[mrand.IntN(n)])
			}
			b.SetParallelism(8)
			cpu0 := cpuTime()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					readKey(b, c, ids[mrand.IntN(n)])
				}
			})
			b.StopTimer()
			// CPU time per read: what the machine's other load, which
			// stretches ns/op on a shared machine, does not change.
			b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
		})
	}
}

// cpuTime is the process's user and system CPU time so far, in ns.
func cpuTime() int64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// BenchmarkScanKeys is one ScanKeys of a store of KMSD_BENCH_KEYS keys
// (default 100,000): what a sweep round read before the sweep index.
func BenchmarkScanKeys(b *testing.B) {
	n := envInt(b, "KMSD_BENCH_KEYS", 100_000)
	c, _ := benchStore(b, n)
	cpu0 := cpuTime()
	b.ResetTimer()
	for range b.N {
		seen := 0
		if err := c.ScanKeys(context.Background(), func(*Key) error { seen++; return nil }); err != nil || seen != n {
			b.Fatalf("scanned %d of %d: %v", seen, n, err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N)/float64(n), "cpu-ns/key")
}

// BenchmarkDecodeKey decodes key records as reads that miss the cache do
// (Catalog.Key), cycling through 1,000 distinct records: as CreateKey
// writes them, the default key policy left out ("elided"), and as kmsd
// before data format level 2 wrote them, the policy inline ("inline"):
//
//	go test -run - -bench DecodeKey -benchtime 2s -count 3 ./internal/catalog/
func BenchmarkDecodeKey(b *testing.B) {
	c := newCatalog(b)
	const n = 1000
	var elided, inline [][]byte
	for i := range n {
		k := realKey(b, c, fmt.Sprintf("%08d-0000-4000-8000-000000000000", i))
		e, err := encodeKey(k)
		if err != nil {
			b.Fatal(err)
		}
		in, err := json.Marshal(k)
		if err != nil {
			b.Fatal(err)
		}
		elided, inline = append(elided, e), append(inline, in)
	}
	for _, bc := range []struct {
		name string
		recs [][]byte
	}{{"elided", elided}, {"inline", inline}} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if _, err := decodeKey(bc.recs[i%n], &c.policies); err != nil {
					b.Fatal(err)
				}
				i++
			}
			b.ReportMetric(float64(len(bc.recs[0])), "record-bytes")
		})
	}
}

// envInt is the positive number in environment variable name, or def
// when it is unset.
func envInt(b *testing.B, name string, def int) int {
	b.Helper()
	if s := os.Getenv(name); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			b.Fatalf("%s=%q: want a positive number", name, s)
		}
		return n
	}
	return def
}
