package postgres

import (
	"bytes"
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/kmsd/kmsd/internal/storage"
	"github.com/kmsd/kmsd/internal/storage/postgres/pgtest"
	"github.com/kmsd/kmsd/internal/storage/storagetest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// openURL opens the database at url and closes the store when t ends.
func openURL(t testing.TB, url string) *Store {
	t.Helper()
	s, err := Open(t.Context(), url, Options{MaxConns: 20})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Store { return openURL(t, pgtest.URL(t)) })
	// A "directory" is a database: the suite's dir names which one.
	urls := map[string]string{}
	storagetest.RunPersistent(t, func(t *testing.T, dir string) storage.Store {
		u, ok := urls[dir]
		if !ok {
			u = pgtest.URL(t)
			urls[dir] = u
		}
		return openURL(t, u)
	})
}

func TestShared(t *testing.T) {
	storagetest.RunShared(t, func(t *testing.T) (a, b storagetest.SharedStore) {
		u := pgtest.URL(t)
		return openURL(t, u), openURL(t, u)
	})
	t.Run("notices", func(t *testing.T) {
		storagetest.RunShared(t, func(t *testing.T) (a, b storagetest.SharedStore) {
			u := pgtest.URL(t)
			return openNotify(t, u), openNotify(t, u)
		})
	})
}

// TestMigrate: nodes starting together on a new database migrate it once
// (the advisory lock serializes them), and a database migrated past what
// this code knows is refused.
func TestMigrate(t *testing.T) {
	u := pgtest.URL(t)
	const nodes = 4
	errs := make(chan error, nodes)
	for range nodes {
		go func() {
			s, err := Open(t.Context(), u, Options{MaxConns: 2})
			if err == nil {
				s.Close()
			}
			errs <- err
		}()
	}
	for range nodes {
		if err := <-errs; err != nil {
			t.Fatalf("concurrent Open: %v", err)
		}
	}
	s := openURL(t, u)
	var versions []int32
	rows, err := s.pool.Query(t.Context(), `SELECT version FROM kmsd_schema_migrations ORDER BY version`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var v int32
		if err := rows.Scan(&v); err != nil {
			t.Fatal(err)
		}
		versions = append(versions, v)
	}
	if len(versions) != len(migrations) {
		t.Fatalf("versions %v after %d concurrent Opens, want 1..%d once each", versions, nodes, len(migrations))
	}
	var gens int
	if err := s.pool.QueryRow(t.Context(), `SELECT count(*) FROM kmsd_meta WHERE name = 'generation'`).Scan(&gens); err != nil || gens != 1 {
		t.Fatalf("generation rows = %d, %v", gens, err)
	}
	if _, err := s.pool.Exec(t.Context(), `INSERT INTO kmsd_schema_migrations (version) VALUES ($1)`, len(migrations)+1); err != nil {
		t.Fatal(err)
	}
	if s2, err := Open(t.Context(), u, Options{}); !errors.Is(err, ErrSchemaTooNew) {
		if s2 != nil {
			s2.Close()
		}
		t.Fatalf("Open of a newer schema = %v, want ErrSchemaTooNew", err)
	}
}

// TestLargeValuesLZ4: a value too large for its row (a last-use journal
// row or bucket on a large store) is compressed with lz4, not pglz, on a
// server built with lz4 (Debian's is), and reads back whole.
func TestLargeValuesLZ4(t *testing.T) {
	s := openURL(t, pgtest.URL(t))
	ctx := t.Context()
	if _, err := s.pool.Exec(ctx, `SET default_toast_compression = lz4`); err != nil {
		t.Fatalf("this PostgreSQL has no lz4 (%v); the test needs a server that has", err)
	}
	var method string
	if err := s.pool.QueryRow(ctx, `SELECT attcompression::text FROM pg_attribute
		WHERE attrelid = 'kv'::regclass AND attname = 'value'`).Scan(&method); err != nil || method != "l" {
		t.Fatalf("kv.value's compression = %q, %v; want l (lz4)", method, err)
	}
	v := bytes.Repeat([]byte("unfed/lastusej/0/123456789012 us-east-1 Encrypt "), 400)
	if err := s.Put(ctx, "unfed/test/large", v); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Get(ctx, "unfed/test/large"); err != nil || !bytes.Equal(got, v) {
		t.Fatalf("Get of the large value: %d bytes, %v; want the %d put", len(got), err, len(v))
	}
	if err := s.pool.QueryRow(ctx, `SELECT coalesce(pg_column_compression(value), '') FROM kv
		WHERE key = 'unfed/test/large'`).Scan(&method); err != nil || method != "lz4" {
		t.Fatalf("the stored value's compression = %q, %v; want lz4", method, err)
	}
}

// TestDescribe: what messages show of a URL never includes the password.
func TestDescribe(t *testing.T) {
	got := Describe("postgres://kmsd:s3cret@db.example:6432/kmsd?sslmode=disable")
	if strings.Contains(got, "s3cret") || !strings.Contains(got, "db.example:6432") || !strings.Contains(got, `"kmsd"`) {
		t.Errorf("Describe = %q", got)
	}
	if got := Describe("postgres://kmsd:s3cret@[bad"); strings.Contains(got, "s3cret") {
		t.Errorf("Describe of a bad URL = %q", got)
	}
}

