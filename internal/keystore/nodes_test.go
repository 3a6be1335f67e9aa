package keystore

import (
	"context"
	"errors"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/feed"
	"github.com/kmsd/kmsd/internal/storage"
)

// node is one kmsd node of a test: a manager on its own handle of the
// shared database, following its change feed, with a backing of its own
// (its logins).
type node struct {
	id string
	m  *Manager
	f  *fakeBacking
}

// cluster is the nodes of a test and which of them hold a live node lease.
type cluster struct {
	mu   sync.Mutex
	live []string
}

func (c *cluster) liveNodes(context.Context) ([]string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.live), nil
}

func (c *cluster) setLive(ids ...string) {
	c.mu.Lock()
	c.live = ids
	c.mu.Unlock()
}

// startNodes starts one node per id on one SQLite database; the first is
// the controller (its Serve runs the duty), the others never are.
func startNodes(t *testing.T, ids ...string) ([]*node, *cluster) {
	t.Helper()
	dir := t.TempDir()
	c := &cluster{live: ids}
	var nodes []*node
	for i, id := range ids {
		s, b := open(t, dir)
		f := &fakeBacking{}
		serve := func(ctx context.Context, fn func(ctx context.Context)) { <-ctx.Done() }
		if i == 0 {
			serve = func(ctx context.Context, fn func(ctx context.Context)) { fn(ctx) }
		}
		m, err := New(context.Background(), s, b, Config{Backings: map[string]Backing{TypeCloudHSM: f}, NodeID: id,
			Serve: serve, LiveNodes: c.liveNodes})
		if err != nil {
			t.Fatal(err)
		}
		fl := feed.New(s.(storage.Watcher), 10*time.Millisecond, nil, m)
		if err := fl.Poll(context.Background()); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); fl.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done; m.Close() })
		nodes = append(nodes, &node{id: id, m: m, f: f})
	}
	return nodes, c
}

// eventually polls cond for up to 10 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func (f *fakeBacking) snapshot() (secrets []string, rotations int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.secrets), f.rotations
}

// TestControllerConnects: a connect asked of a node that is not the
// controller is performed by the controller alone — one rotation, on its
// backing — and every other node then logs in with the rotated password,
// without rotating, at the new connection generation. A disconnect asked
// of a third node becomes DISCONNECTED only once every live node has
// logged out; a node whose lease expired is not waited for.
func TestControllerConnects(t *testing.T) {
	ctx := context.Background()
	nodes, c := startNodes(t, "a", "b", "c")
	a, b, cn := nodes[0], nodes[1], nodes[2]
	st := create(t, b.m, "shared", "cluster-aaaaaaaaaaa")
	eventually(t, "the store on every node", func() bool {
		_, err1 := a.m.Get(st.Account, st.Region, st.ID)
		_, err2 := cn.m.Get(st.Account, st.Region, st.ID)
		return err1 == nil && err2 == nil
	})
	if err := b.m.Connect(ctx, st.Account, st.Region, st.ID); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		eventually(t, n.id+" sees CONNECTED and is logged in", func() bool {
			got, err := n.m.Get(st.Account, st.Region, st.ID)
			return err == nil && got.State == Connected && n.m.Logins()[st.ID] == got.Gen && n.f.isConnected(st.ID)
		})
	}
	got := state(t, a.m, st.ID)
	if got.Gen != 1 {
		t.Errorf("connection generation %d after the first connect, want 1", got.Gen)
	}
	pw, err := a.m.Password(got)
	if err != nil {
		t.Fatal(err)
	}
	if _, rot := a.f.snapshot(); rot != 1 {
		t.Errorf("the controller rotated %d times, want 1", rot)
	}
	for _, n := range nodes[1:] {
		secrets, rot := n.f.snapshot()
		if rot != 0 {
			t.Errorf("node %s rotated the password %d times; only the controller may", n.id, rot)
		}
		if len(secrets) != 1 || secrets[0] != string(pw) {
			t.Errorf("node %s logged in %d times, want once with the stored password", n.id, len(secrets))
		}
	}

	// Disconnect through c while b cannot log out yet: the store stays
	// DISCONNECTING until it has.
	b.f.mu.Lock()
	hold := make(chan struct{})
	b.f.holdDisconnect = hold
	b.f.mu.Unlock()
	if err := cn.m.Disconnect(ctx, st.Account, st.Region, st.ID); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a and c logged out", func() bool { return !a.f.isConnected(st.ID) && !cn.f.isConnected(st.ID) })
	time.Sleep(300 * time.Millisecond) // several of the controller's looks at the rows
	if got := state(t, a.m, st.ID); got.State != Disconnecting {
		t.Fatalf("store %s while node b is still logged in, want DISCONNECTING", got.State)
	}
	close(hold)
	for _, n := range nodes {
		eventually(t, n.id+" sees DISCONNECTED", func() bool {
			got, err := n.m.Get(st.Account, st.Region, st.ID)
			return err == nil && got.State == Disconnected && len(n.m.Logins()) == 0
		})
	}
	if b.f.isConnected(st.ID) {
		t.Error("node b still logged in")
	}

	// Connect again; then b stops answering (its lease expires, as for a
	// killed node) and cannot log out: the disconnect does not wait for it.
	if err := b.m.Connect(ctx, st.Account, st.Region, st.ID); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		eventually(t, n.id+" logged in again", func() bool {
			got, err := n.m.Get(st.Account, st.Region, st.ID)
			return err == nil && got.State == Connected && got.Gen == 2 && n.m.Logins()[st.ID] == 2
		})
	}
	b.f.mu.Lock()
	b.f.holdDisconnect = make(chan struct{}) // never released: b is "dead"
	b.f.mu.Unlock()
	c.setLive("a", "c")
	if err := a.m.Disconnect(ctx, st.Account, st.Region, st.ID); err != nil {
		t.Fatal(err)
	}
	eventually(t, "DISCONNECTED without the dead node", func() bool { return state(t, a.m, st.ID).State == Disconnected })
}

