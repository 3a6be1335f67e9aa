package feed

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/storage"
	"github.com/kmsd/kmsd/internal/storage/postgres"
	"github.com/kmsd/kmsd/internal/storage/postgres/pgtest"
	"github.com/kmsd/kmsd/internal/storage/sqlite"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

type recorder struct {
	keys   []string
	resets int
	fail   error
}

func (r *recorder) Invalidate(_ context.Context, keys []string) error {
	if r.fail != nil {
		return r.fail
	}
	r.keys = append(r.keys, keys...)
	return nil
}

func (r *recorder) Reset(context.Context) error { r.resets++; return nil }

// TestPoll: the first poll resets and proves freshness; changes are handed
// over; a subscriber's failure keeps the batch, which comes again, and
// freshness does not advance meanwhile.
func TestPoll(t *testing.T) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "kmsd.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	r := &recorder{}
	f := New(st, time.Hour, nil, r)
	if f.Lag() < time.Hour {
		t.Errorf("lag before the first poll = %v, want unbounded", f.Lag())
	}
	before := time.Now()
	if err := f.Poll(ctx); err != nil {
		t.Fatal(err)
	}
	if r.resets != 1 || f.FreshAsOf().Before(before) {
		t.Fatalf("after the first poll: %d resets, fresh as of %v (poll began after %v)", r.resets, f.FreshAsOf(), before)
	}
	if err := st.Put(ctx, "key/a", []byte("1")); err != nil {
		t.Fatal(err)
	}
	r.fail = errors.New("database unreachable")
	fresh := f.FreshAsOf()
	if err := f.Poll(ctx); !errors.Is(err, r.fail) {
		t.Fatalf("poll with a failing subscriber: %v", err)
	}
	if !f.FreshAsOf().Equal(fresh) {
		t.Errorf("freshness advanced past a batch a subscriber did not take")
	}
	r.fail = nil
	if err := f.Poll(ctx); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(r.keys, []string{"key/a"}) {
		t.Errorf("keys handed over: %v, want [key/a]", r.keys)
	}
	if !f.FreshAsOf().After(fresh) {
		t.Errorf("freshness did not advance after the batch was taken")
	}
}

// TestPollAfterPrune: a follower whose cursor is older than what the feed
// was pruned to (a node that lagged behind, or was cut off past its
// lease) is told to drop everything (Reset) — it never resumes past the
// changes it did not see — and then follows the feed from there; Cursor
// publishes the position it reached.
func TestPollAfterPrune(t *testing.T) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "kmsd.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	r := &recorder{}
	f := New(st, time.Hour, nil, r)
	if !f.Cursor().IsZero() {
		t.Fatalf("cursor before the first poll: %+v", f.Cursor())
	}
	if err := f.Poll(ctx); err != nil {
		t.Fatal(err)
	}
	lagged := f.Cursor()
	if r.resets != 1 || lagged.IsZero() {
		t.Fatalf("after the first poll: %d resets, cursor %+v", r.resets, lagged)
	}
	// Changes the follower does not read before they are pruned.
	for _, k := range []string{"key/a", "key/b"} {
		if err := st.Put(ctx, k, []byte("1")); err != nil {
			t.Fatal(err)
		}
	}
	head, err := st.Changes(ctx, lagged, 0)
	if err != nil || len(head.Keys) != 2 {
		t.Fatalf("Changes: %+v %v", head, err)
	}
	if err := st.Prune(ctx, head.Next); err != nil {
		t.Fatal(err)
	}
	if err := f.Poll(ctx); err != nil {
		t.Fatal(err)
	}
	if r.resets != 2 || len(r.keys) != 0 {
		t.Fatalf("poll from a pruned cursor: %d resets, keys %v; want a second Reset and no keys", r.resets, r.keys)
	}
	if !lagged.Before(f.Cursor()) {
		t.Fatalf("cursor after the Reset %+v, want past %+v", f.Cursor(), lagged)
	}
	if err := st.Put(ctx, "key/c", []byte("1")); err != nil {
		t.Fatal(err)
	}
	if err := f.Poll(ctx); err != nil {
		t.Fatal(err)
	}
	if r.resets != 2 || !slices.Equal(r.keys, []string{"key/c"}) {
		t.Fatalf("after the Reset: %d resets, keys %v; want key/c only", r.resets, r.keys)
	}
}

// noticeFeed is a Watcher and a storage.Notifier whose horizon the test
// moves: every poll is caught up to it.
type noticeFeed struct {
	mu      sync.Mutex
	horizon uint64
	polls   int
	notices chan uint64
}

