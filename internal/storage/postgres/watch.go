package postgres

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/kmsd/kmsd/internal/storage"
)

// defaultChangeLimit is Changes' batch size when the caller gives none.
const defaultChangeLimit = 1000

// poll is what one Changes call learned: when it started (local clock) and
// the xmax of its snapshot, above every transaction that had committed by
// then (MULTINODE.md §4.3, measured freshness).
type poll struct {
	start time.Time
	xmax  uint64
}

// Changes implements storage.Watcher with the xid horizon: rows of
// kv_changes are delivered in (xid, seq) order, but only those of
// transactions below the snapshot's xmin, which have all finished, so a
// transaction that committed late (a smaller xid, committed after a larger
// one) can never land behind the cursor. A long writing transaction holds
// the horizon back, delaying (never losing) the changes after it.
func (s *Store) Changes(ctx context.Context, from storage.Cursor, limit int) (storage.Batch, error) {
	if s.closed.Load() {
		return storage.Batch{}, errClosed
	}
	if limit <= 0 {
		limit = defaultChangeLimit
	}
	start := time.Now()
	var b storage.Batch
	var xmin, xmax uint64
	var gen string
	err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		g, pruned, err := feedState(ctx, tx)
		if err != nil {
			return err
		}
		gen = g
		var smin, smax string
		if err := tx.QueryRow(ctx, `SELECT pg_snapshot_xmin(pg_current_snapshot())::text, pg_snapshot_xmax(pg_current_snapshot())::text`).
			Scan(&smin, &smax); err != nil {
			return fmt.Errorf("postgres: changes: %w", err)
		}
		if xmin, err = strconv.ParseUint(smin, 10, 64); err != nil {
			return fmt.Errorf("postgres: changes: xmin %q: %w", smin, err)
		}
		if xmax, err = strconv.ParseUint(smax, 10, 64); err != nil {
			return fmt.Errorf("postgres: changes: xmax %q: %w", smax, err)
		}
		horizon := storage.Cursor{Gen: gen, XID: xmin}
		// A cursor beyond every transaction this database has begun comes
		// from another history (a restore that kept the generation row):
		// resuming from it would skip changes until the xids caught up.
		future := from.XID > xmax
		if from.IsZero() || from.Gen != gen || less(from, pruned) || future {
			// Everything below the horizon is finished and visible to
			// what the caller reads next; the rest is still to come.
			b = storage.Batch{Next: maxCursor(horizon, pruned), Reset: true}
			return nil
		}
		rows, err := tx.Query(ctx, `SELECT xid::text, seq, key FROM kv_changes
WHERE (xid, seq) > ($1::text::xid8, $2) AND xid < $3::text::xid8
ORDER BY xid, seq LIMIT $4`, strconv.FormatUint(from.XID, 10), from.Seq, smin, limit)
		if err != nil {
			return fmt.Errorf("postgres: changes: %w", err)
		}
		defer rows.Close()
		b.Next = from
		for rows.Next() {
			var x, key string
			if err := rows.Scan(&x, &b.Next.Seq, &key); err != nil {
				return fmt.Errorf("postgres: changes: %w", err)
			}
			if b.Next.XID, err = strconv.ParseUint(x, 10, 64); err != nil {
				return fmt.Errorf("postgres: changes: xid %q: %w", x, err)
			}
			b.Keys = append(b.Keys, key)
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("postgres: changes: %w", err)
		}
		if len(b.Keys) < limit {
			// Everything below the horizon is consumed: move up to it.
			b.Next = maxCursor(b.Next, horizon)
		}
		return nil
	})
	if err != nil {
		return storage.Batch{}, err
	}
	if b.Reset || len(b.Keys) < limit {
		b.FreshAsOf = s.fresh(gen, start, xmin, xmax)
	}
	return b, nil
}

