package storagetest

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/storage"
)

// SharedStore is what RunShared needs of a store: the contract plus the
// change feed, leases and the database's clock, which both drivers
// implement.
type SharedStore interface {
	storage.Store
	storage.Watcher
	storage.Leaser
	storage.Clock
}

// RunShared tests what two handles on one database promise each other, as
// two kmsd nodes sharing it have: serializable Updates across handles,
// visibility of commits, writes of re-run transactions never kept twice, a
// change feed that loses no change even when transactions commit out of
// order, Reset after pruning, batch reads and puts that lose no update
// and feed every key they put, leases taken over only after expiry, and
// fenced writes refused after a takeover, and a handle's writes fenced by
// its own lease (storage.WriteFencer) once that lease has expired.
//
// open must return two handles on one new, empty database. The counter
// test runs 2 handles × 8 goroutines × KMSD_STORAGE_ROUNDS increments each
// (default 100; MULTINODE.md's acceptance figure is 1000).
func RunShared(t *testing.T, open func(t *testing.T) (a, b SharedStore)) {
	t.Run("Visibility", func(t *testing.T) { testSharedVisibility(t, open) })
	t.Run("Counters", func(t *testing.T) { testSharedCounters(t, open) })
	t.Run("ReRunKeepsOneRun", func(t *testing.T) { testSharedReRun(t, open) })
	t.Run("FeedAllChanges", func(t *testing.T) { testFeedAll(t, open) })
	t.Run("FeedOutOfOrderCommits", func(t *testing.T) { testFeedOutOfOrder(t, open) })
	t.Run("FeedPruneResets", func(t *testing.T) { testFeedPrune(t, open) })
	t.Run("FeedLeavesOutUnfed", func(t *testing.T) { testFeedUnfed(t, open) })
	t.Run("FeedCovers", func(t *testing.T) { testFeedCovers(t, open) })
	t.Run("FeedCreateBatch", func(t *testing.T) { testFeedCreateBatch(t, open) })
	t.Run("CreateBatchConcurrent", func(t *testing.T) { testSharedCreateBatch(t, open) })
	t.Run("FeedPutBatch", func(t *testing.T) { testFeedPutBatch(t, open) })
	t.Run("FeedDeleteBatch", func(t *testing.T) { testFeedDeleteBatch(t, open) })
	t.Run("GetPutBatchConcurrent", func(t *testing.T) { testSharedGetPutBatch(t, open) })
	t.Run("LeaseTakeoverAfterExpiry", func(t *testing.T) { testLeaseTakeover(t, open) })
	t.Run("LeaseLive", func(t *testing.T) { testLeaseLive(t, open) })
	t.Run("FencedAfterTakeover", func(t *testing.T) { testFencedAfterTakeover(t, open) })
	t.Run("FencedTakeoverDuringTx", func(t *testing.T) { testFencedDuringTx(t, open) })
	t.Run("FencedRefusedCounted", func(t *testing.T) { testFencedRefusedCounted(t, open) })
	t.Run("WriteFence", func(t *testing.T) { testWriteFence(t, open) })
	t.Run("ClockShared", func(t *testing.T) { testClockShared(t, open) })
}

// testClockShared: both handles tell the database's time, one clock: each
// reading lies between the local instants around it (the test's database
// runs on this machine, so they share the clock, give or take the
// driver's precision), and a reading through one handle after one
// through the other is not earlier.
func testClockShared(t *testing.T, open func(t *testing.T) (a, b SharedStore)) {
	a, b := open(t)
	ctx := t.Context()
	const slack = 5 * time.Millisecond // SQLite's clock has millisecond precision
	var last time.Time
	for i := range 10 {
		h := a
		if i%2 == 1 {
			h = b
		}
		before := time.Now()
		now, err := h.Now(ctx)
		after := time.Now()
		if err != nil {
			t.Fatal(err)
		}
		if now.Before(before.Add(-slack)) || now.After(after.Add(slack)) {
			t.Fatalf("reading %d: database time %v outside [%v, %v]", i, now, before, after)
		}
		if now.Before(last.Add(-slack)) {
			t.Fatalf("reading %d: database time %v before the previous reading %v", i, now, last)
		}
		last = now
	}
}

