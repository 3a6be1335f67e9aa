package keystore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/feed"
	"github.com/kmsd/kmsd/internal/storage"
)

// TestTwoNodes: two managers on one database, as two kmsd nodes on one
// PostgreSQL. Names stay unique when both create or rename at once; a
// store created or renamed through one is seen by the other once its
// change feed has the change; a deleted one disappears.
func TestTwoNodes(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	sa, b := open(t, dir)
	sb, _ := open(t, dir)
	a := newManager(t, sa, b, &fakeBacking{})
	n := newManager(t, sb, b, &fakeBacking{})
	fb := feed.New(sb.(storage.Watcher), time.Hour, nil, n)
	if err := fb.Poll(ctx); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		name := fmt.Sprintf("race-%d", i)
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for j, m := range []*Manager{a, n} {
			wg.Go(func() {
				_, errs[j] = m.Create(ctx, &Store{Account: "111122223333", Region: "us-east-1", Name: name, Type: TypeCloudHSM,
					ClusterID: fmt.Sprintf("cluster-%d-%d", i, j), TrustAnchor: "anchor", ClusterCert: fmt.Sprintf("cert-%d-%d", i, j)}, "kmsPswd1")
			})
		}
		wg.Wait()
		ok := 0
		for _, err := range errs {
			if err == nil {
				ok++
			} else if !errors.Is(err, ErrNameInUse) {
				t.Errorf("Create %s: %v", name, err)
			}
		}
		if ok != 1 {
			t.Errorf("Create %s through two nodes at once: %d succeeded (%v), want 1", name, ok, errs)
		}
	}
	if err := fb.Poll(ctx); err != nil {
		t.Fatal(err)
	}
	if got := len(n.List("111122223333", "us-east-1")); got != 5 {
		t.Fatalf("B lists %d stores after its feed, want 5", got)
	}
	st := create(t, a, "renamed-later", "cluster-x")
	if err := fb.Poll(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Get(st.Account, st.Region, st.ID); err != nil {
		t.Fatalf("B does not know A's new store after its feed: %v", err)
	}
	// Renames to one new name through both nodes at once: one wins, and
	// the other node, once its feed has it, shows the winner's name.
	var wg sync.WaitGroup
	errs := make([]error, 2)
	var other string // another store than st, whatever the creation order
	for _, o := range a.List(st.Account, st.Region) {
		if o.ID != st.ID {
			other = o.ID
			break
		}
	}
	for j, m := range []*Manager{a, n} {
		id := []string{st.ID, other}[j]
		wg.Go(func() {
			name := "the-one-name"
			errs[j] = m.Update(ctx, st.Account, st.Region, id, Update{Name: &name})
		})
	}
	wg.Wait()
	if (errs[0] == nil) == (errs[1] == nil) {
		t.Errorf("concurrent renames to one name through two nodes: %v; want exactly one success", errs)
	}
	if err := a.Delete(ctx, st.Account, st.Region, st.ID, nil); err != nil {
		t.Fatal(err)
	}
	if err := fb.Poll(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Get(st.Account, st.Region, st.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("B after A deleted the store and B's feed has it: %v, want ErrNotFound", err)
	}
}
