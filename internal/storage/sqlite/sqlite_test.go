package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/kmsd/kmsd/internal/storage"
	"github.com/kmsd/kmsd/internal/storage/storagetest"
)

// openAt opens the store at dir/kmsd.db and closes it when t ends.
func openAt(t testing.TB, dir string) *Store {
	t.Helper()
	s, err := Open(t.Context(), filepath.Join(dir, "kmsd.db"))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Store { return openAt(t, t.TempDir()) })
	storagetest.RunPersistent(t, func(t *testing.T, dir string) storage.Store { return openAt(t, dir) })
}

// rawOpen opens path with database/sql alone, to look at what Open left.
func rawOpen(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatalf("sql.Open: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func TestPragmas(t *testing.T) {
	s := openAt(t, t.TempDir())
	tests := []struct {
		name string
		db   *sql.DB
		want string
	}{
		{"journal_mode", s.writer, "wal"},
		{"synchronous", s.writer, "2"}, // FULL
		{"foreign_keys", s.writer, "1"},
		{"busy_timeout", s.writer, fmt.Sprint(busyTimeoutMS)},
		{"foreign_keys", s.reader, "1"},
		{"busy_timeout", s.reader, fmt.Sprint(busyTimeoutMS)},
		{"query_only", s.reader, "1"},
		{"application_id", s.reader, fmt.Sprint(applicationID)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got string
			if err := tt.db.QueryRowContext(t.Context(), "PRAGMA "+tt.name).Scan(&got); err != nil {
				t.Fatalf("PRAGMA %s: %v", tt.name, err)
			}
			if got != tt.want {
				t.Fatalf("PRAGMA %s = %q, want %q", tt.name, got, tt.want)
			}
		})
	}
}

func TestReaderCannotWrite(t *testing.T) {
	s := openAt(t, t.TempDir())
	if _, err := s.reader.ExecContext(t.Context(), "INSERT INTO kv (key, value) VALUES ('k', x'')"); err == nil {
		t.Fatalf("a reader connection wrote to the database")
	}
}

// TestQueryPlan guards the promise that prefix scans and lookups are index
// searches on the primary key, not table scans.
func TestQueryPlan(t *testing.T) {
	s := openAt(t, t.TempDir())
	tests := []struct {
		name, query string
		want        string
	}{
		{"get", sqlGet, "SEARCH kv USING PRIMARY KEY (key=?)"},
		{"list from", sqlListFrom, "SEARCH kv USING PRIMARY KEY (key>? AND key<?)"},
		{"list after", sqlListAfter, "SEARCH kv USING PRIMARY KEY (key>? AND key<?)"},
		{"get many", sqlGetN, "SEARCH kv USING PRIMARY KEY (key=?)"},
	}
	// A long value is then one row id lookup in kv_big.
	const big = "SEARCH b USING INTEGER PRIMARY KEY (rowid=?) LEFT-JOIN"
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := []any{"a", "b", 10}
			if n := strings.Count(tt.query, "?"); n <= len(args) {
				args = args[:n]
			} else {
				args = make([]any, n)
				for i := range args {
					args[i] = strconv.Itoa(i)
				}
			}
			rows, err := s.reader.QueryContext(t.Context(), "EXPLAIN QUERY PLAN "+tt.query, args...)
			if err != nil {
				t.Fatalf("EXPLAIN: %v", err)
			}
			defer rows.Close()
			var plan []string
			for rows.Next() {
				var id, parent, unused int
				var detail string
				if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
					t.Fatalf("Scan: %v", err)
				}
				plan = append(plan, detail)
			}
			if len(plan) != 2 || plan[0] != tt.want || plan[1] != big {
				t.Fatalf("plan = %q, want [%q %q]", plan, tt.want, big)
			}
		})
	}
}

func TestFileMode(t *testing.T) {
	dir := t.TempDir()
	s := openAt(t, dir)
	if err := s.Put(t.Context(), "k", []byte("v")); err != nil {
		t.Fatalf("Put: %v", err)
	}
	for _, name := range []string{"kmsd.db", "kmsd.db-wal", "kmsd.db-shm"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatalf("Stat: %v", err)
		}
		if perm := fi.Mode().Perm(); perm&0o077 != 0 {
			t.Errorf("%s has mode %v, want no access for group and others", name, perm)
		}
	}
}

