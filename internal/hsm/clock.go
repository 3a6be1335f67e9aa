package hsm

import (
	"context"
	"sync"
	"time"

	"github.com/kmsd/kmsd/internal/storage"
)

// Scheduling times — when a step or a backup falls due (record.Due,
// record.BackupDue), when a backup was created or is deleted for good —
// are written by one node and compared with "now" by another, the
// controller, which may move to a node whose clock is minutes off. So
// they are taken on the database's clock (Config.DBClock), the one every
// node agrees on: dbNow is this node's clock corrected by its offset to
// the database's, measured at most clockRefresh ago. A controller whose
// clock is minutes off then neither takes a change's backup at once (the
// marker, written by a node behind it, looking long past due) nor minutes
// late, and takes the periodic backup neither early nor late. Without a
// DBClock (a single node on its own database) dbNow is Config.Now.

// clockRefresh is how long a measured offset to the database's clock is
// used before it is measured again: clocks drift slowly, and a step of
// the system clock is corrected within it.
const clockRefresh = 10 * time.Second

// dbClock estimates the database's clock from this node's.
type dbClock struct {
	local func() time.Time
	db    storage.Clock

	mu       sync.Mutex
	offset   time.Duration // database minus local
	measured time.Time     // when, on the monotonic clock; zero: never
}

// now returns the database's time as this node estimates it. When the
// database cannot be asked, the last offset measured (none at first) is
// used: a scheduling decision waits for no database.
func (c *dbClock) now(ctx context.Context) time.Time {
	if c.db == nil {
		return c.local()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.measured.IsZero() || time.Since(c.measured) > clockRefresh {
		sent := c.local()
		t, err := c.db.Now(ctx)
		if err == nil {
			// The database's instant is taken as the middle of the round
			// trip: off by at most half of it.
			got := c.local()
			c.offset = t.Sub(sent.Add(got.Sub(sent) / 2))
			c.measured = time.Now()
		}
	}
	return c.local().Add(c.offset)
}

// dbNow is the database's time, in UTC (see dbClock).
func (s *Service) dbNow(ctx context.Context) time.Time {
	return s.clock.now(ctx).UTC()
}