// fresh records this poll and returns the latest start of a poll (this
// one included) whose xmax is at or below the horizon now consumed: every
// transaction that committed before that start had an xid below its xmax,
// hence below the horizon, hence is delivered. Polls of another generation
// are forgotten: their xids belong to another history.
func (s *Store) fresh(gen string, start time.Time, horizon, xmax uint64) time.Time {
	s.freshMu.Lock()
	defer s.freshMu.Unlock()
	if gen != s.pollGen {
		s.polls, s.pollGen = s.polls[:0], gen
	}
	s.polls = append(s.polls, poll{start, xmax})
	var best time.Time
	keep := s.polls[:0]
	for _, p := range s.polls {
		if p.xmax <= horizon {
			if p.start.After(best) {
				best = p.start
			}
			continue // superseded by best
		}
		keep = append(keep, p)
	}
	s.polls = keep
	if len(s.polls) > 64 {
		s.polls = append(s.polls[:0], s.polls[len(s.polls)-64:]...)
	}
	return best
}

// less orders cursors of one generation.
func less(a, b storage.Cursor) bool {
	return a.XID < b.XID || a.XID == b.XID && a.Seq < b.Seq
}

func maxCursor(a, b storage.Cursor) storage.Cursor {
	if less(a, b) {
		return b
	}
	return a
}

// feedState reads the generation and the pruning point.
//
// The generation names one history of the database's transaction ids,
// since cursors are positions in it: the random name written at creation,
// the database's oid (a dump restored into another database carries the
// same kmsd_meta rows), and the identity of the server's history — its
// system identifier, its current timeline and its postmaster's start
// time. A promoted standby (and a point-in-time recovery) starts a new
// timeline, and a restart may follow a crash that lost the tail of the WAL
// (synchronous_commit off, a restored file-system snapshot); in each the
// xids after the point where the histories part are given again to other
// transactions, so a cursor made before is Reset rather than resumed: its
// reader may have consumed, and moved past, transactions that the new
// history does not have, and would skip the new ones with those xids.
// A standby in recovery has no timeline of its own yet and serves no
// feed.
func feedState(ctx context.Context, q querier) (gen string, pruned storage.Cursor, err error) {
	var g, p []byte
	var db string
	var server *string
	if err := q.QueryRow(ctx, feedStateQuery).Scan(&g, &db, &server, &p); err != nil {
		return "", pruned, fmt.Errorf("postgres: changes: generation: %w", err)
	}
	if server == nil {
		return "", pruned, errInRecovery
	}
	return parseFeedState(g, db+"/"+*server, p)
}

// feedStateQuery reads the generation's parts and the pruning point.
const feedStateQuery = `SELECT value, ` + identColumns + `,
	(SELECT value FROM kmsd_meta WHERE name = 'changes_pruned')
FROM kmsd_meta WHERE name = 'generation'`

// identColumns are the parts of the generation that name the server's
// history: the database's oid, and, unless the server is a standby in
// recovery, its system identifier, timeline and postmaster's start time.
// pg_walfile_name's first 8 hex digits are the timeline WAL is written on
// now; pg_control_checkpoint's would lag until the first checkpoint after
// a promotion.
const identColumns = `'/' || (SELECT oid FROM pg_database WHERE datname = current_database())::text,
	CASE WHEN NOT pg_is_in_recovery() THEN
		(SELECT system_identifier FROM pg_control_system())::text
		|| '/' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)
		|| '/' || extract(epoch FROM pg_postmaster_start_time())::text END`

// parseFeedState makes the generation and the pruning point of what
// feedStateQuery read: the generation row's value, the server's history
// (identColumns, joined) and the pruning point.
func parseFeedState(g []byte, ident string, p []byte) (gen string, pruned storage.Cursor, err error) {
	if p == nil {
		return "", pruned, errors.New("postgres: changes: no pruning point")
	}
	x, sq, ok := strings.Cut(string(p), ":")
	gen = string(g) + ident
	pruned.Gen = gen
	if pruned.XID, err = strconv.ParseUint(x, 10, 64); err == nil && ok {
		pruned.Seq, err = strconv.ParseInt(sq, 10, 64)
	}
	if err != nil || !ok {
		return "", pruned, fmt.Errorf("postgres: changes: pruning point %q malformed", p)
	}
	return gen, pruned, nil
}

