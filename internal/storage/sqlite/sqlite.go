// Package sqlite is kmsd's embedded storage driver: a storage.Store kept in
// one SQLite database file, through the pure-Go modernc.org/sqlite, so that a
// single node needs no database server and no cgo.
//
// The database runs in WAL mode with synchronous=FULL, so a write is on
// stable storage before it is acknowledged, and readers never wait for the
// writer. All writes go through one connection whose transactions begin
// IMMEDIATE: writers queue in the process instead of deadlocking or failing
// with SQLITE_BUSY, which makes every Update serializable. Get and List
// outside a transaction use a separate pool of query-only connections.
//
// The schema is versioned (see migrate.go) and brought up to date by Open.
// Package storage/postgres implements the same contract, with the same
// tables, for several nodes sharing one database; both drivers pass
// storagetest, including its two-handle suite (RunShared), since two
// processes may open one SQLite file. The change feed (storage.Watcher)
// and leases (storage.Leaser) are implemented here too (watch.go,
// lease.go), so that one node and many run the same code; with SQLite's
// single writer fn runs exactly once per Update. As on PostgreSQL, the
// triggers that fill kv_changes leave out keys under storage.UnfedPrefix
// (schema version 3; MULTINODE.md §4.3 has every write recorded). Since
// schema version 4 a value longer than inlineMax bytes is kept in a table
// of its own, kv_big, so that the key space's B-tree stays shallow on a
// large store (see inlineMax); the contract does not see the difference.
//
// Writes are fenced by a lease (storage.WriteFencer, lease.go), checked in
// the process just before each COMMIT.
//
// The Tx of Update offers storage.BatchCreator (multi-row INSERTs),
// BatchGetter, BatchPutter and BatchDeleter; in-process, the last three
// run the point read's, put's and delete's statements once per key.
package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"

	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver

	"github.com/kmsd/kmsd/internal/storage"
)

// busyTimeoutMS is how long a connection waits for a lock held by another
// process (a backup, the sqlite3 shell) before failing with SQLITE_BUSY.
// Within the process writers queue for the one writer connection instead.
const busyTimeoutMS = 5000

// noEnd is an upper bound above every key: keys are valid UTF-8, in which the
// byte 0xFF never occurs, and SQLite compares TEXT by its bytes.
const noEnd = "\xff"

var errClosed = errors.New("sqlite: store is closed")

// Store is a storage.Store in one SQLite database file. It is safe for
// concurrent use.
type Store struct {
	writer *sql.DB // exactly one connection: every write and every Update
	reader *sql.DB // query-only connections for Get and List outside Update
	w, r   *stmts  // prepared on writer and reader
	closed atomic.Bool
	// fencedRefused counts fenced writes refused (FencedRefused).
	fencedRefused atomic.Int64
	fence         storage.Fence // FenceWrites (lease.go)
}

var (
	_ storage.BatchCreator = (*tx)(nil)
	_ storage.BatchGetter  = (*tx)(nil)
	_ storage.BatchPutter  = (*tx)(nil)
	_ storage.BatchDeleter = (*tx)(nil)
	_ storage.Store        = (*Store)(nil)
	_ storage.Watcher      = (*Store)(nil)
	_ storage.Leaser       = (*Store)(nil)
	_ storage.Clock        = (*Store)(nil)
	_ storage.WriteFencer  = (*Store)(nil)
)

// Open opens the database file at path, creating it with mode 0600 if it
// does not exist (its directory must), and migrates its schema to the
// version this code knows. It refuses a database whose schema is newer
// (ErrSchemaTooNew) or that belongs to another application.
func Open(ctx context.Context, path string) (*Store, error) {
	return open(ctx, path, migrations)
}

