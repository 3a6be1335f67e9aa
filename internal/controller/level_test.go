package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/storage"
	"github.com/kmsd/kmsd/internal/storage/postgres"
	"github.com/kmsd/kmsd/internal/storage/postgres/pgtest"
)

// TestMain stops the private PostgreSQL server pgtest started, if it
// started one (KMSD_TEST_DATABASE_URL unset outside CI).
func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// shared is a store that is also a leaser, as both drivers are.
type shared interface {
	storage.Store
	storage.Leaser
}

// drivers gives n handles on one database of each driver, as n nodes
// would share one database.
var drivers = []struct {
	name string
	open func(t *testing.T, n int) []shared
}{
	{"sqlite", func(t *testing.T, n int) []shared {
		var out []shared
		for _, st := range open(t, n) {
			out = append(out, st)
		}
		return out
	}},
	{"postgres", func(t *testing.T, n int) []shared {
		url := pgtest.URL(t)
		var out []shared
		for range n {
			st, err := postgres.Open(t.Context(), url, postgres.Options{MaxConns: 4, MinConns: 1})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			out = append(out, st)
		}
		return out
	}},
}

// gated is a running controller of a given data format level.
type gated struct {
	*node
	outdated atomic.Int64 // the minimum Outdated was told, 0 before
	calls    atomic.Int64
}