func TestPathNeedingEscape(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a dir?with#odd%chars")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	s := openAt(t, dir)
	if err := s.Put(t.Context(), "k", []byte("v")); err != nil {
		t.Fatalf("Put: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "kmsd.db")); err != nil {
		t.Fatalf("database not at the path given: %v", err)
	}
}

func TestOpenRefuses(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, path string)
	}{
		{"missing directory", func(t *testing.T, path string) { os.RemoveAll(filepath.Dir(path)) }},
		{"not a database", func(t *testing.T, path string) {
			if err := os.WriteFile(path, []byte(strings.Repeat("not sqlite ", 100)), 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{"another application's database", func(t *testing.T, path string) {
			db := rawOpen(t, path)
			if _, err := db.ExecContext(t.Context(), "PRAGMA application_id = 42; CREATE TABLE theirs (x)"); err != nil {
				t.Fatal(err)
			}
			db.Close()
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "kmsd.db")
			tt.setup(t, path)
			if s, err := Open(t.Context(), path); err == nil {
				s.Close()
				t.Fatalf("Open succeeded")
			}
		})
	}
	for _, path := range []string{"", ":memory:"} {
		if s, err := Open(t.Context(), path); err == nil {
			s.Close()
			t.Fatalf("Open(%q) succeeded", path)
		}
	}
}

func TestMigrations(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "kmsd.db")
	// The added version is not idempotent: running it twice would count
	// two rows. have and upgraded are the version lists before and after it.
	have, upgraded := seq(len(migrations)), seq(len(migrations)+1)
	migs := append(append([]string(nil), migrations...),
		`CREATE TABLE runs (n INTEGER NOT NULL) STRICT; INSERT INTO runs VALUES (1);`)

	versions := func(t *testing.T) []int {
		db := rawOpen(t, path)
		rows, err := db.QueryContext(ctx, "SELECT version FROM schema_migrations ORDER BY version")
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		var vs []int
		for rows.Next() {
			var v int
			if err := rows.Scan(&v); err != nil {
				t.Fatal(err)
			}
			vs = append(vs, v)
		}
		return vs
	}

	t.Run("fresh database at the current version", func(t *testing.T) {
		s, err := open(ctx, path, migrations)
		if err != nil {
			t.Fatalf("open: %v", err)
		}
		if err := s.Put(ctx, "k", []byte("v")); err != nil {
			t.Fatalf("Put: %v", err)
		}
		s.Close()
		if got := versions(t); fmt.Sprint(got) != have {
			t.Fatalf("versions = %v, want %s", got, have)
		}
	})
	t.Run("upgrade runs only the new version", func(t *testing.T) {
		for range 3 {
			s, err := open(ctx, path, migs)
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			if v, err := s.Get(ctx, "k"); err != nil || string(v) != "v" {
				t.Fatalf("Get after upgrade = %q, %v", v, err)
			}
			var runs int
			if err := s.reader.QueryRowContext(ctx, "SELECT count(*) FROM runs").Scan(&runs); err != nil {
				t.Fatal(err)
			}
			s.Close()
			if runs != 1 {
				t.Fatalf("the added version ran %d times", runs)
			}
		}
		if got := versions(t); fmt.Sprint(got) != upgraded {
			t.Fatalf("versions = %v, want %s", got, upgraded)
		}
	})
	t.Run("newer database refused", func(t *testing.T) {
		s, err := open(ctx, path, migrations)
		if !errors.Is(err, ErrSchemaTooNew) {
			if s != nil {
				s.Close()
			}
			t.Fatalf("open with fewer migrations: got %v, want ErrSchemaTooNew", err)
		}
	})
	t.Run("failed migration leaves nothing behind", func(t *testing.T) {
		bad := append(append([]string(nil), migs...), `CREATE TABLE half (x); SELECT * FROM no_such_table;`)
		if s, err := open(ctx, path, bad); err == nil {
			s.Close()
			t.Fatalf("open with a failing migration succeeded")
		}
		if got := versions(t); fmt.Sprint(got) != upgraded {
			t.Fatalf("versions = %v, want %s", got, upgraded)
		}
		var n int
		db := rawOpen(t, path)
		if err := db.QueryRowContext(ctx, "SELECT count(*) FROM sqlite_schema WHERE name = 'half'").Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Fatalf("the failed migration's table was kept")
		}
	})
}

