package postgres

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/storage"
	"github.com/kmsd/kmsd/internal/storage/postgres/pgtest"
)

// TestCoalescedGets sends many point reads at once — present keys, absent
// ones, and one key many times — and checks each gets its own answer, that
// the reads were coalesced into fewer statements, that a caller owns its
// value, and that a read sees a write acknowledged before it was asked.
func TestCoalescedGets(t *testing.T) {
	ctx := t.Context()
	s := openURL(t, pgtest.URL(t))
	const keys = 50
	for i := range keys {
		if err := s.Put(ctx, fmt.Sprintf("k/%02d", i), []byte(fmt.Sprintf("v%02d", i))); err != nil {
			t.Fatal(err)
		}
	}
	st0, k0 := s.gets.statements.Load(), s.gets.keys.Load()
	const workers, each = 32, 60
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				n := (w*each + i) % (keys + 10) // 10 absent keys
				if i%3 == 0 {
					n = 7 // one key read by everyone
				}
				k := fmt.Sprintf("k/%02d", n)
				v, err := s.Get(ctx, k)
				switch {
				case n >= keys && !errors.Is(err, storage.ErrNotFound):
					errs <- fmt.Errorf("Get(%s) of an absent key = %q, %v", k, v, err)
					return
				case n < keys && (err != nil || string(v) != fmt.Sprintf("v%02d", n)):
					errs <- fmt.Errorf("Get(%s) = %q, %v", k, v, err)
					return
				}
				if err == nil {
					v[0] = 'X' // the caller's own copy
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	st, k := s.gets.statements.Load()-st0, s.gets.keys.Load()-k0
	if k != workers*each {
		t.Fatalf("%d keys read, want %d", k, workers*each)
	}
	if st >= k {
		t.Fatalf("%d reads took %d statements: none coalesced", k, st)
	}
	t.Logf("%d reads in %d statements", k, st)

	// Read-your-writes: each write is seen by the read asked after it.
	for i := range 20 {
		want := fmt.Sprintf("w%d", i)
		if err := s.Put(ctx, "k/07", []byte(want)); err != nil {
			t.Fatal(err)
		}
		if v, err := s.Get(ctx, "k/07"); err != nil || string(v) != want {
			t.Fatalf("Get after Put(%q) = %q, %v", want, v, err)
		}
	}
}

// TestCoalescedGetEnds checks a read's context and the store's Close end
// its wait.
func TestCoalescedGetEnds(t *testing.T) {
	s := openURL(t, pgtest.URL(t))
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := s.Get(ctx, "k"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Get with an ended context: %v", err)
	}
	ctx, cancel = context.WithTimeout(t.Context(), time.Nanosecond)
	defer cancel()
	<-ctx.Done()
	if _, err := s.Get(ctx, "k"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Get past its deadline: %v", err)
	}
	s.Close()
	if _, err := s.Get(t.Context(), "k"); err == nil {
		t.Fatal("Get after Close succeeded")
	}
	s.gets.close() // twice is harmless
}

// BenchmarkGetParallel reads random keys of 10,000 from 16 goroutines per
// CPU, each read a statement of its own (direct, as before coalescing) or
// coalesced (Store.Get). kmsd's and PostgreSQL's CPU share the machine, so
// ns/op is what a read costs the two together.
func BenchmarkGetParallel(b *testing.B) {
	ctx := context.Background()
	s := openURL(b, pgtest.URL(b))
	const n = 10000
	err := s.Update(ctx, func(tx storage.Tx) error {
		for i := range n {
			if err := tx.Put(ctx, fmt.Sprintf("key/%05d", i), make([]byte, 800)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name string
		get  func(string) ([]byte, error)
	}{
		{"direct", func(k string) ([]byte, error) { return get(ctx, s.pool, k) }},
		{"coalesced", func(k string) ([]byte, error) { return s.Get(ctx, k) }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetParallelism(16)
			st0, k0 := s.gets.statements.Load(), s.gets.keys.Load()
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					i += 7919
					if _, err := bc.get(fmt.Sprintf("key/%05d", i%n)); err != nil {
						b.Error(err)
						return
					}
				}
			})
			if st := s.gets.statements.Load() - st0; st > 0 {
				b.ReportMetric(float64(s.gets.keys.Load()-k0)/float64(st), "keys/statement")
			}
		})
	}
}

// BenchmarkPutFenced is a one-key write (an Update: the key, the change
// feed row, the commit marker, COMMIT) from 8 goroutines per CPU, on a
// handle whose writes are not fenced and on one fenced by a lease it holds
// (storage.WriteFencer: the expiry in the commit marker, the deferred
// trigger at COMMIT). kmsd's and PostgreSQL's CPU share the machine, so
// ns/op is what a write costs the two together.
func BenchmarkPutFenced(b *testing.B) {
	ctx := context.Background()
	for _, fenced := range []bool{false, true} {
		name := "unfenced"
		if fenced {
			name = "fenced"
		}
		b.Run(name, func(b *testing.B) {
			s := openURL(b, pgtest.URL(b))
			if fenced {
				s.FenceWrites("node/bench", nil)
				if _, ok, err := s.TryAcquire(ctx, "node/bench", "bench", time.Hour); err != nil || !ok {
					b.Fatal(ok, err)
				}
			}
			b.SetParallelism(8)
			var n atomic.Int64
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := s.Put(ctx, fmt.Sprintf("key/%08d", n.Add(1)), make([]byte, 100)); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
