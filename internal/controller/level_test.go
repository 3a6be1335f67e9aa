package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
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
	ctx, cancel := context.WithCancel(context.Background())
	g.node = &node{c: c, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(g.done)
		c.Run(ctx)
	}()
	t.Cleanup(g.stop)
	return g
}

// TestVersionGate (issue #16, MULTINODE §7.3): two nodes of data format
// level 1 run, one of them the controller; a node of level 2 raises the
// database's minimum. Within two heartbeats both old nodes are told
// (Outdated, once), the old controller has given its lease up, and the
// new node leads; no old node takes the lease afterwards, even when it is
// free; the node records carry each node's version and level. On both
// drivers.
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

			newer := startLevel(t, sts[2], "new", 2, ttl)
			time.Sleep(3 * ttl / 5) // some heartbeats at level 1: nothing changes
			if old[0].c.Outdated() || old[1].c.Outdated() || newer.c.IsController() {
				t.Fatal("the old nodes changed before the level was raised")
			}
			if min, err := RaiseMinLevel(ctx, sts[2], 2); err != nil || min != 1 {
				t.Fatalf("RaiseMinLevel(2) = %d, %v; want 1, nil", min, err)
			}
			raised := time.Now()
			// An older node's raise is refused and writes nothing.
			if min, err := RaiseMinLevel(ctx, sts[0], 1); !errors.Is(err, ErrOutdated) || min != 2 {
				t.Fatalf("RaiseMinLevel(1) after 2 = %d, %v; want 2, ErrOutdated", min, err)
			}
			if min, err := MinLevel(ctx, sts[1]); err != nil || min != 2 {
				t.Fatalf("MinLevel = %d, %v; want 2", min, err)
			}

			for !newer.c.IsController() {
				if old[0].c.IsController() && old[1].c.IsController() {
					t.Fatal("two controllers at once")
				}
				if time.Since(raised) > 3*ttl {
					t.Fatalf("the new node does not lead %s after the raise", 3*ttl)
				}
				time.Sleep(10 * time.Millisecond)
			}
			l := newer.node
			if took := time.Since(raised); took > 2*ttl {
				t.Errorf("the new node led %s after the raise, want within 2 heartbeats and a retry", took)
			}
			if l.c.Epoch() <= epoch {
				t.Errorf("new epoch %d, old %d", l.c.Epoch(), epoch)
			}
			for _, o := range old {
				if !o.c.Outdated() || o.outdated.Load() != 2 || o.calls.Load() != 1 {
					t.Errorf("%s: Outdated()=%v, told %d (%d calls); want true, 2, 1 call",
						o.c.NodeID(), o.c.Outdated(), o.outdated.Load(), o.calls.Load())
				}
			}
			if first.c.IsController() {
				t.Error("the old controller still holds the lease")
			}
			if newer.c.Outdated() || newer.calls.Load() != 0 {
				t.Error("the new node was told it is outdated")
			}

			// The lease free again: still no old node takes it.
			newer.stop()
			deadline := time.Now().Add(3 * ttl / 2)
			for time.Now().Before(deadline) {
				for _, o := range old {
					if o.c.IsController() {
						t.Fatalf("%s (level 1) took the controller lease of a level-2 database", o.c.NodeID())
					}
				}
				time.Sleep(20 * time.Millisecond)
			}
			st, err := ReadStatus(ctx, sts[0], sts[0])
			if err != nil {
				t.Fatal(err)
			}
			if st.Current != nil {
				t.Errorf("controller %+v; want none", st.Current)
			}
			if st.MinDataLevel != 2 {
				t.Errorf("status minDataLevel %d, want 2", st.MinDataLevel)
			}
			levels := map[string]string{}
			for _, n := range st.Nodes {
				levels[n.ID] = fmt.Sprintf("%s/%d", n.Version, n.DataLevel)
			}
			want := map[string]string{"old-a": "v-old-a/1", "old-b": "v-old-b/1", "new": "v-new/2"}
			for id, w := range want {
				if levels[id] != w {
					t.Errorf("node %s record: version/level %q, want %q", id, levels[id], w)
				}
			}
			// The old nodes still heartbeat (their server shuts them down).
			live := 0
			for _, n := range st.Nodes {
				if n.Live {
					live++
				}
			}
			if live != 2 {
				t.Errorf("%d live nodes, want the 2 old ones", live)
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
