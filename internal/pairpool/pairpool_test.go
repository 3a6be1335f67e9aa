package pairpool

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"io"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/material"
)

// counter is a generator whose pairs are numbered, so a test can tell
// whether one was handed out twice; gate, when set, holds each
// generation until it is released.
type counter struct {
	n    atomic.Uint64
	gate chan struct{}
	fail atomic.Bool
}

func (c *counter) gen(spec string, _ io.Reader) ([]byte, []byte, error) {
	if c.gate != nil {
		<-c.gate
	}
	if c.fail.Load() {
		return nil, nil, errors.New("no entropy")
	}
	pub := binary.BigEndian.AppendUint64(nil, c.n.Add(1))
	return append([]byte("private-"), pub...), pub, nil
}

// waitFor polls cond; the pool's filler is asynchronous by design.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

func TestTake(t *testing.T) {
	for _, tc := range []struct {
		name    string
		sizes   map[string]int
		spec    string
		pooled  bool
		wantLen int
	}{
		{"pooled spec fills to its size", map[string]int{"RSA_2048": 3}, "RSA_2048", true, 3},
		{"spec not configured", map[string]int{"RSA_2048": 3}, "ECC_NIST_P256", false, 0},
		{"size zero is not pooled", map[string]int{"ECC_NIST_P256": 0}, "ECC_NIST_P256", false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &counter{}
			p := New(c.gen, rand.Reader, background(tc.sizes))
			defer p.Close()
			if _, ok := p.Take(tc.spec); ok {
				t.Fatal("the first Take found a pair: the pool filled before any demand")
			}
			if !tc.pooled {
				time.Sleep(20 * time.Millisecond)
				if n := c.n.Load(); n != 0 {
					t.Fatalf("%d pairs generated for a spec that is not pooled", n)
				}
				return
			}
			waitFor(t, "the stock to fill", func() bool { return p.Len(tc.spec) == tc.wantLen })
			time.Sleep(20 * time.Millisecond) // give an overfilling filler the chance to show
			if n := p.Len(tc.spec); n != tc.wantLen {
				t.Fatalf("stock %d, want the bound %d", n, tc.wantLen)
			}
			if n := c.n.Load(); n != uint64(tc.wantLen) {
				t.Fatalf("%d pairs generated, want %d: the filler works beyond the bound", n, tc.wantLen)
			}
			pair, ok := p.Take(tc.spec)
			if !ok || len(pair.Public) != 8 {
				t.Fatalf("Take from a full stock: %v %x", ok, pair.Public)
			}
			waitFor(t, "the refill after a take", func() bool { return c.n.Load() == uint64(tc.wantLen)+1 })
		})
	}
}

// TestDemandDriven: an idle pool generates nothing; only the specs taken
// are filled.
func TestDemandDriven(t *testing.T) {
	c := &counter{}
	p := New(c.gen, rand.Reader, background(map[string]int{"RSA_2048": 2, "RSA_4096": 2}))
	defer p.Close()
	time.Sleep(20 * time.Millisecond)
	if n := c.n.Load(); n != 0 {
		t.Fatalf("%d pairs generated with no demand", n)
	}
	p.Take("RSA_2048")
	waitFor(t, "RSA_2048 to fill", func() bool { return p.Len("RSA_2048") == 2 })
	if n := p.Len("RSA_4096"); n != 0 {
		t.Fatalf("RSA_4096 stock %d, never asked for", n)
	}
}

