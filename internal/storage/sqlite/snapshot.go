package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/kmsd/kmsd/internal/storage"
)

// Backups. A running kmsd keeps its database in WAL mode, where a reader
// sees one committed snapshot for the whole of its read transaction and
// neither waits for the writer nor makes it wait. VacuumInto copies the
// database from such a read transaction, on a connection of its own
// opened read-only, so it can run in another process beside a serving
// kmsd: the copy holds exactly the transactions committed when it began,
// the writes kmsd acknowledged before then among them.

// Info describes a database file.
type Info struct {
	SchemaVersion int   // the migration the schema is at
	Records       int64 // rows in the key space
}

// VacuumInto writes a consistent snapshot of the kmsd database at src to
// dst, which must not exist or be empty, as a compact database file of its
// own, and syncs it to stable storage. src is only read, and may be in use
// by a running kmsd.
func VacuumInto(ctx context.Context, src, dst string) error {
	if _, err := os.Stat(src); err != nil {
		return fmt.Errorf("sqlite: %w", err)
	}
	f, err := OpenFile(ctx, src)
	if err != nil {
		return err
	}
	defer f.Close()
	abs, err := filepath.Abs(dst)
	if err != nil {
		return fmt.Errorf("sqlite: %w", err)
	}
	if _, err := f.db.ExecContext(ctx, "VACUUM INTO ?", abs); err != nil {
		return fmt.Errorf("sqlite: snapshot of %s: %w", src, err)
	}
	// VACUUM INTO does not sync what it wrote.
	out, err := os.OpenFile(abs, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("sqlite: %w", err)
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return fmt.Errorf("sqlite: sync %s: %w", dst, err)
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("sqlite: %w", err)
	}
	return nil
}

// File is a kmsd database file opened read-only: a backup's copy being
// checked before it is put in place, or a live database being copied. It
// is a storage.Reader. It never creates, migrates or changes the file.
type File struct {
	db *sql.DB
	st *stmts
}

var _ storage.Reader = (*File)(nil)

// OpenFile opens the kmsd database file at path read-only. It refuses a
// file that is missing, not an SQLite database, or another application's.
func OpenFile(ctx context.Context, path string) (_ *File, err error) {
	uri, err := fileURI(path)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("sqlite: %w", err)
	}
	f := &File{}
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	// mode=ro: SQLite never writes the file through this handle, and
	// never creates it. One connection keeps a VACUUM INTO on one
	// snapshot.
	f.db, err = sql.Open("sqlite", fmt.Sprintf("%s?mode=ro&_pragma=busy_timeout(%d)", uri, busyTimeoutMS))
	if err != nil {
		return nil, fmt.Errorf("sqlite: %w", err)
	}
	f.db.SetMaxOpenConns(1)
	var appID int64
	if err := f.db.QueryRowContext(ctx, "PRAGMA application_id").Scan(&appID); err != nil {
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	if appID != applicationID {
		return nil, fmt.Errorf("sqlite: open %s: not a kmsd database (application_id %#x)", path, appID)
	}
	if f.st, err = prepare(ctx, f.db, false); err != nil {
		return nil, err
	}
	return f, nil
}

// ErrCorrupt is returned by Check for a database file that fails SQLite's
// integrity check.
var ErrCorrupt = errors.New("sqlite: database file is corrupt")

// Check runs SQLite's full integrity check on the file and returns its
// schema version and record count. It fails with ErrCorrupt for a damaged
// file and with ErrSchemaTooNew for one a newer kmsd wrote.
func (f *File) Check(ctx context.Context) (Info, error) {
	rows, err := f.db.QueryContext(ctx, "PRAGMA integrity_check")
	if err != nil {
		return Info{}, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	var problems []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			rows.Close()
			return Info{}, fmt.Errorf("sqlite: integrity check: %w", err)
		}
		if s != "ok" && len(problems) < 5 {
			problems = append(problems, s)
		}
	}
	if err := rows.Err(); err != nil {
		return Info{}, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	rows.Close()
	if len(problems) > 0 {
		return Info{}, fmt.Errorf("%w: %q", ErrCorrupt, problems)
	}
	var info Info
	if err := f.db.QueryRowContext(ctx, "SELECT coalesce(max(version), 0) FROM schema_migrations").Scan(&info.SchemaVersion); err != nil {
		return Info{}, fmt.Errorf("sqlite: schema version: %w", err)
	}
	if info.SchemaVersion > len(migrations) {
		return Info{}, fmt.Errorf("%w: database is at version %d, this kmsd knows up to %d", ErrSchemaTooNew, info.SchemaVersion, len(migrations))
	}
	if err := f.db.QueryRowContext(ctx, "SELECT count(*) FROM kv").Scan(&info.Records); err != nil {
		return Info{}, fmt.Errorf("sqlite: count records: %w", err)
	}
	return info, nil
}

// Get implements storage.Reader.
func (f *File) Get(ctx context.Context, key string) ([]byte, error) {
	return ops{st: f.st}.get(ctx, key)
}

// List implements storage.Reader.
func (f *File) List(ctx context.Context, prefix, after string, limit int) ([]storage.Entry, error) {
	return ops{st: f.st}.list(ctx, prefix, after, limit)
}

// Close closes the file. It is safe to call more than once.
func (f *File) Close() error {
	var errs []error
	if f.st != nil {
		errs = append(errs, f.st.close())
		f.st = nil
	}
	if f.db != nil {
		errs = append(errs, f.db.Close())
		f.db = nil
	}
	return errors.Join(errs...)
}
