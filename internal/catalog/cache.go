package catalog

import (
	"context"
	"crypto/cipher"
	"strings"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
)

// The catalog's caches are kept correct with several writers by three
// rules:
//
//   - Generations. Every cached path ("key/<name>", the alias path,
//     "grant/<key name>/") has a generation, bumped whenever this process
//     installs a record it wrote or the change feed says the path changed.
//     A reader that fills the cache from the database notes the generation
//     before reading and installs only if it is unchanged (fill), so a
//     record read before a newer write committed never replaces it; a
//     writer installs its own record only if no other write or
//     invalidation happened since it began (install), and otherwise evicts
//     the path, to be read again.
//   - Change feed. A follower (package feed) calls Invalidate with the
//     storage keys other processes (and this one) changed, and Reset when
//     the feed cannot say what changed; then it publishes the feed's
//     horizon, which SetFreshness handed to the catalog.
//   - Freshness. A read trusts the cache only while the horizon is younger
//     than the bound. A control-plane read (WithFresh) trusts it only once
//     the feed has proved it holds every change committed before the read
//     began (SetReadBarrier), and otherwise reads the database.
//
// The caches are bounded (SetCacheSize): key records (clock.go: the
// second-chance approximation of least recently used), grant lists and
// aliases (least-recently-used lists) of at most the cache size each.
// Eviction for room needs no generation: an evicted path is read again,
// and a fill in flight for it still installs only if its generation is
// unchanged. The generation table, which grows with every
// path written or invalidated, is bounded too: past its limit it is
// emptied and its base raised above every generation given so far, so a
// fill or write begun before that simply does not install (it is read
// again), and no generation a filler noted can match a path's again.

// DefaultCacheSize is how many key records (and as many grant lists and
// aliases) a catalog caches unless SetCacheSize says otherwise: at a few
// KiB per cached key (see TestCacheMemoryPerKey), a few hundred MiB.
const DefaultCacheSize = 100_000

// minGenLimit is the least number of paths the generation table holds
// before it is emptied.
const minGenLimit = 4096

// genTable is the generation of every path written or invalidated since
// the last Reset or prune; a path not in m has generation base.
type genTable struct {
	m    map[string]uint64
	seq  uint64 // the last generation given
	base uint64 // the generation of every path after a Reset or prune
}

// mustLRU is a least-recently-used cache of size entries (at least 1)
// calling evicted, if not nil, for each entry it drops.
func mustLRU[K comparable, V any](size int, evicted func(K, V)) *lru.Cache[K, V] {
	c, err := lru.NewWithEvict(max(size, 1), evicted)
	if err != nil {
		panic(err) // only for a size <= 0
	}
	return c
}

// SetCacheSize bounds the catalog's caches to n key records (at least 1),
// as many per-key grant lists and as many aliases, evicting the least
// recently used at once if they hold more. Call it before serving.
func (c *Catalog) SetCacheSize(n int) {
	n = max(n, 1)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cacheSize = n
	c.keys.Resize(n)
	c.aliases.Resize(n)
	c.grants.Resize(n)
}

// CacheLen is how many key records, grant lists and aliases the catalog
// caches now.
func (c *Catalog) CacheLen() (keys, grants, aliases int) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.keys.Len(), c.grants.Len(), c.aliases.Len()
}

// putKey caches k as the record of the key named name, replacing (and
// forgetting the decodings of) the one cached. c.mu is held.
func (c *Catalog) putKey(name string, k *Key) {
	if k != nil && k.ID == name { // never for a multi-Region key: its name carries the Region
		name = k.ID // one copy of the id, the record's, not the caller's too
	}
	if old, ok := c.keys.Peek(name); ok && old != nil && old != k {
		c.forgetParsed(old)
	}
	c.keys.Add(name, k)
}

// keyEvicted drops what goes with a key record leaving the cache, for
// room or on eviction: its decoded keys (its AES-GCM instances go with its
// entry). c.mu is held (every change of c.keys is made under it).
func (c *Catalog) keyEvicted(name string, k *Key) {
	if k != nil {
		c.forgetParsed(k)
	}
}

// versionAEAD is the AES-GCM instance of one version of a key's material.
type versionAEAD struct {
	v uint32
	a cipher.AEAD
}

// aeadSet is the AES-GCM instances of a cached key's versions, kept with
// its cache entry: the first inline (most keys have one version, and so no
// object more per key), any other in more. A set is replaced, never
// changed in place.
type aeadSet struct {
	v    uint32
	a    cipher.AEAD
	more []versionAEAD
}

// find is version v's instance, nil if the set has none.
func (s aeadSet) find(v uint32) cipher.AEAD {
	if s.a != nil && s.v == v {
		return s.a
	}
	for _, e := range s.more {
		if e.v == v {
			return e.a
		}
	}
	return nil
}

// with is s with a as version v's instance.
func (s aeadSet) with(v uint32, a cipher.AEAD) aeadSet {
	if s.a == nil || s.v == v {
		s.v, s.a = v, a
		return s
	}
	more := make([]versionAEAD, 0, len(s.more)+1)
	for _, e := range s.more {
		if e.v != v {
			more = append(more, e)
		}
	}
	s.more = append(more, versionAEAD{v: v, a: a})
	return s
}

// stamp is path's current generation.
func (c *Catalog) stamp(path string) uint64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.stampLocked(path)
}

func (c *Catalog) stampLocked(path string) uint64 {
	if g, ok := c.gens.m[path]; ok {
		return g
	}
	return c.gens.base
}

// bump gives path a new generation. c.mu is held. A full table is
// emptied first, under a new base above every generation given so far.
func (c *Catalog) bump(path string) {
	if len(c.gens.m) >= max(2*c.cacheSize, minGenLimit) {
		clear(c.gens.m)
		c.gens.seq++
		c.gens.base = c.gens.seq
	}
	c.gens.seq++
	c.gens.m[path] = c.gens.seq
}

