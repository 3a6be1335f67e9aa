// Package postgres is kmsd's shared storage driver: a storage.Store in a
// PostgreSQL (15 or later) database that several kmsd nodes use at once,
// through pgx v5's connection pool. It is the only package that imports
// the PostgreSQL driver.
//
// Update runs at SERIALIZABLE. PostgreSQL aborts one of two conflicting
// serializable transactions (SQLSTATE 40001) and deadlocks (40P01) abort
// one side; the driver then rolls back and runs fn again, for up to
// retryFor (at least minTries runs) with jittered backoff, which is why the
// contract lets fn run more than once. Every write returns the
// transaction's id (pg_current_xact_id), and a writing transaction
// inserts a random commit marker just before COMMIT, in the same round
// trip (one Query of both statements: a refused INSERT skips the COMMIT;
// commitMarked); if the connection
// breaks while COMMIT is in flight the driver waits on another connection
// until that transaction is no longer in progress and then looks for its
// marker: absent, fn runs again; found, the write is acknowledged once it
// is proven replicated (below); and when the database cannot be asked or
// the proof does not come it returns storage.ErrCommitUnknown. The xid
// alone would not do: a crash that loses a transaction's WAL makes
// PostgreSQL give its xid to a later transaction, whose outcome
// pg_xact_status would then report (found by e2e/multinode's A4 test).
// Markers older than markerRetention are deleted as writes go on.
//
// Synchronous standbys. With synchronous_standby_names set, a COMMIT
// answered with success and no warning is on the standbys, but PostgreSQL
// also makes transactions visible that are on the primary only: those in
// its WAL when it crashed (recovery replays them, whether or not a standby
// got them), and those whose wait for the standbys was cancelled
// (pg_cancel_backend, pg_terminate_backend: COMMIT then succeeds with a
// WARNING). A promotion of the standby loses them. So the driver
// acknowledges a COMMIT only when it succeeded without a warning (a
// warning sends it to the resolution above), a marker found is
// acknowledged only after a transaction of the driver's own that writes
// only if the marker is visible has committed without a warning (its
// COMMIT waits until the standbys have the WAL up to it, the marker's
// commit included), and every new connection first commits such a
// barrier before it serves anything, so that after a crash nothing is
// read — no key, no state — that the standbys may not have. statement_
// timeout does not bound a COMMIT's wait for the standbys (PostgreSQL
// turns it off for COMMIT), so these barriers are bounded by the client
// and their backends sent a cancel request when they give up. (Not
// covered: a transaction's wait cancelled by someone else on a primary
// that keeps running is visible on the connections opened before; kmsd
// itself never cancels one.) Found by e2e/multinode's A4 test. This
// departs from MULTINODE.md ("Ambiguous commits"), which takes a commit
// found committed after the fact to survive a failover: found committed
// on the primary is not yet on the standby.
//
// The Tx of Update offers storage.BatchCreator: CreateBatch sends one
// INSERT … SELECT FROM unnest($1::text[], $2::bytea[]) ON CONFLICT DO
// NOTHING RETURNING key per chunk of up to batchRows entries, where Create
// is a round trip per key. For 8,000 new keys in one transaction it took
// about a third of the time of 8,000 Creates and half that of a pgx
// pipeline of 8,000 single-row INSERTs (which still has the server parse,
// plan and run 8,000 statements).
//
// It offers storage.BatchGetter and storage.BatchPutter too (txbatch.go):
// GetBatch is one SELECT … WHERE key = ANY($1) per chunk, inside the
// serializable transaction, so it takes the same SIRead locks a Get of
// each key would and a read-compare-put over it stays safe against
// another node's; PutBatch is one INSERT … SELECT FROM unnest … ON
// CONFLICT (key) DO UPDATE per chunk, each key once (its last entry) and
// in key order, so that concurrent batches over the same keys queue on
// their row locks rather than deadlock. Its rows fire the kv_changes
// trigger as Put's do, and it returns the xid, so the commit marker is
// written as for any write. A last-use flush of 8,000 keys that had a
// record (read, compare, put) took 206 ms instead of 584 ms key by key.
//
// Writes are fenced by the node's lease (storage.WriteFencer, schema
// version 5): the commit marker also carries the lease's last known
// expiry (RETURNING expires_at of the acquisition or renewal), and the
// deferred constraint trigger kmsd_commit_fence refuses the COMMIT, on the
// server, once clock_timestamp() has reached it (SQLSTATE KMF01, returned
// as storage.ErrFenced). The check reads no table, so it adds no
// serialization conflicts; it costs a PL/pgSQL call at each writing
// COMMIT (BenchmarkPutFenced: within the noise of a one-key write).
//
// Get and List outside Update are single statements on the pool (each its
// own snapshot). Put, Create and Delete on the Store are one-statement
// Updates, so they get the same retry and commit resolution.
//
// The schema (migrate.go) is migrated by Open under a transaction-scoped
// advisory lock; no session state is used by the pool (no session
// advisory locks, no LISTEN), so the driver also works through a pooler in
// transaction mode. The one exception, change notices (notify.go, with
// Options.Notify), keeps a LISTEN on a connection of its own, outside the
// pool, and only speeds up what polling does anyway. The change feed
// (watch.go) reads kv_changes below the xid horizon of finished
// transactions; leases (lease.go) expire by the database's clock.
//
// Change feed across failovers. A feed reader may have read a transaction
// that is on the primary alone (a cancelled wait for the standbys, above)
// and moved its cursor past it; the promoted standby then gives that xid,
// and the ones after it, to new transactions, which a cursor compared by
// xid alone would skip for good. So a cursor's generation names the
// server's history too — system identifier, current timeline (a promotion
// or a point-in-time recovery starts a new one) and postmaster start time
// (a restart may follow a crash that lost WAL) — and a cursor made in
// another history is Reset: after a failover or a restart of PostgreSQL
// every node reloads its caches once. (MULTINODE.md §4.3 changes the
// generation only on a restore or re-initialisation; a failover needs it
// too.) A standby in recovery serves no feed. Not covered: synchronous_commit = off, under which a commit is
// visible before its WAL is flushed and a crash that the postmaster
// survives (a backend's crash) loses it with neither mark changing — and
// under which Update's "committed durably" does not hold either.
//
// The triggers that fill kv_changes leave out keys under
// storage.UnfedPrefix (schema version 3; since version 4 by their WHEN
// clauses, so such a write does not even call them), a departure from MULTINODE.md
// §4.3, where it records every write to kv: such keys hold records no
// node caches (the last use of each key), written often, so their writes
// cost no change row and no node's feed reads them.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/kmsd/kmsd/internal/storage"
)

