package pairpool

import (
	"bytes"
	"crypto/rand"
	"io"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/material"
)

// TestBatchTake: in batch mode the Take that finds the stock empty makes
// the batch itself, before it returns — one pair for itself, the rest
// stocked, only as many as fit — and no Take generates while the stock
// has pairs.
func TestBatchTake(t *testing.T) {
	for _, tc := range []struct {
		name      string
		stock     Stock
		wantStock int // pairs stocked by a batch made on an empty stock
	}{
		{"batch fills the stock", Stock{Size: 7, Batch: 8}, 7},
		{"batch sized to fit a smaller stock", Stock{Size: 3, Batch: 8}, 3},
		{"stock larger than a batch", Stock{Size: 10, Batch: 4}, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := runtime.NumGoroutine()
			c := &counter{}
			p := New(c.gen, rand.Reader, map[string]Stock{"ECC_NIST_P256": tc.stock})
			defer p.Close()
			if n := c.n.Load(); n != 0 {
				t.Fatalf("%d pairs generated before any Take", n)
			}
			for round := range 2 {
				pair, ok := p.Take("ECC_NIST_P256")
				if !ok || len(pair.Public) != 8 {
					t.Fatalf("round %d: the Take on an empty stock got no pair: %v %x", round, ok, pair.Public)
				}
				made := uint64(round*(tc.wantStock+1) + tc.wantStock + 1)
				if n := c.n.Load(); n != made {
					t.Fatalf("round %d: %d pairs generated in all, want %d", round, n, made)
				}
				if n := p.Len("ECC_NIST_P256"); n != tc.wantStock {
					t.Fatalf("round %d: stock %d after a batch, want %d", round, n, tc.wantStock)
				}
				for i := range tc.wantStock {
					if _, ok := p.Take("ECC_NIST_P256"); !ok {
						t.Fatalf("round %d: Take %d missed the stock", round, i)
					}
				}
				if n := c.n.Load(); n != made {
					t.Fatalf("round %d: %d pairs generated, want %d: a Take generated with pairs in stock", round, n, made)
				}
			}
			if n := runtime.NumGoroutine(); n > before {
				t.Fatalf("%d goroutines after batches, %d before: batch mode runs no worker", n, before)
			}
		})
	}
}

