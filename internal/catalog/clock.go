package catalog

import "sync/atomic"

// clockCache is the bounded cache of key records: at most size entries by
// name, evicting for room by CLOCK (second chance), an approximation of
// least recently used.
//
// It replaces a least-recently-used list for the key cache, the largest
// structure of a node (a million keys and more), for what the collector
// and the processor's caches pay for it. A list entry was one more heap
// object per cached key holding six pointers, and every hit relinked it
// at the head under the list's own lock, writing to three entries that a
// random key's hit finds out of cache. Here the entries are one slice of
// name and value, the index a map of name to slot (nameindex.go): no
// object per entry, and a hit only sets the entry's reference bit (and
// only when it is clear).
//
// Each entry may carry extra data of type X (the key cache's AES-GCM
// instances): kept when the entry's value is replaced, dropped with the
// entry.
//
// Locking is the catalog's (cache.go): Get, Peek, Extra, Contains and Len
// may run concurrently under c.mu.RLock (the reference bit is atomic);
// Add, SetExtra, Remove, Resize and Purge run under c.mu.Lock, and so does
// evicted, which each of them calls for every entry it drops — for room
// or not, as the list did.
type clockCache[V, X any] struct {
	index   nameIndex // name → slot
	slots   []clockSlot[V, X]
	free    []int32 // unused slots below len(slots)
	hand    int     // the next slot the eviction sweep looks at
	size    int
	evicted func(string, V)
}

type clockSlot[V, X any] struct {
	name string
	v    V
	x    X
	ref  atomic.Bool // used since the sweep last passed
	used bool
}

// newClockCache is a cache of size entries (at least 1) calling evicted,
// if not nil, for each entry it drops.
func newClockCache[V, X any](size int, evicted func(string, V)) *clockCache[V, X] {
	return &clockCache[V, X]{index: newNameIndex(), size: max(size, 1), evicted: evicted}
}

// Get returns the value cached for name and marks it used.
func (c *clockCache[V, X]) Get(name string) (V, bool) {
	i, ok := c.index.get(name)
	if !ok {
		var zero V
		return zero, false
	}
	s := &c.slots[i]
	if !s.ref.Load() {
		s.ref.Store(true)
	}
	return s.v, true
}

// Peek returns the value cached for name without marking it used.
func (c *clockCache[V, X]) Peek(name string) (V, bool) {
	i, ok := c.index.get(name)
	if !ok {
		var zero V
		return zero, false
	}
	return c.slots[i].v, true
}

// Extra returns the value cached for name and the extra data it carries,
// without marking it used.
func (c *clockCache[V, X]) Extra(name string) (V, X, bool) {
	i, ok := c.index.get(name)
	if !ok {
		var zv V
		var zx X
		return zv, zx, false
	}
	return c.slots[i].v, c.slots[i].x, true
}

// SetExtra sets the extra data of name's entry, if it is cached.
func (c *clockCache[V, X]) SetExtra(name string, x X) {
	if i, ok := c.index.get(name); ok {
		c.slots[i].x = x
	}
}

// Contains reports whether name is cached.
func (c *clockCache[V, X]) Contains(name string) bool {
	_, ok := c.index.get(name)
	return ok
}

// Len is the number of entries cached.
func (c *clockCache[V, X]) Len() int { return c.index.len() }

// Add caches v for name, replacing what was cached for it (without
// calling evicted, and keeping its extra data), or evicting an entry first
// if the cache is full.
func (c *clockCache[V, X]) Add(name string, v V) {
	if i, ok := c.index.get(name); ok {
		c.slots[i].v = v
		c.slots[i].ref.Store(true)
		return
	}
	for c.index.len() >= c.size {
		c.evictOne()
	}
	var i int32
	if n := len(c.free); n > 0 {
		i, c.free = c.free[n-1], c.free[:n-1]
	} else {
		c.slots = append(c.slots, clockSlot[V, X]{})
		i = int32(len(c.slots) - 1)
	}
	s := &c.slots[i]
	s.name, s.v, s.used = name, v, true
	s.ref.Store(false)
	c.index.set(name, i)
}

// Remove drops what is cached for name, calling evicted for it.
func (c *clockCache[V, X]) Remove(name string) {
	if i, ok := c.index.get(name); ok {
		c.drop(i)
	}
}

// Resize bounds the cache to size entries (at least 1), evicting at once
// if it holds more.
func (c *clockCache[V, X]) Resize(size int) {
	c.size = max(size, 1)
	for c.index.len() > c.size {
		c.evictOne()
	}
	if c.index.len() == 0 {
		c.slots, c.free, c.hand = nil, nil, 0
	}
}

// Purge drops every entry, calling evicted for each.
func (c *clockCache[V, X]) Purge() {
	for i := range c.slots {
		if c.slots[i].used {
			c.drop(int32(i))
		}
	}
	c.slots, c.free, c.hand = nil, nil, 0
}

// evictOne drops the first entry at or after the hand not used since the
// hand last passed it, clearing the reference bits it passes: within two
// turns of the slots at most.
func (c *clockCache[V, X]) evictOne() {
	for {
		if c.hand >= len(c.slots) {
			c.hand = 0
		}
		i := c.hand
		c.hand++
		s := &c.slots[i]
		if !s.used {
			continue
		}
		if s.ref.Load() {
			s.ref.Store(false)
			continue
		}
		c.drop(int32(i))
		return
	}
}

// drop empties slot i, which is in use, and calls evicted for its entry.
func (c *clockCache[V, X]) drop(i int32) {
	s := &c.slots[i]
	name, v := s.name, s.v
	c.index.delete(name)
	var zv V
	var zx X
	s.name, s.v, s.x, s.used = "", zv, zx, false
	s.ref.Store(false)
	c.free = append(c.free, i)
	if c.evicted != nil {
		c.evicted(name, v)
	}
}