// Options tune the connection pool and the sessions; zero values take the
// defaults of MULTINODE.md §7.8.
type Options struct {
	MaxConns         int32         // default 16
	MinConns         int32         // default 2
	ConnectTimeout   time.Duration // default 3s
	StatementTimeout time.Duration // default 5s
	// Password, if not empty, replaces the URL's (given by reference:
	// a file or KMSD_DATABASE_PASSWORD, never on the command line).
	Password string
	// Check, if not nil, is called before any migration on a database
	// that already holds kmsd's key space, with a reader of it; if it
	// fails, Open fails having written nothing. kmsd checks its root key
	// there, so that a node with the wrong key does not even migrate.
	Check func(ctx context.Context, r storage.Reader) error
	// ReadOnly opens the database as it is, for tools that only read it
	// (kmsd status): no schema is created or migrated, and a database
	// without kmsd's schema makes Open fail with ErrNoSchema.
	ReadOnly bool
	// Log, if not nil, is told how each interrupted COMMIT was settled
	// (transaction id and outcome; never data).
	Log *slog.Logger
	// Notify announces this Store's commits that replaced or deleted
	// records in the feed to the other Stores of the database and passes
	// theirs on (storage.Notifier; notify.go), over one more connection.
	// Not with ReadOnly.
	Notify bool
}

// ErrNoSchema is returned by Open with ReadOnly for a database that holds
// no kmsd schema (no kmsd node has started on it).
var ErrNoSchema = errors.New("postgres: the database holds no kmsd schema")

// An Update whose transaction keeps being aborted (40001, 40P01) is run
// again at least minTries times and for up to retryFor: a hot key written
// by many nodes at once aborts most of its writers each round.
const (
	minTries = 10
	retryFor = 20 * time.Second
)

var errClosed = errors.New("postgres: store is closed")

// Store is a storage.Store in a PostgreSQL database. It is safe for
// concurrent use, and any number of Stores (in any number of processes)
// may share one database.
type Store struct {
	pool   *pgxpool.Pool
	gets   *batchGets // Get's coalesced point reads (getbatch.go)
	closed atomic.Bool

	// resolveFor is how long a lost COMMIT's outcome is asked for.
	resolveFor time.Duration
	log        *slog.Logger
	// lastPrune is when commit markers were last pruned (UnixNano).
	lastPrune atomic.Int64

	// idents holds, for each pooled connection (*pgx.Conn) Covers has
	// used, the part of the generation that names its server's history
	// (watch.go, connIdent); the pool's BeforeClose forgets it.
	idents *sync.Map
	// fresh remembers recent change-feed polls for FreshAsOf (watch.go).
	freshMu sync.Mutex
	polls   []poll
	pollGen string // the generation polls were made in

	// fencedRefused counts fenced writes refused (FencedRefused).
	fencedRefused atomic.Int64
	fence         storage.Fence // FenceWrites (lease.go)

	// notices is nil unless Options.Notify (notify.go).
	notices *notices
}

