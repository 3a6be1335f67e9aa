package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// migrations is the schema history: migrations[i] takes the database from
// version i to version i+1. Later versions are appended; an entry that has
// shipped is never edited. The tables are those of the SQLite driver
// (MULTINODE.md §7.2): kv ordered by bytes (COLLATE "C"), kv_changes filled
// by a trigger and stamped with the writing transaction's xid8, leases and
// metadata (the database generation, the change feed's pruning point, the
// root key canary), and the commit markers that settle lost COMMITs.
var migrations = []string{
	// Version 1.
	`CREATE TABLE kv (
	key   text COLLATE "C" PRIMARY KEY,
	value bytea NOT NULL
);
CREATE TABLE kv_changes (
	xid xid8   NOT NULL DEFAULT pg_current_xact_id(),
	seq bigint GENERATED ALWAYS AS IDENTITY,
	key text   COLLATE "C" NOT NULL,
	PRIMARY KEY (xid, seq)
);
CREATE FUNCTION kv_changes_record() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF TG_OP = 'DELETE' THEN
		INSERT INTO kv_changes (key) VALUES (OLD.key);
	ELSE
		INSERT INTO kv_changes (key) VALUES (NEW.key);
	END IF;
	RETURN NULL;
END $$;
CREATE TRIGGER kv_changes AFTER INSERT OR UPDATE OR DELETE ON kv
	FOR EACH ROW EXECUTE FUNCTION kv_changes_record();
CREATE TABLE kmsd_leases (
	name       text COLLATE "C" PRIMARY KEY,
	holder     text NOT NULL,
	epoch      bigint NOT NULL,
	expires_at timestamptz NOT NULL
);
CREATE TABLE kmsd_meta (
	name  text PRIMARY KEY,
	value bytea NOT NULL
);
INSERT INTO kmsd_meta (name, value) VALUES
	('generation', convert_to(gen_random_uuid()::text, 'UTF8')),
	('changes_pruned', convert_to('0:0', 'UTF8'));`,
	// Version 2: commit markers. A transaction id alone cannot settle a
	// COMMIT whose answer was lost: after a crash (or a promotion) that
	// lost the transaction's WAL, PostgreSQL hands the same xid to the
	// next transaction, and pg_xact_status then answers for that one. So
	// every writing transaction also inserts a random token, committed or
	// lost with it, and the token is what resolve looks for.
	`CREATE TABLE kmsd_commits (
	token uuid PRIMARY KEY,
	at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX kmsd_commits_at ON kmsd_commits (at);`,
	// Version 3: keys under storage.UnfedPrefix ("unfed/") are left out
	// of the change feed. The range test is by bytes (COLLATE "C"), as
	// keys compare: '0' follows '/'.
	`CREATE OR REPLACE FUNCTION kv_changes_record() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
	k text;
BEGIN
	IF TG_OP = 'DELETE' THEN
		k := OLD.key;
	ELSE
		k := NEW.key;
	END IF;
	IF NOT (k >= 'unfed/' COLLATE "C" AND k < 'unfed0' COLLATE "C") THEN
		INSERT INTO kv_changes (key) VALUES (k);
	END IF;
	RETURN NULL;
END $$;`,
	// Version 4: the unfed range is left out by the triggers' WHEN
	// clauses, so a write of an unfed key (a last-use record: the
	// flusher's thousands a second on a large store) neither calls the
	// plpgsql function nor queues an after-trigger event. The function's
	// own test stays, for a trigger made otherwise.
	`DROP TRIGGER kv_changes ON kv;
CREATE TRIGGER kv_changes_write AFTER INSERT OR UPDATE ON kv FOR EACH ROW
	WHEN (NOT (NEW.key >= 'unfed/' COLLATE "C" AND NEW.key < 'unfed0' COLLATE "C"))
	EXECUTE FUNCTION kv_changes_record();
CREATE TRIGGER kv_changes_delete AFTER DELETE ON kv FOR EACH ROW
	WHEN (NOT (OLD.key >= 'unfed/' COLLATE "C" AND OLD.key < 'unfed0' COLLATE "C"))
	EXECUTE FUNCTION kv_changes_record();`,
	// Version 5: writes fenced by a node's lease (storage.WriteFencer).
	// A writing transaction of a fenced handle writes the lease's expiry
	// into its commit marker; this trigger, deferred to COMMIT, refuses
	// the commit once the database's clock has reached it. Only markers
	// inserted by the transaction that commits them are checked (at is
	// its start, now()): rows restored from a dump, whose at is older,
	// pass. Markers of kmsd versions before this one carry no fence.
	`ALTER TABLE kmsd_commits ADD COLUMN fence timestamptz;
CREATE FUNCTION kmsd_commit_fence() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF NEW.fence <= clock_timestamp() THEN
		RAISE EXCEPTION 'kmsd: the writing node''s lease expired at % before its transaction could commit', NEW.fence
			USING ERRCODE = 'KMF01';
	END IF;
	RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER kmsd_commit_fence AFTER INSERT ON kmsd_commits
	DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
	WHEN (NEW.fence IS NOT NULL AND NEW.at = now())
	EXECUTE FUNCTION kmsd_commit_fence();`,
	// Version 6: values too large to keep in their row (over ~2 KB: the
	// last-use journal's rows and buckets on a large store, written
	// thousands of times a minute) are compressed with lz4 instead of
	// pglz, whose compression was a third of the server's CPU under
	// Encrypt on a million keys (README, "Scale"). A server built without
	// lz4 keeps pglz: the statement fails with feature_not_supported,
	// which is caught here, and the migration still counts as done.
	`DO $$
BEGIN
	ALTER TABLE kv ALTER COLUMN value SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
	RAISE NOTICE 'kmsd: this PostgreSQL has no lz4; large values stay compressed with pglz';
END $$;`,
}

// migrateLock is the key of the transaction-scoped advisory lock that
// serializes migrations of nodes starting at once ("kmsdmigr").
const migrateLock = 0x6b6d73646d696772

// ErrSchemaTooNew is returned by Open for a database that a newer kmsd has
// migrated past the versions this one knows.
var ErrSchemaTooNew = errors.New("postgres: database schema is newer than this kmsd")

// migrate brings the schema to version len(migs) in one transaction under
// pg_advisory_xact_lock: nodes starting together wait for one another, a
// failed migration leaves the database as it was, and the lock goes with
// the transaction, so a crashed node leaves no lock behind.
func migrate(ctx context.Context, pool *pgxpool.Pool, migs []string) error {
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		// A node may wait here while another migrates, and a migration may
		// take longer than the sessions' short timeouts allow.
		if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '5min'; SET LOCAL statement_timeout = '30min'`); err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(migrateLock)); err != nil {
			return fmt.Errorf("migrate: lock: %w", err)
		}
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS kmsd_schema_migrations (
	version    integer PRIMARY KEY,
	applied_at timestamptz NOT NULL DEFAULT now()
)`); err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
		var current int
		if err := tx.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM kmsd_schema_migrations`).Scan(&current); err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
		if current > len(migs) {
			return fmt.Errorf("%w: database is at version %d, this kmsd knows up to %d", ErrSchemaTooNew, current, len(migs))
		}
		for v := current + 1; v <= len(migs); v++ {
			if _, err := tx.Exec(ctx, migs[v-1]); err != nil {
				return fmt.Errorf("migrate to version %d: %w", v, err)
			}
			if _, err := tx.Exec(ctx, `INSERT INTO kmsd_schema_migrations (version) VALUES ($1)`, v); err != nil {
				return fmt.Errorf("migrate to version %d: %w", v, err)
			}
		}
		return nil
	})
}
