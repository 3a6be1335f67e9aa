package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
)

// migrations is the schema history: migrations[i] takes the database from
// version i to version i+1. Later versions are appended; an entry that has
// shipped is never edited, since databases in the field already ran it.
//
// The kv table is STRICT, so a value of the wrong type is an error rather
// than a silent conversion, and WITHOUT ROWID, so that a Get is one lookup in
// the primary-key B-tree, which holds the rows ordered by key.
var migrations = []string{
	// Version 1: the key space.
	`PRAGMA application_id = ` + strconv.Itoa(applicationID) + `;
CREATE TABLE kv (
	key   TEXT PRIMARY KEY NOT NULL,
	value BLOB NOT NULL
) STRICT, WITHOUT ROWID;`,
	// Version 2: the change feed, leases and database metadata
	// (storage.Watcher, storage.Leaser). Every write to kv is recorded by a
	// trigger, so no code path can forget it; seq is AUTOINCREMENT so that
	// it is never reused after pruning, and since SQLite has one writer at
	// a time its order is commit order. The generation is a random name of
	// this database, which a restore from another copy would change.
	`CREATE TABLE kv_changes (
	seq INTEGER PRIMARY KEY AUTOINCREMENT,
	key TEXT NOT NULL
) STRICT;
CREATE TRIGGER kv_changes_insert AFTER INSERT ON kv BEGIN INSERT INTO kv_changes (key) VALUES (new.key); END;
CREATE TRIGGER kv_changes_update AFTER UPDATE ON kv BEGIN INSERT INTO kv_changes (key) VALUES (new.key); END;
CREATE TRIGGER kv_changes_delete AFTER DELETE ON kv BEGIN INSERT INTO kv_changes (key) VALUES (old.key); END;
CREATE TABLE kmsd_leases (
	name       TEXT PRIMARY KEY NOT NULL,
	holder     TEXT NOT NULL,
	epoch      INTEGER NOT NULL,
	expires_at INTEGER NOT NULL -- Unix milliseconds
) STRICT, WITHOUT ROWID;
CREATE TABLE kmsd_meta (
	name  TEXT PRIMARY KEY NOT NULL,
	value BLOB NOT NULL
) STRICT, WITHOUT ROWID;
INSERT INTO kmsd_meta (name, value) VALUES ('generation', CAST(lower(hex(randomblob(16))) AS BLOB));
INSERT INTO kmsd_meta (name, value) VALUES ('changes_pruned', CAST('0' AS BLOB));`,
	// Version 3: keys under storage.UnfedPrefix ("unfed/") are left out
	// of the change feed. The range test is by bytes, as keys compare:
	// '0' follows '/'.
	`DROP TRIGGER kv_changes_insert;
DROP TRIGGER kv_changes_update;
DROP TRIGGER kv_changes_delete;
CREATE TRIGGER kv_changes_insert AFTER INSERT ON kv WHEN NOT (new.key >= 'unfed/' AND new.key < 'unfed0')
	BEGIN INSERT INTO kv_changes (key) VALUES (new.key); END;
CREATE TRIGGER kv_changes_update AFTER UPDATE ON kv WHEN NOT (new.key >= 'unfed/' AND new.key < 'unfed0')
	BEGIN INSERT INTO kv_changes (key) VALUES (new.key); END;
CREATE TRIGGER kv_changes_delete AFTER DELETE ON kv WHEN NOT (old.key >= 'unfed/' AND old.key < 'unfed0')
	BEGIN INSERT INTO kv_changes (key) VALUES (old.key); END;`,
	// Version 4: values longer than 320 bytes (inlineMax when this
	// version was written) live in kv_big, named by kv.big, so that kv's
	// B-tree holds small rows only (see inlineMax). kv is rebuilt: a
	// million keys take ~15 s, once, and the old table's pages stay in the
	// file as free pages that later writes reuse. Triggers keep kv_big
	// exact: a row of kv that stops naming a kv_big row (updated or
	// deleted) deletes it. kv_changes and its triggers are as before.
	`CREATE TABLE kv_big (
	id    INTEGER PRIMARY KEY,
	value BLOB NOT NULL
) STRICT;
CREATE TABLE kv_new (
	key   TEXT PRIMARY KEY NOT NULL,
	value BLOB,
	big   INTEGER
) STRICT, WITHOUT ROWID;
INSERT INTO kv_big (id, value)
	SELECT row_number() OVER (ORDER BY key), value FROM kv WHERE length(value) > 320;
INSERT INTO kv_new (key, value, big)
	SELECT key, NULL, row_number() OVER (ORDER BY key) FROM kv WHERE length(value) > 320;
INSERT INTO kv_new (key, value, big)
	SELECT key, value, NULL FROM kv WHERE length(value) <= 320;
DROP TABLE kv;
ALTER TABLE kv_new RENAME TO kv;
CREATE TRIGGER kv_changes_insert AFTER INSERT ON kv WHEN NOT (new.key >= 'unfed/' AND new.key < 'unfed0')
	BEGIN INSERT INTO kv_changes (key) VALUES (new.key); END;
CREATE TRIGGER kv_changes_update AFTER UPDATE ON kv WHEN NOT (new.key >= 'unfed/' AND new.key < 'unfed0')
	BEGIN INSERT INTO kv_changes (key) VALUES (new.key); END;
CREATE TRIGGER kv_changes_delete AFTER DELETE ON kv WHEN NOT (old.key >= 'unfed/' AND old.key < 'unfed0')
	BEGIN INSERT INTO kv_changes (key) VALUES (old.key); END;
CREATE TRIGGER kv_big_update AFTER UPDATE ON kv WHEN old.big IS NOT NULL AND old.big IS NOT new.big
	BEGIN DELETE FROM kv_big WHERE id = old.big; END;
CREATE TRIGGER kv_big_delete AFTER DELETE ON kv WHEN old.big IS NOT NULL
	BEGIN DELETE FROM kv_big WHERE id = old.big; END;`,
}

