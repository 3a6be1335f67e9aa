package identity

import (
	"context"
	"crypto/rand"
	"path/filepath"
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