func (n *noticeFeed) Changes(_ context.Context, from storage.Cursor, _ int) (storage.Batch, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.polls++
	return storage.Batch{Next: storage.Cursor{Gen: "g", XID: n.horizon}, Reset: from.IsZero(), FreshAsOf: time.Now()}, nil
}

func (n *noticeFeed) Prune(context.Context, storage.Cursor) error { return nil }
func (n *noticeFeed) Notices() <-chan uint64                      { return n.notices }

func (n *noticeFeed) state() (polls int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.polls
}

func (n *noticeFeed) setHorizon(x uint64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.horizon = x
}

// TestRunOnNotice: with an hour between polls, a notice makes the follower
// poll at once, and poll again shortly while the feed's horizon has not
// passed the noticed transaction (an older transaction still open); once
// it has, the polls stop. A notice of a transaction already delivered
// makes no poll.
func TestRunOnNotice(t *testing.T) {
	w := &noticeFeed{horizon: 10, notices: make(chan uint64)}
	f := New(w, time.Hour, nil, &recorder{})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { f.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); !ok(); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 5s", what)
			}
		}
	}
	waitFor("the first poll", func() bool { return f.Cursor().XID == 10 })
	if p := w.state(); p != 1 {
		t.Fatalf("%d polls after start, want 1", p)
	}

	w.notices <- 12 // transaction 12 committed; 10 and 11 still open
	waitFor("polls again while the horizon is behind the notice", func() bool { return w.state() >= 4 })
	w.setHorizon(13)
	waitFor("the cursor past the notice", func() bool { return f.Cursor().XID == 13 })
	settled := w.state()
	time.Sleep(300 * time.Millisecond)
	if p := w.state(); p != settled {
		t.Errorf("%d more polls after the noticed transaction was delivered, want none", p-settled)
	}

	w.notices <- 11 // below the cursor: delivered already
	time.Sleep(100 * time.Millisecond)
	if p := w.state(); p != settled {
		t.Errorf("a notice of a delivered transaction made %d polls, want none", p-settled)
	}
	w.setHorizon(20)
	w.notices <- 15
	waitFor("a poll for a new notice", func() bool { return f.Cursor().XID == 20 })
}

// onlyWatcher hides every capability of a Watcher but the change feed.
type onlyWatcher struct{ storage.Watcher }

// freshAtDrivers open two handles on one new database of each driver, as
// two nodes have.
var freshAtDrivers = []struct {
	name string
	open func(t *testing.T) (st, other storage.Store)
}{
	{"sqlite", func(t *testing.T) (storage.Store, storage.Store) {
		path := filepath.Join(t.TempDir(), "kmsd.db")
		return openStore(t, func() (storage.Store, error) { return sqlite.Open(t.Context(), path) }),
			openStore(t, func() (storage.Store, error) { return sqlite.Open(t.Context(), path) })
	}},
	{"postgres", func(t *testing.T) (storage.Store, storage.Store) {
		url := pgtest.URL(t)
		o := func() (storage.Store, error) {
			return postgres.Open(t.Context(), url, postgres.Options{MaxConns: 4, MinConns: 1})
		}
		return openStore(t, o), openStore(t, o)
	}},
}

