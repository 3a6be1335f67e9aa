// Package dbclock tells the database's time on a node: the clock every
// node sharing a database agrees on (storage.Clock), whatever the node's
// own clock says. Times one node writes and another compares with "now" —
// when a key's deletion or rotation falls due, when imported key material
// or an import token expires, when an HSM step or backup is due — are
// taken on it, so that nodes whose clocks are minutes apart agree on them
// (issue #16).
//
// A Clock is the node's clock plus an offset to the database's, measured
// by asking the database its time (storage.Clock.Now) and taking that
// instant as the middle of the round trip, so off by at most half of it.
// New measures once before it returns, so a node serves on a measured
// offset from its first request. Now is on the hot path (kms takes it on
// every authorization, for aws:CurrentTime) and never waits: it reads the
// offset atomically, and when the offset is older than Refresh the one
// caller that claims the measurement starts it in the background, while
// every caller, that one included, goes on with the offset it has. When
// the database cannot be asked the last offset measured is kept (none,
// that is the node's own clock, if it never answered) and the measurement
// is tried again a second later: a scheduling decision waits for no
// database.
//
// Without a database clock (nil) Now is the node's clock.
package dbclock

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/kmsd/kmsd/internal/storage"
)

// Refresh is how long a measured offset is used before it is measured
// again: clocks drift slowly, and a step of the node's clock is
// corrected within it.
const Refresh = 10 * time.Second

// retryAfter is how soon a measurement that failed is tried again.
const retryAfter = time.Second

// measureTimeout bounds a background measurement.
const measureTimeout = 5 * time.Second

// Clock estimates the database's clock from the node's. Its methods are
// safe for concurrent use.
type Clock struct {
	local  func() time.Time
	system bool // local is time.Now
	db     storage.Clock

	refresh time.Duration // Refresh; tests shorten it
	origin  time.Time     // monotonic origin of due
	offset  atomic.Int64  // database minus local, in nanoseconds
	due     atomic.Int64  // when to measure next: nanoseconds since origin
	busy    atomic.Bool   // a measurement is in flight
}

// New returns the clock of db seen from the node's clock local (time.Now
// when nil), with the offset measured once under ctx. db nil gives
// local's time.
func New(ctx context.Context, local func() time.Time, db storage.Clock) *Clock {
	c := &Clock{local: local, db: db, refresh: Refresh, origin: time.Now()}
	if local == nil {
		c.local, c.system = time.Now, true
	}
	if db != nil {
		c.measure(ctx)
	}
	return c
}

// Now returns the database's time as this node estimates it, in UTC. It
// never waits on the database (see the package doc).
func (c *Clock) Now() time.Time {
	var local time.Time
	var since time.Duration // since origin, on the monotonic clock
	if c.system {
		// One reading of the clock gives both: half the cost.
		local = time.Now()
		since = local.Sub(c.origin)
	} else {
		local, since = c.local(), time.Since(c.origin)
	}
	if c.db != nil && int64(since) >= c.due.Load() && c.busy.CompareAndSwap(false, true) {
		go func() {
			defer c.busy.Store(false)
			ctx, cancel := context.WithTimeout(context.Background(), measureTimeout)
			defer cancel()
			c.measure(ctx)
		}()
	}
	return local.Add(time.Duration(c.offset.Load())).UTC()
}

// Offset is the offset last measured: the database's clock minus the
// node's (zero before any measurement succeeded).
func (c *Clock) Offset() time.Duration { return time.Duration(c.offset.Load()) }

// measure asks the database its time and stores the offset; on failure
// it keeps the last one and tries again after retryAfter.
func (c *Clock) measure(ctx context.Context) {
	sent := c.local()
	t, err := c.db.Now(ctx)
	if err != nil {
		c.due.Store(int64(time.Since(c.origin) + retryAfter))
		return
	}
	// The database's instant is taken as the middle of the round trip.
	got := c.local()
	c.offset.Store(int64(t.Sub(sent.Add(got.Sub(sent) / 2))))
	c.due.Store(int64(time.Since(c.origin) + c.refresh))
}
