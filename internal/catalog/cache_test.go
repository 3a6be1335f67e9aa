package catalog

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/barrier"
	"github.com/kmsd/kmsd/internal/feed"
	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/storage"
	"github.com/kmsd/kmsd/internal/storage/postgres"
	"github.com/kmsd/kmsd/internal/storage/postgres/pgtest"
	"github.com/kmsd/kmsd/internal/storage/sqlite"
)

// node is one process's catalog over a database shared with others, with
// its change-feed follower (polled by the test).
type node struct {
	cat   *Catalog
	feed  *feed.Follower
	close func() error
}

// twoNodes opens two catalogs on two handles of one SQLite database, as
// two kmsd processes on one PostgreSQL database are, each following the
// change feed and trusting its cache for at most maxStale.
func twoNodes(t *testing.T, maxStale time.Duration) (a, b node) {
	return twoNodesWrap(t, maxStale, func(s storage.Store) storage.Store { return s })
}

// twoNodesWrap is twoNodes whose second catalog stores through wrapB(its
// handle) (its feed follows the handle itself).
func twoNodesWrap(t *testing.T, maxStale time.Duration, wrapB func(storage.Store) storage.Store) (a, b node) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kmsd.db")
	return twoNodesOn(t, func() (storage.Store, error) { return sqlite.Open(t.Context(), path) }, maxStale, wrapB)
}

// twoNodesOn is twoNodesWrap on the database open opens a handle on.
func twoNodesOn(t *testing.T, openStore func() (storage.Store, error), maxStale time.Duration, wrapB func(storage.Store) storage.Store) (a, b node) {
	t.Helper()
	root := make([]byte, 32)
	rand.Read(root)
	open := func(wrap func(storage.Store) storage.Store) node {
		st, err := openStore()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		bar, err := barrier.New(root)
		if err != nil {
			t.Fatal(err)
		}
		c := New(wrap(st), bar)
		f := feed.New(st.(storage.Watcher), time.Hour, nil, c)
		if err := f.Poll(t.Context()); err != nil {
			t.Fatal(err)
		}
		c.SetFreshness(f.FreshAsOf, maxStale)
		return node{cat: c, feed: f, close: st.Close}
	}
	return open(func(s storage.Store) storage.Store { return s }), open(wrapB)
}

func sharedKey(t *testing.T, n node, id string) *Key {
	t.Helper()
	k := &Key{ID: id, Account: testAccount, Policy: testPolicy, Region: "us-east-1", State: keys.Enabled, KeyUsage: "ENCRYPT_DECRYPT", KeySpec: "SYMMETRIC_DEFAULT", Origin: "AWS_KMS", Created: time.Now()}
	if err := n.cat.CreateKey(t.Context(), k); err != nil {
		t.Fatal(err)
	}
	return k
}

