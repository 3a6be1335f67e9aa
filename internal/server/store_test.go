package server

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/controller"
	"github.com/kmsd/kmsd/internal/storage"
	"github.com/kmsd/kmsd/internal/storage/postgres"
	"github.com/kmsd/kmsd/internal/storage/postgres/pgtest"
	"github.com/kmsd/kmsd/internal/storage/sqlite"
)

// TestMain stops the private PostgreSQL server pgtest started, if it
// started one (KMSD_TEST_DATABASE_URL unset outside CI).
func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// TestPruneChanges: the change feed is pruned once its changes are older
// than the retention, so the table does not grow without bound, and a
// reader at a recent cursor is not reset.
func TestPruneChanges(t *testing.T) {
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "kmsd.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx, cancel := context.WithCancel(t.Context())
	old, err := st.Changes(ctx, storage.Cursor{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		if err := st.Put(ctx, "k/"+string(rune('a'+i)), nil); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan struct{})
	go func() {
		pruneChanges(ctx, st, 20*time.Millisecond, 100*time.Millisecond, time.Hour, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
		close(done)
	}()
	stopped := false
	defer func() {
		if !stopped {
			cancel()
			<-done
		}
	}()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		b, err := st.Changes(ctx, old.Next, 0)
		if err != nil {
			t.Fatal(err)
		}
		if b.Reset {
			break // the 20 changes were pruned
		}
		if time.Now().After(deadline) {
			t.Fatalf("changes not pruned after 10s: %d still readable", len(b.Keys))
		}
	}
	cancel()
	<-done
	stopped = true
	ctx = t.Context()
	head, err := st.Changes(ctx, storage.Cursor{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Put(ctx, "k/new", nil); err != nil {
		t.Fatal(err)
	}
	if b, err := st.Changes(ctx, head.Next, 0); err != nil || b.Reset || len(b.Keys) != 1 {
		t.Fatalf("Changes from a fresh cursor = %+v, %v; want k/new without a Reset", b, err)
	}
}

// sharedStore is a store that is also a change feed and a leaser, as both
// drivers are.
type sharedStore interface {
	storage.Store
	storage.Watcher
	storage.Leaser
}

// TestPruneHonoursLiveCursors: the change feed is pruned only up to the
// earliest cursor of the nodes holding a live node lease — a lagging live
// node keeps every change it has not applied, and a live node that has
// published no cursor yet holds pruning back — while a node whose lease
// expired is not waited for: its cursor is pruned past, and reading from
// it gives a Reset (reload everything), never a skipped change. On both
// drivers.
func TestPruneHonoursLiveCursors(t *testing.T) {
	for _, d := range sharedDrivers {
		t.Run(d.name, func(t *testing.T) { testPruneHonoursLiveCursors(t, d.open(t)) })
	}
}

func testPruneHonoursLiveCursors(t *testing.T, st sharedStore) {
	ctx := t.Context()
	publish := func(id string, c *storage.Cursor) { publishCursor(t, st, id, c) }
	lease := func(id string) storage.Lease {
		t.Helper()
		l, ok, err := st.TryAcquire(ctx, controller.NodeLeasePrefix+id, id, time.Minute)
		if err != nil || !ok {
			t.Fatalf("node lease %s: %v %v", id, ok, err)
		}
		return l
	}
	// drain reads the feed from c to its end; reset says it gave a Reset.
	drain := func(c storage.Cursor) (keys []string, next storage.Cursor, reset bool) {
		t.Helper()
		for {
			b, err := st.Changes(ctx, c, 0)
			if err != nil {
				t.Fatal(err)
			}
			if b.Reset {
				return nil, b.Next, true
			}
			keys, c = append(keys, b.Keys...), b.Next
			if len(b.Keys) == 0 {
				return keys, c, false
			}
		}
	}
	count := func(keys []string, prefix string) int {
		n := 0
		for _, k := range keys {
			if len(k) > len(prefix) && k[:len(prefix)] == prefix {
				n++
			}
		}
		return n
	}
	put := func(prefix string, n int) {
		t.Helper()
		for i := range n {
			if err := st.Put(ctx, prefix+string(rune('a'+i)), nil); err != nil {
				t.Fatal(err)
			}
		}
	}

	// Node "lagging" read the feed up to c0 and stopped there; node
	// "starting" holds its lease but has published no cursor yet.
	_, c0, _ := drain(storage.Cursor{})
	if _, c0, _ = drain(c0); c0.IsZero() {
		t.Fatal("no cursor")
	}
	lagging := lease("lagging")
	publish("lagging", &c0)
	lease("starting")
	publish("starting", nil)
	put("a/", 20)

	pctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		pruneChanges(pctx, st, 20*time.Millisecond, 100*time.Millisecond, time.Hour, func(ctx context.Context, gen string) (storage.Cursor, bool, error) {
			return controller.FeedFloor(ctx, st, st, gen)
		}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	}()
	defer func() { cancel(); <-done }()

	// Pruning runs (25 turns past the retention), held back by both.
	time.Sleep(600 * time.Millisecond)
	if keys, _, reset := drain(c0); reset || count(keys, "a/") != 20 {
		t.Fatalf("from the lagging live node's cursor: reset %v, %d of the 20 changes; want all 20, no Reset", reset, count(keys, "a/"))
	}
	// "starting" publishes the head; "lagging" still holds the feed back.
	_, head, _ := drain(c0)
	publish("starting", &head)
	time.Sleep(600 * time.Millisecond)
	keys, c1, reset := drain(c0)
	if reset || count(keys, "a/") != 20 {
		t.Fatalf("from the lagging live node's cursor, once every live node published one: reset %v, %d of the 20 changes; want all 20, no Reset", reset, count(keys, "a/"))
	}

	// Both catch up to c1: the feed is pruned up to c1, not past.
	publish("lagging", &c1)
	publish("starting", &c1)
	put("b/", 5)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, _, reset := drain(c0); reset {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the feed was not pruned up to the cursor the live nodes published")
		}
	}
	time.Sleep(300 * time.Millisecond)
	keys, c2, reset := drain(c1)
	if reset || count(keys, "b/") != 5 {
		t.Fatalf("from the live nodes' cursor: reset %v, %d of the 5 later changes; want all 5, no Reset", reset, count(keys, "b/"))
	}

	// "starting" moves on to c2; "lagging" dies: its lease is not renewed
	// and expires. Its cursor no longer holds the feed back, and reading
	// from it gives a Reset.
	publish("starting", &c2)
	if _, err := st.Renew(ctx, lagging, 300*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, _, reset := drain(c1); reset {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the feed was not pruned past the cursor of a node whose lease expired")
		}
	}
	if keys, _, reset := drain(c2); reset {
		t.Fatalf("from the live node's cursor c2: a Reset (keys %v)", keys)
	}
	if ls, err := st.Live(ctx, controller.NodeLeasePrefix); err != nil || len(ls) != 1 {
		t.Fatalf("live node leases: %v %v; want only starting's", ls, err)
	}
}

// TestPruneBoundsStuckNodes: a live node whose feed cursor stays put (its
// watcher is stuck while it heartbeats), or that never publishes one,
// holds pruning back only for the maximum retention: then the feed is
// pruned past it, and reading from its cursor gives a Reset (reload
// everything), never a skipped change; a node that keeps up is not reset.
// On both drivers.
func TestPruneBoundsStuckNodes(t *testing.T) {
	for _, d := range sharedDrivers {
		for _, stuck := range []string{"stuck cursor", "no cursor"} {
			t.Run(d.name+"/"+stuck, func(t *testing.T) { testPruneBoundsStuckNodes(t, d.open(t), stuck == "no cursor") })
		}
	}
}

func testPruneBoundsStuckNodes(t *testing.T, st sharedStore, noCursor bool) {
	ctx := t.Context()
	publish := func(id string, c *storage.Cursor) { publishCursor(t, st, id, c) }
	for _, id := range []string{"stuck", "live"} {
		if _, ok, err := st.TryAcquire(ctx, controller.NodeLeasePrefix+id, id, time.Minute); err != nil || !ok {
			t.Fatalf("node lease %s: %v %v", id, ok, err)
		}
	}
	// drain reads the feed from c to its end.
	drain := func(c storage.Cursor) (n int, next storage.Cursor, reset bool) {
		t.Helper()
		for {
			b, err := st.Changes(ctx, c, 0)
			if err != nil {
				t.Fatal(err)
			}
			if b.Reset {
				return 0, b.Next, true
			}
			n, c = n+len(b.Keys), b.Next
			if len(b.Keys) == 0 {
				return n, c, false
			}
		}
	}
	_, c0, _ := drain(storage.Cursor{})
	if _, c0, _ = drain(c0); c0.IsZero() {
		t.Fatal("no cursor")
	}
	if noCursor {
		publish("stuck", nil)
	} else {
		publish("stuck", &c0)
	}
	for i := range 20 {
		if err := st.Put(ctx, "a/"+string(rune('a'+i)), nil); err != nil {
			t.Fatal(err)
		}
	}
	_, head, _ := drain(c0)
	publish("live", &head)

	const maxRetention = 2 * time.Second
	started := time.Now()
	pctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		pruneChanges(pctx, st, 20*time.Millisecond, 100*time.Millisecond, maxRetention, func(ctx context.Context, gen string) (storage.Cursor, bool, error) {
			return controller.FeedFloor(ctx, st, st, gen)
		}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	}()
	defer func() { cancel(); <-done }()

	// Within the maximum retention (25 turns past the retention) the
	// stuck node holds pruning back.
	time.Sleep(600 * time.Millisecond)
	n, _, reset := drain(c0)
	if time.Since(started) < maxRetention && (reset || n < 20) {
		t.Fatalf("before the maximum retention, from the stuck node's cursor: reset %v, %d changes; want the 20, no Reset", reset, n)
	}
	// Past it, the feed is pruned past the stuck node's cursor, while the
	// live node, which reads the feed and publishes its cursor at every
	// heartbeat, is never reset.
	live := head
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		var reset bool
		if _, live, reset = drain(live); reset {
			t.Fatalf("the live node's feed was reset after %v", time.Since(started))
		}
		publish("live", &live)
		if _, _, reset := drain(c0); reset {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the feed was not pruned past a stuck node's cursor %v after the maximum retention", time.Since(started))
		}
	}
	if held := time.Since(started); held < maxRetention {
		t.Fatalf("the feed was pruned past the stuck node's cursor after %v, before the maximum retention %v", held, maxRetention)
	}
	// The node that keeps up is not reset.
	if err := st.Put(ctx, "b/1", nil); err != nil {
		t.Fatal(err)
	}
	if n, _, reset := drain(live); reset || n < 1 {
		t.Fatalf("from the live node's cursor: reset %v, %d changes; want b/1 without a Reset", reset, n)
	}
}

// sharedDrivers opens a fresh store of each driver for the feed-pruning
// tests.
var sharedDrivers = []struct {
	name string
	open func(t *testing.T) sharedStore
}{
	{"sqlite", func(t *testing.T) sharedStore {
		st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "kmsd.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return st
	}},
	{"postgres", func(t *testing.T) sharedStore {
		st, err := postgres.Open(t.Context(), pgtest.URL(t), postgres.Options{MaxConns: 8})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return st
	}},
}

// publishCursor writes node id's record with feed cursor c, as its
// heartbeat does.
func publishCursor(t *testing.T, st sharedStore, id string, c *storage.Cursor) {
	t.Helper()
	b, err := json.Marshal(controller.Node{ID: id, Heartbeat: time.Now().UTC(), FeedCursor: c})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Put(t.Context(), controller.NodePrefix+id, b); err != nil {
		t.Fatal(err)
	}
}