// fill runs set (under c.mu) to cache what was read from the database at
// path, if nothing changed path since its generation was g.
func (c *Catalog) fill(path string, g uint64, set func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stampLocked(path) == g {
		set()
	}
}

// install runs set (under c.mu) to cache what this process just committed
// at path, if nothing changed path since its generation was g; otherwise
// it evicts path. Either way path gets a new generation, so a fill begun
// before the commit cannot install an older record afterwards.
func (c *Catalog) install(path string, g uint64, set func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stampLocked(path) == g {
		set()
	} else {
		c.evictLocked(path)
	}
	c.bump(path)
}

// Invalidate evicts what the catalog caches for the storage keys paths,
// which changed in the database; keys it does not cache are ignored. The
// change-feed follower calls it for every change, this process's own
// included (feed.Subscriber; it never fails).
func (c *Catalog) Invalidate(_ context.Context, paths []string) error {
	c.invalidate(paths)
	return nil
}

func (c *Catalog) invalidate(paths []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range paths {
		if cp, ok := cachePath(p); ok {
			c.evictLocked(cp)
			c.bump(cp)
		}
	}
}

// cachePath maps a storage key to the cache path it affects.
func cachePath(key string) (string, bool) {
	switch {
	case strings.HasPrefix(key, "key/"), strings.HasPrefix(key, "alias/"):
		return key, true
	case strings.HasPrefix(key, "grant/"):
		// grant/<key name>/<grant id>: the key's whole list.
		if i := strings.LastIndexByte(key, '/'); i > len("grant/") {
			return key[:i+1], true
		}
	}
	return "", false
}

// evictLocked drops what is cached at path. c.mu is held.
func (c *Catalog) evictLocked(path string) {
	switch {
	case strings.HasPrefix(path, "key/"):
		name := path[len("key/"):]
		c.keys.Remove(name) // with its instances; keyEvicted drops its decodings
	case strings.HasPrefix(path, "alias/"):
		c.aliases.Remove(path)
	case strings.HasPrefix(path, "grant/"):
		c.grants.Remove(strings.TrimSuffix(path[len("grant/"):], "/"))
	}
}

// Reset drops every cached record, for when the change feed cannot say
// what changed (a new reader, a pruned cursor, a restored database).
func (c *Catalog) Reset(context.Context) error {
	c.reset()
	return nil
}

func (c *Catalog) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	clear(c.parsed)
	c.keys.Purge()
	c.aliases.Purge()
	c.grants.Purge()
	clear(c.gens.m)
	c.gens.seq++
	c.gens.base = c.gens.seq
}

type freshness struct {
	asOf     func() time.Time
	maxStale time.Duration
}

// SetFreshness makes cached reads depend on the change feed: asOf returns
// the instant (on this process's clock) before which every committed
// change has been passed to Invalidate, and a read not made WithFresh uses
// the cache only while that instant is at most maxStale ago; past it, it
// reads the database, so a node cut off from the database (or whose feed
// stalls) stops serving from its cache. Without it the cache is trusted
// always (one process, no feed). Call it before serving.
func (c *Catalog) SetFreshness(asOf func() time.Time, maxStale time.Duration) {
	c.freshness.Store(&freshness{asOf: asOf, maxStale: maxStale})
}

// readBarrier is what SetReadBarrier was given.
type readBarrier struct {
	freshAt func(ctx context.Context, t time.Time) bool
}

// SetReadBarrier lets control-plane reads (WithFresh) use the cache:
// freshAt(ctx, t) must return true only if every change committed before
// t has been passed to Invalidate or Reset (feed.Follower.FreshAt). A read
// made with WithFresh at t for which it is true is served from the cache,
// which then holds nothing older than the database had at t — the
// linearizable read of MULTINODE.md §4.2 ("a cache entry proven fresh for
// that key") — and otherwise from the database. Without it
// control-plane reads always read the database. Call it before serving.
func (c *Catalog) SetReadBarrier(freshAt func(ctx context.Context, t time.Time) bool) {
	c.readBarrier.Store(&readBarrier{freshAt})
}

// cacheOK says whether a read for ctx may be served from the cache.
func (c *Catalog) cacheOK(ctx context.Context) bool {
	if at, ok := ctx.Value(freshKey{}).(time.Time); ok {
		b := c.readBarrier.Load()
		return b != nil && b.freshAt(ctx, at)
	}
	f := c.freshness.Load()
	return f == nil || time.Since(f.asOf()) <= f.maxStale
}

// staleReadTimeout bounds a database read made because the cache was too
// stale to trust: a node cut off from its database refuses within it
// rather than holding the request until TCP gives up.
const staleReadTimeout = time.Second

// readCtx is the context of a database read for ctx after cacheOK said
// no: bounded by staleReadTimeout unless it is a control-plane read.
func readCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	if ctx.Value(freshKey{}) != nil {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, staleReadTimeout)
}

type freshKey struct{}

// WithFresh marks reads made with the returned context as control-plane
// reads, begun now: the catalog answers them with what the database held
// at least as late as now — from the database (refreshing its cache), or
// from the cache once the change feed has proved it that fresh
// (SetReadBarrier) — so that a change acknowledged by any node is seen at
// once. Every read made with the context is measured against the same
// instant, so one proof serves them all.
func WithFresh(ctx context.Context) context.Context {
	return context.WithValue(ctx, freshKey{}, time.Now())
}

// IsFresh says whether ctx was made by WithFresh.
func IsFresh(ctx context.Context) bool { return ctx.Value(freshKey{}) != nil }
