package server

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/storage"
	"github.com/kmsd/kmsd/internal/storage/sqlite"
)

// TestPruneChanges: the change feed is pruned once its changes are older
// than the retention, so the table does not grow without bound, and a
// reader at a recent cursor is not reset.
func TestPruneChanges(t *testing.T) {
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "kmsd.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx, cancel := context.WithCancel(t.Context())
	old, err := st.Changes(ctx, storage.Cursor{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		if err := st.Put(ctx, "k/"+string(rune('a'+i)), nil); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan struct{})
	go func() {
		pruneChanges(ctx, st, 20*time.Millisecond, 100*time.Millisecond, slog.New(slog.NewTextHandler(io.Discard, nil)))
		close(done)
	}()
	stopped := false
	defer func() {
		if !stopped {
			cancel()
			<-done
		}
	}()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		b, err := st.Changes(ctx, old.Next, 0)
		if err != nil {
			t.Fatal(err)
		}
		if b.Reset {
			break // the 20 changes were pruned
		}
		if time.Now().After(deadline) {
			t.Fatalf("changes not pruned after 10s: %d still readable", len(b.Keys))
		}
	}
	cancel()
	<-done
	stopped = true
	ctx = t.Context()
	head, err := st.Changes(ctx, storage.Cursor{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Put(ctx, "k/new", nil); err != nil {
		t.Fatal(err)
	}
	if b, err := st.Changes(ctx, head.Next, 0); err != nil || b.Reset || len(b.Keys) != 1 {
		t.Fatalf("Changes from a fresh cursor = %+v, %v; want k/new without a Reset", b, err)
	}
}