var (
	_ storage.BatchCreator = (*tx)(nil)
	_ storage.BatchGetter  = (*tx)(nil)
	_ storage.BatchDeleter = (*tx)(nil)
	_ storage.BatchPutter  = (*tx)(nil)
	_ storage.Store        = (*Store)(nil)
	_ storage.Watcher      = (*Store)(nil)
	_ storage.Leaser       = (*Store)(nil)
	_ storage.Clock        = (*Store)(nil)
	_ storage.WriteFencer  = (*Store)(nil)
)

// Open connects to the database named by url (a postgres:// URL or a
// key=value connection string, as libpq takes), migrates its schema and
// returns the store. It refuses a database whose schema is newer than this
// code (ErrSchemaTooNew).
func Open(ctx context.Context, url string, o Options) (*Store, error) {
	return open(ctx, url, o, migrations)
}

func open(ctx context.Context, url string, o Options, migs []string) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		// pgx's message may quote the URL, password included.
		return nil, errors.New("postgres: the database URL does not parse")
	}
	if o.MaxConns <= 0 {
		o.MaxConns = 16
	}
	if o.MinConns <= 0 {
		o.MinConns = 2
	}
	o.MinConns = min(o.MinConns, o.MaxConns)
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = 3 * time.Second
	}
	if o.StatementTimeout <= 0 {
		o.StatementTimeout = 5 * time.Second
	}
	cfg.MaxConns, cfg.MinConns = o.MaxConns, o.MinConns
	cfg.ConnConfig.ConnectTimeout = o.ConnectTimeout
	if o.Password != "" {
		cfg.ConnConfig.Password = o.Password
	}
	ms := func(d time.Duration) string { return strconv.FormatInt(d.Milliseconds(), 10) }
	rp := cfg.ConnConfig.RuntimeParams
	rp["statement_timeout"] = ms(o.StatementTimeout)
	rp["lock_timeout"] = ms(min(2*time.Second, o.StatementTimeout))
	rp["idle_in_transaction_session_timeout"] = ms(max(10*time.Second, 2*o.StatementTimeout))
	if rp["application_name"] == "" {
		// The URL may name the node (pg_stat_activity, logs, triggers).
		rp["application_name"] = "kmsd"
	}
	cfg.ConnConfig.OnNotice = func(c *pgconn.PgConn, n *pgconn.Notice) {
		noteWarning(c, n)
	}
	listenConfig := cfg.ConnConfig.Copy()
	if !o.ReadOnly {
		// A read-only store (kmsd status) writes nothing, barriers
		// included: what it shows is not acknowledged to anyone.
		cfg.AfterConnect = func(ctx context.Context, c *pgx.Conn) error {
			return connectBarrier(ctx, c, o.ConnectTimeout)
		}
	}
	var idents sync.Map // Store.idents, filled by Covers
	cfg.BeforeClose = func(c *pgx.Conn) { idents.Delete(c) }
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	if o.Check != nil {
		var exists bool
		if err := pool.QueryRow(ctx, `SELECT to_regclass('kv') IS NOT NULL`).Scan(&exists); err != nil {
			pool.Close()
			return nil, fmt.Errorf("postgres: %w", err)
		}
		if exists {
			if err := o.Check(ctx, poolReader{pool}); err != nil {
				pool.Close()
				return nil, err
			}
		}
	}
	if o.ReadOnly {
		var exists bool
		err := pool.QueryRow(ctx, `SELECT to_regclass('kmsd_schema_migrations') IS NOT NULL AND to_regclass('kv') IS NOT NULL AND to_regclass('kmsd_leases') IS NOT NULL`).Scan(&exists)
		if err == nil && !exists {
			err = ErrNoSchema
		}
		if err != nil {
			pool.Close()
			if errors.Is(err, ErrNoSchema) {
				return nil, err
			}
			return nil, fmt.Errorf("postgres: %w", err)
		}
	} else if err := migrate(ctx, pool, migs); err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres: %w", err)
	}
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Store{pool: pool, gets: newBatchGets(pool, o.StatementTimeout), resolveFor: 10 * time.Second, log: log, idents: &idents}
	if o.Notify && !o.ReadOnly {
		s.startNotices(listenConfig)
	}
	return s, nil
}

// Close closes the pool. It is safe to call more than once.
func (s *Store) Close() error {
	if s.closed.CompareAndSwap(false, true) {
		s.stopNotices()
		if s.gets != nil {
			s.gets.close()
		}
		s.pool.Close()
	}
	return nil
}

