package postgres

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/storage"
	"github.com/kmsd/kmsd/internal/storage/postgres/pgtest"
)

// TestApplicationName: kmsd's sessions are "kmsd" in pg_stat_activity,
// unless the URL names them (a node id, to tell the nodes apart).
func TestApplicationName(t *testing.T) {
	url := pgtest.URL(t)
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	for _, c := range []struct{ name, url, want string }{
		{"default", url, "kmsd"},
		{"from the URL", url + sep + "application_name=kmsd-node-7", "kmsd-node-7"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := openURL(t, c.url)
			var got string
			if err := s.pool.QueryRow(t.Context(), "SHOW application_name").Scan(&got); err != nil {
				t.Fatal(err)
			}
			if got != c.want {
				t.Errorf("application_name %q, want %q", got, c.want)
			}
		})
	}
}

// TestFencedRefusedCounted: FencedRefused counts the fenced writes refused
// after a takeover, and only those.
func TestFencedRefusedCounted(t *testing.T) {
	ctx := t.Context()
	s := openURL(t, pgtest.URL(t))
	la, ok, err := s.TryAcquire(ctx, "controller", "a", 50*time.Millisecond)
	if err != nil || !ok {
		t.Fatalf("a acquires: %v %v", ok, err)
	}
	if err := s.UpdateFenced(ctx, la, func(tx storage.Tx) error { return tx.Put(ctx, "k", []byte("a")) }); err != nil {
		t.Fatalf("fenced write while held: %v", err)
	}
	time.Sleep(100 * time.Millisecond)
	if _, ok, err := s.TryAcquire(ctx, "controller", "b", time.Minute); err != nil || !ok {
		t.Fatalf("b takes over: %v %v", ok, err)
	}
	for range 2 {
		if err := s.UpdateFenced(ctx, la, func(tx storage.Tx) error { return tx.Put(ctx, "k", []byte("stale")) }); !errors.Is(err, storage.ErrFenced) {
			t.Fatalf("fenced write after the takeover: %v, want ErrFenced", err)
		}
	}
	if n := s.FencedRefused(); n != 2 {
		t.Errorf("FencedRefused = %d, want 2", n)
	}
}
