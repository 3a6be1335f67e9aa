package keystore

import (
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultRPS is AWS's custom key store request quota (spec §11): 1,800
// cryptographic requests a second per custom key store, shared by all its
// keys.
const DefaultRPS = 1800

// Quota is the request quota of custom key stores (spec §11): each store
// has a token bucket filling at rps tokens a second and holding at most one
// second's worth, so a store may take a burst of rps requests and then rps
// a second. Every call a cryptographic operation makes to a store's backing
// (Encrypt, Decrypt, each side of ReEncrypt, GenerateDataKey*,
// GenerateRandom with CustomKeyStoreId) takes one token; a call finding the
// bucket empty is refused (kms answers ThrottlingException).
//
// Allow is on the hot path: after a store's first request it allocates
// nothing and takes one read lock and the store's own mutex. A nil *Quota
// allows everything (--custom-key-store-rps 0).
type Quota struct {
	rate float64 // the quota: tokens a second, shared by the nodes
	// share is this node's part of rate (float64 bits; 1 alone), set by
	// SetShare: each bucket fills at, and holds at most, rate × share.
	share atomic.Uint64
	now   func() time.Time

	mu      sync.RWMutex
	buckets map[string]*bucket // by custom key store id
}

type bucket struct {
	mu        sync.Mutex
	tokens    float64
	last      time.Time
	throttled uint64 // requests refused, for metrics
}

// NewQuota returns the quota of rps requests a second per store, read
// against clock now (time.Now when nil); nil, no limit, when rps <= 0.
func NewQuota(rps int, now func() time.Time) *Quota {
	if rps <= 0 {
		return nil
	}
	if now == nil {
		now = time.Now
	}
	q := &Quota{rate: float64(rps), now: now, buckets: map[string]*bucket{}}
	q.share.Store(math.Float64bits(1))
	return q
}

// SetShare sets this node's part of every store's quota, in (0, 1]: with
// n nodes serving, each takes 1/n, so that the cluster never exceeds the
// quota (MULTINODE.md §4.7, with equal shares).
func (q *Quota) SetShare(share float64) {
	if q == nil || !(share > 0 && share <= 1) {
		return
	}
	q.share.Store(math.Float64bits(share))
}

// Share is this node's part of the quota.
func (q *Quota) Share() float64 {
	if q == nil {
		return 1
	}
	return math.Float64frombits(q.share.Load())
}

// local is this node's rate: tokens a second and bucket capacity.
func (q *Quota) local() float64 { return q.rate * math.Float64frombits(q.share.Load()) }

// RPS is the quota's rate (0: unlimited).
func (q *Quota) RPS() int {
	if q == nil {
		return 0
	}
	return int(q.rate)
}

// Allow takes one token of store id's bucket and reports whether there
// was one.
func (q *Quota) Allow(id string) bool {
	if q == nil {
		return true
	}
	q.mu.RLock()
	b := q.buckets[id]
	q.mu.RUnlock()
	if b == nil {
		b = q.add(id)
	}
	t := q.now()
	rate := q.local()
	b.mu.Lock()
	defer b.mu.Unlock()
	if d := t.Sub(b.last); d > 0 {
		b.tokens = b.tokens + d.Seconds()*rate
		b.last = t
	}
	b.tokens = min(rate, b.tokens) // also when the share shrank
	if b.tokens < 1 {
		b.throttled++
		return false
	}
	b.tokens--
	return true
}

// add returns store id's bucket, made full on its first use.
func (q *Quota) add(id string) *bucket {
	q.mu.Lock()
	defer q.mu.Unlock()
	if b := q.buckets[id]; b != nil {
		return b
	}
	b := &bucket{tokens: q.local(), last: q.now()}
	q.buckets[id] = b
	return b
}

// Forget drops store id's bucket (the store was deleted).
func (q *Quota) Forget(id string) {
	if q == nil {
		return
	}
	q.mu.Lock()
	delete(q.buckets, id)
	q.mu.Unlock()
}

// Each calls fn with every store's count of refused requests (a store
// that was never throttled may be left out).
func (q *Quota) Each(fn func(id string, throttled uint64)) {
	if q == nil {
		return
	}
	q.mu.RLock()
	defer q.mu.RUnlock()
	for id, b := range q.buckets {
		b.mu.Lock()
		n := b.throttled
		b.mu.Unlock()
		fn(id, n)
	}
}
