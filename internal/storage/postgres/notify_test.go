package postgres

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/storage"
	"github.com/kmsd/kmsd/internal/storage/postgres/pgtest"
)

// openNotify opens the database at url with change notices on.
func openNotify(t *testing.T, url string) *Store {
	t.Helper()
	s, err := Open(t.Context(), url, Options{MaxConns: 4, Notify: true})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// waitListening waits until s's listening connection is up.
func waitListening(t *testing.T, s *Store) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !s.Listening(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the listening connection is not up after 10s")
		}
	}
}

// notice returns the next notice of s, failing after 5s.
func notice(t *testing.T, s *Store) uint64 {
	t.Helper()
	select {
	case x := <-s.Notices():
		return x
	case <-time.After(5 * time.Second):
		t.Fatal("no change notice within 5s")
		return 0
	}
}

// quiet checks that s gets no notice within d.
func quiet(t *testing.T, s *Store, d time.Duration, what string) {
	t.Helper()
	select {
	case x := <-s.Notices():
		t.Errorf("%s: notice %d, want none", what, x)
	case <-time.After(d):
	}
}

// TestNotices: a commit that changes a key in the feed is announced to the
// other Stores of the database (not to its writer), with a transaction
// position that the feed has passed once it delivers the change; a write
// of an unfed key announces nothing; notices keep coming after idle
// periods and after the listening connection is killed.
func TestNotices(t *testing.T) {
	defer func(d time.Duration) { listenIdle = d }(listenIdle)
	listenIdle = 100 * time.Millisecond // several idle checks below
	ctx := t.Context()
	u := pgtest.URL(t)
	a, b := openNotify(t, u), openNotify(t, u)
	waitListening(t, a)
	waitListening(t, b)
	head, err := b.Changes(ctx, storage.Cursor{}, 0) // B's position before the write
	if err != nil {
		t.Fatal(err)
	}

	// New records are announced to nobody: nothing can have cached them.
	if err := a.Put(ctx, "key/noticed", []byte("1")); err != nil {
		t.Fatal(err)
	}
	if err := a.Create(ctx, "key/created", []byte("1")); err != nil {
		t.Fatal(err)
	}
	quiet(t, b, 300*time.Millisecond, "records made")
	if err := a.Put(ctx, "key/noticed", []byte("2")); err != nil {
		t.Fatal(err)
	}
	x := notice(t, b)
	quiet(t, a, 300*time.Millisecond, "the writer's own commit")
	// The feed delivers the change by the time its cursor is past x: the
	// notice names the writing transaction.
	var keys []string
	for next, deadline := head.Next, time.Now().Add(5*time.Second); next.XID <= x; {
		if time.Now().After(deadline) {
			t.Fatalf("the feed's cursor %d did not pass the notice's %d in 5s", next.XID, x)
		}
		bt, err := b.Changes(ctx, next, 0)
		if err != nil {
			t.Fatal(err)
		}
		keys, next = append(keys, bt.Keys...), bt.Next
	}
	if !slices.Equal(keys, []string{"key/noticed", "key/created", "key/noticed"}) {
		t.Errorf("changes delivered up to the notice's transaction %d: %v, want the three writes", x, keys)
	}

	for range 2 { // made, then replaced
		if err := a.Put(ctx, storage.UnfedPrefix+"lastuse/x", []byte("1")); err != nil {
			t.Fatal(err)
		}
	}
	quiet(t, b, 300*time.Millisecond, "writes of an unfed key")

	// A batch that replaces a record is announced.
	var last uint64 = x
	if err := a.Update(ctx, func(tx storage.Tx) error {
		return storage.PutBatch(ctx, tx, []storage.Entry{{Key: "key/batch", Value: []byte("1")}, {Key: "key/created", Value: []byte("2")}})
	}); err != nil {
		t.Fatal(err)
	}
	if y := notice(t, b); y <= last {
		t.Errorf("notice of a batch %d, want above the last %d", y, last)
	} else {
		last = y
	}

	// Idle for several listenIdle periods (each checked with a ping): the
	// connection still delivers.
	time.Sleep(5 * listenIdle)
	if err := a.Update(ctx, func(tx storage.Tx) error {
		if err := tx.Put(ctx, storage.UnfedPrefix+"lastuse/y", []byte("1")); err != nil {
			return err
		}
		return tx.Delete(ctx, "key/noticed")
	}); err != nil {
		t.Fatal(err)
	}
	if y := notice(t, b); y <= last {
		t.Errorf("notice of a delete %d, want above the last %d", y, last)
	}

	// B's listening connection killed: B opens it again (after
	// listenBackoff) and notices come again; meanwhile nothing breaks.
	var killed int
	if err := a.pool.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE datname = current_database() AND application_name LIKE '%'||$1`, listenerName).Scan(&killed); err != nil {
		t.Fatal(err)
	}
	if killed != 2 {
		t.Fatalf("terminated %d listening sessions, want 2 (A's and B's)", killed)
	}
	for deadline := time.Now().Add(10 * time.Second); b.Listening(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("B's listener did not notice its connection was killed")
		}
	}
	waitListening(t, b)
	if err := a.Delete(ctx, "key/batch"); err != nil {
		t.Fatal(err)
	}
	notice(t, b)
}

// TestNoticesOff: without Options.Notify, Notices never receives and no
// listening connection is opened.
func TestNoticesOff(t *testing.T) {
	ctx := t.Context()
	u := pgtest.URL(t)
	a, b := openURL(t, u), openNotify(t, u)
	waitListening(t, b)
	if a.Notices() != nil || a.Listening() {
		t.Fatal("a Store without Notify has a notice channel or a listening connection")
	}
	// A does not announce: B hears nothing of A's commit.
	for range 2 {
		if err := a.Put(ctx, "key/silent", []byte("1")); err != nil {
			t.Fatal(err)
		}
	}
	quiet(t, b, 300*time.Millisecond, "a commit of a Store without Notify")
	var n int
	if err := a.pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND application_name LIKE '%'||$1`, listenerName).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Errorf("%d listening sessions, want 1 (B's)", n)
	}
}
