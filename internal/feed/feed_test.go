package feed

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/storage/sqlite"
)

type recorder struct {
	keys   []string
	resets int
	fail   error
}

func (r *recorder) Invalidate(_ context.Context, keys []string) error {
	if r.fail != nil {
		return r.fail
	}
	r.keys = append(r.keys, keys...)
	return nil
}

func (r *recorder) Reset(context.Context) error { r.resets++; return nil }

// TestPoll: the first poll resets and proves freshness; changes are handed
// over; a subscriber's failure keeps the batch, which comes again, and
// freshness does not advance meanwhile.
func TestPoll(t *testing.T) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "kmsd.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	r := &recorder{}
	f := New(st, time.Hour, nil, r)
	if f.Lag() < time.Hour {
		t.Errorf("lag before the first poll = %v, want unbounded", f.Lag())
	}
	before := time.Now()
	if err := f.Poll(ctx); err != nil {
		t.Fatal(err)
	}
	if r.resets != 1 || f.FreshAsOf().Before(before) {
		t.Fatalf("after the first poll: %d resets, fresh as of %v (poll began after %v)", r.resets, f.FreshAsOf(), before)
	}
	if err := st.Put(ctx, "key/a", []byte("1")); err != nil {
		t.Fatal(err)
	}
	r.fail = errors.New("database unreachable")
	fresh := f.FreshAsOf()
	if err := f.Poll(ctx); !errors.Is(err, r.fail) {
		t.Fatalf("poll with a failing subscriber: %v", err)
	}
	if !f.FreshAsOf().Equal(fresh) {
		t.Errorf("freshness advanced past a batch a subscriber did not take")
	}
	r.fail = nil
	if err := f.Poll(ctx); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(r.keys, []string{"key/a"}) {
		t.Errorf("keys handed over: %v, want [key/a]", r.keys)
	}
	if !f.FreshAsOf().After(fresh) {
		t.Errorf("freshness did not advance after the batch was taken")
	}
}

// TestPollAfterPrune: a follower whose cursor is older than what the feed
// was pruned to (a node that lagged behind, or was cut off past its
// lease) is told to drop everything (Reset) — it never resumes past the
// changes it did not see — and then follows the feed from there; Cursor
// publishes the position it reached.
func TestPollAfterPrune(t *testing.T) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "kmsd.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	r := &recorder{}
	f := New(st, time.Hour, nil, r)
	if !f.Cursor().IsZero() {
		t.Fatalf("cursor before the first poll: %+v", f.Cursor())
	}
	if err := f.Poll(ctx); err != nil {
		t.Fatal(err)
	}
	lagged := f.Cursor()
	if r.resets != 1 || lagged.IsZero() {
		t.Fatalf("after the first poll: %d resets, cursor %+v", r.resets, lagged)
	}
	// Changes the follower does not read before they are pruned.
	for _, k := range []string{"key/a", "key/b"} {
		if err := st.Put(ctx, k, []byte("1")); err != nil {
			t.Fatal(err)
		}
	}
	head, err := st.Changes(ctx, lagged, 0)
	if err != nil || len(head.Keys) != 2 {
		t.Fatalf("Changes: %+v %v", head, err)
	}
	if err := st.Prune(ctx, head.Next); err != nil {
		t.Fatal(err)
	}
	if err := f.Poll(ctx); err != nil {
		t.Fatal(err)
	}
	if r.resets != 2 || len(r.keys) != 0 {
		t.Fatalf("poll from a pruned cursor: %d resets, keys %v; want a second Reset and no keys", r.resets, r.keys)
	}
	if !lagged.Before(f.Cursor()) {
		t.Fatalf("cursor after the Reset %+v, want past %+v", f.Cursor(), lagged)
	}
	if err := st.Put(ctx, "key/c", []byte("1")); err != nil {
		t.Fatal(err)
	}
	if err := f.Poll(ctx); err != nil {
		t.Fatal(err)
	}
	if r.resets != 2 || !slices.Equal(r.keys, []string{"key/c"}) {
		t.Fatalf("after the Reset: %d resets, keys %v; want key/c only", r.resets, r.keys)
	}
}
