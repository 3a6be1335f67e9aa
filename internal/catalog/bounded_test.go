package catalog

import (
	"context"
	"crypto/rand"
	"fmt"
	mrand "math/rand/v2"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/barrier"
	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/policy"
	"github.com/kmsd/kmsd/internal/storage"
	"github.com/kmsd/kmsd/internal/storage/sqlite"
)

const testAccount = "111122223333"

// testPolicy is testAccount's default key policy, as CreateKey gives it.
var testPolicy = policy.DefaultKeyPolicy(testAccount)

// realKey is a key record as CreateKey makes it: random AES-256 material
// sealed by c's barrier, its KeyMaterialId, the account's default policy,
// and a description naming it, so a read can tell one record from another.
func realKey(t testing.TB, c *Catalog, id string) *Key {
	t.Helper()
	material := make([]byte, 32)
	rand.Read(material)
	sealed, err := c.Seal(id, 1, material)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC().Truncate(time.Millisecond)
	return &Key{ID: id, Account: testAccount, Region: "us-east-1", Created: now, Description: "key " + id,
		KeyUsage: keys.EncryptDecrypt, KeySpec: keys.Symmetric, Origin: "AWS_KMS", State: keys.Enabled,
		Policy: testPolicy, Current: 1,
		Versions: []Version{{Number: 1, Created: now, Sealed: sealed, MaterialID: c.MaterialID(id, material)}}}
}

// makeKeys stores n keys in c (in batches, like the scale generator) and
// returns their ids.
func makeKeys(t testing.TB, c *Catalog, n int) []string {
	t.Helper()
	ids := make([]string, 0, n)
	for done := 0; done < n; {
		var batch []*Key
		for i := done; i < min(done+1000, n); i++ {
			id := fmt.Sprintf("%08d-0000-4000-8000-000000000000", i)
			batch = append(batch, realKey(t, c, id))
			ids = append(ids, id)
		}
		if err := c.CreateKeys(context.Background(), batch); err != nil {
			t.Fatal(err)
		}
		done += len(batch)
	}
	return ids
}

// readKey reads id as Encrypt does (record, then its AES-GCM instance)
// and checks that it is id's record and that its instance opens what it
// sealed.
func readKey(t testing.TB, c *Catalog, id string) *Key {
	t.Helper()
	k, err := c.Key(context.Background(), id)
	if err != nil {
		t.Fatalf("Key(%s): %v", id, err)
	}
	if k.ID != id || k.Description != "key "+id {
		t.Fatalf("Key(%s) returned the record of %s (%q)", id, k.ID, k.Description)
	}
	a, err := c.AEAD(k, 1)
	if err != nil {
		t.Fatalf("AEAD(%s): %v", id, err)
	}
	nonce := make([]byte, a.NonceSize())
	ct := a.Seal(nil, nonce, []byte(id), nil)
	if pt, err := a.Open(nil, nonce, ct, nil); err != nil || string(pt) != id {
		t.Fatalf("AEAD(%s) does not round-trip: %v", id, err)
	}
	return k
}

// checkBound fails if any of c's caches holds more than n entries.
func checkBound(t *testing.T, c *Catalog, n int) {
	t.Helper()
	k, g, a := c.CacheLen()
	c.mu.RLock()
	aeads := 0
	for i := range c.keys.slots {
		if s := &c.keys.slots[i]; s.used && s.x.a != nil {
			aeads++
		}
	}
	gens := len(c.gens.m)
	c.mu.RUnlock()
	if k > n || g > n || a > n || aeads > n {
		t.Errorf("cache of size %d holds %d keys, %d grant lists, %d aliases, AES-GCM instances of %d keys", n, k, g, a, aeads)
	}
	if gens > max(2*n, minGenLimit) {
		t.Errorf("generation table holds %d paths, over its limit %d", gens, max(2*n, minGenLimit))
	}
}

