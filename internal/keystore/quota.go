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
	// shares, when set (SetStoreShares), overrides share for the stores
	// it names: this node's part of each by the nodes' demand.
	shares atomic.Pointer[map[string]float64]
	// held, set by Hold, makes every store's rate 0 whatever the shares.
	held atomic.Bool
	now  func() time.Time

	mu      sync.RWMutex
	buckets map[string]*bucket // by custom key store id
}

type bucket struct {
	mu        sync.Mutex
	tokens    float64
	last      time.Time
	throttled uint64 // requests refused, for metrics
	// offered counts every request asked for; Demand turns it into a
	// rate (demand, requests a second) at each call (seen, at).
	offered, seen uint64
	at            time.Time
	demand        float64
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
// quota; SetStoreShares overrides it for the stores the nodes are asked
// for (MULTINODE.md §4.7).
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

// SetStoreShares sets this node's part of the quota of the stores in
// shares (each in [0, 1]), replacing the last call's; other stores keep
// the share of SetShare. Several nodes split a store's quota by their
// demand this way (see Demand).
func (q *Quota) SetStoreShares(shares map[string]float64) {
	if q == nil {
		return
	}
	m := make(map[string]float64, len(shares))
	for id, s := range shares {
		if s >= 0 && s <= 1 {
			m[id] = s
		}
	}
	q.shares.Store(&m)
}

// Hold makes this node refuse every store's requests (held) or apply its
// shares again (!held), without changing them: a node that joins other
// nodes holds until they all count it, as until then their shares add up
// to the whole quota already (server's quotaShare). A held store's bucket
// is emptied; released, it refills at the node's share.
func (q *Quota) Hold(held bool) {
	if q == nil {
		return
	}
	q.held.Store(held)
}

// Held reports whether Hold holds the quota.
func (q *Quota) Held() bool { return q != nil && q.held.Load() }

// StoreShare is this node's part of store id's quota.
func (q *Quota) StoreShare(id string) float64 {
	if q == nil {
		return 1
	}
	return q.local(id) / q.rate
}

// local is this node's rate for store id: tokens a second and bucket
// capacity.
func (q *Quota) local(id string) float64 {
	if q.held.Load() {
		return 0
	}
	if m := q.shares.Load(); m != nil {
		if s, ok := (*m)[id]; ok {
			return q.rate * s
		}
	}
	return q.rate * math.Float64frombits(q.share.Load())
}

// Demand returns the requests a second asked of each store on this node
// (allowed or not), averaged since the previous call and smoothed with
// the ones before it (each call's rate weighs half); stores asked nothing
// recently are left out. Call it at a steady interval (the node heartbeat).
func (q *Quota) Demand() map[string]float64 {
	if q == nil {
		return nil
	}
	t := q.now()
	out := map[string]float64{}
	q.mu.RLock()
	defer q.mu.RUnlock()
	for id, b := range q.buckets {
		b.mu.Lock()
		if d := t.Sub(b.at).Seconds(); d > 0 {
			r := float64(b.offered-b.seen) / d
			b.demand = (b.demand + r) / 2
			if b.demand < 0.01 {
				b.demand = 0
			}
			b.seen, b.at = b.offered, t
		}
		if b.demand > 0 {
			out[id] = b.demand
		}
		b.mu.Unlock()
	}
	return out
}

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
	rate := q.local(id)
	b.mu.Lock()
	defer b.mu.Unlock()
	b.offered++
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
	t := q.now()
	b := &bucket{tokens: q.local(id), last: t, at: t}
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

// floorShare is the part of its equal share a node keeps of a store's
// quota whatever its demand, so that a node asked nothing until now can
// serve a few requests before the others see its demand.
const floorShare = 0.1

// DemandShares is node self's share of each store's quota among n live
// nodes (self included), split by demand (MULTINODE.md §4.7): demand holds
// each live node's last published Demand, by node id. Every node keeps
// floorShare/n; the rest goes in proportion to demand. Stores no live
// node asks for are left out (they keep the equal share). Computed from
// the same records, every node's shares of a store add up to 1; records
// read at different moments differ by at most a heartbeat's change.
func DemandShares(self string, n int, demand map[string]map[string]float64) map[string]float64 {
	if n < 1 {
		return nil
	}
	total := map[string]float64{}
	for _, d := range demand {
		for id, r := range d {
			if r > 0 {
				total[id] += r
			}
		}
	}
	floor := floorShare / float64(n)
	out := make(map[string]float64, len(total))
	for id, sum := range total {
		if n == 1 {
			out[id] = 1 // exactly: a node alone has the whole bucket
			continue
		}
		out[id] = min(1, floor+(1-float64(n)*floor)*max(0, demand[self][id])/sum)
	}
	return out
}
