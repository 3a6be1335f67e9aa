package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/kmsd/kmsd/internal/storage"
)

// TryAcquire implements storage.Leaser in one statement: insert the lease,
// or take the row over only if it expired by the database's clock (or is
// already ours), bumping the epoch unless it is ours and live. A fenced
// transaction holding the row FOR SHARE makes it wait until that ends.
func (s *Store) TryAcquire(ctx context.Context, name, holder string, ttl time.Duration) (storage.Lease, bool, error) {
	if s.closed.Load() {
		return storage.Lease{}, false, errClosed
	}
	if err := checkLease(name, holder, ttl); err != nil {
		return storage.Lease{}, false, err
	}
	sent := time.Now()
	var epoch int64
	var expires time.Time
	err := s.pool.QueryRow(ctx, `INSERT INTO kmsd_leases AS l (name, holder, epoch, expires_at)
VALUES ($1, $2, 1, clock_timestamp() + $3 * interval '1 millisecond')
ON CONFLICT (name) DO UPDATE SET
	holder = excluded.holder,
	epoch = CASE WHEN l.holder = excluded.holder AND l.expires_at > clock_timestamp() THEN l.epoch ELSE l.epoch + 1 END,
	expires_at = clock_timestamp() + $3 * interval '1 millisecond'
WHERE l.expires_at <= clock_timestamp() OR l.holder = excluded.holder
RETURNING epoch, expires_at`, name, holder, ttl.Milliseconds()).Scan(&epoch, &expires)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return storage.Lease{}, false, nil
	case err != nil:
		return storage.Lease{}, false, fmt.Errorf("postgres: acquire lease: %w", err)
	}
	s.fence.Held(name, expires)
	return storage.Lease{Name: name, Holder: holder, Epoch: epoch, Deadline: sent.Add(ttl)}, true, nil
}

// Renew implements storage.Leaser.
func (s *Store) Renew(ctx context.Context, l storage.Lease, ttl time.Duration) (storage.Lease, error) {
	if s.closed.Load() {
		return storage.Lease{}, errClosed
	}
	if err := checkLease(l.Name, l.Holder, ttl); err != nil {
		return storage.Lease{}, err
	}
	sent := time.Now()
	var expires time.Time
	err := s.pool.QueryRow(ctx, `UPDATE kmsd_leases SET expires_at = clock_timestamp() + $4 * interval '1 millisecond'
WHERE name = $1 AND holder = $2 AND epoch = $3 AND expires_at > clock_timestamp() RETURNING expires_at`,
		l.Name, l.Holder, l.Epoch, ttl.Milliseconds()).Scan(&expires)
	if errors.Is(err, pgx.ErrNoRows) {
		return storage.Lease{}, storage.ErrLeaseLost
	}
	if err != nil {
		return storage.Lease{}, fmt.Errorf("postgres: renew lease: %w", err)
	}
	s.fence.Held(l.Name, expires)
	l.Deadline = sent.Add(ttl)
	return l, nil
}

// Release implements storage.Leaser; the row stays so the epoch grows on.
func (s *Store) Release(ctx context.Context, l storage.Lease) error {
	if s.closed.Load() {
		return errClosed
	}
	if _, err := s.pool.Exec(ctx, `UPDATE kmsd_leases SET expires_at = '-infinity'
WHERE name = $1 AND holder = $2 AND epoch = $3`, l.Name, l.Holder, l.Epoch); err != nil {
		return fmt.Errorf("postgres: release lease: %w", err)
	}
	return nil
}