// Get implements storage.Reader.
func (s *Store) Get(ctx context.Context, key string) ([]byte, error) {
	if s.closed.Load() {
		return nil, errClosed
	}
	return s.gets.get(ctx, key)
}

// List implements storage.Reader, reading one snapshot.
func (s *Store) List(ctx context.Context, prefix, after string, limit int) ([]storage.Entry, error) {
	if s.closed.Load() {
		return nil, errClosed
	}
	return list(ctx, s.pool, prefix, after, limit)
}

// Put implements storage.Tx as an Update of its own.
func (s *Store) Put(ctx context.Context, key string, value []byte) error {
	if err := storage.ValidateKey(key); err != nil {
		return err
	}
	return s.Update(ctx, func(tx storage.Tx) error { return tx.Put(ctx, key, value) })
}

// Create implements storage.Tx as an Update of its own.
func (s *Store) Create(ctx context.Context, key string, value []byte) error {
	if err := storage.ValidateKey(key); err != nil {
		return err
	}
	return s.Update(ctx, func(tx storage.Tx) error { return tx.Create(ctx, key, value) })
}

// Delete implements storage.Tx as an Update of its own.
func (s *Store) Delete(ctx context.Context, key string) error {
	if err := storage.ValidateKey(key); err != nil {
		return err
	}
	return s.Update(ctx, func(tx storage.Tx) error { return tx.Delete(ctx, key) })
}

// Update implements storage.Store.
func (s *Store) Update(ctx context.Context, fn func(storage.Tx) error) error {
	return s.update(ctx, nil, fn)
}

// update runs check (if not nil) and then fn in one serializable
// transaction, retrying on serialization failures and deadlocks.
func (s *Store) update(ctx context.Context, check func(pgx.Tx) error, fn func(storage.Tx) error) error {
	if s.closed.Load() {
		return errClosed
	}
	backoff := 2 * time.Millisecond
	begun := time.Now()
	for try := 1; ; try++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		err := s.once(ctx, check, fn)
		if !retryable(err) || try >= minTries && time.Since(begun) > retryFor {
			return err
		}
		// Jittered exponential backoff so that the same transactions do
		// not collide again in lockstep.
		d := backoff/2 + rand.N(backoff)
		backoff = min(2*backoff, 250*time.Millisecond)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(d):
		}
	}
}

// errRerun marks an attempt whose transaction is known not to have
// committed and may be run again.
var errRerun = errors.New("postgres: transaction aborted; run again")

// retryable says err calls for another run of the transaction.
func retryable(err error) bool {
	if errors.Is(err, errRerun) {
		return true
	}
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "40001" || pe.Code == "40P01")
}

// once is one run of an Update's transaction.
func (s *Store) once(ctx context.Context, check func(pgx.Tx) error, fn func(storage.Tx) error) (err error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	defer conn.Release()
	ptx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.Serializable})
	if err != nil {
		return fmt.Errorf("postgres: begin: %w", err)
	}
	t := &tx{tx: ptx}
	committed := false
	defer func() {
		t.done.Store(true)
		if !committed {
			// After an error, a panic or a failed COMMIT. The context may
			// be over: roll back without it.
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			_ = ptx.Rollback(rctx)
			cancel()
		}
	}()
	if check != nil {
		if err := check(ptx); err != nil {
			return err
		}
	}
	if err := fn(t); err != nil {
		if t.retry != nil {
			// fn failed because the database aborted the transaction; its
			// error may hide that, so the abort decides.
			return t.retry
		}
		return err
	}
	t.done.Store(true)
	pc := conn.Conn().PgConn()
	warned := watchWarnings(pc)
	var token string
	if t.xid == "" {
		err = ptx.Commit(ctx)
	} else {
		token = uuid.NewString()
		fence, fenced := s.fence.Until()
		var ran int
		ran, err = commitMarked(ctx, pc, token, fence, fenced)
		var pe *pgconn.PgError
		if ran == 0 && errors.As(err, &pe) {
			// The server refused the marker and so never ran the COMMIT
			// behind it: the transaction is aborted, and rolled back.
			return t.note(fmt.Errorf("postgres: commit marker: %w", err))
		}
	}
	committed = true // no rollback after a COMMIT was sent
	if err == nil && !warned() {
		if token != "" {
			s.pruneMarkers(ctx)
		}
		s.announce(t)
		return nil
	}
	if t.xid == "" {
		// Nothing was written: nothing to lose.
		if err == nil {
			return nil
		}
		return fmt.Errorf("postgres: commit: %w", err)
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == errFenceCode {
		s.fencedRefused.Add(1)
		s.fence.Refused()
		return fmt.Errorf("%w: %s", storage.ErrFenced, pe.Message)
	}
	if errors.As(err, &pe) && severity(pe) == "ERROR" {
		// The server answered with an error: the transaction was rolled
		// back (40001 at commit is retryable), nothing was kept. A FATAL
		// or PANIC ends the session and says nothing about the commit.
		return fmt.Errorf("postgres: commit: %w", err)
	}
	if err == nil {
		// COMMIT succeeded with a warning: PostgreSQL's way of saying that
		// the wait for the synchronous standbys was cancelled (or the
		// session is being ended) after the transaction committed
		// locally. It may not be on any standby, so a promotion could
		// lose it: not acknowledged until proven.
		err = errUnreplicated
	}
	if err := s.resolve(ctx, t.xid, token, err); err != nil {
		return err
	}
	s.announce(t)
	return nil
}

