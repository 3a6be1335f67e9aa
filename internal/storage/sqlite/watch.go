package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/kmsd/kmsd/internal/storage"
)

// defaultChangeLimit is Changes' batch size when the caller gives none.
const defaultChangeLimit = 1000

// Changes implements storage.Watcher. With one writer at a time, the
// order of kv_changes.seq is commit order, so the feed is simply the rows
// after the cursor's Seq, read in one snapshot.
func (s *Store) Changes(ctx context.Context, from storage.Cursor, limit int) (_ storage.Batch, err error) {
	if s.closed.Load() {
		return storage.Batch{}, errClosed
	}
	if limit <= 0 {
		limit = defaultChangeLimit
	}
	start := time.Now()
	rtx, err := s.reader.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return storage.Batch{}, fmt.Errorf("sqlite: changes: %w", err)
	}
	defer func() { _ = rtx.Rollback() }()
	gen, pruned, err := feedState(ctx, rtx)
	if err != nil {
		return storage.Batch{}, err
	}
	// The highest seq ever given: a cursor beyond it comes from another
	// history of this file (a restored backup) and cannot be resumed.
	var last int64
	if err := rtx.QueryRowContext(ctx, `SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'kv_changes'), 0)`).Scan(&last); err != nil {
		return storage.Batch{}, fmt.Errorf("sqlite: changes: %w", err)
	}
	if from.IsZero() || from.Gen != gen || from.Seq < pruned || from.Seq > last {
		// Every row that exists now is committed and visible to what the
		// caller reads next, so the feed resumes at the newest one.
		return storage.Batch{Next: storage.Cursor{Gen: gen, Seq: max(last, pruned)}, FreshAsOf: start, Reset: true}, nil
	}
	rows, err := rtx.QueryContext(ctx, `SELECT seq, key FROM kv_changes WHERE seq > ? ORDER BY seq LIMIT ?`, from.Seq, limit)
	if err != nil {
		return storage.Batch{}, fmt.Errorf("sqlite: changes: %w", err)
	}
	defer rows.Close()
	b := storage.Batch{Next: from}
	for rows.Next() {
		var key string
		if err := rows.Scan(&b.Next.Seq, &key); err != nil {
			return storage.Batch{}, fmt.Errorf("sqlite: changes: %w", err)
		}
		b.Keys = append(b.Keys, key)
	}
	if err := rows.Err(); err != nil {
		return storage.Batch{}, fmt.Errorf("sqlite: changes: %w", err)
	}
	if len(b.Keys) < limit {
		// Nothing committed before start is left unread.
		b.FreshAsOf = start
	}
	return b, nil
}

// Covers implements storage.Prover: the generation and the highest
// sequence number ever given to a change, read in one statement (one
// snapshot), are c's. With one writer at a time, sequence order is commit
// order, so every transaction committed before the call has its changes at
// or below that number — the cursor Changes ends at once it has delivered
// them.
func (s *Store) Covers(ctx context.Context, c storage.Cursor) (bool, error) {
	if s.closed.Load() {
		return false, errClosed
	}
	if err := ctx.Err(); err != nil {
		return false, err
	}
	// Without ctx's cancellation, as Get: a statement this short is
	// not worth database/sql's watcher of the context.
	var g []byte
	var last int64
	if err := s.r.head.QueryRowContext(context.WithoutCancel(ctx)).Scan(&g, &last); err != nil {
		return false, fmt.Errorf("sqlite: head: %w", err)
	}
	return string(g) == c.Gen && last == c.Seq && c.XID == 0, nil
}

// feedState reads the generation and the pruning point.
func feedState(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}) (gen string, pruned int64, err error) {
	var g, p []byte
	if err := q.QueryRowContext(ctx, `SELECT value FROM kmsd_meta WHERE name = 'generation'`).Scan(&g); err != nil {
		return "", 0, fmt.Errorf("sqlite: changes: generation: %w", err)
	}
	if err := q.QueryRowContext(ctx, `SELECT value FROM kmsd_meta WHERE name = 'changes_pruned'`).Scan(&p); err != nil {
		return "", 0, fmt.Errorf("sqlite: changes: pruning point: %w", err)
	}
	pruned, err = strconv.ParseInt(string(p), 10, 64)
	if err != nil {
		return "", 0, fmt.Errorf("sqlite: changes: pruning point: %w", err)
	}
	return string(g), pruned, nil
}

// Prune implements storage.Watcher.
func (s *Store) Prune(ctx context.Context, upTo storage.Cursor) error {
	if s.closed.Load() {
		return errClosed
	}
	errOther := errors.New("other generation")
	err := s.update(ctx, func(tx *sql.Tx) error {
		gen, pruned, err := feedState(ctx, tx)
		if err != nil {
			return err
		}
		if upTo.Gen != gen {
			return errOther
		}
		if upTo.Seq <= pruned {
			return nil
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM kv_changes WHERE seq <= ?`, upTo.Seq); err != nil {
			return fmt.Errorf("sqlite: prune: %w", err)
		}
		_, err = tx.ExecContext(ctx, `UPDATE kmsd_meta SET value = CAST(? AS BLOB) WHERE name = 'changes_pruned'`, strconv.FormatInt(upTo.Seq, 10))
		if err != nil {
			return fmt.Errorf("sqlite: prune: %w", err)
		}
		return nil
	}, func(storage.Tx) error { return nil })
	if errors.Is(err, errOther) {
		return nil
	}
	return err
}
