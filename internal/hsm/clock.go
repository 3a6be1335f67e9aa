package hsm

import "time"

// Scheduling times — when a step or a backup falls due (record.Due,
// record.BackupDue), when a backup was created or is deleted for good —
// are written by one node and compared with "now" by another, the
// controller, which may move to a node whose clock is minutes off. So
// they are taken on the database's clock (package dbclock: Config.Clock,
// the one kmsd shares with kms, or one made from Config.DBClock), the one
// every node agrees on. A controller whose clock is minutes off then
// neither takes a change's backup at once (the marker, written by a node
// behind it, looking long past due) nor minutes late, and takes the
// periodic backup neither early nor late. Without either (a single node
// on its own database) dbNow is Config.Now.

// dbNow is the database's time, in UTC, as this node estimates it; it
// never waits on the database (package dbclock).
func (s *Service) dbNow() time.Time {
	return s.clock.Now()
}
