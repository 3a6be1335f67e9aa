package catalog

import (
	"crypto/aes"
	"crypto/cipher"
	"fmt"
	mrand "math/rand/v2"
	"strings"
	"sync"
	"testing"
)

// TestClockBounded: the cache never holds more than its size, every entry
// it drops (for room, Remove, Resize, Purge) is handed to evicted exactly
// once, and a replaced value is not; against a map model under random
// operations. The names are of both kinds the index keeps (nameindex.go):
// canonical key ids, and other strings — among them the same ids in upper
// case, which are other names.
func TestClockBounded(t *testing.T) {
	rng := mrand.New(mrand.NewPCG(1, 2))
	var names []string
	for i := range 8 {
		id := fmt.Sprintf("%08x-0000-4000-8000-%012x", i, i*0xabcdef)
		names = append(names, fmt.Sprintf("k%d", i), id, strings.ToUpper(id))
	}
	model := map[string]int{}
	var dropped []string
	var c *clockCache[int, string]
	c = newClockCache[int, string](8, func(name string, v int) {
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
		name := names[rng.IntN(len(names))]
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
	c := newClockCache[int, string](4, func(name string, _ int) { evicted = append(evicted, name) })
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
	c := newClockCache[int, string](64, nil)
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

// TestAEADSet: a key's AES-GCM instances by version, the first inline:
// adding one replaces only the same version's, and a set is never changed
// in place (a reader may hold it).
func TestAEADSet(t *testing.T) {
	gcm := func() cipher.AEAD {
		b, err := aes.NewCipher(make([]byte, 32))
		if err != nil {
			t.Fatal(err)
		}
		a, err := cipher.NewGCM(b)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	var s aeadSet
	if s.find(1) != nil {
		t.Fatal("empty set finds version 1")
	}
	a1, a2, a3, b2 := gcm(), gcm(), gcm(), gcm()
	s1 := s.with(1, a1)
	s2 := s1.with(2, a2)
	s3 := s2.with(3, a3)
	s4 := s3.with(2, b2)
	for _, c := range []struct {
		s    aeadSet
		v    uint32
		want cipher.AEAD
	}{
		{s1, 1, a1}, {s1, 2, nil}, {s2, 1, a1}, {s2, 2, a2}, {s3, 3, a3}, {s3, 2, a2},
		{s4, 1, a1}, {s4, 2, b2}, {s4, 3, a3}, {s4, 4, nil},
	} {
		if got := c.s.find(c.v); got != c.want {
			t.Errorf("find(%d) in a set of %d+%d = %p, want %p", c.v, 1, len(c.s.more), got, c.want)
		}
	}
	if s1.with(1, b2).find(1) != b2 || s1.find(1) != a1 {
		t.Error("replacing the inline instance changed the set it was made from")
	}
}