// open is Open with the schema history as a parameter, for tests.
func open(ctx context.Context, path string, migs []string) (_ *Store, err error) {
	uri, err := fileURI(path)
	if err != nil {
		return nil, err
	}
	// SQLite creates the -wal and -shm files with the mode of the database
	// file, so creating that one private keeps them all private.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("sqlite: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("sqlite: %w", err)
	}

	s := &Store{}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	common := fmt.Sprintf("_pragma=busy_timeout(%d)&_pragma=foreign_keys(1)", busyTimeoutMS)
	// temp_store(MEMORY): the statement journals of upserts with triggers
	// (every Put) stay in memory instead of a temporary file written and
	// read back by syscalls; they live for one statement only.
	s.writer, err = sql.Open("sqlite", uri+"?"+common+
		"&_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)&_pragma=temp_store(MEMORY)&_txlock=immediate")
	if err != nil {
		return nil, fmt.Errorf("sqlite: %w", err)
	}
	// One connection, kept open for the life of the store.
	s.writer.SetMaxOpenConns(1)
	s.writer.SetMaxIdleConns(1)
	s.writer.SetConnMaxLifetime(0)
	s.writer.SetConnMaxIdleTime(0)

	var mode string
	if err := s.writer.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	if mode != "wal" {
		return nil, fmt.Errorf("sqlite: open %s: journal mode is %q, want wal", path, mode)
	}
	if err := migrate(ctx, s.writer, migs); err != nil {
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}

	// Readers are opened once the file is in WAL mode and migrated.
	s.reader, err = sql.Open("sqlite", uri+"?"+common+"&_pragma=query_only(1)")
	if err != nil {
		return nil, fmt.Errorf("sqlite: %w", err)
	}
	n := max(4, runtime.GOMAXPROCS(0))
	s.reader.SetMaxOpenConns(n)
	s.reader.SetMaxIdleConns(n)

	if s.w, err = prepare(ctx, s.writer, true); err != nil {
		return nil, err
	}
	if s.r, err = prepare(ctx, s.reader, false); err != nil {
		return nil, err
	}
	return s, nil
}

// fileURI turns a file path into the SQLite URI that names it, escaping the
// characters (?, #, %) that a URI would otherwise give a meaning.
func fileURI(path string) (string, error) {
	if path == "" || path == ":memory:" {
		return "", fmt.Errorf("sqlite: %q is not a database file path", path)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", fmt.Errorf("sqlite: %w", err)
	}
	return "file:" + (&url.URL{Path: filepath.ToSlash(abs)}).EscapedPath(), nil
}

// Close closes the database. It is safe to call more than once.
func (s *Store) Close() error {
	if !s.closed.CompareAndSwap(false, true) {
		return nil
	}
	var errs []error
	for _, st := range []*stmts{s.r, s.w} {
		if st != nil {
			errs = append(errs, st.close())
		}
	}
	// The writer goes last: the last connection to close checkpoints the
	// WAL into the database file.
	for _, db := range []*sql.DB{s.reader, s.writer} {
		if db != nil {
			errs = append(errs, db.Close())
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("sqlite: close: %w", err)
	}
	return nil
}

// Get implements storage.Reader, reading the latest committed value.
//
// The read runs under ctx without its cancellation (a ctx already ended is
// refused first): a point read on a reader connection takes microseconds
// and never waits for the writer (WAL), while a cancellable context costs
// every query two goroutines that watch it — database/sql's for the rows
// and the driver's, which would interrupt the statement — a tenth of a
// read on a large store, where the data plane reads each key it has not
// cached. The wait for a free reader connection is not cancellable
// either; it lasts as long as the reads ahead of it, microseconds each.
func (s *Store) Get(ctx context.Context, key string) ([]byte, error) {
	if s.closed.Load() {
		return nil, errClosed
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return ops{st: s.r}.get(context.WithoutCancel(ctx), key)
}

// List implements storage.Reader, reading one committed snapshot.
func (s *Store) List(ctx context.Context, prefix, after string, limit int) ([]storage.Entry, error) {
	if s.closed.Load() {
		return nil, errClosed
	}
	return ops{st: s.r}.list(ctx, prefix, after, limit)
}

// Put implements storage.Tx as a transaction of its own.
func (s *Store) Put(ctx context.Context, key string, value []byte) error {
	if s.closed.Load() {
		return errClosed
	}
	if len(value) > inlineMax {
		// A row of kv and one of kv_big: one transaction.
		return s.write(ctx, nil, func(tx storage.Tx) error { return tx.Put(ctx, key, value) })
	}
	if err := s.checkFence(); err != nil {
		return err
	}
	return ops{st: s.w}.put(ctx, key, value)
}

// Create implements storage.Tx as a transaction of its own.
func (s *Store) Create(ctx context.Context, key string, value []byte) error {
	if s.closed.Load() {
		return errClosed
	}
	if len(value) > inlineMax {
		return s.write(ctx, nil, func(tx storage.Tx) error { return tx.Create(ctx, key, value) })
	}
	if err := s.checkFence(); err != nil {
		return err
	}
	return ops{st: s.w}.create(ctx, key, value)
}

// Delete implements storage.Tx as a transaction of its own.
func (s *Store) Delete(ctx context.Context, key string) error {
	if s.closed.Load() {
		return errClosed
	}
	if err := s.checkFence(); err != nil {
		return err
	}
	return ops{st: s.w}.delete(ctx, key)
}

// Update implements storage.Store on the writer connection, in a
// transaction begun IMMEDIATE so that it holds the write lock from the start.
func (s *Store) Update(ctx context.Context, fn func(storage.Tx) error) error {
	if s.closed.Load() {
		return errClosed
	}
	return s.write(ctx, nil, fn)
}

// write is update fenced by FenceWrites: the check comes after fn, just
// before COMMIT. The lease operations use update itself, so that a handle
// whose lease expired can take it again.
func (s *Store) write(ctx context.Context, check func(*sql.Tx) error, fn func(storage.Tx) error) error {
	return s.update(ctx, check, func(t storage.Tx) error {
		if err := fn(t); err != nil {
			return err
		}
		return s.checkFence()
	})
}

// update is Update with check, if not nil, run first in the transaction.
// The transaction holds SQLite's write lock from its start, so nothing
// check reads can change before the commit. fn runs exactly once.
func (s *Store) update(ctx context.Context, check func(*sql.Tx) error, fn func(storage.Tx) error) error {
	sqlTx, err := s.writer.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("sqlite: begin: %w", err)
	}
	if check != nil {
		if err := check(sqlTx); err != nil {
			_ = sqlTx.Rollback()
			return err
		}
	}
	t := &tx{ops: ops{st: s.w, tx: sqlTx}}
	committed := false
	defer func() {
		t.done.Store(true)
		if !committed {
			// Rolls back after an error or a panic from fn; after a failed
			// Commit it is a harmless no-op.
			_ = sqlTx.Rollback()
		}
	}()
	if err := fn(t); err != nil {
		return err
	}
	t.done.Store(true)
	if err := sqlTx.Commit(); err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			// database/sql rolled the transaction back when ctx ended.
			err = ctxErr
		}
		return fmt.Errorf("sqlite: commit: %w", err)
	}
	committed = true
	return nil
}

