package sqlite

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/kmsd/kmsd/internal/storage"
)

// value returns n bytes that name tag.
func value(tag string, n int) []byte {
	return bytes.Repeat([]byte(tag), n/len(tag)+1)[:n]
}

// layout checks that every key of want reads back its value through Get and
// List, that exactly the values longer than inlineMax are rows of kv_big,
// and that kv_big holds no row that kv does not name.
func layout(t *testing.T, s *Store, want map[string][]byte) {
	t.Helper()
	ctx := t.Context()
	long := 0
	for k, v := range want {
		got, err := s.Get(ctx, k)
		if err != nil || !bytes.Equal(got, v) {
			t.Fatalf("Get(%q) = %d bytes, %v; want %d bytes", k, len(got), err, len(v))
		}
		var inline, ref bool
		if err := s.reader.QueryRowContext(ctx, "SELECT value IS NOT NULL, big IS NOT NULL FROM kv WHERE key = ?", k).Scan(&inline, &ref); err != nil {
			t.Fatal(err)
		}
		if isLong := len(v) > inlineMax; inline == isLong || ref != isLong {
			t.Fatalf("%q (%d bytes): inline %v, in kv_big %v", k, len(v), inline, ref)
		}
		if len(v) > inlineMax {
			long++
		}
	}
	es, err := s.List(ctx, "", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != len(want) {
		t.Fatalf("List: %d entries, want %d", len(es), len(want))
	}
	for _, e := range es {
		if !bytes.Equal(e.Value, want[e.Key]) {
			t.Fatalf("List: %q = %d bytes, want %d", e.Key, len(e.Value), len(want[e.Key]))
		}
	}
	var rows, named int
	if err := s.reader.QueryRowContext(ctx, "SELECT (SELECT count(*) FROM kv_big), (SELECT count(*) FROM kv_big WHERE id IN (SELECT big FROM kv))").Scan(&rows, &named); err != nil {
		t.Fatal(err)
	}
	if rows != long || named != long {
		t.Fatalf("kv_big holds %d rows, %d of them named by kv; want the %d long values", rows, named, long)
	}
}

// TestLongValues moves values across inlineMax in every direction, through
// every write, and checks that the layout stays exact: a long value in
// kv_big, a short one inline, no row of kv_big left behind.
func TestLongValues(t *testing.T) {
	ctx := t.Context()
	s := openAt(t, t.TempDir())
	want := map[string][]byte{}
	put := func(k string, v []byte) {
		t.Helper()
		if err := s.Put(ctx, k, v); err != nil {
			t.Fatalf("Put(%q, %d bytes): %v", k, len(v), err)
		}
		want[k] = v
	}
	put("at", value("a", inlineMax))
	put("over", value("o", inlineMax+1))
	put("empty", []byte{})
	put("big", value("b", 100_000))
	layout(t, s, want)

	// Short to long, long to long, long to short, on each key.
	for i, n := range []int{inlineMax + 1, 5000, 10, 0, 3000, inlineMax} {
		for _, k := range []string{"at", "over", "empty", "big"} {
			put(k, value(fmt.Sprint(k, i), n))
		}
		layout(t, s, want)
	}

	// Create of a key that exists changes nothing, long or short.
	put("over", value("O", 2000))
	for _, n := range []int{10, 2000} {
		if err := s.Create(ctx, "over", value("x", n)); !errors.Is(err, storage.ErrExists) {
			t.Fatalf("Create of an existing key (%d bytes): %v, want ErrExists", n, err)
		}
	}
	layout(t, s, want)
	if err := s.Create(ctx, "new", value("n", 4000)); err != nil {
		t.Fatal(err)
	}
	want["new"] = value("n", 4000)
	layout(t, s, want)

	// Delete takes the kv_big row with it.
	for _, k := range []string{"over", "new", "at"} {
		if err := s.Delete(ctx, k); err != nil {
			t.Fatal(err)
		}
		delete(want, k)
	}
	layout(t, s, want)

	// Inside a transaction: the same, and a rollback leaves nothing.
	errRollback := errors.New("roll back")
	err := s.Update(ctx, func(tx storage.Tx) error {
		for _, w := range []struct {
			k string
			n int
		}{{"t1", 1000}, {"t1", 2000}, {"t2", 5}, {"big", 10}, {"empty", 900}} {
			if err := tx.Put(ctx, w.k, value(w.k, w.n)); err != nil {
				return err
			}
		}
		if err := tx.Create(ctx, "t3", value("t3", 700)); err != nil {
			return err
		}
		if v, err := tx.Get(ctx, "t1"); err != nil || len(v) != 2000 {
			return fmt.Errorf("Get in the transaction: %d bytes, %v", len(v), err)
		}
		if err := tx.Delete(ctx, "t3"); err != nil {
			return err
		}
		return errRollback
	})
	if !errors.Is(err, errRollback) {
		t.Fatal(err)
	}
	layout(t, s, want)
	err = s.Update(ctx, func(tx storage.Tx) error {
		if err := tx.Put(ctx, "t1", value("t1", 1000)); err != nil {
			return err
		}
		if err := tx.Put(ctx, "big", value("B", 10)); err != nil {
			return err
		}
		return tx.Create(ctx, "t3", value("t3", 700))
	})
	if err != nil {
		t.Fatal(err)
	}
	want["t1"], want["big"], want["t3"] = value("t1", 1000), value("B", 10), value("t3", 700)
	layout(t, s, want)
}

// TestLongValuesFeed checks that a long value's write is one change in
// the feed, as any write: the rows of kv_big are not in the feed.
func TestLongValuesFeed(t *testing.T) {
	ctx := t.Context()
	s := openAt(t, t.TempDir())
	first, err := s.Changes(ctx, storage.Cursor{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	from := first.Next
	for _, n := range []int{10, 1000, 2000, 10} {
		if err := s.Put(ctx, "k", value("k", n)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Delete(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	b, err := s.Changes(ctx, from, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Keys) != 5 || b.Reset {
		t.Fatalf("changes %q (reset %v), want k five times (4 puts and a delete)", b.Keys, b.Reset)
	}
	for _, k := range b.Keys {
		if k != "k" {
			t.Fatalf("change of %q, want only k", k)
		}
	}
}

// TestMigrateToLongValues upgrades a version-3 database holding short and
// long values, and checks every value reads back, long ones out of line.
func TestMigrateToLongValues(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "kmsd.db")
	// The schema of version 3, written as that version did (this code's
	// statements need version 4).
	old := rawOpen(t, path)
	if err := migrate(ctx, old, migrations[:3]); err != nil {
		t.Fatal(err)
	}
	want := map[string][]byte{}
	for i, n := range []int{0, 1, inlineMax, inlineMax + 1, 809, 5000, 100_000} {
		for _, p := range []string{"key/", "keyidx/", "unfed/lastuse/"} {
			k := fmt.Sprintf("%s%03d", p, i)
			want[k] = value(k, n)
			if _, err := old.ExecContext(ctx, "INSERT INTO kv (key, value) VALUES (?, ?)", k, blob(want[k])); err != nil {
				t.Fatal(err)
			}
		}
	}
	var before int
	if err := old.QueryRowContext(ctx, "SELECT count(*) FROM kv_changes").Scan(&before); err != nil {
		t.Fatal(err)
	}
	old.Close()

	s := openAt(t, filepath.Dir(path))
	layout(t, s, want)
	// The feed kept its rows, and its triggers work on the new table.
	var after int
	if err := s.reader.QueryRowContext(ctx, "SELECT count(*) FROM kv_changes").Scan(&after); err != nil {
		t.Fatal(err)
	}
	if after != before {
		t.Fatalf("kv_changes holds %d rows after the migration, %d before", after, before)
	}
	if err := s.Put(ctx, "key/000", value("new", 2000)); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(ctx, "unfed/lastuse/000", value("new", 20)); err != nil {
		t.Fatal(err)
	}
	want["key/000"], want["unfed/lastuse/000"] = value("new", 2000), value("new", 20)
	layout(t, s, want)
	if err := s.reader.QueryRowContext(ctx, "SELECT count(*) FROM kv_changes").Scan(&after); err != nil {
		t.Fatal(err)
	}
	if after != before+1 {
		t.Fatalf("kv_changes grew by %d for one fed and one unfed write, want 1", after-before)
	}
}

// TestLongValuesBatch: PutBatch moves values across inlineMax in every
// direction, a key repeated in a batch among them, and GetBatch reads them
// back; the layout stays exact, and a rolled-back batch leaves nothing.
func TestLongValuesBatch(t *testing.T) {
	ctx := t.Context()
	s := openAt(t, t.TempDir())
	want := map[string][]byte{}
	batch := func(es []storage.Entry, keep bool) {
		t.Helper()
		err := s.Update(ctx, func(tx storage.Tx) error {
			if err := tx.(storage.BatchPutter).PutBatch(ctx, es); err != nil {
				return err
			}
			keys := make([]string, len(es))
			for i, e := range es {
				keys[i] = e.Key
			}
			vs, err := tx.(storage.BatchGetter).GetBatch(ctx, keys)
			if err != nil {
				return err
			}
			last := map[string][]byte{}
			for _, e := range es {
				last[e.Key] = e.Value
			}
			for i, k := range keys {
				if !bytes.Equal(vs[i], last[k]) {
					return fmt.Errorf("GetBatch: %q = %d bytes, want %d", k, len(vs[i]), len(last[k]))
				}
			}
			if !keep {
				return errRollbackBatch
			}
			return nil
		})
		if keep && err != nil || !keep && !errors.Is(err, errRollbackBatch) {
			t.Fatalf("batch of %d: %v", len(es), err)
		}
		if keep {
			for _, e := range es {
				want[e.Key] = e.Value
			}
		}
	}
	keys := []string{"at", "over", "empty", "big"}
	for i, n := range []int{inlineMax, inlineMax + 1, 5000, 10, 0, 3000, inlineMax, 100_000} {
		var es []storage.Entry
		for j, k := range keys {
			// Each key at a size of its own, and the first put twice with
			// the other size.
			m := []int{inlineMax, inlineMax + 1, 5000, 10, 0, 3000, inlineMax, 100_000}[(i+j)%8]
			es = append(es, storage.Entry{Key: k, Value: value(fmt.Sprint(k, i), m)})
		}
		es = append([]storage.Entry{{Key: keys[0], Value: value("first", n)}}, es...)
		es = append(es, storage.Entry{Key: "n" + fmt.Sprint(i), Value: value("n", n)})
		batch(es, true)
		layout(t, s, want)
	}
	batch([]storage.Entry{{Key: "at", Value: value("r", 4000)}, {Key: "big", Value: value("r", 3)}, {Key: "gone", Value: value("g", 900)}}, false)
	layout(t, s, want)
}

var errRollbackBatch = errors.New("roll back")