func openStore(t *testing.T, open func() (storage.Store, error)) storage.Store {
	t.Helper()
	st, err := open()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// TestFreshAt: a follower that has consumed the feed is proved fresh for
// any instant by the store (storage.Prover), without a poll, and
// FreshAsOf moves up to the proof; once another handle commits a change
// nothing is proved until a poll hands the change over — which Run, told
// by FreshAt, does at once rather than at its interval. A Watcher without
// a proof proves nothing past its polls. On both drivers.
func TestFreshAt(t *testing.T) {
	for _, d := range freshAtDrivers {
		t.Run(d.name, func(t *testing.T) {
			st, other := d.open(t)
			testFreshAt(t, st.(storage.Watcher), other)
		})
	}
}

func testFreshAt(t *testing.T, st storage.Watcher, other storage.Store) {
	ctx := t.Context()
	r := &recorder{}
	f := New(st, time.Hour, nil, r)
	// On PostgreSQL the feed's horizon is the server's: a transaction
	// still open in another test's database on the shared server holds it
	// back, delaying what a poll hands over (never losing it). So each
	// expectation after a poll may take several polls to come true.
	pollUntil := func(what string, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			if err := f.Poll(ctx); err != nil {
				t.Fatal(err)
			}
			if ok() {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: not so after polling for 10 s", what)
			}
		}
	}
	pollUntil("FreshAt(now) with nothing committed since the poll", func() bool {
		at := time.Now()
		return f.FreshAt(ctx, at) && !f.FreshAsOf().Before(at)
	})
	if err := other.Put(ctx, "key/a", []byte("1")); err != nil {
		t.Fatal(err)
	}
	if f.FreshAt(ctx, time.Now()) {
		t.Fatal("FreshAt(now) true with a change committed and not handed over")
	}
	pollUntil("after the polls, key/a handed over and FreshAt(now) true", func() bool {
		if len(r.keys) > 0 && !slices.Equal(r.keys, []string{"key/a"}) {
			t.Fatalf("keys handed over: %v, want [key/a]", r.keys)
		}
		return len(r.keys) == 1 && f.FreshAt(ctx, time.Now())
	})
	// A key outside the feed moves no head.
	if err := other.Put(ctx, storage.UnfedPrefix+"x", []byte("1")); err != nil {
		t.Fatal(err)
	}
	if !f.FreshAt(ctx, time.Now()) {
		t.Error("FreshAt(now) false after a write the feed leaves out")
	}

	// Run, whose interval is an hour, polls soon after FreshAt saw the
	// head move.
	rctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); f.Run(rctx) }()
	time.Sleep(50 * time.Millisecond) // Run's first poll
	if err := other.Put(ctx, "key/b", []byte("1")); err != nil {
		t.Fatal(err)
	}
	if f.FreshAt(ctx, time.Now()) {
		t.Fatal("FreshAt(now) true with a change committed and not handed over")
	}
	for deadline := time.Now().Add(10 * time.Second); !f.FreshAt(ctx, time.Now()); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("Run did not poll within 10 s of FreshAt seeing the head move")
		}
	}
	stop()
	<-done
	if !slices.Equal(r.keys, []string{"key/a", "key/b"}) {
		t.Errorf("keys handed over: %v, want [key/a key/b]", r.keys)
	}

	g := New(onlyWatcher{st}, time.Hour, nil, &recorder{})
	if err := g.Poll(ctx); err != nil {
		t.Fatal(err)
	}
	if g.FreshAt(ctx, time.Now()) {
		t.Error("FreshAt(now) true without a proof or a poll since")
	}
}

// gatedProver runs the store's proof, then holds its answer until let
// is closed (when gate is set), counting the proofs.
type gatedProver struct {
	storage.Watcher
	p      storage.Prover
	gate   atomic.Bool
	proved chan struct{} // a proof's answer is ready and held
	let    chan struct{}
	calls  atomic.Int32
}

func (g *gatedProver) Covers(ctx context.Context, c storage.Cursor) (bool, error) {
	g.calls.Add(1)
	ok, err := g.p.Covers(ctx, c)
	if g.gate.Load() {
		g.proved <- struct{}{}
		<-g.let
	}
	return ok, err
}

// TestFreshAtShared: concurrent reads share proofs — one under way, and
// one for all that came while it was — and a read that came while a
// proof was under way is not answered by it: a change committed after
// that proof read the database, and before the read began, is found by
// the next one. On both drivers.
func TestFreshAtShared(t *testing.T) {
	for _, d := range freshAtDrivers {
		t.Run(d.name, func(t *testing.T) {
			ctx := t.Context()
			st, other := d.open(t)
			w := st.(storage.Watcher)
			g := &gatedProver{Watcher: w, p: st.(storage.Prover), proved: make(chan struct{}), let: make(chan struct{})}
			f := New(g, time.Hour, nil, &recorder{})
			if err := f.Poll(ctx); err != nil {
				t.Fatal(err)
			}
			g.gate.Store(true)
			first := make(chan bool)
			go func() { first <- f.FreshAt(ctx, time.Now()) }()
			<-g.proved // the first proof read the database: nothing after the cursor
			if err := other.Put(ctx, "key/late", []byte("1")); err != nil {
				t.Fatal(err)
			}
			const n = 16
			later := make(chan bool, n)
			for range n {
				go func() { later <- f.FreshAt(ctx, time.Now()) }()
			}
			time.Sleep(200 * time.Millisecond) // the later reads queue behind the first proof
			g.gate.Store(false)
			close(g.let)
			if !<-first {
				t.Error("the first read: FreshAt false, want true (nothing was committed before its proof)")
			}
			for range n {
				if <-later {
					t.Error("a read begun after key/late committed: FreshAt true, want false")
				}
			}
			// 2: one under way, one for the reads that came meanwhile; 3
			// if a read's goroutine ran only after the first proof ended.
			if c := g.calls.Load(); c < 2 || c > 3 {
				t.Errorf("%d proofs for 1 + %d reads, want 2 (one under way, one for the reads that came meanwhile)", c, n)
			}
		})
	}
}