// tx is the storage.Tx that Update passes to fn.
type tx struct {
	ops
	done atomic.Bool
}

var errTxDone = errors.New("sqlite: transaction used after its Update returned")

func (t *tx) Get(ctx context.Context, key string) ([]byte, error) {
	if t.done.Load() {
		return nil, errTxDone
	}
	return t.get(ctx, key)
}

func (t *tx) List(ctx context.Context, prefix, after string, limit int) ([]storage.Entry, error) {
	if t.done.Load() {
		return nil, errTxDone
	}
	return t.list(ctx, prefix, after, limit)
}

func (t *tx) Put(ctx context.Context, key string, value []byte) error {
	if t.done.Load() {
		return errTxDone
	}
	return t.put(ctx, key, value)
}

func (t *tx) Create(ctx context.Context, key string, value []byte) error {
	if t.done.Load() {
		return errTxDone
	}
	return t.create(ctx, key, value)
}

// CreateBatch implements storage.BatchCreator with multi-row INSERTs
// (ops.createBatch).
func (t *tx) CreateBatch(ctx context.Context, entries []storage.Entry) ([]bool, error) {
	if t.done.Load() {
		return nil, errTxDone
	}
	return t.createBatch(ctx, entries)
}

// GetBatch implements storage.BatchGetter (ops.getBatch).
func (t *tx) GetBatch(ctx context.Context, keys []string) ([][]byte, error) {
	if t.done.Load() {
		return nil, errTxDone
	}
	return t.getBatch(ctx, keys)
}

// PutBatch implements storage.BatchPutter (ops.putBatch).
func (t *tx) PutBatch(ctx context.Context, entries []storage.Entry) error {
	if t.done.Load() {
		return errTxDone
	}
	return t.putBatch(ctx, entries)
}

func (t *tx) Delete(ctx context.Context, key string) error {
	if t.done.Load() {
		return errTxDone
	}
	return t.delete(ctx, key)
}

// DeleteBatch implements storage.BatchDeleter: in-process, a statement
// costs no round trip, so it is Delete of each key, all validated first.
func (t *tx) DeleteBatch(ctx context.Context, keys []string) error {
	if t.done.Load() {
		return errTxDone
	}
	if err := storage.ValidateKeys(keys); err != nil {
		return err
	}
	for _, k := range keys {
		if err := t.delete(ctx, k); err != nil {
			return err
		}
	}
	return nil
}