// commitMarked inserts the commit marker token (with the fence, if
// fenced) and commits, in one round trip: one simple-protocol Query of
// two statements, where an error of the first skips the second. ran is
// the number of the two that completed: 0 with a server error means the
// COMMIT never ran; an error of the connection says nothing, and the
// caller resolves it by the marker. The token is a UUID and the fence a
// formatted time, so neither needs quoting beyond the literal's.
func commitMarked(ctx context.Context, pc *pgconn.PgConn, token string, fence time.Time, fenced bool) (ran int, err error) {
	var q string
	if fenced {
		q = "INSERT INTO kmsd_commits (token, fence) VALUES ('" + token + "', '" +
			fence.UTC().Truncate(time.Microsecond).Format("2006-01-02 15:04:05.999999") + "+00'); COMMIT"
	} else {
		q = "INSERT INTO kmsd_commits (token) VALUES ('" + token + "'); COMMIT"
	}
	rs, err := pc.Exec(ctx, q).ReadAll()
	return len(rs), err
}

// errUnreplicated is the cause of a resolution after a COMMIT that
// succeeded with a warning.
var errUnreplicated = errors.New("COMMIT answered with a warning (wait for synchronous replication cancelled)")

// resolve decides the outcome of transaction xid, whose COMMIT was sent
// but whose answer was lost or came with a warning (cause). Once
// pg_xact_status no longer says the xid is in progress (the old backend
// may not yet have noticed the broken connection), the transaction
// committed if and only if its marker token is in kmsd_commits.
// pg_xact_status only tells when to look: after a crash that lost the
// transaction, the xid may name another one.
//
// A marker found is not yet an acknowledgement: a transaction whose
// COMMIT was interrupted may be committed on this server only — in its
// WAL before a crash and visible after recovery, or committed locally
// when its wait for the synchronous standbys was cancelled — and then lost
// when a standby is promoted. proveMarker settles that: it commits a
// transaction of its own that writes only if the marker is visible, and
// whose COMMIT waits for the synchronous standbys to have the WAL up to
// it, the marker's commit included. Until that succeeds the outcome stays
// unknown; an unacknowledged write is allowed, a lost acknowledged one is
// not.
func (s *Store) resolve(ctx context.Context, xid, token string, cause error) (err error) {
	begun := time.Now()
	defer func() {
		outcome := "committed and replicated: acknowledged"
		switch {
		case errors.Is(err, errRerun):
			outcome = "not committed: run again"
		case err != nil:
			outcome = "unknown: not acknowledged"
		}
		s.log.Warn("postgres: interrupted COMMIT settled", "xid", xid, "outcome", outcome,
			"cause", cause.Error(), "took", time.Since(begun).Round(time.Millisecond))
	}()
	deadline := time.Now().Add(s.resolveFor)
	rctx := context.WithoutCancel(ctx)
	for {
		found, err := s.marker(rctx, token)
		if err == nil && !found {
			var status *string
			qctx, cancel := context.WithTimeout(rctx, 3*time.Second)
			err = s.pool.QueryRow(qctx, `SELECT pg_xact_status($1::text::xid8)`, xid).Scan(&status)
			cancel()
			var pe *pgconn.PgError
			// An xid "in the future" was never committed durably: the
			// counter restarted below it.
			settled := err == nil && (status == nil || *status != "in progress") ||
				errors.As(err, &pe) && pe.Code == "22023"
			if settled {
				// Looked for again: the transaction may have committed
				// between the first look and the status.
				found, err = s.marker(rctx, token)
				if err == nil && !found {
					return fmt.Errorf("%w (commit lost: %v)", errRerun, cause)
				}
			} else {
				err = errors.New("in progress")
			}
		}
		if err == nil && found {
			proven, _ := s.proveMarker(rctx, token, time.Until(deadline))
			if proven {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: transaction %s: COMMIT interrupted (%v) and its outcome not confirmed", storage.ErrCommitUnknown, xid, cause)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// proveMarker reports whether the commit marker token is on this server
// and synchronously replicated (see resolve). It waits up to wait (at
// least a second) for the synchronous standbys.
func (s *Store) proveMarker(ctx context.Context, token string, wait time.Duration) (bool, error) {
	qctx, cancel := context.WithTimeout(ctx, max(wait, time.Second))
	defer cancel()
	conn, err := s.pool.Acquire(qctx)
	if err != nil {
		return false, err
	}
	defer conn.Release()
	var inserted bool
	err = replicated(qctx, conn.Conn(), func(ctx context.Context) error {
		err := conn.QueryRow(ctx, `INSERT INTO kmsd_commits (token)
SELECT $1 WHERE EXISTS (SELECT 1 FROM kmsd_commits WHERE token = $2) RETURNING true`, uuid.NewString(), token).Scan(&inserted)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil // the marker is not here (any more)
		}
		return err
	})
	return err == nil && inserted, err
}

// warnedKey marks, in a connection's CustomData, a WARNING received.
const warnedKey = "kmsd.warned"

// noteWarning is the pool's notice handler. It runs on the goroutine
// that reads the connection, that is the one running the statement.
func noteWarning(c *pgconn.PgConn, n *pgconn.Notice) {
	if severity((*pgconn.PgError)(n)) == "WARNING" {
		c.CustomData()[warnedKey] = true
	}
}

// severity is a message's severity in English (servers before 9.6 send
// only the localized one).
func severity(e *pgconn.PgError) string {
	if e.SeverityUnlocalized != "" {
		return e.SeverityUnlocalized
	}
	return e.Severity
}

// watchWarnings forgets c's earlier warnings and returns a function that
// says whether one came since.
func watchWarnings(c *pgconn.PgConn) func() bool {
	delete(c.CustomData(), warnedKey)
	return func() bool { return c.CustomData()[warnedKey] == true }
}

// replicated runs stmt, a single writing statement in a transaction of its
// own (autocommit), on conn and succeeds only if it committed without a
// warning: with synchronous_standby_names set, that COMMIT returned only
// once the synchronous standbys had flushed the WAL up to it, everything
// committed on this server before it included. statement_timeout does not
// bound that wait (PostgreSQL disables it for COMMIT), so ctx does; when
// ctx ends first, the waiting backend is sent a cancel request so that it
// does not wait on (holding a connection slot) after the client is gone.
func replicated(ctx context.Context, conn *pgx.Conn, stmt func(context.Context) error) error {
	pc := conn.PgConn()
	warned := watchWarnings(pc)
	err := stmt(ctx)
	if err != nil && ctx.Err() != nil {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		_ = pc.CancelRequest(cctx)
		cancel()
	}
	if err == nil && warned() {
		err = errUnreplicated
	}
	return err
}

// connectBarrier is run on every new connection before it serves
// anything: a commit that waits for the synchronous standbys (see
// replicated). After a crash of the primary, recovery makes visible
// transactions that were in its WAL but perhaps never reached a standby;
// reading them and answering from them (a key that exists, a state
// already changed) would be answering from what a promotion may lose. A
// connection is only used once everything before its barrier is
// replicated. On a database not yet migrated (no kmsd_commits) there is
// nothing of kmsd's to read and the barrier is skipped.
func connectBarrier(ctx context.Context, c *pgx.Conn, wait time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	err := replicated(ctx, c, func(ctx context.Context) error {
		_, err := c.Exec(ctx, `INSERT INTO kmsd_commits (token) VALUES ($1)`, uuid.NewString())
		return err
	})
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "42P01" {
		return nil
	}
	if err != nil {
		return fmt.Errorf("postgres: replication barrier: %w", err)
	}
	return nil
}

// marker says whether the commit marker token is in the database.
func (s *Store) marker(ctx context.Context, token string) (bool, error) {
	qctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	var found bool
	err := s.pool.QueryRow(qctx, `SELECT EXISTS (SELECT 1 FROM kmsd_commits WHERE token = $1)`, token).Scan(&found)
	return found, err
}

// markerRetention is how long commit markers are kept: far longer than any
// resolve waits (resolveFor), so a marker is never gone while an Update
// may still look for it.
const markerRetention = time.Hour

// pruneMarkers deletes old commit markers, at most once a minute per
// Store, in a statement of its own (not in any Update's transaction).
func (s *Store) pruneMarkers(ctx context.Context) {
	now := time.Now().UnixNano()
	last := s.lastPrune.Load()
	if now-last < int64(time.Minute) || !s.lastPrune.CompareAndSwap(last, now) {
		return
	}
	go func() {
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		_, _ = s.pool.Exec(pctx, `DELETE FROM kmsd_commits WHERE at < now() - make_interval(secs => $1)`, markerRetention.Seconds())
	}()
}

// tx is the storage.Tx that Update passes to fn.
type tx struct {
	tx    pgx.Tx
	done  atomic.Bool
	retry error // a serialization failure or deadlock met by an operation
	// xid is the transaction's id once it has written something: every
	// write statement returns it (RETURNING pg_current_xact_id()), which
	// saves a round trip per Update, and it is the one question that
	// settles a COMMIT whose answer is lost.
	xid string
	// changed says a record in the feed (outside storage.UnfedPrefix)
	// that existed before was replaced or deleted: what another node may
	// have cached, so the commit is announced (notify.go). New records
	// are not: nothing can have cached them (CreateKey's commits then
	// cost no notice).
	changed bool
}

// wrote records that transaction xid wrote keys, replacing or deleting
// records that existed if changed.
func (t *tx) wrote(xid string, changed bool, keys ...string) {
	t.xid = xid
	if changed && !t.changed {
		t.changed = slices.ContainsFunc(keys, func(k string) bool { return !strings.HasPrefix(k, storage.UnfedPrefix) })
	}
}

var errTxDone = errors.New("postgres: transaction used after its Update returned")

// note records a retryable database error so that Update re-runs fn
// whatever fn makes of the error.
func (t *tx) note(err error) error {
	if retryable(err) && t.retry == nil {
		t.retry = err
	}
	return err
}

func (t *tx) Get(ctx context.Context, key string) ([]byte, error) {
	if t.done.Load() {
		return nil, errTxDone
	}
	v, err := get(ctx, t.tx, key)
	return v, t.note(err)
}

func (t *tx) List(ctx context.Context, prefix, after string, limit int) ([]storage.Entry, error) {
	if t.done.Load() {
		return nil, errTxDone
	}
	es, err := list(ctx, t.tx, prefix, after, limit)
	return es, t.note(err)
}

func (t *tx) Put(ctx context.Context, key string, value []byte) error {
	if t.done.Load() {
		return errTxDone
	}
	if err := storage.ValidateKey(key); err != nil {
		return err
	}
	// An updated row's xmax is the updating transaction's id, a new
	// row's is 0: replaced says the key had a record.
	var xid string
	var replaced bool
	err := t.tx.QueryRow(ctx, `INSERT INTO kv (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value
RETURNING pg_current_xact_id()::text, xmax::text <> '0'`, key, bytea(value)).Scan(&xid, &replaced)
	if err != nil {
		return t.note(fmt.Errorf("postgres: put: %w", err))
	}
	t.wrote(xid, replaced, key)
	return nil
}

func (t *tx) Create(ctx context.Context, key string, value []byte) error {
	if t.done.Load() {
		return errTxDone
	}
	if err := storage.ValidateKey(key); err != nil {
		return err
	}
	var xid string
	err := t.tx.QueryRow(ctx, `INSERT INTO kv (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING
RETURNING pg_current_xact_id()::text`, key, bytea(value)).Scan(&xid)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return storage.ErrExists
	case err != nil:
		return t.note(fmt.Errorf("postgres: create: %w", err))
	}
	t.wrote(xid, false, key)
	return nil
}

// A CreateBatch statement carries at most batchRows entries and about
// batchBytes of keys and values: PostgreSQL takes at most 1 GB in one
// message or array, and every statement must end within
// statement_timeout. A larger batch is sent in several statements.
const (
	batchRows  = 10000
	batchBytes = 16 << 20
)

// sqlCreateBatch creates a chunk of entries in one statement and returns
// the keys it created. The caller removes duplicate keys first, so that no
// key is in a chunk twice.
const sqlCreateBatch = `INSERT INTO kv (key, value) SELECT k, v FROM unnest($1::text[], $2::bytea[]) AS u(k, v)
ON CONFLICT (key) DO NOTHING RETURNING key, pg_current_xact_id()::text`

// CreateBatch implements storage.BatchCreator: one INSERT … SELECT FROM
// unnest … ON CONFLICT DO NOTHING per chunk of entries, one round trip
// where Create needs one per key.
func (t *tx) CreateBatch(ctx context.Context, entries []storage.Entry) ([]bool, error) {
	if t.done.Load() {
		return nil, errTxDone
	}
	for _, e := range entries {
		if err := storage.ValidateKey(e.Key); err != nil {
			return nil, err
		}
	}
	exists := make([]bool, len(entries))
	seen := make(map[string]bool, len(entries))
	var (
		keys []string
		vals [][]byte
		at   []int // index in entries of keys[j]
		size int
	)
	flush := func() error {
		if len(keys) == 0 {
			return nil
		}
		created, err := t.createChunk(ctx, keys, vals)
		if err != nil {
			return err
		}
		for j, k := range keys {
			exists[at[j]] = !created[k]
		}
		keys, vals, at, size = keys[:0], vals[:0], at[:0], 0
		return nil
	}
	for i, e := range entries {
		if seen[e.Key] {
			exists[i] = true // created (or found) at an earlier entry
			continue
		}
		seen[e.Key] = true
		keys, vals, at = append(keys, e.Key), append(vals, bytea(e.Value)), append(at, i)
		size += len(e.Key) + len(e.Value)
		if len(keys) >= batchRows || size >= batchBytes {
			if err := flush(); err != nil {
				return nil, err
			}
		}
	}
	if err := flush(); err != nil {
		return nil, err
	}
	return exists, nil
}

// createChunk runs sqlCreateBatch and returns the set of keys created.
func (t *tx) createChunk(ctx context.Context, keys []string, vals [][]byte) (map[string]bool, error) {
	rows, err := t.tx.Query(ctx, sqlCreateBatch, keys, vals)
	if err != nil {
		return nil, t.note(fmt.Errorf("postgres: create batch: %w", err))
	}
	defer rows.Close()
	created := make(map[string]bool, len(keys))
	var key, xid string
	for rows.Next() {
		if err := rows.Scan(&key, &xid); err != nil {
			return nil, t.note(fmt.Errorf("postgres: create batch: %w", err))
		}
		created[key] = true
	}
	if err := rows.Err(); err != nil {
		return nil, t.note(fmt.Errorf("postgres: create batch: %w", err))
	}
	if len(created) > 0 {
		t.wrote(xid, false, keys...)
	}
	return created, nil
}

func (t *tx) Delete(ctx context.Context, key string) error {
	if t.done.Load() {
		return errTxDone
	}
	if err := storage.ValidateKey(key); err != nil {
		return err
	}
	var xid string
	err := t.tx.QueryRow(ctx, `DELETE FROM kv WHERE key = $1 RETURNING pg_current_xact_id()::text`, key).Scan(&xid)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		// Nothing was there to delete.
	case err != nil:
		return t.note(fmt.Errorf("postgres: delete: %w", err))
	default:
		t.wrote(xid, true, key)
	}
	return nil
}

// querier is what get and list need: the pool or a transaction.
type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// bytea keeps an empty value an empty bytea: pgx sends a nil slice as NULL.
func bytea(v []byte) []byte {
	if v == nil {
		return []byte{}
	}
	return v
}

func get(ctx context.Context, q querier, key string) ([]byte, error) {
	if err := storage.ValidateKey(key); err != nil {
		return nil, err
	}
	var v []byte
	err := q.QueryRow(ctx, `SELECT value FROM kv WHERE key = $1`, key).Scan(&v)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return nil, storage.ErrNotFound
	case err != nil:
		return nil, fmt.Errorf("postgres: get: %w", err)
	case v == nil:
		v = []byte{}
	}
	return v, nil
}

