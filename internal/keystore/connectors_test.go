package keystore

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// gateBacking counts the connects in progress; each waits for open.
type gateBacking struct {
	mu        sync.Mutex
	open      chan struct{}
	now, most int
}

func (g *gateBacking) Connect(ctx context.Context, st *Store, secret, next []byte) (bool, error) {
	g.mu.Lock()
	g.now++
	g.most = max(g.most, g.now)
	g.mu.Unlock()
	<-g.open
	g.mu.Lock()
	g.now--
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
	defer func(d time.Duration) { maxTurn = d }(maxTurn)
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
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		if now, _ := g2.inFlight(); now == 3 {
			break
		}
		if time.Now().After(deadline) {
			now, _ := g2.inFlight()
			t.Fatalf("%d hanging connects after 5s, want all 3 started one maxTurn apart", now)
		}
	}
}