// applicationID marks a database file as kmsd's ("kmsd" in ASCII) in the
// SQLite header, so that Open refuses some other application's database
// rather than migrating it.
const applicationID = 0x6b6d7364

// ErrSchemaTooNew is returned by Open for a database that a newer kmsd has
// migrated past the versions this one knows. Running older code on it could
// lose data, so it must be upgraded rather than opened.
var ErrSchemaTooNew = errors.New("sqlite: database schema is newer than this kmsd")

// migrate brings the schema of db to version len(migs) in one transaction,
// so a failed migration leaves the database as it was.
func migrate(ctx context.Context, db *sql.DB, migs []string) (err error) {
	tx, err := db.BeginTx(ctx, nil) // IMMEDIATE: holds the write lock throughout
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()

	var appID int64
	if err := tx.QueryRowContext(ctx, "PRAGMA application_id").Scan(&appID); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	if appID != 0 && appID != applicationID {
		return fmt.Errorf("migrate: not a kmsd database (application_id %#x)", appID)
	}
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
	version    INTEGER PRIMARY KEY NOT NULL,
	applied_at TEXT NOT NULL
) STRICT`); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	var current int
	if err := tx.QueryRowContext(ctx, "SELECT coalesce(max(version), 0) FROM schema_migrations").Scan(&current); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	if current > len(migs) {
		return fmt.Errorf("%w: database is at version %d, this kmsd knows up to %d", ErrSchemaTooNew, current, len(migs))
	}
	for v := current + 1; v <= len(migs); v++ {
		if _, err := tx.ExecContext(ctx, migs[v-1]); err != nil {
			return fmt.Errorf("migrate to version %d: %w", v, err)
		}
		if _, err := tx.ExecContext(ctx,
			`INSERT INTO schema_migrations (version, applied_at) VALUES (?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))`,
			v); err != nil {
			return fmt.Errorf("migrate to version %d: %w", v, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	return nil
}
