package postgres

import "time"

// PoolStats is a snapshot of the connection pool, for metrics.
type PoolStats struct {
	Max, Total, Acquired, Idle int32
	// Acquires counts connections taken from the pool, EmptyAcquires those
	// that had to wait for one; AcquireWait is the total time waited.
	Acquires, EmptyAcquires int64
	AcquireWait             time.Duration
}

// PoolStats returns the pool's statistics now.
func (s *Store) PoolStats() PoolStats {
	st := s.pool.Stat()
	return PoolStats{Max: st.MaxConns(), Total: st.TotalConns(), Acquired: st.AcquiredConns(), Idle: st.IdleConns(),
		Acquires: st.AcquireCount(), EmptyAcquires: st.EmptyAcquireCount(), AcquireWait: st.AcquireDuration()}
}
