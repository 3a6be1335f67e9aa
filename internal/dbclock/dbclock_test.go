package dbclock

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeDB is a database clock running skew ahead of the machine's; while
// down it answers errors, and while gate is set each call waits for it.
type fakeDB struct {
	skew     time.Duration
	down     atomic.Bool
	calls    atomic.Int32
	inFlight atomic.Int32
	maxIn    atomic.Int32
	gate     chan struct{}
}

func (f *fakeDB) Now(ctx context.Context) (time.Time, error) {
	f.calls.Add(1)
	n := f.inFlight.Add(1)
	defer f.inFlight.Add(-1)
	for m := f.maxIn.Load(); n > m && !f.maxIn.CompareAndSwap(m, n); m = f.maxIn.Load() {
	}
	if f.gate != nil {
		select {
		case <-f.gate:
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		}
	}
	if f.down.Load() {
		return time.Time{}, errors.New("database unreachable")
	}
	return time.Now().Add(f.skew), nil
}

// near fails t unless got is within a second of want.
func near(t *testing.T, what string, got, want time.Time) {
	t.Helper()
	if d := got.Sub(want); d < -time.Second || d > time.Second {
		t.Fatalf("%s = %v, want %v (off by %v)", what, got, want, d)
	}
}

// waitFor polls cond until it holds, failing t after 10 seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
	}
}

func TestNow(t *testing.T) {
	const skew = 3 * time.Minute
	for _, tc := range []struct {
		name  string
		local time.Duration // the node's clock minus the machine's
	}{
		{"NodeBehind", -skew},
		{"NodeAhead", skew},
		{"NodeRight", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db := &fakeDB{skew: time.Minute}
			c := New(t.Context(), func() time.Time { return time.Now().Add(tc.local) }, db)
			near(t, "Now", c.Now(), time.Now().Add(db.skew))
			if got := c.Now().Location(); got != time.UTC {
				t.Errorf("Now's location is %v, want UTC", got)
			}
		})
	}
	t.Run("NoDatabase", func(t *testing.T) {
		c := New(t.Context(), func() time.Time { return time.Now().Add(skew) }, nil)
		near(t, "Now", c.Now(), time.Now().Add(skew))
	})
}

// TestUnreachable: a database that cannot be asked leaves the last
// offset in use (none at first), and a measurement is tried again once
// it is due.
func TestUnreachable(t *testing.T) {
	const skew = 3 * time.Minute
	local := func() time.Time { return time.Now().Add(-skew) }
	t.Run("AtStart", func(t *testing.T) {
		db := &fakeDB{}
		db.down.Store(true)
		c := New(t.Context(), local, db)
		near(t, "Now with the database down from the start", c.Now(), local())
		db.down.Store(false)
		// Retried retryAfter after the failure, by a later call of Now.
		waitFor(t, "the offset is measured", func() bool { c.Now(); return c.Offset() > skew-time.Second })
		near(t, "Now once the database answers", c.Now(), time.Now())
	})
	t.Run("Later", func(t *testing.T) {
		db := &fakeDB{}
		c := New(t.Context(), local, db)
		c.refresh = 0 // every call of Now finds the offset due
		c.due.Store(0)
		db.down.Store(true)
		calls := db.calls.Load()
		waitFor(t, "a measurement was tried", func() bool { c.Now(); return db.calls.Load() > calls })
		waitFor(t, "the measurement finished", func() bool { return !c.busy.Load() })
		near(t, "Now with the database down", c.Now(), time.Now())
	})
}

// TestNowNeverWaits: while a measurement hangs, Now answers at once with
// the offset it has, and only one measurement is in flight however many
// callers find the offset due.
func TestNowNeverWaits(t *testing.T) {
	db := &fakeDB{skew: time.Minute}
	c := New(t.Context(), nil, db)
	db.gate = make(chan struct{}) // from now on the database hangs
	c.refresh = 0
	c.due.Store(0)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				if d := c.Now().Sub(time.Now().Add(db.skew)); d < -time.Second || d > time.Second {
					t.Errorf("Now during a measurement is off the database's clock by %v", d)
					return
				}
			}
		}()
	}
	wg.Wait() // every call returned with the database still hanging
	// The measurement one of them started may not have reached the
	// database yet.
	waitFor(t, "the measurement reached the database", func() bool { return db.inFlight.Load() > 0 })
	if db.inFlight.Load() != 1 || db.maxIn.Load() != 1 {
		t.Fatalf("measurements in flight: %d now, %d at most; want 1", db.inFlight.Load(), db.maxIn.Load())
	}
	close(db.gate)
	waitFor(t, "the measurement finished", func() bool { return !c.busy.Load() })
}

// BenchmarkNow is the cost kms pays on every request.
func BenchmarkNow(b *testing.B) {
	c := New(b.Context(), nil, &fakeDB{})
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			c.Now()
		}
	})
}

// BenchmarkNowSerial is one caller's cost of Now, beside time.Now's.
func BenchmarkNowSerial(b *testing.B) {
	c := New(b.Context(), nil, &fakeDB{})
	b.Run("dbclock", func(b *testing.B) {
		for b.Loop() {
			c.Now()
		}
	})
	b.Run("time.Now", func(b *testing.B) {
		for b.Loop() {
			time.Now().UTC()
		}
	})
}