// TestBatchNoPairTwice: 16 concurrent takers (run with -race) each get a
// pair on every Take, never one another taker got (by private key), the
// stock stays within its bound throughout, and every pair made is either
// handed out or in stock: none is thrown away.
func TestBatchNoPairTwice(t *testing.T) {
	const bound = 7
	c := &counter{}
	p := New(c.gen, rand.Reader, map[string]Stock{"ECC_NIST_P256": {Size: bound, Batch: 8}})
	defer p.Close()
	var (
		mu    sync.Mutex
		seen  = map[string]bool{}
		wg    sync.WaitGroup
		taken atomic.Int64
		over  atomic.Int64
	)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 1000 {
				pair, ok := p.Take("ECC_NIST_P256")
				if !ok {
					t.Error("batch-mode Take returned no pair")
					return
				}
				taken.Add(1)
				if n := p.Len("ECC_NIST_P256"); n > bound {
					over.Store(int64(n))
				}
				mu.Lock()
				if seen[string(pair.Private)] {
					t.Errorf("pair %x handed out twice", pair.Private)
				}
				seen[string(pair.Private)] = true
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if n := over.Load(); n != 0 {
		t.Fatalf("stock %d above its bound %d", n, bound)
	}
	if made, want := c.n.Load(), uint64(taken.Load())+uint64(p.Len("ECC_NIST_P256")); made != want {
		t.Fatalf("%d pairs made, %d taken or in stock: pairs were lost", made, want)
	}
}

// TestBatchNeverWaits: a Take that finds the stock empty while another
// taker is making a batch does not wait for it: it makes its own pair,
// and no more than the places the batch left free.
func TestBatchNeverWaits(t *testing.T) {
	var n atomic.Uint64
	blocked, release := make(chan struct{}), make(chan struct{})
	gen := func(string, io.Reader) ([]byte, []byte, error) {
		i := n.Add(1)
		if i == 2 { // the first taker's second pair: its batch stalls
			close(blocked)
			<-release
		}
		return []byte{byte(i)}, []byte{byte(i)}, nil
	}
	p := New(gen, rand.Reader, map[string]Stock{"SM2": {Size: 3, Batch: 4}})
	defer p.Close()
	first := make(chan bool)
	go func() {
		_, ok := p.Take("SM2")
		first <- ok
	}()
	<-blocked
	second := make(chan bool)
	go func() {
		_, ok := p.Take("SM2")
		second <- ok
	}()
	select {
	case ok := <-second:
		if !ok {
			t.Fatal("the second taker got no pair")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a Take waited for another taker's batch")
	}
	if got := n.Load(); got != 3 {
		t.Fatalf("%d pairs generated, want 3: the second taker made more than its own while the first had reserved the stock", got)
	}
	close(release)
	if ok := <-first; !ok {
		t.Fatal("the batching taker got no pair")
	}
	if l := p.Len("SM2"); l != 3 {
		t.Fatalf("stock %d after the batch, want 3", l)
	}
}

// TestBatchClose: Close clears the private keys in stock and those of a
// batch still being made, which never enter the stock; later Takes
// return no pair and generate nothing.
func TestBatchClose(t *testing.T) {
	var (
		mu   sync.Mutex
		made = map[string][][]byte{}
		n    atomic.Uint64
	)
	blocked, release := make(chan struct{}), make(chan struct{})
	gen := func(spec string, _ io.Reader) ([]byte, []byte, error) {
		n.Add(1)
		priv := bytes.Repeat([]byte{0xa5}, 32)
		mu.Lock()
		made[spec] = append(made[spec], priv)
		stall := spec == "SM2" && len(made[spec]) == 2 // SM2's batch stalls at its second pair
		mu.Unlock()
		if stall {
			close(blocked)
			<-release
		}
		return priv, []byte{1}, nil
	}
	p := New(gen, rand.Reader, map[string]Stock{
		"ECC_NIST_EDWARDS25519": {Size: 3, Batch: 4},
		"SM2":                   {Size: 3, Batch: 4},
	})
	// Ed25519's stock full, SM2's batch being made.
	if _, ok := p.Take("ECC_NIST_EDWARDS25519"); !ok {
		t.Fatal("no pair")
	}
	done := make(chan []byte)
	go func() {
		pair, _ := p.Take("SM2")
		done <- pair.Private
	}()
	<-blocked
	p.Close()
	close(release)
	own := <-done
	zero := make([]byte, 32)
	mu.Lock()
	defer mu.Unlock()
	for _, priv := range made["ECC_NIST_EDWARDS25519"][1:] {
		if !bytes.Equal(priv, zero) {
			t.Fatalf("private key in stock not cleared on Close: %x", priv)
		}
	}
	sm2 := made["SM2"]
	if len(sm2) != 4 {
		t.Fatalf("the stalled batch made %d pairs, want 4", len(sm2))
	}
	for _, priv := range sm2[1:] {
		if !bytes.Equal(priv, zero) {
			t.Fatalf("private key of a batch finished after Close not cleared: %x", priv)
		}
	}
	if !bytes.Equal(own, sm2[0]) || bytes.Equal(own, zero) {
		t.Fatal("the batching taker did not get its own pair intact")
	}
	for _, spec := range []string{"ECC_NIST_EDWARDS25519", "SM2"} {
		if l := p.Len(spec); l != 0 {
			t.Fatalf("%s stock %d after Close", spec, l)
		}
		before := n.Load()
		if _, ok := p.Take(spec); ok {
			t.Fatalf("%s: Take after Close returned a pair", spec)
		}
		if n.Load() != before {
			t.Fatalf("%s: Take after Close generated", spec)
		}
	}
}

// TestBatchRealPairs runs batch mode with package material's generator:
// concurrent takers get real pairs, all distinct by private key.
func TestBatchRealPairs(t *testing.T) {
	p := New(material.GeneratePair, rand.Reader, map[string]Stock{"ECC_NIST_P256": {Size: 15, Batch: 16}})
	defer p.Close()
	var (
		mu   sync.Mutex
		seen = map[string]bool{}
		wg   sync.WaitGroup
	)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 20 {
				pair, ok := p.Take("ECC_NIST_P256")
				if !ok || len(pair.Private) == 0 || len(pair.Public) == 0 {
					t.Errorf("Take: %v, %d-byte private key", ok, len(pair.Private))
					return
				}
				mu.Lock()
				if seen[string(pair.Private)] {
					t.Error("a private key handed out twice")
				}
				seen[string(pair.Private)] = true
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
}
