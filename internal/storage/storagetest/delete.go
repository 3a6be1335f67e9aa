package storagetest

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/kmsd/kmsd/internal/storage"
)

// testDeleteBatch runs the DeleteBatch cases twice: with the driver's own
// storage.BatchDeleter (which the Tx of every driver's Update offers) and
// with the fallback of storage.DeleteBatch on the same store, which must
// give the same results.
func testDeleteBatch(t *testing.T, open opener) {
	for _, m := range batchModes(func(tx storage.Tx) (string, bool) {
		_, ok := tx.(storage.BatchDeleter)
		return "storage.BatchDeleter", ok
	}) {
		t.Run(m.name, func(t *testing.T) {
			s := open(t)
			ctx := t.Context()
			del := func(keys []string) error {
				return s.Update(ctx, func(tx storage.Tx) error { return storage.DeleteBatch(ctx, m.wrap(t, tx), keys) })
			}
			for _, k := range []string{"d/a", "d/b", "d/c", "e/a"} {
				mustPut(t, s, k, []byte(k))
			}
			mustPut(t, s, "d/long", []byte(strings.Repeat("v", 100_000)))
			if err := del(nil); err != nil {
				t.Fatalf("DeleteBatch(nil): %v", err)
			}
			// Present, absent and repeated keys; a long value; others untouched.
			if err := del([]string{"d/b", "d/missing", "d/b", "d/long", "d/a"}); err != nil {
				t.Fatal(err)
			}
			wantKeys(t, s, "", "", 0, []string{"d/c", "e/a"})
			// An invalid key fails the batch and deletes nothing.
			if err := del([]string{"d/c", ""}); !errors.Is(err, storage.ErrInvalidKey) {
				t.Errorf("DeleteBatch with an empty key = %v, want ErrInvalidKey", err)
			}
			wantKeys(t, s, "", "", 0, []string{"d/c", "e/a"})
			// A transaction that fails after the batch deletes nothing.
			boom := errors.New("boom")
			err := s.Update(ctx, func(tx storage.Tx) error {
				if err := storage.DeleteBatch(ctx, m.wrap(t, tx), []string{"d/c", "e/a"}); err != nil {
					return err
				}
				if _, err := tx.Get(ctx, "d/c"); !errors.Is(err, storage.ErrNotFound) {
					t.Errorf("the transaction still reads a key it deleted: %v", err)
				}
				return boom
			})
			if !errors.Is(err, boom) {
				t.Fatalf("Update = %v, want boom", err)
			}
			wantKeys(t, s, "", "", 0, []string{"d/c", "e/a"})
			// Many keys, past a statement's chunk on PostgreSQL.
			var many []string
			for i := range 12_000 {
				many = append(many, fmt.Sprintf("m/%05d", i))
			}
			err = s.Update(ctx, func(tx storage.Tx) error {
				es := make([]storage.Entry, len(many))
				for i, k := range many {
					es[i] = storage.Entry{Key: k, Value: []byte("x")}
				}
				return storage.PutBatch(ctx, tx, es)
			})
			if err != nil {
				t.Fatal(err)
			}
			if err := del(many[:11_999]); err != nil {
				t.Fatal(err)
			}
			wantKeys(t, s, "m/", "", 0, []string{"m/11999"})
		})
	}
}

// testFeedDeleteBatch: the change feed carries every key a DeleteBatch
// deleted, except those under storage.UnfedPrefix.
func testFeedDeleteBatch(t *testing.T, open func(t *testing.T) (a, b SharedStore)) {
	a, b := open(t)
	ctx := t.Context()
	c0 := start(t, b)
	var keys, want []string
	for i := range 50 {
		k := fmt.Sprintf("fd/%03d", i)
		mustPut(t, a, k, []byte("v"))
		mustPut(t, a, storage.UnfedPrefix+k, []byte("v"))
		keys, want = append(keys, k, storage.UnfedPrefix+k), append(want, k)
	}
	mustPut(t, a, "fd/start", nil)
	_, c := waitKeys(t, b, c0, "fd/start")
	err := a.Update(ctx, func(tx storage.Tx) error {
		if _, ok := tx.(storage.BatchDeleter); !ok {
			t.Errorf("the Tx Update passes (%T) does not offer storage.BatchDeleter", tx)
		}
		return storage.DeleteBatch(ctx, tx, keys)
	})
	if err != nil {
		t.Fatal(err)
	}
	mustPut(t, a, "fd/zlast", []byte("end"))
	want = append(want, "fd/zlast")
	got, _ := waitKeys(t, b, c, "fd/zlast")
	slices.Sort(got)
	got = slices.Compact(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("feed after the batch = %v, want %v", got, want)
	}
}
