package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/storage"
	"github.com/kmsd/kmsd/internal/storage/sqlite"
)

// open returns n handles on one SQLite database, as n nodes would share
// one PostgreSQL database.
func open(t *testing.T, n int) []*sqlite.Store {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kmsd.db")
	var out []*sqlite.Store
	for range n {
		st, err := sqlite.Open(context.Background(), path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		out = append(out, st)
	}
	return out
}

// span is one run of a duty on a node.
type span struct {
	node       string
	epoch      int64
	start, end time.Time
}

type recorder struct {
	mu      sync.Mutex
	spans   []span
	started map[string]int // duties begun, by node
}

// duty records when it ran and with which lease, until cancelled.
func (r *recorder) duty(node string) Duty {
	return func(ctx context.Context) {
		l, _ := LeaseFrom(ctx)
		s := span{node: node, epoch: l.Epoch, start: time.Now()}
		r.mu.Lock()
		if r.started == nil {
			r.started = map[string]int{}
		}
		r.started[node]++
		r.mu.Unlock()
		<-ctx.Done()
		s.end = time.Now()
		r.mu.Lock()
		r.spans = append(r.spans, s)
		r.mu.Unlock()
	}
}

type node struct {
	c      *Controller
	cancel context.CancelFunc
	done   chan struct{}
}

func start(t *testing.T, st *sqlite.Store, id string, ttl time.Duration, r *recorder) *node {
	t.Helper()
	c, err := New(Config{Leaser: st, Store: st, NodeID: id, Address: "127.0.0.1:1", TTL: ttl, Log: slog.New(slog.NewTextHandler(tWriter{t}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	c.Add("record", r.duty(id))
	return runNode(t, c)
}

// runNode runs c until it is stopped or the test ends.
func runNode(t *testing.T, c *Controller) *node {
	ctx, cancel := context.WithCancel(context.Background())
	n := &node{c: c, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(n.done)
		c.Run(ctx)
	}()
	t.Cleanup(n.stop)
	return n
}

func (n *node) stop() {
	n.cancel()
	<-n.done
}

// waitLeader waits until exactly one of nodes is the controller.
func waitLeader(t *testing.T, nodes []*node, within time.Duration) *node {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		var leaders []*node
		for _, n := range nodes {
			if n.c.IsController() {
				leaders = append(leaders, n)
			}
		}
		if len(leaders) > 1 {
			t.Fatalf("%d controllers at once", len(leaders))
		}
		if len(leaders) == 1 {
			return leaders[0]
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no controller within %s", within)
	return nil
}

// TestOneController: of three nodes one runs the duties; when it stops,
// another takes over with a higher epoch, and no two terms overlap.
func TestOneController(t *testing.T) {
	const ttl = time.Second
	sts := open(t, 3)
	r := &recorder{}
	var nodes []*node
	for i, id := range []string{"a", "b", "c"} {
		nodes = append(nodes, start(t, sts[i], id, ttl, r))
	}
	var epochs []int64
	for range 2 {
		l := waitLeader(t, nodes, 3*ttl)
		epochs = append(epochs, l.c.Epoch())
		l.stop() // released: the next takes over within an acquire retry
		var rest []*node
		for _, n := range nodes {
			if n != l {
				rest = append(rest, n)
			}
		}
		nodes = rest
	}
	last := waitLeader(t, nodes, 3*ttl)
	epochs = append(epochs, last.c.Epoch())
	last.stop()
	for i := 1; i < len(epochs); i++ {
		if epochs[i] <= epochs[i-1] {
			t.Errorf("epochs %v: not strictly increasing", epochs)
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.spans) != 3 {
		t.Fatalf("duty ran %d times, want 3 (one per term): %+v", len(r.spans), r.spans)
	}
	for i, a := range r.spans {
		for _, b := range r.spans[i+1:] {
			if a.start.Before(b.end) && b.start.Before(a.end) {
				t.Errorf("terms overlap: %+v and %+v", a, b)
			}
		}
	}
	st, err := ReadStatus(context.Background(), sts[0], sts[0])
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Nodes) != 3 || len(st.Terms) != 3 {
		t.Errorf("status: %d nodes, %d terms; want 3 and 3: %+v", len(st.Nodes), len(st.Terms), st)
	}
	if st.Current != nil {
		t.Errorf("status: controller %+v after every node stopped", st.Current)
	}
}

// TestFence: a write with a lease taken over by another holder is refused
// and changes nothing; writes without a lease pass.
func TestFence(t *testing.T) {
	ctx := context.Background()
	sts := open(t, 2)
	old, ok, err := sts[0].TryAcquire(ctx, LeaseName, "a", 50*time.Millisecond)
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	fa, fb := Fence(sts[0]), Fence(sts[1])
	if err := fa.Put(WithLease(ctx, old), "k", []byte("1")); err != nil {
		t.Fatalf("fenced write while held: %v", err)
	}
	time.Sleep(100 * time.Millisecond) // "a" paused past its lease
	cur, ok, err := sts[1].TryAcquire(ctx, LeaseName, "b", time.Minute)
	if err != nil || !ok || cur.Epoch != old.Epoch+1 {
		t.Fatalf("takeover: %+v %v %v", cur, ok, err)
	}
	for name, write := range map[string]func() error{
		"Put":    func() error { return fa.Put(WithLease(ctx, old), "k", []byte("2")) },
		"Delete": func() error { return fa.Delete(WithLease(ctx, old), "k") },
		"Create": func() error { return fa.Create(WithLease(ctx, old), "k2", []byte("2")) },
		"Update": func() error {
			return fa.Update(WithLease(ctx, old), func(tx storage.Tx) error { return tx.Put(ctx, "k", []byte("2")) })
		},
	} {
		if err := write(); !errors.Is(err, storage.ErrFenced) {
			t.Errorf("%s with the old lease: %v, want ErrFenced", name, err)
		}
	}
	if v, err := sts[1].Get(ctx, "k"); err != nil || string(v) != "1" {
		t.Errorf("k = %q, %v; want the value written before the takeover", v, err)
	}
	if _, err := sts[1].Get(ctx, "k2"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("k2: %v, want absent", err)
	}
	if err := fb.Put(WithLease(ctx, cur), "k", []byte("3")); err != nil {
		t.Errorf("write with the current lease: %v", err)
	}
	if err := fa.Put(ctx, "k", []byte("4")); err != nil {
		t.Errorf("unfenced write: %v", err)
	}
}

// TestStepDownOnLostLease: a controller whose lease is taken over (it was
// paused, or the database expired it) cancels its duties at once.
func TestStepDownOnLostLease(t *testing.T) {
	const ttl = time.Second
	sts := open(t, 2)
	r := &recorder{}
	n := start(t, sts[0], "a", ttl, r)
	waitLeader(t, []*node{n}, 3*ttl)
	// Another process expires and takes the lease behind a's back, as a
	// takeover after a pause does.
	ctx := context.Background()
	if err := sts[1].Release(ctx, storage.Lease{Name: LeaseName, Holder: "a", Epoch: n.c.Epoch()}); err != nil {
		t.Fatal(err)
	}
	l, ok, err := sts[1].TryAcquire(ctx, LeaseName, "b", time.Minute)
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	deadline := time.Now().Add(ttl)
	for n.c.IsController() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n.c.IsController() {
		t.Fatal("still controller a renewal interval after losing the lease")
	}
	time.Sleep(50 * time.Millisecond)
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.spans) != 1 || r.spans[0].epoch >= l.Epoch {
		t.Errorf("spans %+v: want one ended term before epoch %d", r.spans, l.Epoch)
	}
}

// tWriter logs to the test's log.
type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// TestLiveNodes: every node learns how many nodes are live, and the count
// drops when one stops.
func TestLiveNodes(t *testing.T) {
	sts := open(t, 3)
	var mu sync.Mutex
	seen := map[string]int{}
	var stops []func()
	for i, id := range []string{"a", "b", "c"} {
		c, err := New(Config{Leaser: sts[i], Store: sts[i], NodeID: id, TTL: 500 * time.Millisecond, Mode: Never,
			LiveNodes: func(n int) { mu.Lock(); seen[id] = n; mu.Unlock() }})
		if err != nil {
			t.Fatal(err)
		}
		stops = append(stops, runNode(t, c).stop)
	}
	wait := func(want map[string]int) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			mu.Lock()
			ok := true
			for id, n := range want {
				ok = ok && seen[id] == n
			}
			got := fmt.Sprint(seen)
			mu.Unlock()
			if ok {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("live node counts %s, want %v", got, want)
			}
		}
	}
	wait(map[string]int{"a": 3, "b": 3, "c": 3})
	if ls, err := sts[0].Live(context.Background(), LeaseName); err != nil || len(ls) != 0 {
		t.Errorf("nodes with --controller=never took the controller lease: %v %v", ls, err)
	}
	stops[2]() // released: gone at once, not after its TTL
	wait(map[string]int{"a": 2, "b": 2})
}

// TestPeersSeeDemand: every node publishes its demand in its record and
// learns the live nodes' records with theirs, so each can split a quota by
// demand; a node that stops drops out of the others' view. Every record
// says which live nodes its node counts (Node.Counts), each with the
// Heartbeat of the record whose demand it used: one its node published.
func TestPeersSeeDemand(t *testing.T) {
	sts := open(t, 3)
	var mu sync.Mutex
	seen := map[string]string{} // node -> "id=demand[counted] ..." of the records it saw, and the live count
	published := map[string]map[time.Time]bool{"a": {}, "b": {}, "c": {}}
	var bad []string
	var stops []func()
	for i, id := range []string{"a", "b", "c"} {
		c, err := New(Config{Leaser: sts[i], Store: sts[i], NodeID: id, TTL: 500 * time.Millisecond, Mode: Never,
			Demand: func(at time.Time) map[string]float64 {
				mu.Lock()
				published[id][at] = true
				mu.Unlock()
				return map[string]float64{"cks-x": float64(10 * (i + 1))}
			},
			Peers: func(nodes []Node, live int) {
				var parts []string
				mu.Lock()
				defer mu.Unlock()
				for _, n := range nodes {
					var counted []string
					for c, at := range n.Counts {
						counted = append(counted, c)
						if !at.IsZero() && !published[c][at] {
							bad = append(bad, fmt.Sprintf("%s counts %s at %s, which it never published", n.ID, c, at))
						}
					}
					sort.Strings(counted)
					parts = append(parts, fmt.Sprintf("%s=%v%v", n.ID, n.StoreDemand["cks-x"], counted))
				}
				sort.Strings(parts)
				seen[id] = fmt.Sprint(strings.Join(parts, " "), " of ", live)
			}})
		if err != nil {
			t.Fatal(err)
		}
		stops = append(stops, runNode(t, c).stop)
	}
	wait := func(want map[string]string) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			mu.Lock()
			ok := true
			for id, v := range want {
				ok = ok && seen[id] == v
			}
			got := fmt.Sprint(seen)
			mu.Unlock()
			if ok {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("peers seen %s, want %v", got, want)
			}
		}
	}
	all := "a=10[a b c] b=20[a b c] c=30[a b c] of 3"
	wait(map[string]string{"a": all, "b": all, "c": all})
	stops[2]()
	wait(map[string]string{"a": "a=10[a b] b=20[a b] of 2", "b": "a=10[a b] b=20[a b] of 2"})
	mu.Lock()
	defer mu.Unlock()
	if len(bad) > 0 {
		t.Error(strings.Join(bad, "\n"))
	}
}

// TestServe: work started by its owner with Serve runs only while the node
// is the controller, once a term, with the term's lease, and stops when
// its owner's context ends.
func TestServe(t *testing.T) {
	sts := open(t, 2)
	r := &recorder{}
	a := start(t, sts[0], "a", time.Second, &recorder{})
	b := start(t, sts[1], "b", time.Second, &recorder{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	for _, n := range []*node{a, b} {
		go func() { n.c.Serve(ctx, r.duty(n.c.NodeID())); done <- struct{}{} }()
	}
	l := waitLeader(t, []*node{a, b}, 3*time.Second)
	// Stopped only once its Serve work has begun: a term ended before
	// the work starts rightly runs nothing (it failed once in CI so).
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		r.mu.Lock()
		n := r.started[l.c.NodeID()]
		r.mu.Unlock()
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s leads but its Serve work did not start", l.c.NodeID())
		}
	}
	l.stop()
	other := a
	if l == a {
		other = b
	}
	waitLeader(t, []*node{other}, 3*time.Second)
	time.Sleep(100 * time.Millisecond)
	cancel()
	<-done
	<-done
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.spans) != 2 || r.spans[0].node != l.c.NodeID() || r.spans[1].node != other.c.NodeID() ||
		r.spans[0].epoch == 0 || r.spans[1].epoch <= r.spans[0].epoch || r.spans[1].start.Before(r.spans[0].end) {
		t.Errorf("served spans %+v: want one on %s, then one on %s with a higher epoch", r.spans, l.c.NodeID(), other.c.NodeID())
	}
}