// TestTwoStoresOneFile checks that two Stores on one file (as two
// processes would have) make progress through the busy timeout.
func TestTwoStoresOneFile(t *testing.T) {
	dir := t.TempDir()
	a, b := openAt(t, dir), openAt(t, dir)
	ctx := t.Context()
	done := make(chan error, 2)
	for _, s := range []*Store{a, b} {
		go func() {
			for i := range 20 {
				err := s.Update(ctx, func(tx storage.Tx) error {
					v, err := tx.Get(ctx, "n")
					if err != nil && !errors.Is(err, storage.ErrNotFound) {
						return err
					}
					return tx.Put(ctx, "n", append(v, byte(i)))
				})
				if err != nil {
					done <- err
					return
				}
			}
			done <- nil
		}()
	}
	for range 2 {
		if err := <-done; err != nil {
			t.Fatalf("Update: %v", err)
		}
	}
	v, err := b.Get(ctx, "n")
	if err != nil || len(v) != 40 {
		t.Fatalf("Get = %d bytes, %v; want 40 bytes", len(v), err)
	}
}

func BenchmarkGet(b *testing.B) {
	s := openAt(b, b.TempDir())
	ctx := context.Background()
	const n = 1000
	err := s.Update(ctx, func(tx storage.Tx) error {
		for i := range n {
			if err := tx.Put(ctx, fmt.Sprintf("keys/%06d", i), make([]byte, 256)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Run("serial", func(b *testing.B) {
		i := 0
		for b.Loop() {
			if _, err := s.Get(ctx, fmt.Sprintf("keys/%06d", i%n)); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				if _, err := s.Get(ctx, fmt.Sprintf("keys/%06d", i%n)); err != nil {
					b.Error(err)
					return
				}
				i++
			}
		})
	})
}

// BenchmarkPut measures a durable write: each Put is a transaction of its
// own, so the figure is dominated by the fsync of the file system under
// b.TempDir.
func BenchmarkPut(b *testing.B) {
	s := openAt(b, b.TempDir())
	ctx := context.Background()
	v := make([]byte, 256)
	i := 0
	for b.Loop() {
		if err := s.Put(ctx, fmt.Sprintf("keys/%06d", i%1000), v); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkUpdate measures a small read-modify-write transaction.
func BenchmarkUpdate(b *testing.B) {
	s := openAt(b, b.TempDir())
	ctx := context.Background()
	for b.Loop() {
		err := s.Update(ctx, func(tx storage.Tx) error {
			v, err := tx.Get(ctx, "counter")
			if err != nil && !errors.Is(err, storage.ErrNotFound) {
				return err
			}
			return tx.Put(ctx, "counter", append(v[:0:0], 'x'))
		})
		if err != nil {
			b.Fatal(err)
		}
	}
}

func TestShared(t *testing.T) {
	storagetest.RunShared(t, func(t *testing.T) (a, b storagetest.SharedStore) {
		dir := t.TempDir()
		return openAt(t, dir), openAt(t, dir)
	})
}

// seq formats the version list 1..n as fmt prints a []int.
func seq(n int) string {
	vs := make([]int, n)
	for i := range vs {
		vs[i] = i + 1
	}
	return fmt.Sprint(vs)
}

// TestRawBytesKept: list and queryValues keep the driver's slices of the
// values they read (sql.RawBytes) without copying them, which is right
// only while the driver gives each value a slice of its own. Values of
// one length, some past a page (overflow), read by List and GetBatch
// within a transaction and outside one, must each still be theirs after
// every row is read and the rows closed.
func TestRawBytesKept(t *testing.T) {
	ctx := t.Context()
	s := openAt(t, t.TempDir())
	var keys []string
	want := map[string][]byte{}
	for i := range 40 {
		k := fmt.Sprintf("raw/%02d", i)
		v := []byte(strings.Repeat(string(rune('a'+i%26)), 100+(i%2)*5000))
		v[0] = byte(i)
		keys = append(keys, k)
		want[k] = v
		if err := s.Put(ctx, k, v); err != nil {
			t.Fatal(err)
		}
	}
	check := func(how string, k string, got []byte) {
		t.Helper()
		if string(got) != string(want[k]) {
			t.Errorf("%s %s: value changed after later rows were read (%d bytes, first %d)", how, k, len(got), got[0])
		}
	}
	es, err := s.List(ctx, "raw/", "", 0)
	if err != nil || len(es) != len(keys) {
		t.Fatalf("List: %d entries, %v", len(es), err)
	}
	for _, e := range es {
		check("List", e.Key, e.Value)
	}
	if err := s.Update(ctx, func(tx storage.Tx) error {
		es, err := tx.List(ctx, "raw/", "", 0)
		if err != nil {
			return err
		}
		vs, err := storage.GetBatch(ctx, tx, keys)
		if err != nil {
			return err
		}
		for _, e := range es {
			check("tx.List", e.Key, e.Value)
		}
		for i, v := range vs {
			check("GetBatch", keys[i], v)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
