package storagetest

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/kmsd/kmsd/internal/storage"
)

// plainTx hides a Tx's optional capabilities, BatchCreator among them, so
// that storage.CreateBatch takes its fallback of one Create per entry.
type plainTx struct{ storage.Tx }

// batchMode is a way a batch case runs: wrap hands the case the Tx of
// Update as it is, after checking that it offers the capability under
// test ("native"), or with its optional capabilities hidden, so that the
// storage function takes its fallback ("fallback").
type batchMode struct {
	name string
	wrap func(t *testing.T, tx storage.Tx) storage.Tx
}

// batchModes returns the native and fallback modes; offers names the
// capability under test and reports whether tx offers it.
func batchModes(offers func(tx storage.Tx) (string, bool)) []batchMode {
	return []batchMode{
		{"native", func(t *testing.T, tx storage.Tx) storage.Tx {
			if name, ok := offers(tx); !ok {
				t.Fatalf("the Tx Update passes (%T) does not offer %s", tx, name)
			}
			return tx
		}},
		{"fallback", func(_ *testing.T, tx storage.Tx) storage.Tx { return plainTx{tx} }},
	}
}

// testCreateBatch runs the CreateBatch cases twice: with the driver's own
// storage.BatchCreator (which the Tx of every driver's Update offers) and
// with storage.CreateBatch's fallback on the same store, which must give
// the same results.
func testCreateBatch(t *testing.T, open opener) {
	for _, m := range batchModes(func(tx storage.Tx) (string, bool) {
		_, ok := tx.(storage.BatchCreator)
		return "storage.BatchCreator", ok
	}) {
		t.Run(m.name, func(t *testing.T) {
			s := open(t)
			// batch runs CreateBatch of es in an Update of its own that
			// commits, and returns what it reported.
			batch := func(t *testing.T, es []storage.Entry) []bool {
				t.Helper()
				var exists []bool
				err := s.Update(t.Context(), func(tx storage.Tx) error {
					var err error
					exists, err = storage.CreateBatch(t.Context(), m.wrap(t, tx), es)
					return err
				})
				if err != nil {
					t.Fatalf("CreateBatch of %d entries: %v", len(es), err)
				}
				if len(exists) != len(es) {
					t.Fatalf("CreateBatch of %d entries reported %d", len(es), len(exists))
				}
				return exists
			}
			t.Run("Empty", func(t *testing.T) {
				if got := batch(t, nil); len(got) != 0 {
					t.Errorf("nil batch reported %v", got)
				}
				if got := batch(t, []storage.Entry{}); len(got) != 0 {
					t.Errorf("empty batch reported %v", got)
				}
				wantKeys(t, s, "", "", 0, nil)
			})
			t.Run("NewAndExisting", func(t *testing.T) {
				mustPut(t, s, "ne/b", []byte("old b"))
				mustPut(t, s, "ne/d", []byte{})
				got := batch(t, []storage.Entry{
					{Key: "ne/a", Value: []byte("A")},
					{Key: "ne/b", Value: []byte("B")},
					{Key: "ne/c", Value: []byte("C")},
					{Key: "ne/d", Value: []byte("D")},
				})
				if want := []bool{false, true, false, true}; !slices.Equal(got, want) {
					t.Errorf("exists = %v, want %v", got, want)
				}
				wantValue(t, s, "ne/a", []byte("A"))
				wantValue(t, s, "ne/b", []byte("old b"))
				wantValue(t, s, "ne/c", []byte("C"))
				wantValue(t, s, "ne/d", []byte{})
				wantKeys(t, s, "ne/", "", 0, []string{"ne/a", "ne/b", "ne/c", "ne/d"})
			})
			t.Run("Duplicates", func(t *testing.T) {
				mustPut(t, s, "du/old", []byte("old"))
				got := batch(t, []storage.Entry{
					{Key: "du/x", Value: []byte("first")},
					{Key: "du/old", Value: []byte("o1")},
					{Key: "du/x", Value: []byte("second")},
					{Key: "du/y", Value: []byte("y")},
					{Key: "du/old", Value: []byte("o2")},
					{Key: "du/x", Value: []byte("third")},
				})
				if want := []bool{false, true, true, false, true, true}; !slices.Equal(got, want) {
					t.Errorf("exists = %v, want %v", got, want)
				}
				wantValue(t, s, "du/x", []byte("first"))
				wantValue(t, s, "du/y", []byte("y"))
				wantValue(t, s, "du/old", []byte("old"))
			})
			t.Run("OddKeys", func(t *testing.T) {
				keys := []string{
					`ok/{a,b}`, `ok/"quoted"`, `ok/back\slash`, `ok/NULL`, "ok/ space ", `ok/%_`,
					"ok/é中文", "ok/\U0010FFFF", "ok/\x01\t\n", "ok/'", "ok/" + strings.Repeat("k", storage.MaxKeyLen-3),
				}
				// Enough of them that drivers batching by statement fill one.
				short := slices.Clone(keys[:len(keys)-1])
				for j := range 20 {
					for _, k := range short {
						keys = append(keys, fmt.Sprintf("%s/%d", k, j))
					}
				}
				var es []storage.Entry
				for i, k := range keys {
					es = append(es, storage.Entry{Key: k, Value: []byte(fmt.Sprint(i))})
				}
				got := batch(t, es)
				if want := make([]bool, len(keys)); !slices.Equal(got, want) {
					t.Errorf("exists = %v, want all false", got)
				}
				for i, k := range keys {
					wantValue(t, s, k, []byte(fmt.Sprint(i)))
				}
				slices.Sort(keys)
				wantKeys(t, s, "ok/", "", 0, keys)
				// The same keys again all exist.
				if got := batch(t, es); slices.Contains(got, false) {
					t.Errorf("second batch of the same keys: exists = %v, want all true", got)
				}
			})
			t.Run("Values", func(t *testing.T) {
				all := make([]byte, 256)
				for i := range all {
					all[i] = byte(i)
				}
				big := bytes.Repeat([]byte("0123456789abcdef\x00\xff"), 1<<16) // about 1 MiB
				vals := [][]byte{nil, {}, {0}, all, big, []byte("x")}
				var es []storage.Entry
				for i, v := range vals {
					es = append(es, storage.Entry{Key: fmt.Sprintf("va/%d", i), Value: v})
				}
				batch(t, es)
				for i, v := range vals {
					got := mustGet(t, s, fmt.Sprintf("va/%d", i))
					if !bytes.Equal(got, v) || got == nil {
						t.Errorf("va/%d: got %d bytes, want %d", i, len(got), len(v))
					}
				}
			})
			t.Run("ReadsOwnWrites", func(t *testing.T) {
				ctx := t.Context()
				err := s.Update(ctx, func(tx storage.Tx) error {
					if _, err := storage.CreateBatch(ctx, m.wrap(t, tx), []storage.Entry{{Key: "ro/a", Value: []byte("a")}}); err != nil {
						return err
					}
					wantValue(t, tx, "ro/a", []byte("a"))
					// Created earlier in the transaction: exists.
					got, err := storage.CreateBatch(ctx, m.wrap(t, tx), []storage.Entry{{Key: "ro/a", Value: []byte("b")}, {Key: "ro/b", Value: []byte("b")}})
					if err != nil {
						return err
					}
					if want := []bool{true, false}; !slices.Equal(got, want) {
						t.Errorf("exists = %v, want %v", got, want)
					}
					wantKeys(t, tx, "ro/", "", 0, []string{"ro/a", "ro/b"})
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
				wantValue(t, s, "ro/a", []byte("a"))
			})
			t.Run("Rollback", func(t *testing.T) {
				ctx := t.Context()
				mustPut(t, s, "rb/kept", []byte("kept"))
				err := s.Update(ctx, func(tx storage.Tx) error {
					if _, err := storage.CreateBatch(ctx, m.wrap(t, tx), []storage.Entry{
						{Key: "rb/a", Value: []byte("a")}, {Key: "rb/kept", Value: []byte("x")}, {Key: "unfed/rb", Value: []byte("u")},
					}); err != nil {
						return err
					}
					return errRollback
				})
				if !errors.Is(err, errRollback) {
					t.Fatalf("Update = %v, want fn's error", err)
				}
				wantKeys(t, s, "rb/", "", 0, []string{"rb/kept"})
				wantValue(t, s, "rb/kept", []byte("kept"))
				wantNotFound(t, s, "unfed/rb")
			})
			t.Run("InvalidKeyWritesNothing", func(t *testing.T) {
				ctx := t.Context()
				for _, bad := range []string{"", "iv/\x00", "iv/\xff", strings.Repeat("k", storage.MaxKeyLen+1)} {
					err := s.Update(ctx, func(tx storage.Tx) error {
						_, err := storage.CreateBatch(ctx, m.wrap(t, tx), []storage.Entry{
							{Key: "iv/good", Value: []byte("g")}, {Key: bad, Value: []byte("b")},
						})
						if !errors.Is(err, storage.ErrInvalidKey) {
							t.Errorf("CreateBatch with key %q = %v, want ErrInvalidKey", bad, err)
						}
						return nil // commit what (if anything) was written
					})
					if err != nil {
						t.Fatal(err)
					}
				}
				wantNotFound(t, s, "iv/good")
			})
			t.Run("Large", func(t *testing.T) {
				// More entries than one PostgreSQL statement carries, some
				// existing and some repeated across chunks, then more bytes
				// than one carries.
				const n = 23456
				mustPut(t, s, "lg/00005", []byte("old"))
				mustPut(t, s, "lg/15000", []byte("old"))
				var es []storage.Entry
				for i := range n {
					es = append(es, storage.Entry{Key: fmt.Sprintf("lg/%05d", i), Value: []byte(fmt.Sprint(i))})
				}
				es = append(es, storage.Entry{Key: "lg/00001", Value: []byte("again")})
				got := batch(t, es)
				for i, e := range got {
					want := i == 5 || i == 15000 || i == n
					if e != want {
						t.Fatalf("exists[%d] (%s) = %v, want %v", i, es[i].Key, e, want)
					}
				}
				if es := mustList(t, s, "lg/", "", 0); len(es) != n {
					t.Fatalf("%d lg/ keys after the batch, want %d", len(es), n)
				}
				wantValue(t, s, "lg/00001", []byte("1"))
				wantValue(t, s, "lg/15000", []byte("old"))
				wantValue(t, s, "lg/23455", []byte("23455"))
				mb := bytes.Repeat([]byte{0xab}, 1<<20)
				es = es[:0]
				for i := range 20 {
					es = append(es, storage.Entry{Key: fmt.Sprintf("lb/%02d", i), Value: mb})
				}
				if got := batch(t, es); slices.Contains(got, true) {
					t.Errorf("exists = %v, want all false", got)
				}
				for _, e := range mustList(t, s, "lb/", "", 0) {
					if !bytes.Equal(e.Value, mb) {
						t.Fatalf("%s: %d bytes back, want the 1 MiB value", e.Key, len(e.Value))
					}
				}
			})
		})
	}
}

// testFeedCreateBatch: the change feed carries exactly the keys a
// CreateBatch created, leaving out those under storage.UnfedPrefix and
// those that existed (left untouched).
func testFeedCreateBatch(t *testing.T, open func(t *testing.T) (a, b SharedStore)) {
	a, b := open(t)
	ctx := t.Context()
	c0 := start(t, b)
	mustPut(t, a, "fb/old", []byte("old"))
	for i := range 300 {
		if i%7 == 0 {
			mustPut(t, a, fmt.Sprintf("fb/m/%03d", i), []byte("old"))
		}
	}
	// Read the feed past the keys put so far.
	mustPut(t, a, "fb/start", nil)
	_, c := waitKeys(t, b, c0, "fb/start")
	es := []storage.Entry{
		{Key: "fb/new1", Value: []byte("1")},
		{Key: "fb/old", Value: []byte("x")},
		{Key: storage.UnfedPrefix + "fb", Value: []byte("u")},
		{Key: "fb/new2", Value: []byte("2")},
		{Key: "fb/new1", Value: []byte("again")},
	}
	want := []string{"fb/new1", "fb/new2"}
	// Enough for drivers that batch by statement to fill some, existing
	// and unfed keys among them.
	for i := range 300 {
		k := fmt.Sprintf("fb/m/%03d", i)
		es = append(es, storage.Entry{Key: k, Value: []byte("m")}, storage.Entry{Key: storage.UnfedPrefix + k, Value: []byte("u")})
		if i%7 != 0 {
			want = append(want, k)
		}
	}
	err := a.Update(ctx, func(tx storage.Tx) error {
		if _, ok := tx.(storage.BatchCreator); !ok {
			t.Errorf("the Tx Update passes (%T) does not offer storage.BatchCreator", tx)
		}
		_, err := storage.CreateBatch(ctx, tx, es)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	mustPut(t, a, "fb/zlast", []byte("end"))
	want = append(want, "fb/zlast")
	got, _ := waitKeys(t, b, c, "fb/zlast")
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("feed after the batch = %v, want %v", got, want)
	}
}

// testSharedCreateBatch: two handles batch-creating overlapping keys at
// once create each key once: of the two batches that hold a key, exactly
// one reports it created, and its value is that batch's.
func testSharedCreateBatch(t *testing.T, open func(t *testing.T) (a, b SharedStore)) {
	a, b := open(t)
	ctx := t.Context()
	const n, rounds = 200, 5
	for r := range rounds {
		batchOf := func(who string, from int) []storage.Entry {
			var es []storage.Entry
			for i := from; i < from+n; i++ {
				es = append(es, storage.Entry{Key: fmt.Sprintf("sc/%d/%04d", r, i), Value: []byte(who)})
			}
			return es
		}
		esA, esB := batchOf("a", 0), batchOf("b", n/2)
		var existsA, existsB []bool
		errs := make(chan error, 2)
		run := func(s SharedStore, es []storage.Entry, exists *[]bool) {
			errs <- s.Update(ctx, func(tx storage.Tx) error {
				var err error
				*exists, err = storage.CreateBatch(ctx, tx, es)
				return err
			})
		}
		go run(a, esA, &existsA)
		go run(b, esB, &existsB)
		for range 2 {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
		created := map[string]string{}
		for _, side := range []struct {
			who    string
			es     []storage.Entry
			exists []bool
		}{{"a", esA, existsA}, {"b", esB, existsB}} {
			for i, e := range side.es {
				if side.exists[i] {
					continue
				}
				if prev, dup := created[e.Key]; dup {
					t.Fatalf("round %d: %s created by both %s and %s", r, e.Key, prev, side.who)
				}
				created[e.Key] = side.who
			}
		}
		es := mustList(t, a, fmt.Sprintf("sc/%d/", r), "", 0)
		if len(es) != n+n/2 || len(created) != len(es) {
			t.Fatalf("round %d: %d keys stored, %d reported created; want %d", r, len(es), len(created), n+n/2)
		}
		for _, e := range es {
			if string(e.Value) != created[e.Key] {
				t.Fatalf("round %d: %s holds %q, but %q reported creating it", r, e.Key, e.Value, created[e.Key])
			}
		}
	}
}
