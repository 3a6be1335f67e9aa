// Package memlimit bounds kmsd's memory by the size of its key cache.
//
// kmsd runs with a Go heap target of GOGC=400 (cmd/kmsd): its live heap
// is small and its requests allocate briskly, so a collection every
// fivefold growth saves CPU on every request. But once the key cache fills
// (--cache-size keys at about 2 KiB of heap each) the live heap is mostly
// cache, and five times it is what the process then holds: 0.9–1.1 GiB of
// RSS with the default 100,000 keys after random loads over a million-key
// store, where the cache itself is about 190 MiB.
//
// So Start sets a soft memory limit (runtime/debug.SetMemoryLimit) of
// Base plus PerKey a cached key: the heap target stays GOGC's while the
// heap is small, and the collector runs sooner once the heap nears the
// limit. On that million-key load the RSS went from 942–1,100 MiB to
// 530–594 MiB (three runs each), and kmsd's CPU per Encrypt against the
// 1,000-key store's from 1.76–1.90× to 1.71–1.77×: the collector marks
// the same live heap, only more often, and the process takes fewer fresh
// pages from the kernel.
//
// A limit that the live heap itself approaches would have the collector
// run nearly all the time (cached keys with policies of their own, tens
// of KiB each, can outgrow PerKey). So the limit is kept at least twice
// the live heap measured after the last collection, plus Base: past that
// the collector runs as with GOGC=100, never in a loop. GOMEMLIMIT in the
// environment wins: Start then changes nothing.
package memlimit

import (
	"context"
	"math"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

const (
	// Base is the memory allowed besides the key cache: the runtime,
	// connections, SQLite's page caches, requests in flight.
	Base = 128 << 20
	// PerKey is the memory allowed per cached key: about twice a cached
	// symmetric key's heap (catalog's TestCacheMemoryPerKey).
	PerKey = 4 << 10
)

// interval is how often the live heap is read.
const interval = time.Second

// Limit is the memory limit for a cache of cacheSize keys and a live heap
// of live bytes.
func Limit(cacheSize int, live uint64) int64 {
	floor := Base + int64(cacheSize)*PerKey
	if live > math.MaxInt64/4 {
		return math.MaxInt64
	}
	return max(floor, 2*int64(live)+Base)
}

// Start sets the limit for a cache of cacheSize keys and keeps it at
// Limit of the live heap, read every second, until ctx ends. It does
// nothing and returns false when GOMEMLIMIT is set.
func Start(ctx context.Context, cacheSize int) bool {
	if os.Getenv("GOMEMLIMIT") != "" {
		return false
	}
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	live := func() uint64 {
		metrics.Read(sample)
		if sample[0].Value.Kind() != metrics.KindUint64 {
			return 0
		}
		return sample[0].Value.Uint64()
	}
	set := Limit(cacheSize, live())
	debug.SetMemoryLimit(set)
	go func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if l := Limit(cacheSize, live()); l != set {
				set = l
				debug.SetMemoryLimit(l)
			}
		}
	}()
	return true
}
