package catalog

import (
	"fmt"
	mrand "math/rand/v2"
	"sync"
	"testing"
)

// TestClockBounded: the cache never holds more than its size, every entry
// it drops (for room, Remove, Resize, Purge) is handed to evicted exactly
// once, and a replaced value is not; against a map model under random
// operations.
func TestClockBounded(t *testing.T) {
	rng := mrand.New(mrand.NewPCG(1, 2))
	model := map[string]int{}
	var dropped []string
	var c *clockCache[int]
	c = newClockCache(8, func(name string, v int) {
		if model[name] != v {
			t.Fatalf("evicted %s=%d, cached %d", name, v, model[name])
		}
		if c.Contains(name) {
			t.Fatalf("%s still indexed when evicted", name)
		}
		delete(model, name)
		dropped = append(dropped, name)
	})
	for i := range 20000 {
		name := fmt.Sprintf("k%d", rng.IntN(24))
		switch op := rng.IntN(100); {
		case op < 50:
			v, ok := c.Get(name)
			if mv, mok := model[name]; ok != mok || v != mv {
				t.Fatalf("step %d: Get(%s) = %d, %v; model %d, %v", i, name, v, ok, mv, mok)
			}
		case op < 85:
			before := len(dropped)
			_, had := model[name]
			c.Add(name, i)
			model[name] = i
			if had && len(dropped) != before {
				t.Fatalf("step %d: replacing %s evicted %v", i, name, dropped[before:])
			}
		case op < 95:
			_, had := model[name]
			before := len(dropped)
			c.Remove(name)
			if had != (len(dropped) == before+1) || c.Contains(name) {
				t.Fatalf("step %d: Remove(%s): had %v, evicted %v", i, name, had, dropped[before:])
			}
		case op < 99:
			c.Resize(1 + rng.IntN(12))
		default:
			c.Purge()
			if len(model) != 0 {
				t.Fatalf("step %d: Purge left %v", i, model)
			}
		}
		if c.Len() != len(model) || c.Len() > c.size {
			t.Fatalf("step %d: Len %d, model %d, size %d", i, c.Len(), len(model), c.size)
		}
		for name, v := range model {
			if got, ok := c.Peek(name); !ok || got != v {
				t.Fatalf("step %d: Peek(%s) = %d, %v; want %d", i, name, got, ok, v)
			}
		}
	}
}

// TestClockSecondChance: a full cache evicts an entry not used since the
// sweep last passed before one that was: the hot entries of a workload
// stay cached while cold ones come and go.
func TestClockSecondChance(t *testing.T) {
	var evicted []string
	c := newClockCache(4, func(name string, _ int) { evicted = append(evicted, name) })
	for i := range 4 {
		c.Add(fmt.Sprintf("k%d", i), i)
	}
	c.Get("k0")
	c.Get("k2")
	c.Add("k4", 4)
	c.Add("k5", 5)
	if fmt.Sprint(evicted) != "[k1 k3]" {
		t.Fatalf("evicted %v, want the unused [k1 k3]", evicted)
	}
	// A hot key read between every insertion is never evicted.
	for i := 6; i < 100; i++ {
		c.Get("k0")
		c.Add(fmt.Sprintf("k%d", i), i)
		if !c.Contains("k0") {
			t.Fatalf("hot k0 evicted at insertion %d", i)
		}
	}
	if c.Len() != 4 {
		t.Fatalf("Len %d, want 4", c.Len())
	}
}

// TestClockConcurrentGets: Gets and Peeks run together, as under the
// catalog's read lock, while writers take turns (run with -race).
func TestClockConcurrentGets(t *testing.T) {
	var mu sync.RWMutex
	c := newClockCache[int](64, nil)
	for i := range 64 {
		c.Add(fmt.Sprint(i), i)
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 5000 {
				name := fmt.Sprint((i * (g + 1)) % 100)
				if g == 0 && i%10 == 0 {
					mu.Lock()
					c.Add(name, i)
					mu.Unlock()
					continue
				}
				mu.RLock()
				c.Get(name)
				c.Peek(name)
				mu.RUnlock()
			}
		}()
	}
	wg.Wait()
	if c.Len() > 64 {
		t.Fatalf("Len %d above 64", c.Len())
	}
}