// TestCheckBeforeMigrating: a failing Options.Check leaves a database of an
// older schema unmigrated (a node refused for its root key writes nothing).
func TestCheckBeforeMigrating(t *testing.T) {
	u := pgtest.URL(t)
	openURL(t, u).Close()
	errRefused := errors.New("refused")
	var saw string
	newer := append(append([]string(nil), migrations...), `CREATE TABLE newer (x int)`)
	_, err := open(t.Context(), u, Options{Check: func(ctx context.Context, r storage.Reader) error {
		v, err := r.Get(ctx, "canary")
		saw = string(v)
		if err != nil {
			return err
		}
		return errRefused
	}}, newer)
	if !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("open with a check on a database without the key = %v, want ErrNotFound from the check", err)
	}
	s := openURL(t, u)
	if err := s.Put(t.Context(), "canary", []byte("c")); err != nil {
		t.Fatal(err)
	}
	_, err = open(t.Context(), u, Options{Check: func(ctx context.Context, r storage.Reader) error {
		v, err := r.Get(ctx, "canary")
		saw = string(v)
		if err != nil {
			return err
		}
		return errRefused
	}}, newer)
	if !errors.Is(err, errRefused) || saw != "c" {
		t.Fatalf("open = %v (check saw %q), want the check's error after reading c", err, saw)
	}
	var n int
	if err := s.pool.QueryRow(t.Context(), `SELECT count(*) FROM kmsd_schema_migrations`).Scan(&n); err != nil || n != len(migrations) {
		t.Fatalf("migrations after a refused open: %d, %v; want %d (nothing migrated)", n, err, len(migrations))
	}
	// A fresh database has no key space yet: nothing to check.
	called := false
	s2, err := open(t.Context(), pgtest.URL(t), Options{Check: func(context.Context, storage.Reader) error { called = true; return errRefused }}, migrations)
	if err != nil || called {
		t.Fatalf("open of a new database = %v (check called: %v), want success without a check", err, called)
	}
	s2.Close()
}

// TestReadOnly: a read-only Open of a database no kmsd has migrated fails
// with ErrNoSchema and creates nothing; once a node has migrated it, a
// read-only Open reads what the node wrote.
func TestReadOnly(t *testing.T) {
	u := pgtest.URL(t)
	if s, err := Open(t.Context(), u, Options{ReadOnly: true}); !errors.Is(err, ErrNoSchema) {
		if s != nil {
			s.Close()
		}
		t.Fatalf("read-only Open of an empty database: %v; want ErrNoSchema", err)
	}
	s := openURL(t, u) // migrates
	var tables int
	if err := s.pool.QueryRow(t.Context(), `SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'`).Scan(&tables); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(t.Context(), "a", []byte("1")); err != nil {
		t.Fatal(err)
	}
	ro, err := Open(t.Context(), u, Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("read-only Open of a migrated database: %v", err)
	}
	defer ro.Close()
	if v, err := ro.Get(t.Context(), "a"); err != nil || string(v) != "1" {
		t.Fatalf("read-only Get = %q, %v", v, err)
	}
	if tables == 0 {
		t.Fatal("no tables after a migrating Open")
	}
}

// TestCommitFenceTrigger: kmsd_commit_fence (schema version 5) refuses,
// at COMMIT, a marker inserted by the committing transaction whose fence
// has passed (SQLSTATE KMF01); a fence still ahead, no fence (kmsd before
// version 5) and a row restored from a dump (its at older than the
// restoring transaction) commit.
func TestCommitFenceTrigger(t *testing.T) {
	s := openURL(t, pgtest.URL(t))
	ctx := t.Context()
	insert := func(sql string) error {
		tx, err := s.pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(ctx)
		if _, err := tx.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v (the check belongs to COMMIT)", sql, err)
		}
		return tx.Commit(ctx)
	}
	for _, c := range []struct {
		sql     string
		refused bool
	}{
		{`INSERT INTO kmsd_commits (token, fence) VALUES (gen_random_uuid(), clock_timestamp() - interval '1 ms')`, true},
		{`INSERT INTO kmsd_commits (token, fence) VALUES (gen_random_uuid(), clock_timestamp() + interval '1 hour')`, false},
		{`INSERT INTO kmsd_commits (token) VALUES (gen_random_uuid())`, false},
		{`INSERT INTO kmsd_commits (token, at, fence) VALUES (gen_random_uuid(), now() - interval '1 hour', now() - interval '1 hour')`, false},
	} {
		err := insert(c.sql)
		var pe *pgconn.PgError
		if got := errors.As(err, &pe) && pe.Code == errFenceCode; got != c.refused || !c.refused && err != nil {
			t.Errorf("%s: COMMIT = %v, want refused %v", c.sql, err, c.refused)
		}
	}
}