// Live implements storage.Leaser.
func (s *Store) Live(ctx context.Context, prefix string) ([]storage.Lease, error) {
	if s.closed.Load() {
		return nil, errClosed
	}
	if err := storage.ValidateLeaseName(prefix); err != nil {
		return nil, err
	}
	args := []any{prefix}
	q := `SELECT name, holder, epoch, (extract(epoch FROM expires_at - clock_timestamp()) * 1000)::bigint
FROM kmsd_leases WHERE name >= $1 AND expires_at > clock_timestamp()`
	if end, ok := storage.PrefixEnd(prefix); ok {
		args = append(args, end)
		q += ` AND name < $2`
	}
	start := time.Now()
	rows, err := s.pool.Query(ctx, q+` ORDER BY name`, args...)
	if err != nil {
		return nil, fmt.Errorf("postgres: live leases: %w", err)
	}
	defer rows.Close()
	var ls []storage.Lease
	for rows.Next() {
		var l storage.Lease
		var left int64
		if err := rows.Scan(&l.Name, &l.Holder, &l.Epoch, &left); err != nil {
			return nil, fmt.Errorf("postgres: live leases: %w", err)
		}
		l.Deadline = start.Add(time.Duration(left) * time.Millisecond)
		ls = append(ls, l)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("postgres: live leases: %w", err)
	}
	return ls, nil
}

// UpdateFenced implements storage.Leaser (Temporal's pattern): the
// transaction first locks the lease row FOR SHARE, and only if it is still
// ours at that epoch and unexpired. The lock holds off a takeover (an
// UPDATE of the row) until the transaction ends; a takeover that committed
// after this transaction's snapshot makes the lock fail with a
// serialization error, and the re-run then finds the new epoch.
func (s *Store) UpdateFenced(ctx context.Context, l storage.Lease, fn func(storage.Tx) error) error {
	err := s.update(ctx, func(tx pgx.Tx) error {
		var one int
		err := tx.QueryRow(ctx, `SELECT 1 FROM kmsd_leases
WHERE name = $1 AND holder = $2 AND epoch = $3 AND expires_at > clock_timestamp() FOR SHARE`, l.Name, l.Holder, l.Epoch).Scan(&one)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			return fmt.Errorf("%w: %s epoch %d", storage.ErrFenced, l.Name, l.Epoch)
		case err != nil:
			return fmt.Errorf("postgres: fence: %w", err)
		}
		return nil
	}, fn)
	if errors.Is(err, storage.ErrFenced) {
		s.fencedRefused.Add(1)
	}
	return err
}

// FencedRefused counts the UpdateFenced calls refused because the lease
// was no longer held at their epoch (a paused or cut-off former holder),
// and the writes whose COMMIT the FenceWrites check refused.
func (s *Store) FencedRefused() int64 { return s.fencedRefused.Load() }

// checkLease validates the arguments common to the lease methods.
func checkLease(name, holder string, ttl time.Duration) error {
	if name == "" || holder == "" {
		return fmt.Errorf("%w: lease name and holder must not be empty", storage.ErrInvalidKey)
	}
	if err := storage.ValidateLeaseName(name); err != nil {
		return err
	}
	if err := storage.ValidateLeaseName(holder); err != nil {
		return err
	}
	if ttl < time.Millisecond {
		return fmt.Errorf("storage: lease ttl %s is shorter than 1ms", ttl)
	}
	return nil
}

// Now implements storage.Clock: the server's clock_timestamp(), the clock
// leases expire by.
func (s *Store) Now(ctx context.Context) (time.Time, error) {
	var t time.Time
	if err := s.pool.QueryRow(ctx, `SELECT clock_timestamp()`).Scan(&t); err != nil {
		return time.Time{}, fmt.Errorf("postgres: now: %w", err)
	}
	return t, nil
}

// FenceWrites implements storage.WriteFencer; call it once, before the
// lease is first taken. A writing transaction's commit marker (once) also
// carries the lease's last known expiry (kmsd_commits.fence, as
// expires_at was read back: exact to the microsecond), and the deferred
// constraint trigger kmsd_commit_fence (schema version 5) compares it
// with clock_timestamp() inside COMMIT, on the server, raising
// errFenceCode past it; the transaction is then rolled back. No pause of
// this process between its last statement and COMMIT can slip a write
// past the expiry.
func (s *Store) FenceWrites(name string, refused func()) { s.fence.Set(name, refused) }

// errFenceCode is the SQLSTATE kmsd_commit_fence raises.
const errFenceCode = "KMF01"