// Covers implements storage.Prover with one statement, whose snapshot is
// taken after the call began: the generation is c's (its server part as
// the connection remembers it, connIdent), the feed is not pruned past c,
// no change after c is visible, and c is not beyond every transaction
// begun. A transaction that committed before the call is visible to that
// snapshot; if its xid is below c.XID it had ended when the poll that
// returned c took its snapshot (c.XID is at most that snapshot's xmin,
// the feed's horizon), so its changes were among those delivered up to c;
// if not, its changes are after c, and the statement sees them. What it
// reads does not grow with the number of keys: two rows of kmsd_meta and
// one probe of kv_changes' primary key.
func (s *Store) Covers(ctx context.Context, c storage.Cursor) (bool, error) {
	if s.closed.Load() {
		return false, errClosed
	}
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return false, fmt.Errorf("postgres: covers: %w", err)
	}
	defer conn.Release()
	ident, err := s.connIdent(ctx, conn.Conn())
	if err != nil {
		return false, err
	}
	var g, p []byte
	var after, future bool
	if err := conn.QueryRow(ctx, coversQuery, strconv.FormatUint(c.XID, 10), c.Seq).Scan(&g, &p, &after, &future); err != nil {
		return false, fmt.Errorf("postgres: covers: %w", err)
	}
	gen, pruned, err := parseFeedState(g, ident, p)
	if err != nil {
		return false, err
	}
	return gen == c.Gen && !less(c, pruned) && !after && !future, nil
}

// connIdent is the server's history as identColumns name it, read on c
// the first time and remembered for as long as c lives: a connection
// stays on one database of one server process, and a primary's timeline
// does not change while its postmaster runs (only a standby's promotion
// starts one). A standby in recovery has none, and is asked again next
// time. Reading it (pg_control_system reads a file) was a third of each
// Covers' cost.
func (s *Store) connIdent(ctx context.Context, c *pgx.Conn) (string, error) {
	if v, ok := s.idents.Load(c); ok {
		return v.(string), nil
	}
	var db string
	var server *string
	if err := c.QueryRow(ctx, `SELECT `+identColumns).Scan(&db, &server); err != nil {
		return "", fmt.Errorf("postgres: covers: generation: %w", err)
	}
	if server == nil {
		return "", errInRecovery
	}
	ident := db + "/" + *server
	s.idents.Store(c, ident)
	return ident, nil
}

// coversQuery reads the generation row's value and the pruning point,
// whether a change after a cursor ($1, $2) is visible, and whether the
// cursor is beyond every transaction begun (a cursor from another
// history, as Changes resets). Not EXISTS: its generic plan (a prepared
// statement's after five runs) expects a third of kv_changes after any
// cursor and scans the table for the first, finding none in all of it
// when the cursor is current (190 ms on a million changes); the first row
// in the primary key's order is one probe of the index.
const coversQuery = `SELECT (SELECT value FROM kmsd_meta WHERE name = 'generation'),
	(SELECT value FROM kmsd_meta WHERE name = 'changes_pruned'),
	(SELECT true FROM kv_changes WHERE (xid, seq) > ($1::text::xid8, $2) ORDER BY xid, seq LIMIT 1) IS NOT NULL,
	$1::text::xid8 > pg_snapshot_xmax(pg_current_snapshot())`

// errInRecovery is returned by Changes and Prune on a standby.
var errInRecovery = errors.New("postgres: changes: the server is a standby in recovery; the change feed is read from the primary")

// Prune implements storage.Watcher.
func (s *Store) Prune(ctx context.Context, upTo storage.Cursor) error {
	if s.closed.Load() {
		return errClosed
	}
	return s.update(ctx, func(tx pgx.Tx) error {
		gen, pruned, err := feedState(ctx, tx)
		if err != nil {
			return err
		}
		if upTo.Gen != gen || !less(pruned, upTo) {
			return nil
		}
		if _, err := tx.Exec(ctx, `DELETE FROM kv_changes WHERE (xid, seq) <= ($1::text::xid8, $2)`,
			strconv.FormatUint(upTo.XID, 10), upTo.Seq); err != nil {
			return fmt.Errorf("postgres: prune: %w", err)
		}
		p := strconv.FormatUint(upTo.XID, 10) + ":" + strconv.FormatInt(upTo.Seq, 10)
		if _, err := tx.Exec(ctx, `UPDATE kmsd_meta SET value = $1 WHERE name = 'changes_pruned'`, []byte(p)); err != nil {
			return fmt.Errorf("postgres: prune: %w", err)
		}
		return nil
	}, func(storage.Tx) error { return nil })
}
