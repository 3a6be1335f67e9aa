package sqlite

import (
	"errors"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/storage"
)

// TestFencedRefusedCounted: FencedRefused counts the fenced writes refused
// after a takeover, and only those.
func TestFencedRefusedCounted(t *testing.T) {
	ctx := t.Context()
	s := openAt(t, t.TempDir())
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