func testSharedVisibility(t *testing.T, open func(t *testing.T) (a, b SharedStore)) {
	a, b := open(t)
	ctx := t.Context()
	mustPut(t, a, "v/1", []byte("one"))
	wantValue(t, b, "v/1", []byte("one"))
	if err := b.Update(ctx, func(tx storage.Tx) error {
		return tx.Put(ctx, "v/2", []byte("two"))
	}); err != nil {
		t.Fatal(err)
	}
	wantValue(t, a, "v/2", []byte("two"))
	wantKeys(t, a, "v/", "", 0, []string{"v/1", "v/2"})
	if err := a.Delete(ctx, "v/1"); err != nil {
		t.Fatal(err)
	}
	wantNotFound(t, b, "v/1")
}

// rounds is the number of increments per goroutine in the counter test.
func rounds(t *testing.T) int {
	if v := os.Getenv("KMSD_STORAGE_ROUNDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			t.Fatalf("KMSD_STORAGE_ROUNDS=%q: want a positive number", v)
		}
		return n
	}
	return 100
}

func testSharedCounters(t *testing.T, open func(t *testing.T) (a, b SharedStore)) {
	a, b := open(t)
	ctx := t.Context()
	const workers = 8
	n := rounds(t)
	var wg sync.WaitGroup
	errs := make(chan error, 2*workers)
	for h, s := range []SharedStore{a, b} {
		for w := range workers {
			wg.Go(func() {
				for range n {
					if err := s.Update(ctx, func(tx storage.Tx) error {
						if err := increment(ctx, tx, "c/shared"); err != nil {
							return err
						}
						return increment(ctx, tx, fmt.Sprintf("c/worker/%d/%d", h, w))
					}); err != nil {
						errs <- err
						return
					}
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("Update: %v", err)
	}
	// 0 lost updates: every acknowledged increment is counted once.
	wantValue(t, a, "c/shared", []byte(strconv.Itoa(2*workers*n)))
	for h := range 2 {
		for w := range workers {
			wantValue(t, b, fmt.Sprintf("c/worker/%d/%d", h, w), []byte(strconv.Itoa(n)))
		}
	}
}

// testSharedReRun makes conflicting Updates on two handles; each run of fn
// writes a key of its own besides the counter. Only the committed run's
// writes may remain: exactly one run key per acknowledged Update.
func testSharedReRun(t *testing.T, open func(t *testing.T) (a, b SharedStore)) {
	a, b := open(t)
	ctx := t.Context()
	const workers, n = 4, 20
	var runs atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 2*workers)
	for h, s := range []SharedStore{a, b} {
		for w := range workers {
			wg.Go(func() {
				for i := range n {
					err := s.Update(ctx, func(tx storage.Tx) error {
						r := runs.Add(1)
						if err := tx.Put(ctx, fmt.Sprintf("run/%d/%d/%d/%d", h, w, i, r), nil); err != nil {
							return err
						}
						return increment(ctx, tx, "rerun/count")
					})
					if err != nil {
						errs <- err
						return
					}
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("Update: %v", err)
	}
	total := 2 * workers * n
	wantValue(t, a, "rerun/count", []byte(strconv.Itoa(total)))
	es := mustList(t, a, "run/", "", 0)
	if len(es) != total {
		t.Fatalf("%d run keys after %d acknowledged Updates (%d runs of fn): writes of a run that did not commit were kept", len(es), total, runs.Load())
	}
	t.Logf("%d Updates ran fn %d times", total, runs.Load())
}

// drain reads the feed from c until a batch shorter than the limit, and
// returns the keys seen and the cursor reached.
func drain(t *testing.T, w storage.Watcher, c storage.Cursor) ([]string, storage.Cursor) {
	t.Helper()
	var keys []string
	for range 10000 {
		b, err := w.Changes(t.Context(), c, 7)
		if err != nil {
			t.Fatalf("Changes: %v", err)
		}
		if b.Reset {
			t.Fatalf("Changes(%+v): unexpected Reset", c)
		}
		keys = append(keys, b.Keys...)
		c = b.Next
		if len(b.Keys) < 7 {
			return keys, c
		}
	}
	t.Fatal("the change feed does not end")
	return nil, c
}

// start returns the cursor at which a new reader begins (a Reset).
func start(t *testing.T, w storage.Watcher) storage.Cursor {
	t.Helper()
	b, err := w.Changes(t.Context(), storage.Cursor{}, 0)
	if err != nil {
		t.Fatalf("Changes: %v", err)
	}
	if !b.Reset || len(b.Keys) != 0 {
		t.Fatalf("Changes from the zero cursor = %+v, want a Reset with no keys", b)
	}
	return b.Next
}

func testFeedAll(t *testing.T, open func(t *testing.T) (a, b SharedStore)) {
	a, b := open(t)
	ctx := t.Context()
	c := start(t, b)
	want := map[string]bool{}
	for i := range 30 {
		k := fmt.Sprintf("f/%02d", i)
		mustPut(t, a, k, []byte("x"))
		want[k] = true
	}
	if err := a.Update(ctx, func(tx storage.Tx) error {
		if err := tx.Create(ctx, "f/created", nil); err != nil {
			return err
		}
		return tx.Delete(ctx, "f/00")
	}); err != nil {
		t.Fatal(err)
	}
	want["f/created"] = true
	// Poll until the feed is fresh as of a moment after the last commit.
	after := time.Now()
	var got []string
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := b.Changes(ctx, c, 0)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, b.Keys...)
		c = b.Next
		if !b.FreshAsOf.IsZero() && b.FreshAsOf.After(after) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("feed not fresh after 10s (last FreshAsOf %v)", b.FreshAsOf)
		}
		time.Sleep(20 * time.Millisecond)
	}
	seen := map[string]int{}
	for _, k := range got {
		seen[k]++
	}
	for k := range want {
		if seen[k] == 0 {
			t.Errorf("change of %s not delivered", k)
		}
	}
	if seen["f/00"] < 2 {
		t.Errorf("f/00 was put and deleted: %d changes delivered, want 2", seen["f/00"])
	}
	// Nothing more once drained.
	if more, _ := drain(t, b, c); len(more) != 0 {
		t.Errorf("after draining, Changes gave %v", more)
	}
}

// testFeedOutOfOrder holds a transaction open on a (it wrote first) while
// b commits a later one; a reader that reads the feed in between and
// resumes from there must still get a's change once a commits.
func testFeedOutOfOrder(t *testing.T, open func(t *testing.T) (a, b SharedStore)) {
	a, b := open(t)
	c := start(t, b)
	var got []string
	outOfOrder(t, a, b, "ooo/slow", "ooo/fast", func() {
		// Read the feed while the earlier transaction is still open.
		var ks []string
		ks, c = drain(t, b, c)
		got = append(got, ks...)
	}, nil)
	deadline := time.Now().Add(10 * time.Second)
	for !(slices.Contains(got, "ooo/slow") && slices.Contains(got, "ooo/fast")) {
		if time.Now().After(deadline) {
			t.Fatalf("after both commits the feed gave %v, want ooo/slow and ooo/fast", got)
		}
		var ks []string
		ks, c = drain(t, b, c)
		got = append(got, ks...)
		time.Sleep(10 * time.Millisecond)
	}
}

func testFeedPrune(t *testing.T, open func(t *testing.T) (a, b SharedStore)) {
	a, b := open(t)
	ctx := t.Context()
	c0 := start(t, b)
	mustPut(t, a, "p/1", nil)
	_, c1 := waitKeys(t, b, c0, "p/1")
	mustPut(t, a, "p/2", nil)
	_, c2 := waitKeys(t, b, c1, "p/2")
	// Cursor.Before orders the positions of one generation, as pruning
	// up to the earliest cursor of several readers needs.
	if !c0.Before(c1) || !c1.Before(c2) || c2.Before(c1) || c1.Before(c1) {
		t.Errorf("Cursor.Before: %+v, %+v, %+v read in this order are not ordered so", c0, c1, c2)
	}
	if other := (storage.Cursor{Gen: c2.Gen + "-other", XID: c2.XID + 1, Seq: c2.Seq + 1}); c2.Before(other) || other.Before(c2) {
		t.Errorf("Cursor.Before orders cursors of two generations")
	}
	if err := a.Prune(ctx, c1); err != nil {
		t.Fatalf("Prune: %v", err)
	}
	// From the pruned point: a Reset; from after it: the feed goes on.
	r, err := b.Changes(ctx, c0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Reset || len(r.Keys) != 0 {
		t.Errorf("Changes from before the pruning point = %+v, want a Reset", r)
	}
	if ks, _ := drain(t, b, c1); slices.Contains(ks, "p/1") {
		t.Errorf("Changes from the pruning point gave %v, want no p/1", ks)
	}
	mustPut(t, a, "p/3", nil)
	waitKeys(t, b, c2, "p/3")
	// A resumed reader whose cursor is the Reset's Next sees later changes.
	mustPut(t, a, "p/4", nil)
	waitKeys(t, b, r.Next, "p/4")
	// A cursor from the future (another history of the database with the
	// same generation, such as a restored copy): a Reset.
	future := storage.Cursor{Gen: c2.Gen, XID: c2.XID + 1<<40, Seq: c2.Seq + 1<<40}
	if r, err := b.Changes(ctx, future, 0); err != nil || !r.Reset {
		t.Errorf("Changes from a cursor beyond the database's history = %+v, %v; want a Reset", r, err)
	}
	// Another generation: a Reset.
	other := c2
	other.Gen += "-other"
	if r, err := b.Changes(ctx, other, 0); err != nil || !r.Reset {
		t.Errorf("Changes from another generation = %+v, %v; want a Reset", r, err)
	}
}

// testFeedUnfed: writes of keys under storage.UnfedPrefix are not in the
// feed, while keys beside the prefix ("unfed", "unfed0…") are; unfed keys
// are otherwise ordinary keys, which the other handle reads and lists.
func testFeedUnfed(t *testing.T, open func(t *testing.T) (a, b SharedStore)) {
	a, b := open(t)
	ctx := t.Context()
	c := start(t, b)
	p := storage.UnfedPrefix
	mustPut(t, a, p+"x", []byte("1"))
	mustPut(t, a, p+"x", []byte("2"))
	if err := a.Update(ctx, func(tx storage.Tx) error {
		if err := tx.Create(ctx, p+"y", []byte("3")); err != nil {
			return err
		}
		if err := tx.Put(ctx, "unfed", nil); err != nil {
			return err
		}
		return tx.Delete(ctx, p+"x")
	}); err != nil {
		t.Fatal(err)
	}
	end, _ := storage.PrefixEnd(p)
	mustPut(t, a, end+"z", []byte("4"))
	mustPut(t, a, "f/last", []byte("5"))
	got, _ := waitKeys(t, b, c, "unfed", end+"z", "f/last")
	for _, k := range got {
		if strings.HasPrefix(k, p) {
			t.Errorf("the feed carries %q, under %q", k, p)
		}
	}
	wantValue(t, b, p+"y", []byte("3"))
	wantNotFound(t, b, p+"x")
	wantKeys(t, b, "unfed", "", 0, []string{"unfed", p + "y", end + "z"})
}

// testFeedCovers: a reader that has drained the feed is proved current
// (storage.Prover, which both drivers implement) until the other handle
// commits a change of a fed key, and again once it has read it; a write
// of an unfed key and a transaction not yet committed leave the proof
// standing; a transaction that committed while an older one was open is
// not covered by a cursor the feed's horizon held back; a cursor the feed
// was pruned past, one of another generation and one beyond the
// database's history are never proved.
func testFeedCovers(t *testing.T, open func(t *testing.T) (a, b SharedStore)) {
	a, b := open(t)
	ctx := t.Context()
	p, ok := b.(storage.Prover)
	if !ok {
		t.Fatalf("%T does not implement storage.Prover", b)
	}
	covers := func(c storage.Cursor) bool {
		t.Helper()
		ok, err := p.Covers(ctx, c)
		if err != nil {
			t.Fatalf("Covers(%+v): %v", c, err)
		}
		return ok
	}
	// caughtUp reads the feed from c until Covers proves the cursor: a
	// driver whose horizon trails its commits may need a poll more.
	caughtUp := func(c storage.Cursor) storage.Cursor {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !covers(c); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("Covers(%+v) false 10 s after the last write, the feed drained", c)
			}
			_, c = drain(t, b, c)
		}
		return c
	}
	_, c := drain(t, b, start(t, b))
	if !covers(c) {
		t.Errorf("Covers(%+v) false after draining a feed nothing was written to", c)
	}
	mustPut(t, a, "cv/1", nil)
	if covers(c) {
		t.Errorf("Covers(%+v) true with cv/1 committed after it", c)
	}
	_, c = waitKeys(t, b, c, "cv/1")
	c = caughtUp(c)
	mustPut(t, a, storage.UnfedPrefix+"x", nil)
	if !covers(c) {
		t.Errorf("Covers(%+v) false after a write of an unfed key only", c)
	}

	// An open transaction, and one committed while it is open.
	outOfOrder(t, a, b, "cv/slow", "cv/fast", func() {
		// cv/slow's open transaction holds the feed's horizon back.
		var ks []string
		ks, c = drain(t, b, c)
		if covers(c) {
			t.Errorf("Covers(%+v) true with cv/fast committed and %v delivered", c, ks)
		}
	}, func() {
		if !covers(c) {
			t.Errorf("Covers(%+v) false while the only later write is not committed", c)
		}
	})
	if covers(c) {
		t.Errorf("Covers(%+v) true with cv/slow and cv/fast committed after it", c)
	}
	_, c = waitKeys(t, b, c, "cv/slow", "cv/fast")
	c = caughtUp(c)

	// Pruned past, another generation, the future.
	mustPut(t, a, "cv/2", nil)
	_, c2 := waitKeys(t, b, c, "cv/2")
	if err := a.Prune(ctx, c2); err != nil {
		t.Fatal(err)
	}
	if covers(c) {
		t.Errorf("Covers(%+v) true with the feed pruned up to %+v", c, c2)
	}
	c2 = caughtUp(c2)
	other := c2
	other.Gen += "-other"
	if covers(other) {
		t.Errorf("Covers(%+v) true for another generation", other)
	}
	future := storage.Cursor{Gen: c2.Gen, XID: c2.XID + 1<<40, Seq: c2.Seq + 1<<40}
	if covers(future) {
		t.Errorf("Covers(%+v) true for a cursor beyond the database's history", future)
	}
}

// outOfOrder puts slow through a in a transaction it holds open (after
// calling opened, if not nil) while b puts fast. A driver with concurrent
// writers commits fast meanwhile: then between is called, slow's
// transaction still open, before it is let commit. A single-writer driver
// makes fast wait for slow (commits cannot be out of order there), and
// between is not called. It returns once both have committed.
func outOfOrder(t *testing.T, a, b SharedStore, slow, fast string, between, opened func()) {
	t.Helper()
	ctx := t.Context()
	wrote, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	let := func() { once.Do(func() { close(release) }) }
	defer let() // also when a check fails the test
	slowDone := make(chan error, 1)
	go func() {
		slowDone <- a.Update(ctx, func(tx storage.Tx) error {
			if err := tx.Put(ctx, slow, []byte("s")); err != nil {
				return err
			}
			close(wrote)
			<-release
			return nil
		})
	}()
	<-wrote
	if opened != nil {
		opened()
	}
	fastDone := make(chan error, 1)
	go func() { fastDone <- b.Put(ctx, fast, []byte("f")) }()
	select {
	case err := <-fastDone:
		if err != nil {
			t.Fatal(err)
		}
		between()
		let()
	case <-time.After(500 * time.Millisecond):
		let()
		if err := <-fastDone; err != nil {
			t.Fatal(err)
		}
	}
	if err := <-slowDone; err != nil {
		t.Fatal(err)
	}
}

// waitKeys reads the feed from c until every key in want was delivered.
func waitKeys(t *testing.T, w storage.Watcher, c storage.Cursor, want ...string) ([]string, storage.Cursor) {
	t.Helper()
	var got []string
	deadline := time.Now().Add(10 * time.Second)
	for {
		var ks []string
		ks, c = drain(t, w, c)
		got = append(got, ks...)
		missing := false
		for _, k := range want {
			missing = missing || !slices.Contains(got, k)
		}
		if !missing {
			return got, c
		}
		if time.Now().After(deadline) {
			t.Fatalf("feed gave %v, want %v among them", got, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func testLeaseTakeover(t *testing.T, open func(t *testing.T) (a, b SharedStore)) {
	a, b := open(t)
	ctx := t.Context()
	const ttl = 400 * time.Millisecond
	la, ok, err := a.TryAcquire(ctx, "controller", "node-a", ttl)
	if err != nil || !ok {
		t.Fatalf("TryAcquire by a = %v, %v", ok, err)
	}
	if la.Epoch < 1 || time.Until(la.Deadline) > ttl {
		t.Errorf("lease %+v: want epoch >= 1 and a deadline within %s", la, ttl)
	}
	if _, ok, err := b.TryAcquire(ctx, "controller", "node-b", ttl); err != nil || ok {
		t.Fatalf("TryAcquire by b while a holds it = %v, %v; want false", ok, err)
	}
	// a renews; b still cannot take it.
	if la, err = a.Renew(ctx, la, ttl); err != nil {
		t.Fatalf("Renew: %v", err)
	}
	again, ok, err := a.TryAcquire(ctx, "controller", "node-a", ttl)
	if err != nil || !ok || again.Epoch != la.Epoch {
		t.Fatalf("TryAcquire by the holder = %+v, %v, %v; want the same epoch %d", again, ok, err, la.Epoch)
	}
	time.Sleep(ttl / 2)
	if _, ok, err := b.TryAcquire(ctx, "controller", "node-b", ttl); err != nil || ok {
		t.Fatalf("TryAcquire by b before expiry = %v, %v; want false", ok, err)
	}
	time.Sleep(ttl + 100*time.Millisecond)
	lb, ok, err := b.TryAcquire(ctx, "controller", "node-b", ttl)
	if err != nil || !ok {
		t.Fatalf("TryAcquire by b after expiry = %v, %v; want true", ok, err)
	}
	if lb.Epoch != la.Epoch+1 {
		t.Errorf("epoch after takeover %d, want %d", lb.Epoch, la.Epoch+1)
	}
	if _, err := a.Renew(ctx, la, ttl); !errors.Is(err, storage.ErrLeaseLost) {
		t.Errorf("Renew of the lost lease: %v, want ErrLeaseLost", err)
	}
	// Release: a released lease can be taken at once, with a higher epoch.
	if err := b.Release(ctx, lb); err != nil {
		t.Fatal(err)
	}
	if err := a.Release(ctx, la); err != nil {
		t.Errorf("Release of a lost lease: %v, want nil", err)
	}
	lc, ok, err := a.TryAcquire(ctx, "controller", "node-a", ttl)
	if err != nil || !ok || lc.Epoch != lb.Epoch+1 {
		t.Fatalf("TryAcquire after Release = %+v, %v, %v; want epoch %d", lc, ok, err, lb.Epoch+1)
	}
}

func testLeaseLive(t *testing.T, open func(t *testing.T) (a, b SharedStore)) {
	a, b := open(t)
	ctx := t.Context()
	for _, s := range []struct {
		st   SharedStore
		name string
		ttl  time.Duration
	}{{a, "node/a", time.Minute}, {b, "node/b", time.Minute}, {a, "node/c", 50 * time.Millisecond}, {b, "other", time.Minute}} {
		if _, ok, err := s.st.TryAcquire(ctx, s.name, "h-"+s.name, s.ttl); err != nil || !ok {
			t.Fatalf("TryAcquire %s = %v, %v", s.name, ok, err)
		}
	}
	time.Sleep(150 * time.Millisecond)
	ls, err := b.Live(ctx, "node/")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range ls {
		names = append(names, l.Name)
		if l.Holder != "h-"+l.Name || l.Epoch != 1 || time.Until(l.Deadline) < 50*time.Second {
			t.Errorf("live lease %+v", l)
		}
	}
	if !slices.Equal(names, []string{"node/a", "node/b"}) {
		t.Errorf("Live(node/) = %v, want [node/a node/b]", names)
	}
}

// testFencedAfterTakeover: after another holder took the lease over, every
// fenced write of the old holding is refused and leaves nothing.
func testFencedAfterTakeover(t *testing.T, open func(t *testing.T) (a, b SharedStore)) {
	a, b := open(t)
	ctx := t.Context()
	const runs = 100
	refused := 0
	for i := range runs {
		name := fmt.Sprintf("fence/%d", i)
		la, ok, err := a.TryAcquire(ctx, name, "old", time.Minute)
		if err != nil || !ok {
			t.Fatalf("TryAcquire: %v, %v", ok, err)
		}
		if err := a.UpdateFenced(ctx, la, func(tx storage.Tx) error { return tx.Put(ctx, name, []byte("old")) }); err != nil {
			t.Fatalf("UpdateFenced while held: %v", err)
		}
		// Let it run out at once (a renewal with the shortest ttl).
		if la, err = a.Renew(ctx, la, time.Millisecond); err != nil {
			t.Fatalf("Renew: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
		var lb storage.Lease
		for {
			if lb, ok, err = b.TryAcquire(ctx, name, "new", time.Minute); err != nil {
				t.Fatal(err)
			} else if ok {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		err = a.UpdateFenced(ctx, la, func(tx storage.Tx) error { return tx.Put(ctx, name, []byte("stale")) })
		if errors.Is(err, storage.ErrFenced) {
			refused++
		} else {
			t.Errorf("run %d: UpdateFenced with epoch %d after takeover (epoch %d): %v, want ErrFenced", i, la.Epoch, lb.Epoch, err)
		}
		wantValue(t, b, name, []byte("old"))
		if err := b.UpdateFenced(ctx, lb, func(tx storage.Tx) error { return tx.Put(ctx, name, []byte("new")) }); err != nil {
			t.Fatalf("UpdateFenced by the new holder: %v", err)
		}
	}
	t.Logf("stale fenced writes refused in %d of %d runs", refused, runs)
}

// testFencedDuringTx: the takeover is attempted while a fenced transaction
// that passed its check is still open. Either the old holder's commit comes
// first and the new holder's write after it, or the old one is refused;
// never may the old holder's write land after the new holder's.
func testFencedDuringTx(t *testing.T, open func(t *testing.T) (a, b SharedStore)) {
	a, b := open(t)
	ctx := t.Context()
	const ttl = 200 * time.Millisecond
	for i := range 5 {
		name := fmt.Sprintf("race/%d", i)
		la, ok, err := a.TryAcquire(ctx, name, "old", ttl)
		if err != nil || !ok {
			t.Fatalf("TryAcquire: %v, %v", ok, err)
		}
		newDone := make(chan error, 1)
		started := false
		oldErr := a.UpdateFenced(ctx, la, func(tx storage.Tx) error {
			if !started { // only the first run of fn starts the taker
				started = true
				go func() {
					newDone <- func() error {
						for {
							lb, ok, err := b.TryAcquire(ctx, name, "new", time.Minute)
							if err != nil {
								return err
							}
							if ok {
								return b.UpdateFenced(ctx, lb, func(tx storage.Tx) error { return tx.Put(ctx, name, []byte("new")) })
							}
							time.Sleep(5 * time.Millisecond)
						}
					}()
				}()
			}
			// Outlive the lease inside the transaction.
			time.Sleep(ttl + 100*time.Millisecond)
			return tx.Put(ctx, name, []byte("old"))
		})
		if err := <-newDone; err != nil {
			t.Fatalf("run %d: new holder: %v", i, err)
		}
		if oldErr != nil && !errors.Is(oldErr, storage.ErrFenced) {
			t.Fatalf("run %d: old holder: %v", i, oldErr)
		}
		wantValue(t, a, name, []byte("new"))
		t.Logf("run %d: old holder's fenced write: %v", i, oldErr)
	}
}

// testFencedRefusedCounted: a handle's FencedRefused (the
// kmsd_fenced_writes_refused_total metric) counts the fenced writes it had
// refused after a takeover, and only those.
func testFencedRefusedCounted(t *testing.T, open func(t *testing.T) (a, b SharedStore)) {
	a, _ := open(t)
	s, ok := a.(interface{ FencedRefused() int64 })
	if !ok {
		t.Fatalf("%T does not count refused fenced writes (FencedRefused)", a)
	}
	ctx := t.Context()
	la, ok, err := a.TryAcquire(ctx, "controller", "a", 50*time.Millisecond)
	if err != nil || !ok {
		t.Fatalf("a acquires: %v %v", ok, err)
	}
	if err := a.UpdateFenced(ctx, la, func(tx storage.Tx) error { return tx.Put(ctx, "k", []byte("a")) }); err != nil {
		t.Fatalf("fenced write while held: %v", err)
	}
	time.Sleep(100 * time.Millisecond)
	if _, ok, err := a.TryAcquire(ctx, "controller", "b", time.Minute); err != nil || !ok {
		t.Fatalf("b takes over: %v %v", ok, err)
	}
	for range 2 {
		if err := a.UpdateFenced(ctx, la, func(tx storage.Tx) error { return tx.Put(ctx, "k", []byte("stale")) }); !errors.Is(err, storage.ErrFenced) {
			t.Fatalf("fenced write after the takeover: %v, want ErrFenced", err)
		}
	}
	if n := s.FencedRefused(); n != 2 {
		t.Errorf("FencedRefused = %d, want 2", n)
	}
}

// testWriteFence: a handle fenced by its node lease (storage.WriteFencer)
// writes freely before it first holds the lease and while it holds it; a
// transaction that outlives the lease — a node paused mid-request — is
// refused at its commit with nothing kept, and so is every write after
// the expiry, until the handle holds the lease again; a renewal moves
// the fence forward, a lease of another name does not; the other handle
// is not fenced by it; FenceWrites' callback hears of every refusal.
func testWriteFence(t *testing.T, open func(t *testing.T) (a, b SharedStore)) {
	a, b := open(t)
	f, ok := a.(storage.WriteFencer)
	if !ok {
		t.Fatalf("%T does not fence writes by a lease (storage.WriteFencer)", a)
	}
	refused, ok := a.(interface{ FencedRefused() int64 })
	if !ok {
		t.Fatalf("%T does not count refused fenced writes (FencedRefused)", a)
	}
	ctx := t.Context()
	const name, ttl = "node/a", 300 * time.Millisecond
	put := func(s storage.Store, v string) error { return s.Put(ctx, "fenced", []byte(v)) }
	var told atomic.Int64
	f.FenceWrites(name, func() { told.Add(1) })
	if err := put(a, "before"); err != nil {
		t.Fatalf("write before the lease was first held: %v", err)
	}
	l, ok, err := a.TryAcquire(ctx, name, "a", ttl)
	if err != nil || !ok {
		t.Fatalf("TryAcquire: %v %v", ok, err)
	}
	if err := a.Update(ctx, func(tx storage.Tx) error { return tx.Put(ctx, "fenced", []byte("held")) }); err != nil {
		t.Fatalf("Update while the lease is held: %v", err)
	}
	// Paused past the expiry between the write and the commit.
	err = a.Update(ctx, func(tx storage.Tx) error {
		if err := tx.Put(ctx, "fenced", []byte("paused")); err != nil {
			return err
		}
		time.Sleep(ttl + 200*time.Millisecond)
		return nil
	})
	if !errors.Is(err, storage.ErrFenced) {
		t.Fatalf("a transaction that outlived the lease: %v, want ErrFenced", err)
	}
	wantValue(t, b, "fenced", []byte("held"))
	for _, w := range []struct {
		what string
		fn   func() error
	}{
		{"Put", func() error { return put(a, "late") }},
		{"Create", func() error { return a.Create(ctx, "fenced-new", []byte("late")) }},
		{"Delete", func() error { return a.Delete(ctx, "fenced") }},
		{"Update", func() error {
			return a.Update(ctx, func(tx storage.Tx) error { return tx.Put(ctx, "fenced", []byte("late")) })
		}},
	} {
		if err := w.fn(); !errors.Is(err, storage.ErrFenced) {
			t.Errorf("%s after the lease expired: %v, want ErrFenced", w.what, err)
		}
	}
	wantValue(t, b, "fenced", []byte("held"))
	if _, err := b.Get(ctx, "fenced-new"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Get of the refused Create: %v, want ErrNotFound", err)
	}
	if n := refused.FencedRefused(); n != 5 {
		t.Errorf("FencedRefused = %d, want 5", n)
	}
	if n := told.Load(); n != 5 {
		t.Errorf("FenceWrites' callback told of %d refused writes, want 5", n)
	}
	if err := put(b, "other handle"); err != nil {
		t.Fatalf("a write of the other handle: %v", err)
	}
	// Another lease held does not lift the fence.
	if _, ok, err := a.TryAcquire(ctx, "other", "a", time.Minute); err != nil || !ok {
		t.Fatalf("TryAcquire other: %v %v", ok, err)
	}
	if err := put(a, "late"); !errors.Is(err, storage.ErrFenced) {
		t.Errorf("Put with another lease held: %v, want ErrFenced", err)
	}
	// Taken again (a new epoch): writes go through.
	l2, ok, err := a.TryAcquire(ctx, name, "a", ttl)
	if err != nil || !ok || l2.Epoch <= l.Epoch {
		t.Fatalf("TryAcquire again: %v %v, epoch %d after %d", ok, err, l2.Epoch, l.Epoch)
	}
	if err := put(a, "again"); err != nil {
		t.Fatalf("write once the lease is held again: %v", err)
	}
	// A renewal moves the fence forward.
	if _, err := a.Renew(ctx, l2, time.Minute); err != nil {
		t.Fatalf("Renew: %v", err)
	}
	time.Sleep(ttl + 100*time.Millisecond)
	if err := put(a, "renewed"); err != nil {
		t.Fatalf("write after the first ttl, the lease renewed: %v", err)
	}
	wantValue(t, b, "fenced", []byte("renewed"))
}
