package keystore

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/controller"
	"github.com/kmsd/kmsd/internal/storage"
)

// TestConnectFencedByLease: a controller whose lease another node took
// while its connect was in the backing (paused, say) has the outcome's
// write refused — the store stays CONNECTING with the rotation's intent
// recorded, for the next controller to finish — instead of recording
// CONNECTED over the new controller's work.
func TestConnectFencedByLease(t *testing.T) {
	ctx := context.Background()
	s, b := open(t, t.TempDir())
	ls := s.(storage.Leaser)
	const ttl = 300 * time.Millisecond
	l, ok, err := ls.TryAcquire(ctx, controller.LeaseName, "a", ttl)
	if err != nil || !ok {
		t.Fatalf("acquire: %v %v", ok, err)
	}
	f := &fakeBacking{block: make(chan struct{})}
	serve := func(ctx context.Context, fn func(ctx context.Context)) { fn(controller.WithLease(ctx, l)) }
	m, err := New(ctx, controller.Fence(s), b, Config{Backings: map[string]Backing{TypeCloudHSM: f}, NodeID: "a", Serve: serve})
	if err != nil {
		t.Fatal(err)
	}
	st := create(t, m, "fenced", "cluster-aaaaaaaaaaa")
	if err := m.Connect(ctx, st.Account, st.Region, st.ID); err != nil {
		t.Fatal(err)
	}
	// The intent is recorded while the lease holds.
	eventually(t, "the rotation's intent", func() bool {
		got, err := getStore(ctx, s, st.ID)
		return err == nil && len(got.Pending) == 1
	})
	// The lease expires and node b takes it; then a's backing returns.
	time.Sleep(ttl + 50*time.Millisecond)
	if _, ok, err := ls.TryAcquire(ctx, controller.LeaseName, "b", time.Minute); err != nil || !ok {
		t.Fatalf("b takes the lease: %v %v", ok, err)
	}
	close(f.block)
	m.Close()
	got, err := getStore(ctx, s, st.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != Connecting || len(got.Pending) != 1 || got.Gen != 0 {
		t.Fatalf("after the old controller's fenced connect: %s, %d pending, gen %d; want CONNECTING, the intent kept, gen 0",
			got.State, len(got.Pending), got.Gen)
	}
	if rs, err := rows(ctx, s, st.ID); err != nil || len(rs) != 0 {
		t.Fatalf("node rows %v (%v), want none", rs, err)
	}
}

// TestRotationGuardedByLease: a controller whose lease ends while its
// connect is in the backing, between the check before the rotation and the
// rotation itself (a pause during the login), changes no password: the
// backing's last check before C_SetPIN (hsm.ActGuard) refuses, and the
// store stays CONNECTING with the intent kept — not FAILED — for the next
// controller.
func TestRotationGuardedByLease(t *testing.T) {
	ctx := context.Background()
	s, b := open(t, t.TempDir())
	ls := s.(storage.Leaser)
	l, ok, err := ls.TryAcquire(ctx, controller.LeaseName, "a", time.Minute)
	if err != nil || !ok {
		t.Fatalf("acquire: %v %v", ok, err)
	}
	var ending atomic.Bool
	f := &fakeBacking{block: make(chan struct{}), guarded: true}
	serve := func(ctx context.Context, fn func(ctx context.Context)) { fn(controller.WithLease(ctx, l)) }
	actUntil := func(ctx context.Context) (time.Time, bool) {
		if ending.Load() {
			return time.Now(), true
		}
		return time.Now().Add(time.Minute), true
	}
	m, err := New(ctx, controller.Fence(s), b, Config{Backings: map[string]Backing{TypeCloudHSM: f}, NodeID: "a", Serve: serve, ActUntil: actUntil})
	if err != nil {
		t.Fatal(err)
	}
	st := create(t, m, "guarded", "cluster-aaaaaaaaaaa")
	if err := m.Connect(ctx, st.Account, st.Region, st.ID); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the rotation's intent", func() bool {
		got, err := getStore(ctx, s, st.ID)
		return err == nil && len(got.Pending) == 1
	})
	ending.Store(true)
	close(f.block)
	eventually(t, "the connect's end", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return len(f.secrets) == 1
	})
	m.Close()
	if f.rotations != 0 {
		t.Errorf("%d rotations after the lease's end, want 0", f.rotations)
	}
	got, err := getStore(ctx, s, st.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != Connecting || len(got.Pending) != 1 || got.Gen != 0 {
		t.Fatalf("after a rotation refused by the guard: %s %s, %d pending, gen %d; want CONNECTING, the intent kept, gen 0",
			got.State, got.ErrorCode, len(got.Pending), got.Gen)
	}
}