// TestFallbackWhenEmpty: Take answers at once when the stock is empty,
// even while the filler is stuck generating.
func TestFallbackWhenEmpty(t *testing.T) {
	c := &counter{gate: make(chan struct{})}
	p := New(c.gen, rand.Reader, background(map[string]int{"RSA_2048": 2}))
	done := make(chan bool)
	go func() {
		_, ok := p.Take("RSA_2048")
		done <- ok
	}()
	select {
	case ok := <-done:
		if ok {
			t.Fatal("Take returned a pair that was never generated")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Take blocked on the filler")
	}
	c.gate <- struct{}{} // one pair through
	waitFor(t, "one pair", func() bool { return p.Len("RSA_2048") == 1 })
	if _, ok := p.Take("RSA_2048"); !ok {
		t.Fatal("Take missed the pair in stock")
	}
	close(c.gate)
	p.Close()
}

// TestGenerateErrorFallsBack: a failing generator leaves the stock empty
// and the filler alive for the next take.
func TestGenerateErrorFallsBack(t *testing.T) {
	c := &counter{}
	c.fail.Store(true)
	p := New(c.gen, rand.Reader, background(map[string]int{"RSA_2048": 2}))
	defer p.Close()
	if _, ok := p.Take("RSA_2048"); ok {
		t.Fatal("pair from a failing generator")
	}
	c.fail.Store(false)
	p.Take("RSA_2048")
	waitFor(t, "recovery", func() bool { return p.Len("RSA_2048") == 2 })
}

// TestNoPairTwice: concurrent takers (run with -race) never receive the
// same pair, while the filler refills under them.
func TestNoPairTwice(t *testing.T) {
	c := &counter{}
	p := New(c.gen, rand.Reader, background(map[string]int{"RSA_2048": 4}))
	defer p.Close()
	var (
		mu   sync.Mutex
		seen = map[string]bool{}
		wg   sync.WaitGroup
		got  atomic.Int64
	)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 2000 {
				pair, ok := p.Take("RSA_2048")
				if !ok {
					runtime.Gosched()
					continue
				}
				got.Add(1)
				mu.Lock()
				if seen[string(pair.Public)] {
					t.Errorf("pair %x handed out twice", pair.Public)
				}
				seen[string(pair.Public)] = true
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if got.Load() == 0 {
		t.Fatal("no taker ever got a pooled pair")
	}
	if n := p.Len("RSA_2048"); n > 4 {
		t.Fatalf("stock %d above its bound 4", n)
	}
}

// TestCloseStopsFillers: Close returns only when every filler has, leaves
// no goroutine behind, clears the private keys in stock and makes later
// Takes fall back.
func TestCloseStopsFillers(t *testing.T) {
	before := runtime.NumGoroutine()
	c := &counter{}
	p := New(c.gen, rand.Reader, background(map[string]int{"RSA_2048": 2, "RSA_3072": 2, "RSA_4096": 2}))
	for _, spec := range []string{"RSA_2048", "RSA_3072", "RSA_4096"} {
		p.Take(spec)
	}
	waitFor(t, "the stocks to fill", func() bool {
		return p.Len("RSA_2048") == 2 && p.Len("RSA_3072") == 2 && p.Len("RSA_4096") == 2
	})
	var held [][]byte
	for _, s := range p.specs {
		for range len(s.pairs) {
			pair := <-s.pairs
			held = append(held, pair.Private)
			s.pairs <- pair
		}
	}
	p.Close()
	p.Close() // idempotent
	waitFor(t, "the fillers to exit", func() bool { return runtime.NumGoroutine() <= before })
	for _, priv := range held {
		for _, b := range priv {
			if b != 0 {
				t.Fatalf("private key in stock not cleared on Close: %x", priv)
			}
		}
	}
	if _, ok := p.Take("RSA_2048"); ok {
		t.Fatal("Take after Close returned a pair")
	}
	time.Sleep(10 * time.Millisecond)
	if runtime.NumGoroutine() > before {
		t.Fatal("Take after Close started a filler")
	}
}

// TestRealPairs runs the pool with package material's generator: pooled
// pairs are real, distinct pairs.
func TestRealPairs(t *testing.T) {
	p := New(material.GeneratePair, rand.Reader, background(map[string]int{"ECC_NIST_P256": 2}))
	defer p.Close()
	p.Take("ECC_NIST_P256")
	waitFor(t, "the stock to fill", func() bool { return p.Len("ECC_NIST_P256") == 2 })
	a, _ := p.Take("ECC_NIST_P256")
	b, _ := p.Take("ECC_NIST_P256")
	if len(a.Public) == 0 || string(a.Public) == string(b.Public) {
		t.Fatalf("pooled pairs not distinct: %x %x", a.Public, b.Public)
	}
}

// background is sizes as stocks filled in the background.
func background(sizes map[string]int) map[string]Stock {
	m := map[string]Stock{}
	for spec, n := range sizes {
		m[spec] = Stock{Size: n}
	}
	return m
}
