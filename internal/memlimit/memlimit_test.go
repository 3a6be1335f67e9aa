package memlimit

import (
	"context"
	"math"
	"runtime"
	"runtime/debug"
	"testing"
	"time"
)

func TestLimit(t *testing.T) {
	for _, c := range []struct {
		cache int
		live  uint64
		want  int64
	}{
		{100_000, 0, Base + 100_000*PerKey}, // 518.6 MiB: the default cache
		{100_000, 150 << 20, Base + 100_000*PerKey},
		{1000, 0, Base + 1000*PerKey},
		{100_000, 1 << 30, 2<<30 + Base}, // a live heap past the floor: twice it
		{1, math.MaxUint64, math.MaxInt64},
	} {
		if got := Limit(c.cache, c.live); got != c.want {
			t.Errorf("Limit(%d, %d) = %d, want %d", c.cache, c.live, got, c.want)
		}
	}
}

// TestStart: the process's limit is set from the cache size, raised to
// twice the live heap when that grows past it, and left alone when
// GOMEMLIMIT is set.
func TestStart(t *testing.T) {
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1))
	t.Setenv("GOMEMLIMIT", "")
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	// A cache so small that the floor is near Base, and a live heap of
	// 200 MiB: the limit follows the heap.
	if !Start(ctx, 1) {
		t.Fatal("Start refused without GOMEMLIMIT")
	}
	if got := debug.SetMemoryLimit(-1); got < Base+PerKey {
		t.Fatalf("limit after Start = %d, want at least %d", got, Base+PerKey)
	}
	hold := make([][]byte, 200)
	for i := range hold {
		hold[i] = make([]byte, 1<<20)
	}
	runtime.GC()
	deadline := time.Now().Add(10 * time.Second)
	for debug.SetMemoryLimit(-1) < 2*200<<20+Base {
		if time.Now().After(deadline) {
			t.Fatalf("limit %d with 200 MiB live, want at least %d", debug.SetMemoryLimit(-1), 2*200<<20+Base)
		}
		time.Sleep(50 * time.Millisecond)
	}
	runtime.KeepAlive(hold)
	cancel()

	t.Setenv("GOMEMLIMIT", "1GiB")
	before := debug.SetMemoryLimit(-1)
	if Start(t.Context(), 100_000) || debug.SetMemoryLimit(-1) != before {
		t.Error("Start changed the limit although GOMEMLIMIT is set")
	}
}