// TestCacheBounded: with a cache of 1,000 and 5,000 keys (each with an
// alias, every 10th with a grant), random reads of every kind hold at most
// 1,000 entries in each cache and every read is the right record; changes
// made meanwhile by another node are seen once its feed is polled, evicted
// or not.
func TestCacheBounded(t *testing.T) {
	const size, n = 1000, 5000
	ctx := t.Context()
	a, b := twoNodes(t, time.Hour)
	a.cat.SetCacheSize(size)
	ids := makeKeys(t, a.cat, n)
	var as []*Alias
	var gs []*Grant
	for i, id := range ids {
		as = append(as, &Alias{Name: "alias/" + id, Account: testAccount, Region: "us-east-1", KeyID: id})
		if i%10 == 0 {
			gs = append(gs, &Grant{ID: "g-" + id, KeyID: id, Created: time.Now(), Operations: []string{"Encrypt"}})
		}
	}
	if err := a.cat.CreateAll(ctx, nil, as, gs); err != nil {
		t.Fatal(err)
	}
	checkBound(t, a.cat, size)
	// Another node disables every 7th key: A has some of them cached.
	for i := 0; i < n; i += 7 {
		if i < 3*size/2 {
			readKey(t, a.cat, ids[i])
		}
	}
	disabled := map[string]bool{}
	for i := 0; i < n; i += 7 {
		if _, err := b.cat.UpdateKey(ctx, ids[i], func(k *Key) error { k.State = keys.Disabled; return nil }); err != nil {
			t.Fatal(err)
		}
		disabled[ids[i]] = true
	}
	if err := a.feed.Poll(ctx); err != nil {
		t.Fatal(err)
	}
	for round := range 3 {
		for _, i := range mrand.Perm(n) {
			id := ids[i]
			k := readKey(t, a.cat, id)
			if want := map[bool]keys.State{true: keys.Disabled, false: keys.Enabled}[disabled[id]]; k.State != want {
				t.Fatalf("round %d: %s is %s, want %s", round, id, k.State, want)
			}
			al, err := a.cat.Alias(ctx, testAccount, "us-east-1", "alias/"+id)
			if err != nil || al.KeyID != id {
				t.Fatalf("round %d: alias of %s: %v, %v", round, id, al, err)
			}
			gs, err := a.cat.Grants(ctx, id)
			if wantG := map[bool]int{true: 1, false: 0}[i%10 == 0]; err != nil || len(gs) != wantG || (wantG == 1 && gs[0].KeyID != id) {
				t.Fatalf("round %d: grants of %s: %d (%v), want %d", round, id, len(gs), err, wantG)
			}
		}
		checkBound(t, a.cat, size)
	}
	if k, _, _ := a.cat.CacheLen(); k != size {
		t.Errorf("after reading %d keys the cache holds %d, want it full (%d)", n, k, size)
	}
}

// gatedStore is a store whose Get of one path, once armed, reads the
// stored value and then waits for release before returning it: a fill
// that read the database before a change and installs after it.
type gatedStore struct {
	storage.Store
	path     string
	read     chan struct{} // closed once the gated Get has read
	release  chan struct{}
	armed    bool
	disarmed bool
}

func (s *gatedStore) Get(ctx context.Context, key string) ([]byte, error) {
	v, err := s.Store.Get(ctx, key)
	if key == s.path && s.armed && !s.disarmed {
		s.disarmed = true
		close(s.read)
		<-s.release
	}
	return v, err
}

