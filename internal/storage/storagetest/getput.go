package storagetest

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/kmsd/kmsd/internal/storage"
)

// testGetPutBatch runs the GetBatch and PutBatch cases twice: with the
// driver's own storage.BatchGetter and storage.BatchPutter (which the Tx
// of every driver's Update offers) and with the fallbacks of
// storage.GetBatch and storage.PutBatch on the same store, which must give
// the same results.
func testGetPutBatch(t *testing.T, open opener) {
	for _, m := range batchModes(func(tx storage.Tx) (string, bool) {
		if _, ok := tx.(storage.BatchGetter); !ok {
			return "storage.BatchGetter", false
		}
		_, ok := tx.(storage.BatchPutter)
		return "storage.BatchPutter", ok
	}) {
		t.Run(m.name, func(t *testing.T) {
			s := open(t)
			// get runs GetBatch of keys in an Update of its own.
			get := func(t *testing.T, keys []string) [][]byte {
				t.Helper()
				var vs [][]byte
				err := s.Update(t.Context(), func(tx storage.Tx) error {
					var err error
					vs, err = storage.GetBatch(t.Context(), m.wrap(t, tx), keys)
					return err
				})
				if err != nil {
					t.Fatalf("GetBatch of %d keys: %v", len(keys), err)
				}
				if len(vs) != len(keys) {
					t.Fatalf("GetBatch of %d keys returned %d values", len(keys), len(vs))
				}
				return vs
			}
			// put runs PutBatch of es in an Update of its own that commits.
			put := func(t *testing.T, es []storage.Entry) {
				t.Helper()
				err := s.Update(t.Context(), func(tx storage.Tx) error {
					return storage.PutBatch(t.Context(), m.wrap(t, tx), es)
				})
				if err != nil {
					t.Fatalf("PutBatch of %d entries: %v", len(es), err)
				}
			}
			t.Run("Empty", func(t *testing.T) {
				if got := get(t, nil); len(got) != 0 {
					t.Errorf("GetBatch(nil) = %q", got)
				}
				put(t, nil)
				put(t, []storage.Entry{})
				wantKeys(t, s, "", "", 0, nil)
			})
			t.Run("AbsentAndPresent", func(t *testing.T) {
				mustPut(t, s, "ap/a", []byte("A"))
				mustPut(t, s, "ap/e", nil)
				got := get(t, []string{"ap/a", "ap/missing", "ap/e", "ap/a", "ap/missing"})
				want := [][]byte{[]byte("A"), nil, {}, []byte("A"), nil}
				for i := range want {
					if !bytes.Equal(got[i], want[i]) || (got[i] == nil) != (want[i] == nil) {
						t.Errorf("values[%d] = %q (nil %v), want %q (nil %v)", i, got[i], got[i] == nil, want[i], want[i] == nil)
					}
				}
				// A repeated key's values are not shared with each other
				// (nor with the store).
				got[0][0] = 'X'
				if got[3][0] != 'A' {
					t.Errorf("values of a repeated key share memory")
				}
				wantValue(t, s, "ap/a", []byte("A"))
			})
			t.Run("AbsentAndPresentMany", func(t *testing.T) {
				// Enough keys for a driver's multi-key statements (and a
				// partial last chunk): present, empty, long and absent
				// values, and repeats within a chunk and across chunks.
				long := bytes.Repeat([]byte("L"), 4096)
				var keys []string
				want := map[string][]byte{}
				for i := range 250 {
					k := fmt.Sprintf("apm/%03d", i)
					keys = append(keys, k)
					switch i % 4 {
					case 0:
						want[k] = []byte(strconv.Itoa(i))
					case 1:
						want[k] = []byte{}
					case 2:
						want[k] = append(slices.Clone(long), byte(i))
					}
					if v, ok := want[k]; ok {
						mustPut(t, s, k, v)
					}
				}
				keys = slices.Insert(keys, 50, keys[0], keys[2], keys[3])
				keys = slices.Insert(keys, 160, keys[0], keys[2])
				got := get(t, keys)
				for i, k := range keys {
					w, ok := want[k]
					if !bytes.Equal(got[i], w) || (got[i] == nil) == ok {
						t.Fatalf("values[%d] (%s) = %.20q (nil %v), want %.20q (present %v)", i, k, got[i], got[i] == nil, w, ok)
					}
				}
				// The first of each repeated key's values changed: the
				// repeats (50, 51, 160, 161) must not see it.
				got[0][0], got[2][0] = 'X', 'X'
				for i, k := range keys[3:] {
					if w := want[k]; !bytes.Equal(got[i+3], w) {
						t.Fatalf("values[%d] (%s) changed with another index's: repeated keys share memory", i+3, k)
					}
				}
				wantValue(t, s, keys[0], want[keys[0]])
			})
			t.Run("Duplicates", func(t *testing.T) {
				mustPut(t, s, "du/old", []byte("old"))
				put(t, []storage.Entry{
					{Key: "du/x", Value: []byte("first")},
					{Key: "du/old", Value: []byte("o1")},
					{Key: "du/x", Value: []byte("second")},
					{Key: "du/y", Value: []byte("y")},
					{Key: "du/old", Value: []byte("o2")},
					{Key: "du/x", Value: []byte("third")},
				})
				wantValue(t, s, "du/x", []byte("third"))
				wantValue(t, s, "du/y", []byte("y"))
				wantValue(t, s, "du/old", []byte("o2"))
				wantKeys(t, s, "du/", "", 0, []string{"du/old", "du/x", "du/y"})
			})
			t.Run("OddKeys", func(t *testing.T) {
				keys := []string{
					`ok/{a,b}`, `ok/"quoted"`, `ok/back\slash`, `ok/NULL`, "ok/ space ", `ok/%_`,
					"ok/é中文", "ok/\U0010FFFF", "ok/\x01\t\n", "ok/'", "ok/" + strings.Repeat("k", storage.MaxKeyLen-3),
				}
				short := slices.Clone(keys[:len(keys)-1])
				for j := range 20 {
					for _, k := range short {
						keys = append(keys, fmt.Sprintf("%s/%d", k, j))
					}
				}
				// Half of them exist before the batch.
				for i, k := range keys {
					if i%2 == 0 {
						mustPut(t, s, k, []byte("old"))
					}
				}
				var es []storage.Entry
				for i, k := range keys {
					es = append(es, storage.Entry{Key: k, Value: []byte(strconv.Itoa(i))})
				}
				put(t, es)
				rev := slices.Clone(keys)
				slices.Reverse(rev)
				got := get(t, rev)
				for i, k := range rev {
					if want := strconv.Itoa(len(keys) - 1 - i); string(got[i]) != want {
						t.Errorf("%q = %q, want %q", k, got[i], want)
					}
				}
				slices.Sort(keys)
				wantKeys(t, s, "ok/", "", 0, keys)
			})
			t.Run("Values", func(t *testing.T) {
				all := make([]byte, 256)
				for i := range all {
					all[i] = byte(i)
				}
				long := bytes.Repeat([]byte{0x5a}, 321) // past SQLite's inline limit
				big := bytes.Repeat([]byte("0123456789abcdef\x00\xff"), 1<<16)
				vals := [][]byte{nil, {}, {0}, all, long, big, []byte("x")}
				key := func(i int) string { return fmt.Sprintf("va/%d", i) }
				keys := make([]string, len(vals))
				for i := range vals {
					keys[i] = key(i)
				}
				// Each value put over a short one, then over a long one,
				// then a short one over each value: a driver keeping long
				// values apart must move them both ways.
				for round, over := range [][]byte{[]byte("short"), big, nil} {
					var es []storage.Entry
					for i := range vals {
						if round < 2 {
							mustPut(t, s, key(i), over)
						}
						es = append(es, storage.Entry{Key: key(i), Value: vals[i]})
					}
					if round == 2 {
						for i := range es {
							es[i].Value = []byte("s")
						}
					}
					put(t, es)
					got := get(t, keys)
					for i := range vals {
						want := vals[i]
						if round == 2 {
							want = []byte("s")
						}
						if !bytes.Equal(got[i], want) || got[i] == nil {
							t.Errorf("round %d: %s: got %d bytes (nil %v), want %d", round, key(i), len(got[i]), got[i] == nil, len(want))
						}
						wantValue(t, s, key(i), want)
					}
				}
			})
			t.Run("ReadsOwnWrites", func(t *testing.T) {
				ctx := t.Context()
				mustPut(t, s, "ro/gone", []byte("g"))
				err := s.Update(ctx, func(tx storage.Tx) error {
					tx = m.wrap(t, tx)
					if err := tx.Put(ctx, "ro/a", []byte("a")); err != nil {
						return err
					}
					if err := tx.Delete(ctx, "ro/gone"); err != nil {
						return err
					}
					if err := storage.PutBatch(ctx, tx, []storage.Entry{{Key: "ro/b", Value: []byte("b")}, {Key: "ro/a", Value: []byte("a2")}}); err != nil {
						return err
					}
					got, err := storage.GetBatch(ctx, tx, []string{"ro/a", "ro/b", "ro/gone", "ro/c"})
					if err != nil {
						return err
					}
					if want := []string{"a2", "b", "", ""}; string(got[0]) != want[0] || string(got[1]) != want[1] || got[2] != nil || got[3] != nil {
						t.Errorf("GetBatch in the transaction = %q, want %q then absent twice", got, want[:2])
					}
					wantValue(t, tx, "ro/b", []byte("b"))
					wantKeys(t, tx, "ro/", "", 0, []string{"ro/a", "ro/b"})
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
				wantValue(t, s, "ro/a", []byte("a2"))
				wantValue(t, s, "ro/b", []byte("b"))
				wantNotFound(t, s, "ro/gone")
			})
			t.Run("Rollback", func(t *testing.T) {
				ctx := t.Context()
				mustPut(t, s, "rb/kept", []byte("kept"))
				mustPut(t, s, "unfed/rb/kept", []byte("kept"))
				err := s.Update(ctx, func(tx storage.Tx) error {
					if err := storage.PutBatch(ctx, m.wrap(t, tx), []storage.Entry{
						{Key: "rb/a", Value: []byte("a")}, {Key: "rb/kept", Value: []byte("x")},
						{Key: "unfed/rb", Value: []byte("u")}, {Key: "unfed/rb/kept", Value: bytes.Repeat([]byte("x"), 1000)},
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
				wantValue(t, s, "unfed/rb/kept", []byte("kept"))
				wantNotFound(t, s, "unfed/rb")
			})
			t.Run("InvalidKeyWritesNothing", func(t *testing.T) {
				ctx := t.Context()
				mustPut(t, s, "iv/old", []byte("old"))
				for _, bad := range []string{"", "iv/\x00", "iv/\xff", strings.Repeat("k", storage.MaxKeyLen+1)} {
					err := s.Update(ctx, func(tx storage.Tx) error {
						tx = m.wrap(t, tx)
						err := storage.PutBatch(ctx, tx, []storage.Entry{
							{Key: "iv/good", Value: []byte("g")}, {Key: "iv/old", Value: []byte("new")}, {Key: bad, Value: []byte("b")},
						})
						if !errors.Is(err, storage.ErrInvalidKey) {
							t.Errorf("PutBatch with key %q = %v, want ErrInvalidKey", bad, err)
						}
						if _, err := storage.GetBatch(ctx, tx, []string{"iv/old", bad}); !errors.Is(err, storage.ErrInvalidKey) {
							t.Errorf("GetBatch with key %q = %v, want ErrInvalidKey", bad, err)
						}
						return nil // commit what (if anything) was written
					})
					if err != nil {
						t.Fatal(err)
					}
				}
				wantNotFound(t, s, "iv/good")
				wantValue(t, s, "iv/old", []byte("old"))
			})
			t.Run("Large", func(t *testing.T) {
				// More keys than one PostgreSQL statement carries, some
				// existing and one repeated across chunks, then more bytes
				// than one carries.
				const n = 23456
				mustPut(t, s, "lg/00005", []byte("old"))
				mustPut(t, s, "lg/15000", []byte("old"))
				var es []storage.Entry
				keys := []string{"lg/absent"}
				for i := range n {
					k := fmt.Sprintf("lg/%05d", i)
					es = append(es, storage.Entry{Key: k, Value: []byte(strconv.Itoa(i))})
					keys = append(keys, k)
				}
				es = append(es, storage.Entry{Key: "lg/00001", Value: []byte("again")})
				keys = append(keys, "lg/00001", "lg/zabsent")
				put(t, es)
				got := get(t, keys)
				if got[0] != nil || got[n+2] != nil {
					t.Errorf("absent keys read as %q, %q", got[0], got[n+2])
				}
				for i := range n {
					want := strconv.Itoa(i)
					if i == 1 {
						want = "again"
					}
					if string(got[i+1]) != want {
						t.Fatalf("%s = %q, want %q", keys[i+1], got[i+1], want)
					}
				}
				if string(got[n+1]) != "again" {
					t.Errorf("lg/00001 asked for again = %q", got[n+1])
				}
				if es := mustList(t, s, "lg/", "", 0); len(es) != n {
					t.Fatalf("%d lg/ keys after the batch, want %d", len(es), n)
				}
				mb := bytes.Repeat([]byte{0xab}, 1<<20)
				es, keys = es[:0], keys[:0]
				for i := range 20 {
					k := fmt.Sprintf("lb/%02d", i)
					if i%2 == 0 {
						mustPut(t, s, k, []byte("old"))
					}
					es = append(es, storage.Entry{Key: k, Value: mb})
					keys = append(keys, k)
				}
				put(t, es)
				for i, v := range get(t, keys) {
					if !bytes.Equal(v, mb) {
						t.Fatalf("%s: %d bytes back, want the 1 MiB value", keys[i], len(v))
					}
				}
			})
		})
	}
}

// testFeedPutBatch: the change feed carries every key a PutBatch put —
// new or existing, repeated in the batch or not — except those under
// storage.UnfedPrefix.
func testFeedPutBatch(t *testing.T, open func(t *testing.T) (a, b SharedStore)) {
	a, b := open(t)
	ctx := t.Context()
	c0 := start(t, b)
	for i := range 300 {
		if i%3 == 0 {
			mustPut(t, a, fmt.Sprintf("fp/m/%03d", i), []byte("old"))
			mustPut(t, a, fmt.Sprintf("%sfp/m/%03d", storage.UnfedPrefix, i), []byte("old"))
		}
	}
	mustPut(t, a, "fp/start", nil)
	_, c := waitKeys(t, b, c0, "fp/start")
	es := []storage.Entry{
		{Key: "fp/x", Value: []byte("1")},
		{Key: storage.UnfedPrefix + "fp", Value: []byte("u")},
		{Key: "fp/x", Value: []byte("2")},
		{Key: "fp/start", Value: []byte("again")},
	}
	want := []string{"fp/x", "fp/start"}
	for i := range 300 {
		k := fmt.Sprintf("fp/m/%03d", i)
		es = append(es, storage.Entry{Key: k, Value: []byte("m")}, storage.Entry{Key: storage.UnfedPrefix + k, Value: []byte("u")})
		want = append(want, k)
	}
	err := a.Update(ctx, func(tx storage.Tx) error {
		if _, ok := tx.(storage.BatchPutter); !ok {
			t.Errorf("the Tx Update passes (%T) does not offer storage.BatchPutter", tx)
		}
		return storage.PutBatch(ctx, tx, es)
	})
	if err != nil {
		t.Fatal(err)
	}
	mustPut(t, a, "fp/zlast", []byte("end"))
	want = append(want, "fp/zlast")
	got, _ := waitKeys(t, b, c, "fp/zlast")
	slices.Sort(got)
	got = slices.Compact(got) // a key may be delivered more than once
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("feed after the batch = %v, want %v", got, want)
	}
}

// testSharedGetPutBatch: transactions on two handles that read counters
// with GetBatch, add to them in Go and write them back with PutBatch — the
// read-compare-put a last-use flush makes — lose no increment, on
// overlapping keys, some of them absent at first: the batch read takes
// part in the transaction's serializability as Get does.
func testSharedGetPutBatch(t *testing.T, open func(t *testing.T) (a, b SharedStore)) {
	a, b := open(t)
	ctx := t.Context()
	const keys, workers, rounds = 50, 3, 10
	mustPut(t, a, "gp/000", []byte("0")) // the others start absent
	var wg sync.WaitGroup
	errs := make(chan error, 2*workers*rounds)
	for h, s := range []SharedStore{a, b} {
		for w := range workers {
			wg.Go(func() {
				for r := range rounds {
					// Each run reads and adds to all keys, from an
					// offset of its own, in one batch each way.
					ks := make([]string, keys)
					for i := range keys {
						ks[i] = fmt.Sprintf("gp/%03d", (i+h*7+w*3+r)%keys)
					}
					errs <- s.Update(ctx, func(tx storage.Tx) error {
						vs, err := storage.GetBatch(ctx, tx, ks)
						if err != nil {
							return err
						}
						es := make([]storage.Entry, keys)
						for i, v := range vs {
							n := 0
							if v != nil {
								if n, err = strconv.Atoi(string(v)); err != nil {
									return err
								}
							}
							es[i] = storage.Entry{Key: ks[i], Value: []byte(strconv.Itoa(n + 1))}
						}
						return storage.PutBatch(ctx, tx, es)
					})
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("Update: %v", err)
		}
	}
	want := []byte(strconv.Itoa(2 * workers * rounds))
	for i := range keys {
		wantValue(t, b, fmt.Sprintf("gp/%03d", i), want)
	}
}
