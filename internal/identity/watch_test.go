package identity

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/barrier"
	"github.com/kmsd/kmsd/internal/feed"
	"github.com/kmsd/kmsd/internal/storage/sqlite"
)

// TestFollowsOtherNode: two stores on one database, as two kmsd nodes on
// one PostgreSQL: once B's change feed has A's changes, an access key made
// through A verifies on B, a policy put through A applies on B, and a key
// deleted through A no longer verifies on B.
func TestFollowsOtherNode(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	root := make([]byte, 32)
	rand.Read(root)
	open := func() (*Store, *feed.Follower) {
		st, err := sqlite.Open(ctx, filepath.Join(dir, "kmsd.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		b, err := barrier.New(root)
		if err != nil {
			t.Fatal(err)
		}
		s, err := Open(ctx, st, b)
		if err != nil {
			t.Fatal(err)
		}
		f := feed.New(st, time.Hour, nil, s)
		if err := f.Poll(ctx); err != nil {
			t.Fatal(err)
		}
		return s, f
	}
	a, _ := open()
	b, fb := open()
	if _, err := a.CreateUser(ctx, "111122223333", "alice", "/"); err != nil {
		t.Fatal(err)
	}
	ak, secret, err := a.CreateAccessKey(ctx, "111122223333", "alice")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := b.Secret(ak.ID); ok {
		t.Fatalf("B knows the key before its feed has it: the test proves nothing")
	}
	if err := fb.Poll(ctx); err != nil {
		t.Fatal(err)
	}
	if got, ok := b.Secret(ak.ID); !ok || got != secret {
		t.Fatalf("B after its feed: secret known %v, equal %v", ok, got == secret)
	}
	const doc = `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:Encrypt","Resource":"*"}]}`
	if err := a.PutUserPolicy(ctx, "111122223333", "alice", "p", doc); err != nil {
		t.Fatal(err)
	}
	if err := fb.Poll(ctx); err != nil {
		t.Fatal(err)
	}
	if id, ok := b.Identity(ak.ID); !ok || len(id.Policies) != 1 {
		t.Errorf("B after A's PutUserPolicy: identity %v (%v), want one policy", id, ok)
	}
	if err := a.DeleteAccessKey(ctx, "111122223333", "alice", ak.ID); err != nil {
		t.Fatal(err)
	}
	if err := fb.Poll(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := b.Identity(ak.ID); ok {
		t.Errorf("an access key deleted through A still verifies on B after B's feed has the change")
	}
	// A Reset reloads the same state.
	if err := b.Reset(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := b.GetUser("111122223333", "alice"); err != nil {
		t.Errorf("alice after B's Reset: %v", err)
	}
	if _, ok := b.Identity(ak.ID); ok {
		t.Errorf("the deleted key is back after B's Reset")
	}
}

// TestConcurrentIAMWrites: policies put on one user through two nodes at
// once are all kept, and a user name created through both at once is
// created once.
func TestConcurrentIAMWrites(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	root := make([]byte, 32)
	rand.Read(root)
	var stores []*Store
	for range 2 {
		st, err := sqlite.Open(ctx, filepath.Join(dir, "kmsd.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		b, err := barrier.New(root)
		if err != nil {
			t.Fatal(err)
		}
		s, err := Open(ctx, st, b)
		if err != nil {
			t.Fatal(err)
		}
		stores = append(stores, s)
	}
	if _, err := stores[0].CreateUser(ctx, "111122223333", "bob", "/"); err != nil {
		t.Fatal(err)
	}
	// B learns of bob at start, as a node does through its feed.
	if err := stores[1].Reset(ctx); err != nil {
		t.Fatal(err)
	}
	const doc = `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:Encrypt","Resource":"*"}]}`
	var wg sync.WaitGroup
	for i := range 10 {
		s := stores[i%2]
		wg.Go(func() {
			if err := s.PutUserPolicy(ctx, "111122223333", "bob", fmt.Sprintf("p%d", i), doc); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if err := stores[1].Reset(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := stores[1].ListUserPolicies("111122223333", "bob"); len(got) != 10 {
		t.Errorf("%d policies after 10 concurrent PutUserPolicy through two nodes: %v", len(got), got)
	}
	errs := make([]error, 2)
	for j, s := range stores {
		wg.Go(func() { _, errs[j] = s.CreateUser(ctx, "111122223333", []string{"Carol", "carol"}[j], "/") })
	}
	wg.Wait()
	if (errs[0] == nil) == (errs[1] == nil) || !errors.Is(errors.Join(errs...), ErrExists) {
		t.Errorf("CreateUser Carol/carol through two nodes at once: %v; want one EntityAlreadyExists", errs)
	}
}