// TestFillAfterEvictionKeepsGenerations: a key evicted for room is read
// again; a fill of it that read the database before another node's change
// (and its invalidation) must not install the older record afterwards —
// whether the generation table was pruned meanwhile or not.
func TestFillAfterEvictionKeepsGenerations(t *testing.T) {
	for _, prune := range []bool{false, true} {
		t.Run(fmt.Sprintf("prune=%v", prune), func(t *testing.T) {
			ctx := t.Context()
			dir := t.TempDir()
			root := make([]byte, 32)
			rand.Read(root)
			open := func() (storage.Store, *barrier.Barrier) {
				st, err := sqlite.Open(ctx, filepath.Join(dir, "kmsd.db"))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { st.Close() })
				bar, err := barrier.New(root)
				if err != nil {
					t.Fatal(err)
				}
				return st, bar
			}
			sa, ba := open()
			gs := &gatedStore{Store: sa, path: keyPath("k1"), read: make(chan struct{}), release: make(chan struct{})}
			a := New(gs, ba)
			a.SetCacheSize(1)
			sb, bb := open()
			b := New(sb, bb)
			ids := []string{"k1", "k2"}
			for _, id := range ids {
				if err := b.CreateKey(ctx, realKey(t, b, id)); err != nil {
					t.Fatal(err)
				}
			}
			readKey(t, a, "k1")
			readKey(t, a, "k2") // evicts k1 for room
			if k, _, _ := a.CacheLen(); k != 1 {
				t.Fatalf("cache of size 1 holds %d keys", k)
			}
			gs.armed = true
			type res struct {
				k   *Key
				err error
			}
			done := make(chan res, 1)
			go func() {
				k, err := a.Key(ctx, "k1") // the fill: reads Enabled, then waits
				done <- res{k, err}
			}()
			<-gs.read
			if _, err := b.UpdateKey(ctx, "k1", func(k *Key) error { k.State = keys.Disabled; return nil }); err != nil {
				t.Fatal(err)
			}
			// What A's change feed does with B's write.
			if err := a.Invalidate(ctx, []string{keyPath("k1")}); err != nil {
				t.Fatal(err)
			}
			if prune {
				// Other paths' invalidations empty the generation
				// table (and forget k1's generation) before the fill
				// installs.
				var other []string
				for i := range minGenLimit + 10 {
					other = append(other, keyPath(fmt.Sprintf("other-%d", i)))
				}
				if err := a.Invalidate(ctx, other); err != nil {
					t.Fatal(err)
				}
				a.mu.RLock()
				_, kept := a.gens.m[keyPath("k1")]
				a.mu.RUnlock()
				if kept {
					t.Fatal("the generation table was not pruned")
				}
			}
			close(gs.release)
			r := <-done
			if r.err != nil || r.k.State != keys.Enabled {
				t.Fatalf("the gated read: %v; want the Enabled record it read", r.err)
			}
			if k, err := a.Key(ctx, "k1"); err != nil || k.State != keys.Disabled {
				t.Errorf("after the change: %v; the fill begun before it installed the Enabled record", stateOf(k, err))
			}
		})
	}
}

// TestCacheMemoryPerKey measures the heap one cached key costs: a record
// read as Encrypt reads it (record and AES-GCM instance), with the default
// key policy, and the cache's own bookkeeping. It reports the figure and
// fails if it grows past 8 KiB.
func TestCacheMemoryPerKey(t *testing.T) {
	const n = 5000
	c := newCatalog(t)
	ids := makeKeys(t, c, n)
	heap := func() (bytes, objects uint64) {
		runtime.GC()
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc, m.HeapObjects
	}
	before, objBefore := heap()
	for _, id := range ids {
		readKey(t, c, id)
	}
	after, objAfter := heap()
	if k, _, _ := c.CacheLen(); k != n {
		t.Fatalf("%d keys cached, want %d", k, n)
	}
	per := (int64(after) - int64(before)) / n
	objs := float64(int64(objAfter)-int64(objBefore)) / n
	t.Logf("heap per cached key (record, AES-GCM instance, cache entry): %d bytes, %.1f objects (%d keys: HeapAlloc %d → %d)", per, objs, n, before, after)
	if per > 8<<10 {
		t.Errorf("a cached key costs %d bytes of heap, want at most 8 KiB", per)
	}
	// The collector marks every object of a full cache on every cycle,
	// on a million keys its largest cost beside the requests. Six: the
	// record, its id, versions, sealed material and material id, and the
	// AES-GCM instance. The cache keeps its entries, and each key's first
	// AES-GCM instance, in one slice (clock.go), not in an object each,
	// and keys an entry by the record's id, not by a second copy (putKey);
	// the decoder already shares the short strings most keys hold equal.
	if objs > 6.5 && !raceEnabled {
		t.Errorf("a cached key costs %.1f heap objects, want at most 6.5", objs)
	}
	runtime.KeepAlive(c)
}

func stateOf(k *Key, err error) string {
	if err != nil {
		return err.Error()
	}
	return "state " + string(k.State)
}
