package keystore

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/storage"
)

// gateBacking counts the connects in progress; each waits for open.
type gateBacking struct {
	mu        sync.Mutex
	open      chan struct{}
	now, most int
	rotating  int // connects in flight that rotate the password: a controller's, not a node's follow-up login
}

func (g *gateBacking) Connect(ctx context.Context, st *Store, secret, next []byte) (bool, error) {
	g.mu.Lock()
	g.now++
	g.most = max(g.most, g.now)
	if next != nil {
		g.rotating++
	}
	g.mu.Unlock()
	<-g.open
	g.mu.Lock()
	g.now--
	if next != nil {
		g.rotating--
	}
	g.mu.Unlock()
	return next != nil, nil
}

func (g *gateBacking) Disconnect(ctx context.Context, st *Store) error { return nil }

func (g *gateBacking) inFlight() (now, most int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.now, g.most
}

// TestConnectors: at most Config.Connectors stores connect at once, the
// others waiting CONNECTING for their turn, and all connect in the end; a
// connect that hangs longer than maxTurn lets the next one start.
func TestConnectors(t *testing.T) {
	ctx := context.Background()
	s, b := open(t, t.TempDir())
	g := &gateBacking{open: make(chan struct{})}
	m, err := New(ctx, s, b, Config{Backings: map[string]Backing{TypeCloudHSM: g}, Connectors: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	var ids []string
	for i := range 5 {
		st := create(t, m, fmt.Sprintf("s%d", i), fmt.Sprintf("cluster-%011d", i))
		if err := m.Connect(ctx, st.Account, st.Region, st.ID); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, st.ID)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		if now, _ := g.inFlight(); now == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("two connects never started")
		}
	}
	time.Sleep(50 * time.Millisecond) // room for a third, were it let in
	if now, most := g.inFlight(); now != 2 || most != 2 {
		t.Fatalf("%d connects at once (at most %d), want 2", now, most)
	}
	for _, id := range ids {
		if st := state(t, m, id); st.State != Connecting {
			t.Fatalf("store %s: %s while waiting, want CONNECTING", id, st.State)
		}
	}
	close(g.open)
	for _, id := range ids {
		waitState(t, m, id, Connected, "")
	}
	if _, most := g.inFlight(); most != 2 {
		t.Fatalf("at most %d connects at once, want 2", most)
	}

	// Hanging connects hold their turn for maxTurn only. The first
	// manager is closed first: on the same store it would be a second
	// node, and it would pick up the CONNECTING stores itself.
	m.Close()
	t.Cleanup(func(d time.Duration) func() { return func() { maxTurn = d } }(maxTurn)) // after the managers' Close, which are cleanups too
	maxTurn = 30 * time.Millisecond
	g2 := &gateBacking{open: make(chan struct{})}
	defer close(g2.open)
	m2, err := New(ctx, s, b, Config{Backings: map[string]Backing{TypeCloudHSM: g2}, Connectors: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m2.Close)
	for _, id := range ids[:3] {
		st := state(t, m2, id)
		if err := m2.Disconnect(ctx, st.Account, st.Region, id); err != nil {
			t.Fatal(err)
		}
		waitState(t, m2, id, Disconnected, "")
		if err := m2.Connect(ctx, st.Account, st.Region, id); err != nil {
			t.Fatal(err)
		}
	}
	// Counted are the controller's connects only: m2, a node that did
	// not make the stores' logins, also starts its own follow-up login to
	// every CONNECTED store, and those hang in g2 too (they made this test
	// fail now and then when they started before the disconnects).
	rotating := func() int {
		g2.mu.Lock()
		defer g2.mu.Unlock()
		return g2.rotating
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		if rotating() == 3 {
			break
		}
		if time.Now().After(deadline) {
			now, _ := g2.inFlight()
			t.Fatalf("%d hanging connects after 5s (%d in all), want all 3 started one maxTurn apart", rotating(), now)
		}
	}
}

// TestDefaultConnectors: with Config.Connectors zero, stores connect one
// per two CPUs at a time, at least one — half the CPUs at most are left to
// a mass connect, the rest to the requests served meanwhile.
func TestDefaultConnectors(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	for _, tc := range []struct{ procs, want int }{{1, 1}, {2, 1}, {4, 2}, {7, 3}} {
		t.Run(fmt.Sprintf("GOMAXPROCS=%d", tc.procs), func(t *testing.T) {
			runtime.GOMAXPROCS(tc.procs)
			ctx := context.Background()
			s, b := open(t, t.TempDir())
			g := &gateBacking{open: make(chan struct{})}
			m, err := New(ctx, s, b, Config{Backings: map[string]Backing{TypeCloudHSM: g}})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(m.Close)
			var ids []string
			for i := range tc.want + 2 {
				st := create(t, m, fmt.Sprintf("s%d", i), fmt.Sprintf("cluster-%011d", i))
				if err := m.Connect(ctx, st.Account, st.Region, st.ID); err != nil {
					t.Fatal(err)
				}
				ids = append(ids, st.ID)
			}
			for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
				if now, _ := g.inFlight(); now == tc.want {
					break
				}
				if time.Now().After(deadline) {
					now, _ := g.inFlight()
					t.Fatalf("%d connects started, want %d", now, tc.want)
				}
			}
			time.Sleep(50 * time.Millisecond) // room for one more, were it let in
			if now, most := g.inFlight(); now != tc.want || most != tc.want {
				t.Fatalf("%d connects at once (at most %d), want %d", now, most, tc.want)
			}
			close(g.open)
			for _, id := range ids {
				waitState(t, m, id, Connected, "")
			}
		})
	}
}