// TestRestartedNodeToldAtOnce: a node restarted after a crash, whose old
// process's node lease has not expired, is told the live nodes at its
// first heartbeat (and the others count its id already), so it does not
// hold its custom key stores' quota until the old lease expires.
func TestRestartedNodeToldAtOnce(t *testing.T) {
	sts := open(t, 3)
	// The crashed process's node lease: live for longer than the test.
	if _, ok, err := sts[0].TryAcquire(context.Background(), NodeLeasePrefix+"a", "a-before-the-crash", time.Minute); err != nil || !ok {
		t.Fatalf("old lease: %v, %v", ok, err)
	}
	var mu sync.Mutex
	told := map[string][]Node{}
	run := func(st *sqlite.Store, id string) {
		c, err := New(Config{Leaser: st, Store: st, NodeID: id, TTL: 500 * time.Millisecond, Mode: Never,
			Peers: func(nodes []Node, live int) {
				mu.Lock()
				defer mu.Unlock()
				told[id] = nodes
			}})
		if err != nil {
			t.Fatal(err)
		}
		runNode(t, c)
	}
	run(sts[1], "b")
	run(sts[2], "a") // the restarted process
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		mu.Lock()
		var bCountsA bool
		for _, n := range told["a"] {
			if n.ID == "b" {
				_, bCountsA = n.Counts["a"]
			}
		}
		mu.Unlock()
		if bCountsA {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the restarted node was not told a live node counting it within 5 s (old lease live for a minute): %v", told["a"])
		}
	}
}

