package identity

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/barrier"
)

// TestBootstrapConcurrent: three Stores — three kmsd processes — over one
// empty database bootstrap the administrator at once, 20 times over:
// exactly one creates it, all three return its one key pair, the database
// holds one access key, and every Store resolves it to the same user.
func TestBootstrapConcurrent(t *testing.T) {
	ctx := context.Background()
	root := make([]byte, barrier.KeySize)
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for round := 0; round < 20; round++ {
		st := sharedStore(t)
		const n = 3
		stores := make([]*Store, n)
		for i := range stores {
			stores[i] = node(t, st, root, t0)
		}
		type result struct {
			akid, secret string
			created      bool
			err          error
		}
		res := make([]result, n)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range stores {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				<-start
				r := &res[i]
				a, sec, _ := NewKeyPair(stores[i].rand)
				r.akid, r.secret, r.created, r.err = stores[i].Bootstrap(ctx, acct, "kmsd-admin", a, sec)
			}(i)
		}
		close(start)
		wg.Wait()
		creators := 0
		for i, r := range res {
			if r.err != nil {
				t.Fatalf("round %d, node %d: %v", round, i, r.err)
			}
			if r.created {
				creators++
			}
			if r.akid != res[0].akid || r.secret != res[0].secret {
				t.Fatalf("round %d: nodes disagree on the administrator's key: %s vs %s", round, r.akid, res[0].akid)
			}
		}
		if creators != 1 {
			t.Fatalf("round %d: %d nodes created the administrator, want 1", round, creators)
		}
		keys, err := st.List(ctx, prefix, "", 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(keys) != 1 || keys[0].Key != prefix+res[0].akid {
			t.Fatalf("round %d: stored access keys %v, want only %s", round, keys, res[0].akid)
		}
		var ids []string
		for i, s := range stores {
			secret, ok := s.Secret(res[0].akid)
			id, ok2 := s.Identity(res[0].akid)
			if !ok || !ok2 || secret != res[0].secret {
				t.Fatalf("round %d, node %d does not know the administrator's key", round, i)
			}
			ids = append(ids, id.Principal.UserID)
		}
		if ids[0] != ids[1] || ids[1] != ids[2] {
			t.Fatalf("round %d: the nodes give the administrator different user ids %v", round, ids)
		}
		// A restart (a Store opened later) gets the same key, not a new one.
		if akid, _, created, err := node(t, st, root, t0).Bootstrap(ctx, acct, "kmsd-admin", "AKIARESTARTED0000001", "restarted-secret"); err != nil || created || akid != res[0].akid {
			t.Fatalf("round %d: bootstrap after a restart: %s created=%v %v", round, akid, created, err)
		}
	}
}

// TestBootstrapRefuses: a database with access keys from before (no
// bootstrap record), or whose bootstrap key was deleted, gets no new
// administrator key.
func TestBootstrapRefuses(t *testing.T) {
	ctx := context.Background()
	root := make([]byte, barrier.KeySize)
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

	st := sharedStore(t)
	s := node(t, st, root, t0)
	if err := s.Put(ctx, "AKIAOLDADMIN00000001", "old-secret", Principal{Account: acct, Name: "kmsd-admin"}); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := s.Bootstrap(ctx, acct, "kmsd-admin", "AKIANEWADMIN00000001", "new-secret"); !errors.Is(err, ErrNoBootstrap) {
		t.Errorf("bootstrap over keys from before: %v, want ErrNoBootstrap", err)
	}
	if keys, _ := st.List(ctx, prefix, "", 0); len(keys) != 1 {
		t.Errorf("%d access keys stored, want the 1 from before", len(keys))
	}

	st = sharedStore(t)
	s = node(t, st, root, t0)
	akid, _, _, err := s.Bootstrap(ctx, acct, "kmsd-admin", "AKIAFIRSTADMIN000001", "first-secret")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteAccessKey(ctx, acct, "kmsd-admin", akid); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := node(t, st, root, t0).Bootstrap(ctx, acct, "kmsd-admin", "AKIASECONDADMIN00001", "second-secret"); !errors.Is(err, ErrNoBootstrap) {
		t.Errorf("bootstrap after its key was deleted: %v, want ErrNoBootstrap", err)
	}
}