// TestConnectWaitsForOtherLogins: a connect of a CloudHSM store does not
// rotate kmsuser's password while another live node's row says it is
// logged in (its process would be logged out from under); it fails
// USER_LOGGED_IN if that does not change.
func TestConnectWaitsForOtherLogins(t *testing.T) {
	t.Cleanup(func(d time.Duration) func() { return func() { loggedInWait = d } }(loggedInWait)) // after the managers' Close, which are cleanups too
	loggedInWait = 300 * time.Millisecond
	ctx := context.Background()
	nodes, _ := startNodes(t, "a", "b")
	a, b := nodes[0], nodes[1]
	st := create(t, a.m, "busy", "cluster-aaaaaaaaaaa")
	// b says it is logged in (a login whose logout it never recorded).
	if err := b.m.store.Update(ctx, func(tx storage.Tx) error { return putRow(ctx, tx, st.ID, "b", 7, true) }); err != nil {
		t.Fatal(err)
	}
	if err := a.m.Connect(ctx, st.Account, st.Region, st.ID); err != nil {
		t.Fatal(err)
	}
	waitState(t, a.m, st.ID, Failed, CodeUserLoggedIn)
	if _, rot := a.f.snapshot(); rot != 0 {
		t.Errorf("rotated %d times while another node was logged in", rot)
	}
}

// TestLoginWaitHoldsNoTurn: a CloudHSM store whose connect waits for
// another node to log out does not hold a connector's turn meanwhile: with
// one connector, another store connects while it waits.
func TestLoginWaitHoldsNoTurn(t *testing.T) {
	t.Cleanup(func(d time.Duration) func() { return func() { loggedInWait = d } }(loggedInWait)) // after the managers' Close, which are cleanups too
	loggedInWait = 3 * time.Second
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2)) // one connector (DefaultConnectors)
	ctx := context.Background()
	nodes, _ := startNodes(t, "a", "b")
	a, b := nodes[0], nodes[1]
	busy := create(t, a.m, "busy", "cluster-aaaaaaaaaaa")
	free := create(t, a.m, "free", "cluster-bbbbbbbbbbb")
	if err := b.m.store.Update(ctx, func(tx storage.Tx) error { return putRow(ctx, tx, busy.ID, "b", 7, true) }); err != nil {
		t.Fatal(err)
	}
	if err := a.m.Connect(ctx, busy.Account, busy.Region, busy.ID); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // busy's connect is waiting
	start := time.Now()
	if err := a.m.Connect(ctx, free.Account, free.Region, free.ID); err != nil {
		t.Fatal(err)
	}
	waitState(t, a.m, free.ID, Connected, "")
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("the free store connected after %v, behind the waiting one", d)
	}
	if st := state(t, a.m, busy.ID); st.State != Connecting {
		t.Fatalf("the waiting store is %s, want CONNECTING", st.State)
	}
	waitState(t, a.m, busy.ID, Failed, CodeUserLoggedIn)
}

// TestChangeThroughAnotherNode: a store made through one node can be
// connected, renamed and disconnected through another at once, before
// that node's change feed has brought it (it is read from the database).
func TestChangeThroughAnotherNode(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	sa, b := open(t, dir)
	sb, _ := open(t, dir)
	a := newManager(t, sa, b, &fakeBacking{})
	n := newManager(t, sb, b, &fakeBacking{}) // no change feed at all
	st := create(t, a, "made-on-a", "cluster-aaaaaaaaaaa")
	if err := n.Update(ctx, st.Account, st.Region, st.ID, Update{Name: ptr("renamed-on-b")}); err != nil {
		t.Fatalf("rename through the other node: %v", err)
	}
	if err := n.Connect(ctx, st.Account, st.Region, st.ID); err != nil {
		t.Fatalf("connect through the other node: %v", err)
	}
	waitState(t, n, st.ID, Connected, "")
	if err := n.Disconnect(ctx, st.Account, st.Region, st.ID); err != nil {
		t.Fatalf("disconnect through the other node: %v", err)
	}
	if _, err := n.getFresh(ctx, st.Account, st.Region, "cks-00000000000000000"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a store that does not exist: %v", err)
	}
}