// listCounter counts the store records read by listing ("keystore/"),
// in transactions and outside them.
type listCounter struct {
	storage.Store
	n atomic.Int64
}

func (c *listCounter) count(prefix string) {
	if prefix == "keystore/" {
		c.n.Add(1)
	}
}

func (c *listCounter) List(ctx context.Context, prefix, after string, limit int) ([]storage.Entry, error) {
	c.count(prefix)
	return c.Store.List(ctx, prefix, after, limit)
}

func (c *listCounter) Update(ctx context.Context, fn func(tx storage.Tx) error) error {
	return c.Store.Update(ctx, func(tx storage.Tx) error { return fn(countingTx{tx, c}) })
}

type countingTx struct {
	storage.Tx
	c *listCounter
}

func (t countingTx) List(ctx context.Context, prefix, after string, limit int) ([]storage.Entry, error) {
	t.c.count(prefix)
	return t.Tx.List(ctx, prefix, after, limit)
}

// TestConnectReadsNoPeers: ConnectCustomKeyStore, the controller's connect
// and a disconnect write their store's record without listing the other
// store records — with 100 stores connecting at once, decoding every
// record at every write was a quarter of kmsd's CPU — while a rename,
// which the uniqueness rules concern, still reads them.
func TestConnectReadsNoPeers(t *testing.T) {
	ctx := context.Background()
	s, b := open(t, t.TempDir())
	c := &listCounter{Store: s}
	f := &fakeBacking{}
	m, err := New(ctx, c, b, Config{Backings: map[string]Backing{TypeCloudHSM: f}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	var sts []*Store
	for i := range 3 {
		sts = append(sts, create(t, m, fmt.Sprintf("s%d", i), fmt.Sprintf("cluster-%011d", i)))
	}
	st := sts[1]
	c.n.Store(0)
	if err := m.Connect(ctx, st.Account, st.Region, st.ID); err != nil {
		t.Fatal(err)
	}
	waitState(t, m, st.ID, Connected, "")
	if err := m.Disconnect(ctx, st.Account, st.Region, st.ID); err != nil {
		t.Fatal(err)
	}
	waitState(t, m, st.ID, Disconnected, "")
	m.Wait()
	if n := c.n.Load(); n != 0 {
		t.Fatalf("a connect and a disconnect listed the store records %d times, want 0", n)
	}
	name := "renamed"
	if err := m.Update(ctx, st.Account, st.Region, st.ID, Update{Name: &name}); err != nil {
		t.Fatal(err)
	}
	if c.n.Load() == 0 {
		t.Fatal("a rename did not read the other stores for the uniqueness of names")
	}
	if err := m.Update(ctx, st.Account, st.Region, st.ID, Update{Name: &sts[0].Name}); !errors.Is(err, ErrNameInUse) {
		t.Fatalf("rename to a name in use: %v, want ErrNameInUse", err)
	}
}