// list scans the primary-key index range [lo, end), never with LIKE, whose
// wildcards and collation would be wrong. The kv.key column is COLLATE "C",
// so text comparison is byte comparison.
func list(ctx context.Context, q querier, prefix, after string, limit int) ([]storage.Entry, error) {
	if err := storage.ValidateRange(prefix, after); err != nil {
		return nil, err
	}
	lo, op := prefix, ">="
	if after >= prefix {
		lo, op = after, ">"
	}
	args := []any{lo}
	sql := `SELECT key, value FROM kv WHERE key ` + op + ` $1`
	if end, ok := storage.PrefixEnd(prefix); ok {
		args = append(args, end)
		sql += ` AND key < $2`
	}
	sql += ` ORDER BY key`
	if limit > 0 {
		sql += ` LIMIT ` + strconv.Itoa(limit)
	}
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("postgres: list: %w", err)
	}
	defer rows.Close()
	var es []storage.Entry
	for rows.Next() {
		var e storage.Entry
		if err := rows.Scan(&e.Key, &e.Value); err != nil {
			return nil, fmt.Errorf("postgres: list: %w", err)
		}
		if e.Value == nil {
			e.Value = []byte{}
		}
		es = append(es, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("postgres: list: %w", err)
	}
	return es, nil
}

// Describe names the database, user and host of a database URL for
// messages and logs, without its password or other parameters.
func Describe(url string) string {
	cfg, err := pgconn.ParseConfig(url)
	if err != nil {
		return "(database URL does not parse)"
	}
	return fmt.Sprintf("%q of user %q on %s", cfg.Database, cfg.User, net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port))))
}

// poolReader reads the key space before Open has finished (Options.Check).
type poolReader struct{ pool *pgxpool.Pool }

func (r poolReader) Get(ctx context.Context, key string) ([]byte, error) {
	return get(ctx, r.pool, key)
}

func (r poolReader) List(ctx context.Context, prefix, after string, limit int) ([]storage.Entry, error) {
	return list(ctx, r.pool, prefix, after, limit)
}