func startLevel(t *testing.T, st shared, id string, level int, ttl time.Duration) *gated {
	t.Helper()
	g := &gated{}
	c, err := New(Config{Leaser: st, Store: st, NodeID: id, Address: "127.0.0.1:1", TTL: ttl,
		Log: slog.New(slog.NewTextHandler(tWriter{t}, nil)), Version: "v-" + id, DataLevel: level,
		Outdated: func(min int) { g.outdated.Store(int64(min)); g.calls.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	g.node = runNode(t, c)
	return g
}

// TestVersionGate (issue #16, MULTINODE §7.3): two nodes of data format
// level 1 run, one of them the controller; the database's minimum is
// raised to 2 and a node of level 2 starts, as kmsd's server does it.
// Within two heartbeats both old nodes are told (Outdated, once) and the
// old controller has given its lease up. The new node is not ready and
// takes no controller term while either old node holds its node lease
// (the controller alone does not stop them: here they go on heartbeating),
// and no old node takes the free lease either; once one old node stopped
// cleanly and the other was frozen (no more heartbeats, its lease left to
// expire), the new node is ready no later than a lease TTL after the
// frozen one's last heartbeat, and leads. The node records carry each
// node's version and level. On both drivers.
func TestVersionGate(t *testing.T) {
	for _, d := range drivers {
		t.Run(d.name, func(t *testing.T) {
			const ttl = time.Second // heartbeat every 200ms
			sts := d.open(t, 3)
			ctx := t.Context()
			if min, err := RaiseMinLevel(ctx, sts[0], 1); err != nil || min != 0 {
				t.Fatalf("RaiseMinLevel(1) on a new database = %d, %v; want 0, nil", min, err)
			}
			old := []*gated{startLevel(t, sts[0], "old-a", 1, ttl), startLevel(t, sts[1], "old-b", 1, ttl)}
			first := waitLeader(t, []*node{old[0].node, old[1].node}, 3*ttl)
			epoch := first.c.Epoch()
			// (A slow renewal may hand the lease to the other old node;
			// whichever leads is the one that must give it up.)

			if min, err := RaiseMinLevel(ctx, sts[2], 2); err != nil || min != 1 {
				t.Fatalf("RaiseMinLevel(2) = %d, %v; want 1, nil", min, err)
			}
			raised := time.Now()
			newer := startLevel(t, sts[2], "new", 2, ttl)
			// An older node's raise is refused and writes nothing.
			if min, err := RaiseMinLevel(ctx, sts[0], 1); !errors.Is(err, ErrOutdated) || min != 2 {
				t.Fatalf("RaiseMinLevel(1) after 2 = %d, %v; want 2, ErrOutdated", min, err)
			}
			if min, err := MinLevel(ctx, sts[1]); err != nil || min != 2 {
				t.Fatalf("MinLevel = %d, %v; want 2", min, err)
			}

			// The old nodes are told and the old controller steps down.
			// (Outdated() turns true just before the callback is called.)
			for !(old[0].c.Outdated() && old[1].c.Outdated() && !first.c.IsController() &&
				old[0].calls.Load() > 0 && old[1].calls.Load() > 0) {
				if time.Since(raised) > 2*ttl {
					t.Fatalf("old nodes outdated %v/%v, old controller leads %v, %s after the raise",
						old[0].c.Outdated(), old[1].c.Outdated(), first.c.IsController(), 2*ttl)
				}
				time.Sleep(10 * time.Millisecond)
			}
			for _, o := range old {
				if o.outdated.Load() != 2 || o.calls.Load() != 1 {
					t.Errorf("%s: told %d (%d calls); want 2, 1 call", o.c.NodeID(), o.outdated.Load(), o.calls.Load())
				}
			}

			// While the old nodes hold their node leases nobody leads: not
			// the new node (it waits), not an old one (outdated).
			for until := time.Now().Add(3 * ttl / 2); time.Now().Before(until); time.Sleep(20 * time.Millisecond) {
				if newer.c.Ready() || newer.c.IsController() {
					t.Fatalf("the new node serves (ready %v, controller %v) while level-1 nodes hold their node leases",
						newer.c.Ready(), newer.c.IsController())
				}
				for _, o := range old {
					if o.c.IsController() {
						t.Fatalf("%s (level 1) took the controller lease of a level-2 database", o.c.NodeID())
					}
				}
			}
			if w := newer.c.WaitingFor(); len(w) != 2 {
				t.Errorf("the new node waits for %q; want old-a and old-b", w)
			}
			if newer.c.Outdated() || newer.calls.Load() != 0 {
				t.Error("the new node was told it is outdated")
			}

			// old-a stops cleanly: the new node still waits for old-b.
			old[0].stop()
			for w := newer.c.WaitingFor(); len(w) != 1 || !strings.HasPrefix(w[0], "old-b "); w = newer.c.WaitingFor() {
				if newer.c.Ready() {
					t.Fatal("the new node is ready while old-b holds its node lease")
				}
				if time.Since(raised) > 10*ttl {
					t.Fatalf("the new node waits for %q after old-a stopped; want old-b only", w)
				}
				time.Sleep(10 * time.Millisecond)
			}

			// old-b freezes: no more heartbeats, its lease is not released.
			old[1].c.Abandon()
			frozen := time.Now() // its last renewal was before this
			old[1].stop()
			for !newer.c.Ready() {
				ls, err := sts[2].Live(ctx, NodeLeasePrefix+"old-b")
				if err != nil {
					t.Fatal(err)
				}
				if newer.c.Ready() {
					break
				}
				if len(ls) == 0 && time.Since(frozen) > ttl+ttl/2 {
					t.Fatalf("the new node not ready %s after the last level-1 node froze, its lease expired", time.Since(frozen))
				}
				time.Sleep(10 * time.Millisecond)
			}
			// Ready, checked before the read: the lease is gone by then.
			if ls, err := sts[2].Live(ctx, NodeLeasePrefix+"old-b"); err != nil || len(ls) != 0 {
				t.Fatalf("the new node is ready while old-b's node lease is live: %+v, %v", ls, err)
			}
			if took := time.Since(frozen); took > ttl+ttl/2 {
				t.Errorf("the new node waited %s for a frozen node whose lease TTL is %s", took, ttl)
			}
			waitLeader(t, []*node{newer.node}, 2*ttl)
			if newer.c.Epoch() <= epoch {
				t.Errorf("new epoch %d, old %d", newer.c.Epoch(), epoch)
			}

			st, err := ReadStatus(ctx, sts[0], sts[0])
			if err != nil {
				t.Fatal(err)
			}
			if st.MinDataLevel != 2 {
				t.Errorf("status minDataLevel %d, want 2", st.MinDataLevel)
			}
			got := map[string]string{}
			for _, n := range st.Nodes {
				got[n.ID] = fmt.Sprintf("%s/%d stopped=%v live=%v", n.Version, n.DataLevel, n.Stopped, n.Live)
			}
			want := map[string]string{"old-a": "v-old-a/1 stopped=true live=false", "old-b": "v-old-b/1 stopped=false live=false",
				"new": "v-new/2 stopped=false live=true"}
			for id, w := range want {
				if got[id] != w {
					t.Errorf("node %s: %q, want %q", id, got[id], w)
				}
			}
		})
	}
}

// TestVersionGateTerm: a node below the minimum that wins the lease
// between two heartbeats (the minimum raised after its last one) begins
// no term: it runs no duty, releases the lease at once and is outdated.
func TestVersionGateTerm(t *testing.T) {
	for _, d := range drivers {
		t.Run(d.name, func(t *testing.T) {
			ctx := t.Context()
			sts := d.open(t, 1)
			if _, err := RaiseMinLevel(ctx, sts[0], 3); err != nil {
				t.Fatal(err)
			}
			told := 0
			c, err := New(Config{Leaser: sts[0], Store: sts[0], NodeID: "old", TTL: time.Second, DataLevel: 2,
				Outdated: func(min int) { told = min }})
			if err != nil {
				t.Fatal(err)
			}
			ran := false
			c.Add("duty", func(ctx context.Context) { ran = true })
			l, ok, err := sts[0].TryAcquire(ctx, LeaseName, "old", time.Second)
			if err != nil || !ok {
				t.Fatal(ok, err)
			}
			c.term(ctx, l) // returns at once
			if ran || c.IsController() || c.Epoch() != 0 {
				t.Errorf("term began: duty ran %v, controller %v, epoch %d", ran, c.IsController(), c.Epoch())
			}
			if !c.Outdated() || told != 3 {
				t.Errorf("Outdated() %v, told %d; want true, 3", c.Outdated(), told)
			}
			if ls, err := sts[0].Live(ctx, LeaseName); err != nil || len(ls) != 0 {
				t.Errorf("live controller leases %+v, %v; want none (released)", ls, err)
			}
			if ts, err := sts[0].List(ctx, HistoryPrefix, "", 0); err != nil || len(ts) != 0 {
				t.Errorf("term records %d, %v; want none", len(ts), err)
			}
		})
	}
}

// TestRaiseMinLevelConcurrent: nodes of several levels raising the
// minimum at once, through two handles, end with the highest; a raise
// from below the minimum it meets is refused (ErrOutdated) and writes
// nothing. On both drivers.
func TestRaiseMinLevelConcurrent(t *testing.T) {
	for _, d := range drivers {
		t.Run(d.name, func(t *testing.T) {
			ctx := t.Context()
			sts := d.open(t, 2)
			var wg sync.WaitGroup
			errs := make([]error, 12)
			found := make([]int, 12)
			for i := range errs {
				wg.Add(1)
				go func() {
					defer wg.Done()
					found[i], errs[i] = RaiseMinLevel(ctx, sts[i%2], 1+i%4)
				}()
			}
			wg.Wait()
			for i, err := range errs {
				level := 1 + i%4
				switch {
				case err == nil && found[i] > level:
					t.Errorf("raise to %d met %d and succeeded", level, found[i])
				case err != nil && !(errors.Is(err, ErrOutdated) && found[i] > level):
					t.Errorf("raise to %d: found %d, %v", level, found[i], err)
				}
			}
			if min, err := MinLevel(ctx, sts[1]); err != nil || min != 4 {
				t.Errorf("MinLevel = %d, %v; want 4", min, err)
			}
			if err := sts[0].Put(ctx, MinLevelRecord, []byte("x")); err != nil {
				t.Fatal(err)
			}
			if _, err := MinLevel(ctx, sts[0]); err == nil {
				t.Error("MinLevel read a level from \"x\"")
			}
		})
	}
}

// TestOlderNodes: a node of level 2 waits for the other nodes holding a
// live node lease whose record shows level 1, or that have written no
// record yet; not for one of its own level or above, not for one from
// before the gate (no level published), not for itself, and not for a
// node whose lease was released, even if its record says level 1. On
// both drivers.
func TestOlderNodes(t *testing.T) {
	for _, d := range drivers {
		t.Run(d.name, func(t *testing.T) {
			ctx := t.Context()
			st := d.open(t, 1)[0]
			records := map[string]int{"self": 2, "old": 1, "same": 2, "newer": 3, "pregate": 0, "gone": 1}
			for id, level := range records {
				b, err := json.Marshal(Node{ID: id, Version: "v-" + id, DataLevel: level})
				if err != nil {
					t.Fatal(err)
				}
				if err := st.Put(ctx, NodePrefix+id, b); err != nil {
					t.Fatal(err)
				}
			}
			for _, id := range []string{"self", "old", "same", "newer", "pregate", "gone", "starting"} {
				l, ok, err := st.TryAcquire(ctx, NodeLeasePrefix+id, id, time.Minute)
				if err != nil || !ok {
					t.Fatal(ok, err)
				}
				if id == "gone" {
					if err := st.Release(ctx, l); err != nil {
						t.Fatal(err)
					}
				}
			}
			c, err := New(Config{Leaser: st, Store: st, NodeID: "self", DataLevel: 2})
			if err != nil {
				t.Fatal(err)
			}
			older, starting, err := c.olderNodes(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if want := []string{"old (version v-old, level 1)"}; !slices.Equal(older, want) {
				t.Errorf("older %q, want %q", older, want)
			}
			if want := []string{"starting (starting, level not known yet)"}; !slices.Equal(starting, want) {
				t.Errorf("starting %q, want %q", starting, want)
			}
		})
	}
}

// waitLease waits until lease name is live (true) or not (false), and
// returns the live holding.
func waitLease(t *testing.T, st shared, name string, live bool, within time.Duration) storage.Lease {
	t.Helper()
	for deadline := time.Now().Add(within); ; time.Sleep(10 * time.Millisecond) {
		ls, err := st.Live(t.Context(), name)
		if err != nil {
			t.Fatal(err)
		}
		if (len(ls) > 0) == live {
			if live {
				return ls[0]
			}
			return storage.Lease{}
		}
		if time.Now().After(deadline) {
			t.Fatalf("lease %s live %v after %s, want %v", name, !live, within, live)
		}
	}
}

// startOld opens two handles on a new database, raises its minimum level
// to 1 and starts on the first a level-1 node "old"; it returns once the
// node holds its node lease, and that holding.
func startOld(t *testing.T, open func(t *testing.T, n int) []shared, ttl time.Duration) ([]shared, *gated, storage.Lease) {
	t.Helper()
	sts := open(t, 2)
	if _, err := RaiseMinLevel(t.Context(), sts[0], 1); err != nil {
		t.Fatal(err)
	}
	old := startLevel(t, sts[0], "old", 1, ttl)
	return sts, old, waitLease(t, sts[1], NodeLeasePrefix+"old", true, 2*ttl)
}

// TestPausedOldNodeFenced (issue #16, rolling upgrade): an older node
// paused longer than its node lease's ttl — here its heartbeats stop and
// its lease is left to expire — cannot commit once it resumes, whether
// the pause fell inside a request's transaction (PostgreSQL; on SQLite the
// paused transaction holds the one write lock, so no newer node can
// start meanwhile) or between requests: the newer node, which stops
// waiting for it when its lease expires, meets none of its writes. On the
// code before writes were fenced by the node lease, both writes
// committed. On both drivers.
func TestPausedOldNodeFenced(t *testing.T) {
	for _, d := range drivers {
		t.Run(d.name, func(t *testing.T) {
			const ttl = time.Second
			sts, old, _ := startOld(t, d.open, ttl)
			ctx := t.Context()
			if err := sts[0].Put(ctx, "k", []byte("held")); err != nil {
				t.Fatalf("a write of the old node while it holds its lease: %v", err)
			}
			resume := make(chan struct{})
			inTx := make(chan error, 1)
			if d.name == "postgres" {
				began := make(chan struct{})
				go func() {
					inTx <- sts[0].Update(ctx, func(tx storage.Tx) error {
						if err := tx.Put(ctx, "k", []byte("paused in its transaction")); err != nil {
							return err
						}
						select {
						case <-began:
						default:
							close(began)
						}
						<-resume
						return nil
					})
				}()
				<-began
			}
			// The old process pauses: no more heartbeats, no release.
			old.c.Abandon()
			old.stop()
			if _, err := RaiseMinLevel(ctx, sts[1], 2); err != nil {
				t.Fatal(err)
			}
			newer := startLevel(t, sts[1], "new", 2, ttl)
			for deadline := time.Now().Add(3 * ttl); !newer.c.Ready(); time.Sleep(10 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("the new node not ready %s after the old node paused", 3*ttl)
				}
			}
			// The old node resumes.
			close(resume)
			if d.name == "postgres" {
				if err := <-inTx; !errors.Is(err, storage.ErrFenced) {
					t.Errorf("the old node's transaction paused past its lease: %v, want ErrFenced", err)
				}
			}
			if err := sts[0].Put(ctx, "k", []byte("after the pause")); !errors.Is(err, storage.ErrFenced) {
				t.Errorf("a write of the old node after its lease expired: %v, want ErrFenced", err)
			}
			v, err := sts[1].Get(ctx, "k")
			if err != nil || string(v) != "held" {
				t.Errorf("k = %q, %v; want the old node's last write before the pause, \"held\"", v, err)
			}
		})
	}
}

// TestOutdatedNodeKeepsLostLease: an outdated node whose node lease is
// lost (paused past its expiry; here expired from outside) does not take
// it again while it stops, so its writes stay fenced. On both drivers.
func TestOutdatedNodeKeepsLostLease(t *testing.T) {
	for _, d := range drivers {
		t.Run(d.name, func(t *testing.T) {
			const ttl = time.Second
			sts, old, l := startOld(t, d.open, ttl)
			ctx := t.Context()
			if _, err := RaiseMinLevel(ctx, sts[1], 2); err != nil {
				t.Fatal(err)
			}
			for deadline := time.Now().Add(2 * ttl); !old.c.Outdated(); time.Sleep(10 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("the old node not outdated two ttls after the raise")
				}
			}
			if err := sts[0].Put(ctx, "k", []byte("finishing")); err != nil {
				t.Fatalf("a write of the outdated node while it holds its lease: %v", err)
			}
			if err := sts[1].Release(ctx, l); err != nil {
				t.Fatal(err)
			}
			// Heartbeats every ttl/5: several come and go.
			time.Sleep(ttl)
			if ls, err := sts[1].Live(ctx, NodeLeasePrefix+"old"); err != nil || len(ls) != 0 {
				t.Fatalf("the outdated node took its lost lease again: %+v, %v", ls, err)
			}
			if err := sts[0].Put(ctx, "k", []byte("late")); !errors.Is(err, storage.ErrFenced) {
				t.Errorf("a write of the outdated node after its lease was lost: %v, want ErrFenced", err)
			}
		})
	}
}

// frozenLeaser is a leaser whose node lease renewals, while frozen is
// set, only pretend to renew: the heartbeat believes it holds the lease
// while it expires in the database, as it would for a node whose process
// froze between two beats.
type frozenLeaser struct {
	shared
	frozen  atomic.Bool
	renewed chan struct{} // a pretended renewal, while frozen
}

func (f *frozenLeaser) Renew(ctx context.Context, l storage.Lease, ttl time.Duration) (storage.Lease, error) {
	if f.frozen.Load() && strings.HasPrefix(l.Name, NodeLeasePrefix) {
		select {
		case f.renewed <- struct{}{}:
		default:
		}
		return l, nil
	}
	return f.shared.Renew(ctx, l, ttl)
}

func (f *frozenLeaser) FenceWrites(name string, refused func()) {
	f.shared.(storage.WriteFencer).FenceWrites(name, refused)
}

// TestFencedWriteWakesHeartbeat: a node whose lease expired between two
// heartbeats (frozenLeaser) has its writes refused, and the first refusal
// (its own node record's, or a request's) wakes the heartbeat, which
// takes the lease again long before its next beat (--lease-ttl/5 = 1 s
// here): writes go through within 300 ms of the thaw. Its own refused
// writes do not wake it, or it would beat in a loop.
func TestFencedWriteWakesHeartbeat(t *testing.T) {
	const ttl = 5 * time.Second
	st := open(t, 1)[0]
	fl := &frozenLeaser{shared: st, renewed: make(chan struct{}, 1)}
	c, err := New(Config{Leaser: fl, Store: st, NodeID: "n", Address: "127.0.0.1:1", TTL: ttl,
		Log: slog.New(slog.NewTextHandler(tWriter{t}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	runNode(t, c)
	waitLease(t, st, NodeLeasePrefix+"n", true, 2*time.Second)
	put := func() error { return st.Put(t.Context(), "k", []byte("v")) }
	if err := put(); err != nil {
		t.Fatalf("a write while the lease is held: %v", err)
	}
	fl.frozen.Store(true)
	waitLease(t, st, NodeLeasePrefix+"n", false, 2*ttl)
	// Thaw just after a pretended beat (not one from before the expiry):
	// the next is a second away.
	select {
	case <-fl.renewed:
	default:
	}
	<-fl.renewed
	fl.frozen.Store(false)
	thawed := time.Now()
	for {
		err := put()
		if err == nil {
			break
		}
		if !errors.Is(err, storage.ErrFenced) {
			t.Fatalf("a write after the lease expired: %v", err)
		}
		if time.Since(thawed) > 300*time.Millisecond {
			t.Fatalf("writes still refused %s after the thaw (the next beat is %s away)", time.Since(thawed), ttl/5)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Refused: this test's write or the heartbeat's own node record, whose
	// refusal woke it.
	// While the lease was expired the heartbeat beat about once a second
	// (pretended renewals), its node record refused each time: a refusal
	// of its own must not wake it again at once (that looped, hundreds
	// of refusals).
	if n := st.FencedRefused(); n == 0 || n > 20 {
		t.Errorf("%d writes refused after the lease expired; want a few", n)
	}
	t.Logf("writes go through %s after the thaw; %d refused", time.Since(thawed).Round(time.Millisecond), st.FencedRefused())
}
