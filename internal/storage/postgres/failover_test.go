package postgres

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/kmsd/kmsd/internal/storage"
)

// TestFeedAfterPromotion: a change feed reader whose cursor was made on a
// primary and moved past a transaction that the standby never got (its
// wait for the standby was cancelled, so it became visible on the primary
// alone) must not skip changes once the standby is promoted: the new
// primary gives that transaction's xid, and the ones after it, to new
// transactions, below the reader's cursor. Changes from the old cursor
// must Reset (or deliver every new change), never skip them silently.
func TestFeedAfterPromotion(t *testing.T) {
	p := startPair(t)
	ctx := t.Context()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	// The watcher keeps its one connection, opened while the standby was
	// there: a new connection would wait for the standby (the driver's
	// connect barrier) and read nothing.
	w, err := Open(ctx, p.primaryURL, Options{MaxConns: 1, MinConns: 1, ConnectTimeout: time.Second, Log: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	s, err := Open(ctx, p.primaryURL, Options{MaxConns: 4, MinConns: 1, ConnectTimeout: time.Second, Log: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.resolveFor = time.Second
	r, err := w.Changes(ctx, storage.Cursor{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Put(ctx, "before", []byte("1")); err != nil {
		t.Fatal(err)
	}
	_, c := feedUntil(t, w, r.Next, "before")
	// A standby has no history of its own yet: it serves no feed.
	ro, err := Open(ctx, pg(t, "url", p.standby), Options{ReadOnly: true, MaxConns: 1, Log: quiet})
	if err != nil {
		t.Fatal(err)
	}
	if b, err := ro.Changes(ctx, c, 0); !errors.Is(err, errInRecovery) {
		t.Errorf("Changes on the standby = %+v, %v; want errInRecovery", b, err)
	}
	if ok, err := ro.Covers(ctx, c); ok || !errors.Is(err, errInRecovery) {
		t.Errorf("Covers on the standby = %v, %v; want errInRecovery", ok, err)
	}
	ro.Close()

	// A write visible on the primary only: its COMMIT waits for the
	// stopped standby and the wait is cancelled.
	pg(t, "stop", p.standby, "immediate")
	done := make(chan error, 1)
	go func() {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		done <- s.Put(uctx, "lost", []byte("x"))
	}()
	pid := waitSyncRep(t, p.primaryURL)
	if err := pgScanURL(t, p.primaryURL, `SELECT pg_cancel_backend(`+strconv.Itoa(pid)+`)`, new(bool)); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Put succeeded although its commit is on the primary only")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Put did not return within 20 s")
	}
	// More transactions on the primary alone (aborted ones, which do not
	// wait for the standby) move the xid horizon on, as a primary that
	// keeps serving does.
	burnXIDs(t, p.primaryURL, 10)
	// The watcher reads it: its cursor moves past the lost transactions.
	_, c = feedUntil(t, w, c, "lost")
	s.Close()
	w.Close()

	// Failover: the promoted standby never had "lost", and gives its xids
	// again.
	url := p.failover(t)
	n, err := Open(ctx, url, Options{MaxConns: 2, ConnectTimeout: time.Second, Log: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	var lost int
	if err := n.pool.QueryRow(ctx, `SELECT count(*) FROM kv WHERE key = 'lost'`).Scan(&lost); err != nil || lost != 0 {
		t.Fatalf("the promoted standby has %d rows of the lost write (%v): the fault did not happen", lost, err)
	}
	var want []string
	for i := 0; ; i++ {
		k := "after/" + strconv.Itoa(i)
		if err := n.Put(ctx, k, nil); err != nil {
			t.Fatal(err)
		}
		want = append(want, k)
		var lo, hi string
		if err := n.pool.QueryRow(ctx, `SELECT min(xid)::text, max(xid)::text FROM kv_changes WHERE key LIKE 'after/%'`).Scan(&lo, &hi); err != nil {
			t.Fatal(err)
		}
		first, _ := strconv.ParseUint(lo, 10, 64)
		last, _ := strconv.ParseUint(hi, 10, 64)
		if first > c.XID {
			t.Fatalf("the promoted standby's first new xid %d is above the watcher's cursor %+v: no xid was given again, the fault did not happen", first, c)
		}
		if last > c.XID+1 && i >= 4 {
			t.Logf("old cursor %+v; the new primary's writes have xids %d..%d", c, first, last)
			break // the new history has passed the old cursor
		}
		if i > 100 {
			t.Fatalf("after %d writes the new xids (up to %d) have not passed the cursor %+v", i+1, last, c)
		}
	}

	// No proof for the old cursor on the new history: it names the old
	// timeline.
	if ok, err := n.Covers(ctx, c); err != nil || ok {
		t.Errorf("Covers(%+v) on the promoted standby = %v, %v; want false", c, ok, err)
	}

	// The watcher, now reading the new primary, resumes from its cursor.
	var got []string
	reset := false
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		b, err := n.Changes(ctx, c, 0)
		if err != nil {
			t.Fatal(err)
		}
		if b.Reset {
			reset = true
			if !strings.Contains(b.Next.Gen, "/00000002/") {
				t.Errorf("the cursor after the Reset %+v does not name the promoted standby's timeline 2", b.Next)
			}
			break
		}
		got, c = append(got, b.Keys...), b.Next
		if len(countPrefix(got, "after/")) == len(want) || time.Now().After(deadline) {
			break
		}
	}
	if !reset && len(countPrefix(got, "after/")) != len(want) {
		t.Errorf("after the promotion the feed from the old cursor gave %v without a Reset; want a Reset or all of %v", got, want)
	}
	t.Logf("after the promotion: Reset %v, delivered %v", reset, got)
}

// burnXIDs runs n transactions that take an xid and roll back.
func burnXIDs(t *testing.T, url string, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	for range n {
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, `SELECT pg_current_xact_id()`); err != nil {
			t.Fatal(err)
		}
		if err := tx.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// feedUntil reads w from c until key was delivered (a Reset continues from
// its Next); it returns the keys and the cursor after them.
func feedUntil(t *testing.T, w storage.Watcher, c storage.Cursor, key string) ([]string, storage.Cursor) {
	t.Helper()
	var got []string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		b, err := w.Changes(t.Context(), c, 0)
		if err != nil {
			t.Fatal(err)
		}
		got, c = append(got, b.Keys...), b.Next
		for _, k := range b.Keys {
			if k == key {
				return got, c
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the feed gave %v in 10 s, not %s", got, key)
		}
	}
}

func countPrefix(keys []string, prefix string) map[string]bool {
	m := map[string]bool{}
	for _, k := range keys {
		if strings.HasPrefix(k, prefix) {
			m[k] = true
		}
	}
	return m
}

// TestFeedAfterRestart: a restart of PostgreSQL (here a crash) may have
// lost the tail of the WAL and with it transactions a reader consumed, so
// a cursor made before it is Reset; the cursor the Reset gives resumes
// without another.
func TestFeedAfterRestart(t *testing.T) {
	dir, err := os.MkdirTemp("", "kmsd-feedrestart-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		exec.Command(script(), "stop", dir, "immediate").Run()
		os.RemoveAll(dir)
	})
	url := pg(t, "start", dir)
	ctx := t.Context()
	s, err := Open(ctx, url, Options{MaxConns: 2, ConnectTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r, err := s.Changes(ctx, storage.Cursor{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Put(ctx, "a", nil); err != nil {
		t.Fatal(err)
	}
	_, c := feedUntil(t, s, r.Next, "a")
	pg(t, "restart", dir, "immediate")
	var b storage.Batch
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		// The pool's connections broke with the server: the first
		// calls may fail.
		if b, err = s.Changes(ctx, c, 0); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Changes after the restart: %v", err)
		}
	}
	if !b.Reset {
		t.Fatalf("Changes from a cursor made before the restart = %+v, want a Reset", b)
	}
	if ok, err := s.Covers(ctx, c); err != nil || ok {
		t.Errorf("Covers(%+v) after the restart = %v, %v; want false", c, ok, err)
	}
	if ok, err := s.Covers(ctx, b.Next); err != nil || !ok {
		t.Errorf("Covers(%+v), the Reset's cursor, nothing written since = %v, %v; want true", b.Next, ok, err)
	}
	if err := s.Put(ctx, "b", nil); err != nil {
		t.Fatal(err)
	}
	if ks, _ := feedUntil(t, s, b.Next, "b"); len(ks) != 1 {
		t.Errorf("after the Reset the feed gave %v, want [b]", ks)
	}
}
