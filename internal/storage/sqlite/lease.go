package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/kmsd/kmsd/internal/storage"
)

// sqlNow is the database's clock in Unix milliseconds. For SQLite the
// database's clock is the clock of the one machine whose disk holds it.
const sqlNow = `CAST(unixepoch('subsec') * 1000 AS INTEGER)`

// TryAcquire implements storage.Leaser.
func (s *Store) TryAcquire(ctx context.Context, name, holder string, ttl time.Duration) (storage.Lease, bool, error) {
	if s.closed.Load() {
		return storage.Lease{}, false, errClosed
	}
	if err := checkLease(name, holder, ttl); err != nil {
		return storage.Lease{}, false, err
	}
	sent := time.Now()
	var l storage.Lease
	var expires int64 // Unix ms, the database's clock
	ok := false
	err := s.update(ctx, func(tx *sql.Tx) error {
		var cur storage.Lease
		var live bool
		err := tx.QueryRowContext(ctx, `SELECT holder, epoch, expires_at > `+sqlNow+` FROM kmsd_leases WHERE name = ?`, name).
			Scan(&cur.Holder, &cur.Epoch, &live)
		switch {
		case errors.Is(err, sql.ErrNoRows):
		case err != nil:
			return fmt.Errorf("sqlite: acquire lease: %w", err)
		case live && cur.Holder != holder:
			return nil // held by another
		}
		epoch := cur.Epoch + 1
		if live {
			epoch = cur.Epoch // our own, renewed
		}
		if err := tx.QueryRowContext(ctx, `INSERT INTO kmsd_leases (name, holder, epoch, expires_at) VALUES (?, ?, ?, `+sqlNow+` + ?)
ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, epoch = excluded.epoch, expires_at = excluded.expires_at
RETURNING expires_at`,
			name, holder, epoch, ttl.Milliseconds()).Scan(&expires); err != nil {
			return fmt.Errorf("sqlite: acquire lease: %w", err)
		}
		l = storage.Lease{Name: name, Holder: holder, Epoch: epoch, Deadline: sent.Add(ttl)}
		ok = true
		return nil
	}, func(storage.Tx) error { return nil })
	if err != nil {
		return storage.Lease{}, false, err
	}
	if ok {
		s.fence.Held(name, time.UnixMilli(expires))
	}
	return l, ok, nil
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
	var expires int64 // Unix ms, the database's clock
	lost := false
	err := s.update(ctx, func(tx *sql.Tx) error {
		err := tx.QueryRowContext(ctx, `UPDATE kmsd_leases SET expires_at = `+sqlNow+` + ?
WHERE name = ? AND holder = ? AND epoch = ? AND expires_at > `+sqlNow+` RETURNING expires_at`,
			ttl.Milliseconds(), l.Name, l.Holder, l.Epoch).Scan(&expires)
		if errors.Is(err, sql.ErrNoRows) {
			lost = true
			return nil
		}
		if err != nil {
			return fmt.Errorf("sqlite: renew lease: %w", err)
		}
		return nil
	}, func(storage.Tx) error { return nil })
	if err != nil {
		return storage.Lease{}, err
	}
	if lost {
		return storage.Lease{}, storage.ErrLeaseLost
	}
	s.fence.Held(l.Name, time.UnixMilli(expires))
	l.Deadline = sent.Add(ttl)
	return l, nil
}

// Release implements storage.Leaser: the row stays, expired, so that the
// next holder's epoch is higher.
func (s *Store) Release(ctx context.Context, l storage.Lease) error {
	if s.closed.Load() {
		return errClosed
	}
	return s.update(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `UPDATE kmsd_leases SET expires_at = 0 WHERE name = ? AND holder = ? AND epoch = ?`,
			l.Name, l.Holder, l.Epoch)
		if err != nil {
			return fmt.Errorf("sqlite: release lease: %w", err)
		}
		return nil
	}, func(storage.Tx) error { return nil })
}