// TestDescribeThroughAnotherNode: a store made through one node is listed
// by another at once, before that node's change feed has brought it —
// DescribeCustomKeyStores reads the database — and a store deleted
// through the first is no longer listed by the second.
func TestDescribeThroughAnotherNode(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	sa, b := open(t, dir)
	sb, _ := open(t, dir)
	a := newManager(t, sa, b, &fakeBacking{})
	n := newManager(t, sb, b, &fakeBacking{}) // no change feed at all
	first := create(t, a, "first", "cluster-aaaaaaaaaaa")
	second := create(t, a, "second", "cluster-bbbbbbbbbbb")
	if got := n.List(first.Account, first.Region); len(got) != 0 {
		t.Fatalf("the other node's cache already holds %d stores; the test needs it not to", len(got))
	}
	ids := func(sts []*Store) []string {
		var out []string
		for _, st := range sts {
			out = append(out, st.ID+"/"+st.Name+"/"+string(st.State))
		}
		return out
	}
	got, err := n.ListFresh(ctx, first.Account, first.Region)
	if err != nil {
		t.Fatal(err)
	}
	// Listed in creation order; two stores made in the same instant are
	// ordered by id (storeLess), as the list of the node that made them.
	want := ids(a.List(first.Account, first.Region))
	if both := []string{first.ID + "/first/DISCONNECTED", second.ID + "/second/DISCONNECTED"}; !slices.Equal(slices.Sorted(slices.Values(want)), slices.Sorted(slices.Values(both))) {
		t.Fatalf("the first node lists %v, want %v", want, both)
	}
	if !slices.Equal(ids(got), want) {
		t.Fatalf("ListFresh through the other node = %v, want %v (creation order, then id)", ids(got), want)
	}
	if got, err := n.ListFresh(ctx, first.Account, "eu-west-1"); err != nil || len(got) != 0 {
		t.Fatalf("ListFresh of another Region = %v, %v; want none", ids(got), err)
	}
	// What it read is cached: the data plane finds it too.
	if _, err := n.Get(first.Account, first.Region, first.ID); err != nil {
		t.Fatalf("Get after ListFresh: %v", err)
	}
	// A rename and a delete through the first node are seen at once.
	if err := a.Update(ctx, second.Account, second.Region, second.ID, Update{Name: ptr("renamed")}); err != nil {
		t.Fatal(err)
	}
	if err := a.Delete(ctx, first.Account, first.Region, first.ID, &KeyCheck{Before: func(context.Context, string) (bool, error) { return false, nil }}); err != nil {
		t.Fatal(err)
	}
	got, err = n.ListFresh(ctx, first.Account, first.Region)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{second.ID + "/renamed/DISCONNECTED"}; !slices.Equal(ids(got), want) {
		t.Fatalf("ListFresh after a rename and a delete through the other node = %v, want %v", ids(got), want)
	}
}

// TestFreshReads: DescribeCustomKeyStores (ListFresh) and the decisions of
// Connect read the store from the database, not from this node's copy,
// which its change feed (none here) may not have brought up to date: a
// node must never show a state older than one another node acknowledged,
// nor answer a Connect of a DISCONNECTING store with success because its
// copy says CONNECTED (A2 found both with three kmsd nodes).
func TestFreshReads(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	sa, b := open(t, dir)
	sb, _ := open(t, dir)
	fa := &fakeBacking{}
	a := newManager(t, sa, b, fa)
	n := newManager(t, sb, b, &fakeBacking{}) // no change feed at all
	st := create(t, a, "fresh", "cluster-aaaaaaaaaaa")
	list := func() State {
		t.Helper()
		all, err := n.ListFresh(ctx, st.Account, st.Region)
		if err != nil || len(all) != 1 {
			t.Fatalf("ListFresh: %v, %d stores", err, len(all))
		}
		return all[0].State
	}
	if got := list(); got != Disconnected {
		t.Fatalf("the other node lists %s, want %s", got, Disconnected)
	}
	if err := a.Connect(ctx, st.Account, st.Region, st.ID); err != nil {
		t.Fatal(err)
	}
	waitState(t, a, st.ID, Connected, "")
	if got := list(); got != Connected {
		t.Fatalf("after a connect acknowledged by A, the other node lists %s, want %s", got, Connected)
	}
	// A's disconnect held in its backing: the store stays DISCONNECTING.
	hold := make(chan struct{})
	defer close(hold)
	fa.mu.Lock()
	fa.holdDisconnect = hold
	fa.mu.Unlock()
	if err := a.Disconnect(ctx, st.Account, st.Region, st.ID); err != nil {
		t.Fatal(err)
	}
	if err := n.Connect(ctx, st.Account, st.Region, st.ID); !errors.Is(err, ErrInvalidState) {
		t.Fatalf("connect through the other node while DISCONNECTING: %v, want %v", err, ErrInvalidState)
	}
	if got := list(); got != Disconnecting {
		t.Fatalf("the other node lists %s, want %s", got, Disconnecting)
	}
}
