package catalog

import "fmt"

// DefaultParsedLimit is how many parsed keys a catalog keeps at most.
const DefaultParsedLimit = 4096

// What Parsed decodes: the opened private material or the public key.
const (
	Private = false
	Public  = true
)

type parsedKey struct {
	id     string
	v      uint32
	public bool
}

// parsedEntry is a decoded key, valid while rec is the key's current
// record: records are immutable and replaced on every update, and the
// entry is dropped when its record is (forgetParsed).
type parsedEntry struct {
	rec *Key
	val any
}

// Parsed returns parse's decoding of version v of k's material: of the
// opened private material (which is cleared after parse returns, so parse
// must copy what it keeps) or, with public, of the clear public key. The
// result is kept in memory, never stored, while k is the key's current
// record: an update, a deletion or any other change of the record drops
// it, so the cache lets go of a disabled or deleted key's material in the
// call that changed the key (calls already past their checks finish with
// it; then it is garbage, which Go frees but does not overwrite). Callers
// check the key's state before use, as for AEAD.
// At most SetParsedLimit entries are kept; beyond, one is evicted at
// random per insertion. A value must be safe for concurrent use.
func (c *Catalog) Parsed(k *Key, v uint32, public bool, parse func(b []byte) (any, error)) (any, error) {
	pk := parsedKey{id: k.Name(), v: v, public: public}
	c.mu.RLock()
	e, ok := c.parsed[pk]
	c.mu.RUnlock()
	if ok && e.rec == k {
		return e.val, nil
	}
	ver := k.Version(v)
	if ver == nil {
		return nil, ErrNotFound
	}
	var val any
	var err error
	if public {
		if ver.Public == nil {
			return nil, ErrNotFound
		}
		val, err = parse(ver.Public)
	} else {
		b, oerr := c.barrier.Open(materialAAD(k.Name(), v), ver.Sealed)
		if oerr != nil {
			return nil, fmt.Errorf("catalog: open material of %s: %w", k.ID, oerr)
		}
		val, err = parse(b)
		clear(b)
	}
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	// Only a current record's decoding is kept: a stale k (updated since
	// the caller read it) would leave an entry forgetParsed already ran for.
	if cur, ok := c.keys.Peek(k.Name()); !ok || cur != k {
		return val, nil
	}
	if _, ok := c.parsed[pk]; !ok && len(c.parsed) >= c.parsedLimit {
		for old := range c.parsed {
			delete(c.parsed, old)
			break
		}
	}
	if c.parsedLimit > 0 {
		c.parsed[pk] = parsedEntry{rec: k, val: val}
	}
	return val, nil
}

// SetParsedLimit sets how many decoded keys Parsed keeps at most (0: none),
// evicting at once what is over it.
func (c *Catalog) SetParsedLimit(n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.parsedLimit = max(n, 0)
	for old := range c.parsed {
		if len(c.parsed) <= c.parsedLimit {
			break
		}
		delete(c.parsed, old)
	}
}

// forgetParsed drops the decoded keys of record k, which is being replaced
// or deleted. c.mu is held.
func (c *Catalog) forgetParsed(k *Key) {
	if len(c.parsed) == 0 {
		// No decoded key cached (none of an asymmetric or HMAC key in
		// use): k, often an old record long out of the processor's
		// caches, need not even be read.
		return
	}
	for _, v := range k.Versions {
		delete(c.parsed, parsedKey{id: k.Name(), v: v.Number})
		delete(c.parsed, parsedKey{id: k.Name(), v: v.Number, public: true})
	}
}