// TestFenceBatch: a storage.CreateBatch, GetBatch and PutBatch in a
// fenced Update — as the catalog's PutLastUses makes — run in the fenced
// transaction on both drivers: with the driver's own BatchCreator,
// BatchGetter and BatchPutter while the lease is held, and refused
// (nothing created or put) once another holder took the lease.
func TestFenceBatch(t *testing.T) {
	for _, d := range drivers {
		t.Run(d.name, func(t *testing.T) {
			ctx := context.Background()
			sts := d.open(t, 2)
			old, ok, err := sts[0].TryAcquire(ctx, LeaseName, "a", 300*time.Millisecond)
			if err != nil || !ok {
				t.Fatal(ok, err)
			}
			fa, fb := Fence(sts[0]), Fence(sts[1])
			batch := func(f storage.Store, l storage.Lease, keys ...string) error {
				var es []storage.Entry
				for _, k := range keys {
					es = append(es, storage.Entry{Key: k, Value: []byte(k)})
				}
				return f.Update(WithLease(ctx, l), func(tx storage.Tx) error {
					if _, ok := tx.(storage.BatchCreator); !ok {
						t.Errorf("the fenced Update's Tx (%T) does not offer storage.BatchCreator", tx)
					}
					_, err := storage.CreateBatch(ctx, tx, es)
					return err
				})
			}
			// putOver reads keys with GetBatch and puts each value with
			// "+" appended with PutBatch, in one fenced Update.
			putOver := func(f storage.Store, l storage.Lease, keys ...string) error {
				return f.Update(WithLease(ctx, l), func(tx storage.Tx) error {
					if _, ok := tx.(storage.BatchGetter); !ok {
						t.Errorf("the fenced Update's Tx (%T) does not offer storage.BatchGetter", tx)
					}
					if _, ok := tx.(storage.BatchPutter); !ok {
						t.Errorf("the fenced Update's Tx (%T) does not offer storage.BatchPutter", tx)
					}
					vs, err := storage.GetBatch(ctx, tx, keys)
					if err != nil {
						return err
					}
					es := make([]storage.Entry, len(keys))
					for i, k := range keys {
						es[i] = storage.Entry{Key: k, Value: append(vs[i], '+')}
					}
					return storage.PutBatch(ctx, tx, es)
				})
			}
			if err := batch(fa, old, "b/1", "unfed/b/1"); err != nil {
				t.Fatalf("fenced batch while held: %v", err)
			}
			if err := putOver(fa, old, "b/1", "unfed/b/1"); err != nil {
				t.Fatalf("fenced batch put while held: %v", err)
			}
			time.Sleep(400 * time.Millisecond) // "a" paused past its lease
			cur, ok, err := sts[1].TryAcquire(ctx, LeaseName, "b", time.Minute)
			if err != nil || !ok || cur.Epoch != old.Epoch+1 {
				t.Fatalf("takeover: %+v %v %v", cur, ok, err)
			}
			if err := batch(fa, old, "b/2", "unfed/b/2", "b/1"); !errors.Is(err, storage.ErrFenced) {
				t.Errorf("batch with the old lease: %v, want ErrFenced", err)
			}
			if err := putOver(fa, old, "b/1", "unfed/b/1", "b/4"); !errors.Is(err, storage.ErrFenced) {
				t.Errorf("batch put with the old lease: %v, want ErrFenced", err)
			}
			for _, k := range []string{"b/1", "unfed/b/1"} {
				if v, err := sts[1].Get(ctx, k); err != nil || string(v) != k+"+" {
					t.Errorf("%s = %q, %v; want %q, untouched by a refused batch put", k, v, err, k+"+")
				}
			}
			if _, err := sts[1].Get(ctx, "b/4"); !errors.Is(err, storage.ErrNotFound) {
				t.Errorf("b/4: %v, want absent after a refused batch put", err)
			}
			for _, k := range []string{"b/2", "unfed/b/2"} {
				if _, err := sts[1].Get(ctx, k); !errors.Is(err, storage.ErrNotFound) {
					t.Errorf("%s: %v, want absent after a refused batch", k, err)
				}
			}
			if err := batch(fb, cur, "b/2", "b/3"); err != nil {
				t.Errorf("batch with the current lease: %v", err)
			}
			if err := putOver(fb, cur, "b/1", "b/3"); err != nil {
				t.Errorf("batch put with the current lease: %v", err)
			}
			for k, want := range map[string]string{"b/1": "b/1++", "unfed/b/1": "unfed/b/1+", "b/2": "b/2", "b/3": "b/3+"} {
				if v, err := sts[0].Get(ctx, k); err != nil || string(v) != want {
					t.Errorf("%s = %q, %v; want %q, written by allowed batches", k, v, err, want)
				}
			}
		})
	}
}