// TestCacheFollowsOtherNode: a node's cached record is replaced once the
// feed brings another node's change, and a fresh (control-plane) read sees
// it at once.
func TestCacheFollowsOtherNode(t *testing.T) {
	ctx := t.Context()
	a, b := twoNodes(t, time.Hour)
	sharedKey(t, a, "k1")
	if k, err := b.cat.Key(ctx, "k1"); err != nil || k.State != keys.Enabled {
		t.Fatalf("B reads the new key: %v, %v", k, err)
	}
	if _, err := a.cat.UpdateKey(ctx, "k1", func(k *Key) error { k.State = keys.Disabled; return nil }); err != nil {
		t.Fatal(err)
	}
	if k, _ := b.cat.Key(WithFresh(ctx), "k1"); k.State != keys.Disabled {
		t.Errorf("B's fresh read: state %s, want Disabled", k.State)
	}
	if err := b.feed.Poll(ctx); err != nil {
		t.Fatal(err)
	}
	if k, _ := b.cat.Key(ctx, "k1"); k.State != keys.Disabled {
		t.Errorf("B's cached read after the feed: state %s, want Disabled", k.State)
	}
	if err := a.cat.DeleteKey(ctx, "k1"); err != nil {
		t.Fatal(err)
	}
	if err := b.feed.Poll(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := b.cat.Key(ctx, "k1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("B after deletion: %v, want ErrNotFound", err)
	}
}

// TestCacheStaleReadsThrough: past the staleness bound a cached read goes
// to the database, and fails (closed) when the database cannot answer.
func TestCacheStaleReadsThrough(t *testing.T) {
	ctx := t.Context()
	a, b := twoNodes(t, 50*time.Millisecond)
	sharedKey(t, a, "k1")
	if _, err := b.cat.Key(ctx, "k1"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.cat.UpdateKey(ctx, "k1", func(k *Key) error { k.State = keys.Disabled; return nil }); err != nil {
		t.Fatal(err)
	}
	time.Sleep(60 * time.Millisecond) // B's feed, never polled again, is now stale
	if k, err := b.cat.Key(ctx, "k1"); err != nil || k.State != keys.Disabled {
		t.Fatalf("B past the bound: %v, %v; want the Disabled record from the database", k, err)
	}
	b.close()
	if _, err := b.cat.Key(ctx, "k1"); err == nil {
		t.Errorf("B past the bound with its database gone: no error, want a refusal")
	}
}

// TestNoLostUpdates: read-modify-writes through two nodes, concurrently,
// each keep every other's change.
func TestNoLostUpdates(t *testing.T) {
	ctx := t.Context()
	a, b := twoNodes(t, time.Hour)
	sharedKey(t, a, "k1")
	var wg sync.WaitGroup
	for i := range 20 {
		for j, n := range []node{a, b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := n.cat.UpdateKey(ctx, "k1", func(k *Key) error {
					k.Tags = append(k.Tags, Tag{Key: fmt.Sprintf("n%d-%d", j, i)})
					return nil
				})
				if err != nil {
					t.Error(err)
				}
			}()
		}
	}
	wg.Wait()
	k, err := a.cat.Key(WithFresh(ctx), "k1")
	if err != nil {
		t.Fatal(err)
	}
	if len(k.Tags) != 40 {
		t.Errorf("%d tags after 40 concurrent updates through two nodes", len(k.Tags))
	}
}

// TestGrantsFollowOtherNode: a grant revoked through one node stops being
// listed by the other once its feed has the change, and at once for a
// fresh read.
func TestGrantsFollowOtherNode(t *testing.T) {
	ctx := t.Context()
	a, b := twoNodes(t, time.Hour)
	sharedKey(t, a, "k1")
	if err := a.cat.CreateGrant(ctx, &Grant{ID: "g1", KeyID: "k1", Created: time.Now(), Operations: []string{"Encrypt"}}); err != nil {
		t.Fatal(err)
	}
	if l, err := b.cat.Grants(ctx, "k1"); err != nil || len(l) != 1 {
		t.Fatalf("B's grants: %v, %v", l, err)
	}
	if err := a.cat.DeleteGrant(ctx, "k1", "g1"); err != nil {
		t.Fatal(err)
	}
	if l, _ := b.cat.Grants(WithFresh(ctx), "k1"); len(l) != 0 {
		t.Errorf("B's fresh read lists %d grants, want 0", len(l))
	}
	if err := b.cat.DeleteGrant(ctx, "k1", "g1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("B deletes the revoked grant: %v, want ErrNotFound", err)
	}
	if err := b.feed.Poll(ctx); err != nil {
		t.Fatal(err)
	}
	if l, _ := b.cat.Grants(ctx, "k1"); len(l) != 0 {
		t.Errorf("B's cached grants after the feed: %d, want 0", len(l))
	}
}

// TestDeleteKeyTakesOtherNodesAlias: DeleteKey reads the aliases in its
// own transaction, so one made through another node goes with the key.
func TestDeleteKeyTakesOtherNodesAlias(t *testing.T) {
	ctx := t.Context()
	a, b := twoNodes(t, time.Hour)
	sharedKey(t, a, "k1")
	if _, err := b.cat.Key(ctx, "k1"); err != nil {
		t.Fatal(err)
	}
	al := &Alias{Name: "alias/x", Account: "111122223333", Region: "us-east-1", KeyID: "k1"}
	if err := b.cat.CreateAlias(ctx, al); err != nil {
		t.Fatal(err)
	}
	if err := a.cat.DeleteKey(ctx, "k1"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.cat.Alias(WithFresh(ctx), al.Account, al.Region, al.Name); !errors.Is(err, ErrNotFound) {
		t.Errorf("alias made through B after A deleted its key: %v, want ErrNotFound", err)
	}
	if err := b.cat.PutAlias(ctx, al); !errors.Is(err, ErrNotFound) {
		t.Errorf("PutAlias of the deleted alias: %v, want ErrNotFound", err)
	}
	// B still has the key cached; the alias is refused all the same.
	al2 := &Alias{Name: "alias/y", Account: al.Account, Region: al.Region, KeyID: "k1"}
	if err := b.cat.CreateAlias(ctx, al2); !errors.Is(err, ErrNotFound) {
		t.Errorf("CreateAlias through B to the key A deleted: %v, want ErrNotFound", err)
	}
}

// TestFillLosesToNewerWrite: a record read before a change (here, an
// invalidation) is not installed after it.
func TestFillLosesToNewerWrite(t *testing.T) {
	c := newCatalog(t)
	old := &Key{ID: "k1"}
	g := c.stamp(keyPath("k1"))
	c.invalidate([]string{keyPath("k1")})
	c.fill(keyPath("k1"), g, func() { c.keys.Add("k1", old) })
	if c.keys.Contains("k1") {
		t.Errorf("a fill begun before an invalidation installed its record")
	}
	g = c.stamp(keyPath("k1"))
	c.reset()
	c.fill(keyPath("k1"), g, func() { c.keys.Add("k1", old) })
	if c.keys.Contains("k1") {
		t.Errorf("a fill begun before a Reset installed its record")
	}
}

// countGets is a store that counts its reads of single records.
type countGets struct {
	storage.Store
	gets atomic.Int64
}

func (s *countGets) Get(ctx context.Context, key string) ([]byte, error) {
	s.gets.Add(1)
	return s.Store.Get(ctx, key)
}

// TestFreshReadBarrier: with a read barrier (the change feed's
// FreshAt), a control-plane read on node B is served from B's cache
// while B's feed proves that nothing was committed since B last polled
// it, and from the database as soon as anything was — so it sees node A's
// change at once, as a read of the database would, and reads no record
// again while the cached one is proven current. A barrier that cannot
// prove the cache sends every read to the database. On both drivers.
func TestFreshReadBarrier(t *testing.T) {
	for _, d := range lastUseDrivers {
		t.Run(d.name, func(t *testing.T) { testFreshReadBarrier(t, d.name) })
	}
}

func testFreshReadBarrier(t *testing.T, driver string) {
	ctx := t.Context()
	var openStore func() (storage.Store, error)
	switch driver {
	case "sqlite":
		path := filepath.Join(t.TempDir(), "kmsd.db")
		openStore = func() (storage.Store, error) { return sqlite.Open(ctx, path) }
	case "postgres":
		url := pgtest.URL(t)
		openStore = func() (storage.Store, error) {
			return postgres.Open(ctx, url, postgres.Options{MaxConns: 4, MinConns: 1})
		}
	}
	cg := &countGets{}
	a, nb := twoNodesOn(t, openStore, time.Hour, func(s storage.Store) storage.Store { cg.Store = s; return cg })
	b, f := nb.cat, nb.feed // f is polled by the test only
	poll := func() {
		t.Helper()
		if err := f.Poll(ctx); err != nil {
			t.Fatal(err)
		}
	}
	b.SetReadBarrier(f.FreshAt)

	state := func(when string, want keys.State, gets int64) {
		t.Helper()
		before := cg.gets.Load()
		k, err := b.Key(WithFresh(ctx), "k1")
		if err != nil || k.State != want {
			t.Fatalf("B's fresh read %s: %v, %v; want state %s", when, k, err, want)
		}
		if n := cg.gets.Load() - before; n != gets {
			t.Errorf("B's fresh read %s read the database %d times, want %d", when, n, gets)
		}
	}
	sharedKey(t, a, "k1")
	state("of a key A just made", keys.Enabled, 1)
	poll() // brings the creation: B evicts the record it read
	state("after B's feed caught up", keys.Enabled, 1)
	state("again, nothing committed since", keys.Enabled, 0)
	if _, err := a.cat.UpdateKey(ctx, "k1", func(k *Key) error { k.State = keys.Disabled; return nil }); err != nil {
		t.Fatal(err)
	}
	state("after A disabled it, before B's feed has it", keys.Disabled, 1)
	poll()
	state("after B's feed caught up", keys.Disabled, 1)
	state("again", keys.Disabled, 0)

	b.SetReadBarrier(func(context.Context, time.Time) bool { return false })
	state("when the feed cannot prove the cache", keys.Disabled, 1)
}