// Live implements storage.Leaser.
func (s *Store) Live(ctx context.Context, prefix string) ([]storage.Lease, error) {
	if s.closed.Load() {
		return nil, errClosed
	}
	if err := storage.ValidateLeaseName(prefix); err != nil {
		return nil, err
	}
	end, ok := storage.PrefixEnd(prefix)
	if !ok {
		end = noEnd
	}
	start := time.Now()
	rows, err := s.reader.QueryContext(ctx, `SELECT name, holder, epoch, expires_at - `+sqlNow+` FROM kmsd_leases
WHERE name >= ? AND name < ? AND expires_at > `+sqlNow+` ORDER BY name`, prefix, end)
	if err != nil {
		return nil, fmt.Errorf("sqlite: live leases: %w", err)
	}
	defer rows.Close()
	var ls []storage.Lease
	for rows.Next() {
		var l storage.Lease
		var left int64
		if err := rows.Scan(&l.Name, &l.Holder, &l.Epoch, &left); err != nil {
			return nil, fmt.Errorf("sqlite: live leases: %w", err)
		}
		l.Deadline = start.Add(time.Duration(left) * time.Millisecond)
		ls = append(ls, l)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: live leases: %w", err)
	}
	return ls, nil
}

// UpdateFenced implements storage.Leaser. The check runs inside the
// transaction, which holds SQLite's write lock from its start: no takeover
// can commit between the check and the commit.
func (s *Store) UpdateFenced(ctx context.Context, l storage.Lease, fn func(storage.Tx) error) error {
	if s.closed.Load() {
		return errClosed
	}
	return s.write(ctx, func(tx *sql.Tx) error {
		var one int
		err := tx.QueryRowContext(ctx, `SELECT 1 FROM kmsd_leases WHERE name = ? AND holder = ? AND epoch = ? AND expires_at > `+sqlNow,
			l.Name, l.Holder, l.Epoch).Scan(&one)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			s.fencedRefused.Add(1)
			return fmt.Errorf("%w: %s epoch %d", storage.ErrFenced, l.Name, l.Epoch)
		case err != nil:
			return fmt.Errorf("sqlite: fence: %w", err)
		}
		return nil
	}, fn)
}

// FencedRefused counts the UpdateFenced calls refused because the lease
// was no longer held at their epoch, and the writes refused because the
// FenceWrites lease had expired.
func (s *Store) FencedRefused() int64 { return s.fencedRefused.Load() }

// checkLease validates the arguments common to the lease methods.
func checkLease(name, holder string, ttl time.Duration) error {
	if name == "" || holder == "" {
		return fmt.Errorf("%w: lease name and holder must not be empty", storage.ErrInvalidKey)
	}
	if err := storage.ValidateLeaseName(name); err != nil {
		return err
	}
	if ttl < time.Millisecond {
		return fmt.Errorf("storage: lease ttl %s is shorter than 1ms", ttl)
	}
	return nil
}

// Now implements storage.Clock: the database's clock, which for SQLite is
// the clock of the machine every handle runs on (sqlNow).
func (s *Store) Now(ctx context.Context) (time.Time, error) {
	var ms int64
	if err := s.reader.QueryRowContext(ctx, `SELECT `+sqlNow).Scan(&ms); err != nil {
		return time.Time{}, fmt.Errorf("sqlite: now: %w", err)
	}
	return time.UnixMilli(ms), nil
}

// FenceWrites implements storage.WriteFencer; call it once, before the
// lease is first taken. SQLite's clock is the machine's, so the check
// (checkFence, just before each COMMIT and before a one-statement write)
// reads time.Now: a pause between the check and the COMMIT's step is not
// covered.
func (s *Store) FenceWrites(name string, refused func()) { s.fence.Set(name, refused) }

// checkFence fails wrapping storage.ErrFenced once the FenceWrites lease
// expired (at or after its last known expiry).
func (s *Store) checkFence() error {
	if until, ok := s.fence.Until(); ok && !time.Now().Before(until) {
		s.fencedRefused.Add(1)
		s.fence.Refused()
		return fmt.Errorf("%w: %s expired at %s", storage.ErrFenced, s.fence.Name(), until.UTC().Format(time.RFC3339Nano))
	}
	return nil
}
