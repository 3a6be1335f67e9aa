// Package storagetest is the conformance suite for storage drivers: every
// implementation of storage.Store runs Run, and every driver that keeps its
// data across restarts also runs RunPersistent, so that the drivers stay
// interchangeable behind the contract.
//
// A driver's test looks like this:
//
//	func TestConformance(t *testing.T) {
//		storagetest.Run(t, func(t *testing.T) storage.Store { return openFresh(t) })
//		storagetest.RunPersistent(t, func(t *testing.T, dir string) storage.Store { return openAt(t, dir) })
//	}
//
// The open helpers fail the test themselves if they cannot open a store, and
// register a t.Cleanup that closes it; the suite relies on Close being
// harmless when called again.
package storagetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/storage"
)

// Run tests the contract of storage.Store, and of storage.BatchCreator,
// BatchGetter and BatchPutter, which the Tx of the store's Update must
// offer. open must return a new, empty store each time it is called.
func Run(t *testing.T, open func(t *testing.T) storage.Store) {
	t.Run("Get", func(t *testing.T) { testGet(t, open) })
	t.Run("Put", func(t *testing.T) { testPut(t, open) })
	t.Run("Create", func(t *testing.T) { testCreate(t, open) })
	t.Run("Delete", func(t *testing.T) { testDelete(t, open) })
	t.Run("CreateBatch", func(t *testing.T) { testCreateBatch(t, open) })
	t.Run("GetPutBatch", func(t *testing.T) { testGetPutBatch(t, open) })
	t.Run("DeleteBatch", func(t *testing.T) { testDeleteBatch(t, open) })
	t.Run("Values", func(t *testing.T) { testValues(t, open) })
	t.Run("ValuesNotShared", func(t *testing.T) { testValuesNotShared(t, open) })
	t.Run("Keys", func(t *testing.T) { testKeys(t, open) })
	t.Run("InvalidKeys", func(t *testing.T) { testInvalidKeys(t, open) })
	t.Run("ListOrder", func(t *testing.T) { testListOrder(t, open) })
	t.Run("ListRange", func(t *testing.T) { testListRange(t, open) })
	t.Run("ListPaging", func(t *testing.T) { testListPaging(t, open) })
	t.Run("ListValues", func(t *testing.T) { testListValues(t, open) })
	t.Run("UpdateCommit", func(t *testing.T) { testUpdateCommit(t, open) })
	t.Run("UpdateRollback", func(t *testing.T) { testUpdateRollback(t, open) })
	t.Run("UpdateReadsOwnWrites", func(t *testing.T) { testUpdateReadsOwnWrites(t, open) })
	t.Run("UpdateCreateConflict", func(t *testing.T) { testUpdateCreateConflict(t, open) })
	t.Run("UpdatePanic", func(t *testing.T) { testUpdatePanic(t, open) })
	t.Run("UpdateIsolation", func(t *testing.T) { testUpdateIsolation(t, open) })
	t.Run("TxDoneAfterUpdate", func(t *testing.T) { testTxDone(t, open) })
	t.Run("CanceledContext", func(t *testing.T) { testCanceledContext(t, open) })
	t.Run("ConcurrentCounters", func(t *testing.T) { testConcurrentCounters(t, open) })
	t.Run("ConcurrentCreate", func(t *testing.T) { testConcurrentCreate(t, open) })
	t.Run("ConcurrentReaders", func(t *testing.T) { testConcurrentReaders(t, open) })
	t.Run("Close", func(t *testing.T) { testClose(t, open) })
}

// RunPersistent tests that what a store acknowledged survives closing and
// reopening it. openAt opens the store kept at dir, a directory the suite
// makes with t.TempDir; a driver that does not keep data in files may treat
// dir as an opaque name for its database. Calling openAt again with the same
// dir after closing the store must open the same data.
func RunPersistent(t *testing.T, openAt func(t *testing.T, dir string) storage.Store) {
	t.Run("Reopen", func(t *testing.T) { testReopen(t, openAt) })
	t.Run("ReopenAfterRollback", func(t *testing.T) { testReopenAfterRollback(t, openAt) })
	t.Run("ReopenMany", func(t *testing.T) { testReopenMany(t, openAt) })
}

// opener is the signature of Run's open argument.
type opener = func(t *testing.T) storage.Store

var errRollback = errors.New("storagetest: roll back")

func mustPut(t *testing.T, s storage.Tx, key string, value []byte) {
	t.Helper()
	if err := s.Put(t.Context(), key, value); err != nil {
		t.Fatalf("Put(%q): %v", key, err)
	}
}

func mustGet(t *testing.T, s storage.Reader, key string) []byte {
	t.Helper()
	v, err := s.Get(t.Context(), key)
	if err != nil {
		t.Fatalf("Get(%q): %v", key, err)
	}
	return v
}

func wantValue(t *testing.T, s storage.Reader, key string, want []byte) {
	t.Helper()
	if got := mustGet(t, s, key); !bytes.Equal(got, want) {
		t.Fatalf("Get(%q) = %q, want %q", key, got, want)
	}
}

func wantNotFound(t *testing.T, s storage.Reader, key string) {
	t.Helper()
	v, err := s.Get(t.Context(), key)
	if !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Get(%q) = %q, %v; want ErrNotFound", key, v, err)
	}
}

func mustList(t *testing.T, s storage.Reader, prefix, after string, limit int) []storage.Entry {
	t.Helper()
	es, err := s.List(t.Context(), prefix, after, limit)
	if err != nil {
		t.Fatalf("List(%q, %q, %d): %v", prefix, after, limit, err)
	}
	return es
}

func keysOf(es []storage.Entry) []string {
	ks := make([]string, 0, len(es))
	for _, e := range es {
		ks = append(ks, e.Key)
	}
	return ks
}

func wantKeys(t *testing.T, s storage.Reader, prefix, after string, limit int, want []string) {
	t.Helper()
	if got := keysOf(mustList(t, s, prefix, after, limit)); !slices.Equal(got, want) {
		t.Fatalf("List(%q, %q, %d) keys = %q, want %q", prefix, after, limit, got, want)
	}
}

func testGet(t *testing.T, open opener) {
	s := open(t)
	wantNotFound(t, s, "missing")
	mustPut(t, s, "k", []byte("v"))
	wantValue(t, s, "k", []byte("v"))
	wantNotFound(t, s, "k/") // no prefix matching
	wantNotFound(t, s, "K")  // no case folding
}

func testPut(t *testing.T, open opener) {
	s := open(t)
	mustPut(t, s, "k", []byte("one"))
	mustPut(t, s, "k", []byte("two"))
	wantValue(t, s, "k", []byte("two"))
	mustPut(t, s, "k", []byte("a longer third value"))
	mustPut(t, s, "k", []byte("4"))
	wantValue(t, s, "k", []byte("4"))
	wantKeys(t, s, "", "", 0, []string{"k"})
}

func testCreate(t *testing.T, open opener) {
	s := open(t)
	ctx := t.Context()
	if err := s.Create(ctx, "k", []byte("first")); err != nil {
		t.Fatalf("Create new key: %v", err)
	}
	wantValue(t, s, "k", []byte("first"))
	if err := s.Create(ctx, "k", []byte("second")); !errors.Is(err, storage.ErrExists) {
		t.Fatalf("Create existing key: got %v, want ErrExists", err)
	}
	wantValue(t, s, "k", []byte("first"))
	if err := s.Create(ctx, "k2", nil); err != nil {
		t.Fatalf("Create with empty value: %v", err)
	}
	if err := s.Create(ctx, "k2", []byte("x")); !errors.Is(err, storage.ErrExists) {
		t.Fatalf("Create over empty value: got %v, want ErrExists", err)
	}
}

func testDelete(t *testing.T, open opener) {
	s := open(t)
	ctx := t.Context()
	if err := s.Delete(ctx, "missing"); err != nil {
		t.Fatalf("Delete absent key: %v", err)
	}
	mustPut(t, s, "k", []byte("v"))
	mustPut(t, s, "k/child", []byte("v"))
	if err := s.Delete(ctx, "k"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	wantNotFound(t, s, "k")
	wantValue(t, s, "k/child", []byte("v")) // no prefix deletion
	if err := s.Delete(ctx, "k"); err != nil {
		t.Fatalf("Delete twice: %v", err)
	}
	if err := s.Create(ctx, "k", []byte("again")); err != nil {
		t.Fatalf("Create after Delete: %v", err)
	}
	wantValue(t, s, "k", []byte("again"))
}

func testValues(t *testing.T, open opener) {
	all := make([]byte, 256)
	for i := range all {
		all[i] = byte(i)
	}
	big := bytes.Repeat([]byte("0123456789abcdef\x00\xff"), 1<<16) // about 1 MiB
	tests := []struct {
		name  string
		value []byte
	}{
		{"text", []byte("hello")},
		{"nul bytes", []byte("\x00a\x00\x00b\x00")},
		{"only nul", []byte{0}},
		{"every byte", all},
		{"invalid utf-8", []byte{0xff, 0xfe, 0xc3}},
		{"empty", []byte{}},
		{"nil", nil},
		{"large", big},
	}
	s := open(t)
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key := fmt.Sprintf("v/%d", i)
			mustPut(t, s, key, tt.value)
			got := mustGet(t, s, key)
			if !bytes.Equal(got, tt.value) || len(got) != len(tt.value) {
				t.Fatalf("Get after Put: got %d bytes, want %d bytes %q...", len(got), len(tt.value), tt.value[:min(len(tt.value), 16)])
			}
			es := mustList(t, s, key, "", 0)
			if len(es) != 1 || !bytes.Equal(es[0].Value, tt.value) {
				t.Fatalf("List after Put: got %d entries, want the value back", len(es))
			}
		})
	}
}

func testValuesNotShared(t *testing.T, open opener) {
	s := open(t)
	in := []byte("original")
	mustPut(t, s, "k", in)
	copy(in, "XXXXXXXX")
	out := mustGet(t, s, "k")
	if string(out) != "original" {
		t.Fatalf("store kept the caller's Put buffer: Get = %q", out)
	}
	copy(out, "YYYYYYYY")
	wantValue(t, s, "k", []byte("original"))
	es := mustList(t, s, "", "", 0)
	copy(es[0].Value, "ZZZZZZZZ")
	wantValue(t, s, "k", []byte("original"))
}

// oddKeys are valid keys that trip naive implementations: SQL LIKE wildcards
// and escapes, quotes, case, and non-ASCII runes of every UTF-8 length.
var oddKeys = []string{
	"a%", "a_", "a\\", "a'", "a\"", "a b", "A", "a", "é", "e\u0301", "\u00ff", "\u0800",
	"\ufffd", "\U00010000", "\U0010FFFF", "x/\U0010FFFF/y", "a;DROP TABLE kv;--",
	strings.Repeat("long/", storage.MaxKeyLen/5) + strings.Repeat("k", storage.MaxKeyLen%5),
}

func testKeys(t *testing.T, open opener) {
	s := open(t)
	for i, k := range oddKeys {
		mustPut(t, s, k, []byte(strconv.Itoa(i)))
	}
	for i, k := range oddKeys {
		wantValue(t, s, k, []byte(strconv.Itoa(i)))
	}
	want := slices.Clone(oddKeys)
	slices.Sort(want)
	wantKeys(t, s, "", "", 0, want)
}

func testInvalidKeys(t *testing.T, open opener) {
	s := open(t)
	ctx := t.Context()
	mustPut(t, s, "k", []byte("v"))
	bad := []struct{ name, key string }{
		{"empty", ""},
		{"nul", "k\x00"},
		{"invalid utf-8", "k\xff"},
		{"too long", strings.Repeat("k", storage.MaxKeyLen+1)},
	}
	for _, b := range bad {
		t.Run(b.name, func(t *testing.T) {
			check := func(op string, err error) {
				t.Helper()
				if !errors.Is(err, storage.ErrInvalidKey) {
					t.Errorf("%s: got %v, want ErrInvalidKey", op, err)
				}
			}
			_, err := s.Get(ctx, b.key)
			check("Get", err)
			check("Put", s.Put(ctx, b.key, []byte("v")))
			check("Create", s.Create(ctx, b.key, []byte("v")))
			check("Delete", s.Delete(ctx, b.key))
			check("Update/Put", s.Update(ctx, func(tx storage.Tx) error {
				return tx.Put(ctx, b.key, []byte("v"))
			}))
			if b.key != "" { // an empty prefix or cursor is valid
				_, err = s.List(ctx, b.key, "", 0)
				check("List prefix", err)
				_, err = s.List(ctx, "", b.key, 0)
				check("List after", err)
			}
		})
	}
	wantKeys(t, s, "", "", 0, []string{"k"})
}

// listKeys are stored for the List tests. In byte order "B" < "a" and
// "a/" < "a0" < "a_" < "ab"; a store that sorts by a locale or folds case,
// or that matches prefixes with LIKE, gets some of the cases below wrong.
var listKeys = []string{
	"B", "a", "a%", "a%b", "a/", "a/b", "a/b/c", "a0", "aB", "a_", "a_b", "ab", "abc", "b",
	"e", "f", "é", "é/1", "é/2", "ê", "\u00ff", "\U0010FFFF", "\U0010FFFFz",
}

func testListOrder(t *testing.T, open opener) {
	s := open(t)
	// Insert in an order unrelated to the sorted one.
	for i := range listKeys {
		k := listKeys[(i*7)%len(listKeys)]
		mustPut(t, s, k, []byte(k))
	}
	want := slices.Clone(listKeys)
	slices.Sort(want)
	if !slices.Equal(want, listKeys) {
		t.Fatalf("listKeys is not in byte order; the test itself is wrong")
	}
	wantKeys(t, s, "", "", 0, want)
	wantKeys(t, s, "", "", -1, want)
}

func testListRange(t *testing.T, open opener) {
	s := open(t)
	for _, k := range listKeys {
		mustPut(t, s, k, []byte(k))
	}
	tests := []struct {
		name          string
		prefix, after string
		limit         int
		want          []string
	}{
		{"all limited", "", "", 3, []string{"B", "a", "a%"}},
		{"slash prefix", "a/", "", 0, []string{"a/", "a/b", "a/b/c"}},
		{"percent is literal", "a%", "", 0, []string{"a%", "a%b"}},
		{"underscore is literal", "a_", "", 0, []string{"a_", "a_b"}},
		{"case sensitive upper", "B", "", 0, []string{"B"}},
		{"case sensitive lower", "aB", "", 0, []string{"aB"}},
		{"exact key is included", "abc", "", 0, []string{"abc"}},
		{"no match", "zz", "", 0, nil},
		{"non-ascii prefix", "é", "", 0, []string{"é", "é/1", "é/2"}},
		{"non-ascii neighbour", "ê", "", 0, []string{"ê"}},
		{"max rune prefix", "\U0010FFFF", "", 0, []string{"\U0010FFFF", "\U0010FFFFz"}},
		{"after within prefix", "a/", "a/", 0, []string{"a/b", "a/b/c"}},
		{"after is exclusive", "a", "a_", 0, []string{"a_b", "ab", "abc"}},
		{"after not a key", "a", "a1", 0, []string{"aB", "a_", "a_b", "ab", "abc"}},
		{"after before prefix", "b", "a", 0, []string{"b"}},
		{"after past prefix", "a/", "a0", 0, nil},
		{"after and limit", "", "a_b", 2, []string{"ab", "abc"}},
		{"after the last key", "", "\U0010FFFFz", 0, nil},
		{"limit larger than matches", "é", "", 100, []string{"é", "é/1", "é/2"}},
		{"limit one", "a", "", 1, []string{"a"}},
		{"negative limit", "a/", "", -5, []string{"a/", "a/b", "a/b/c"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantKeys(t, s, tt.prefix, tt.after, tt.limit, tt.want)
		})
	}
}

func testListPaging(t *testing.T, open opener) {
	s := open(t)
	var want []string
	for i := range 25 {
		k := fmt.Sprintf("p/%03d", i)
		want = append(want, k)
		mustPut(t, s, k, []byte(k))
	}
	mustPut(t, s, "o", nil)
	mustPut(t, s, "q", nil)
	for _, size := range []int{1, 4, 5, 24, 25, 26} {
		t.Run(fmt.Sprintf("page%d", size), func(t *testing.T) {
			var got []string
			after := ""
			for range 100 {
				es := mustList(t, s, "p/", after, size)
				if len(es) > size {
					t.Fatalf("page of %d entries exceeds limit %d", len(es), size)
				}
				got = append(got, keysOf(es)...)
				if len(es) < size {
					break
				}
				after = es[len(es)-1].Key
			}
			if !slices.Equal(got, want) {
				t.Fatalf("paged keys = %q, want %q", got, want)
			}
		})
	}
}

func testListValues(t *testing.T, open opener) {
	s := open(t)
	want := []storage.Entry{
		{Key: "e/1", Value: []byte("one")},
		{Key: "e/2", Value: []byte{}},
		{Key: "e/3", Value: []byte("\x00three\x00")},
	}
	for _, e := range want {
		mustPut(t, s, e.Key, e.Value)
	}
	got := mustList(t, s, "e/", "", 0)
	if len(got) != len(want) {
		t.Fatalf("List returned %d entries, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i].Key != want[i].Key || !bytes.Equal(got[i].Value, want[i].Value) {
			t.Errorf("entry %d = %q:%q, want %q:%q", i, got[i].Key, got[i].Value, want[i].Key, want[i].Value)
		}
	}
}

func testUpdateCommit(t *testing.T, open opener) {
	s := open(t)
	ctx := t.Context()
	mustPut(t, s, "old", []byte("old"))
	mustPut(t, s, "replace", []byte("before"))
	err := s.Update(ctx, func(tx storage.Tx) error {
		if err := tx.Put(ctx, "new", []byte("new")); err != nil {
			return err
		}
		if err := tx.Create(ctx, "created", []byte("c")); err != nil {
			return err
		}
		if err := tx.Put(ctx, "replace", []byte("after")); err != nil {
			return err
		}
		return tx.Delete(ctx, "old")
	})
	if err != nil {
		t.Fatalf("Update: %v", err)
	}
	wantValue(t, s, "new", []byte("new"))
	wantValue(t, s, "created", []byte("c"))
	wantValue(t, s, "replace", []byte("after"))
	wantNotFound(t, s, "old")
	if err := s.Update(ctx, func(storage.Tx) error { return nil }); err != nil {
		t.Fatalf("empty Update: %v", err)
	}
}

// wrappedError checks that Update returns fn's error value itself.
type wrappedError struct{ err error }

func (e *wrappedError) Error() string { return "wrapped: " + e.err.Error() }
func (e *wrappedError) Unwrap() error { return e.err }

func testUpdateRollback(t *testing.T, open opener) {
	s := open(t)
	ctx := t.Context()
	mustPut(t, s, "keep", []byte("original"))
	mustPut(t, s, "doomed", []byte("still here"))
	fnErr := &wrappedError{errRollback}
	err := s.Update(ctx, func(tx storage.Tx) error {
		for _, op := range []error{
			tx.Put(ctx, "keep", []byte("changed")),
			tx.Put(ctx, "new", []byte("new")),
			tx.Create(ctx, "created", []byte("c")),
			tx.Delete(ctx, "doomed"),
		} {
			if op != nil {
				return op
			}
		}
		return fnErr
	})
	if err != fnErr { // the contract promises the same value
		t.Fatalf("Update returned %v, want fn's error value unchanged", err)
	}
	if !errors.Is(err, errRollback) {
		t.Fatalf("errors.Is(Update error, sentinel) = false for %v", err)
	}
	wantValue(t, s, "keep", []byte("original"))
	wantValue(t, s, "doomed", []byte("still here"))
	wantNotFound(t, s, "new")
	wantNotFound(t, s, "created")
	wantKeys(t, s, "", "", 0, []string{"doomed", "keep"})
}

func testUpdateReadsOwnWrites(t *testing.T, open opener) {
	s := open(t)
	ctx := t.Context()
	mustPut(t, s, "r/deleted", []byte("x"))
	mustPut(t, s, "r/replaced", []byte("before"))
	err := s.Update(ctx, func(tx storage.Tx) error {
		mustPut(t, tx, "r/new", []byte("new"))
		mustPut(t, tx, "r/replaced", []byte("after"))
		if err := tx.Delete(ctx, "r/deleted"); err != nil {
			return err
		}
		wantValue(t, tx, "r/new", []byte("new"))
		wantValue(t, tx, "r/replaced", []byte("after"))
		wantNotFound(t, tx, "r/deleted")
		wantKeys(t, tx, "r/", "", 0, []string{"r/new", "r/replaced"})
		if err := tx.Create(ctx, "r/new", nil); !errors.Is(err, storage.ErrExists) {
			t.Errorf("Create over a key put in the same transaction: got %v, want ErrExists", err)
		}
		if err := tx.Create(ctx, "r/deleted", []byte("reborn")); err != nil {
			t.Errorf("Create over a key deleted in the same transaction: %v", err)
		}
		wantValue(t, tx, "r/deleted", []byte("reborn"))
		return nil
	})
	if err != nil {
		t.Fatalf("Update: %v", err)
	}
	wantKeys(t, s, "r/", "", 0, []string{"r/deleted", "r/new", "r/replaced"})
}

func testUpdateCreateConflict(t *testing.T, open opener) {
	s := open(t)
	ctx := t.Context()
	mustPut(t, s, "taken", []byte("first"))

	t.Run("returned", func(t *testing.T) {
		err := s.Update(ctx, func(tx storage.Tx) error {
			if err := tx.Put(ctx, "side", []byte("effect")); err != nil {
				return err
			}
			return tx.Create(ctx, "taken", []byte("second"))
		})
		if !errors.Is(err, storage.ErrExists) {
			t.Fatalf("Update: got %v, want ErrExists", err)
		}
		wantValue(t, s, "taken", []byte("first"))
		wantNotFound(t, s, "side")
	})
	t.Run("handled", func(t *testing.T) {
		// A conflict fn handles leaves the transaction usable.
		err := s.Update(ctx, func(tx storage.Tx) error {
			if err := tx.Create(ctx, "taken", []byte("second")); !errors.Is(err, storage.ErrExists) {
				return fmt.Errorf("tx.Create: got %v, want ErrExists", err)
			}
			return tx.Put(ctx, "fallback", []byte("used"))
		})
		if err != nil {
			t.Fatalf("Update: %v", err)
		}
		wantValue(t, s, "taken", []byte("first"))
		wantValue(t, s, "fallback", []byte("used"))
	})
}

func testUpdatePanic(t *testing.T, open opener) {
	s := open(t)
	ctx := t.Context()
	func() {
		defer func() {
			if r := recover(); r != "storagetest: boom" {
				t.Fatalf("recovered %v, want the panic from fn to propagate", r)
			}
		}()
		_ = s.Update(ctx, func(tx storage.Tx) error {
			if err := tx.Put(ctx, "panicked", []byte("x")); err != nil {
				return err
			}
			panic("storagetest: boom")
		})
	}()
	wantNotFound(t, s, "panicked")
	// The store must still take writes: a panic must not leak the writer.
	done := make(chan error, 1)
	go func() {
		done <- s.Update(ctx, func(tx storage.Tx) error { return tx.Put(ctx, "after", []byte("ok")) })
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Update after a panic: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("Update after a panic did not finish: the panicking transaction was not released")
	}
	wantValue(t, s, "after", []byte("ok"))
}

func testUpdateIsolation(t *testing.T, open opener) {
	s := open(t)
	ctx := t.Context()
	mustPut(t, s, "visible", []byte("committed"))
	type result struct {
		v    []byte
		err  error
		keys []string
	}
	got := make(chan result, 1)
	err := s.Update(ctx, func(tx storage.Tx) error {
		mustPut(t, tx, "visible", []byte("uncommitted"))
		mustPut(t, tx, "dirty", []byte("uncommitted"))
		// Another reader must not see these writes, now or ever. A driver
		// may make it wait for the commit instead; then it must see nothing
		// because this transaction rolls back.
		go func() {
			v, err := s.Get(ctx, "dirty")
			es, _ := s.List(ctx, "", "", 0)
			got <- result{v, err, keysOf(es)}
		}()
		select {
		case r := <-got:
			got <- r
		case <-time.After(100 * time.Millisecond):
		}
		return errRollback
	})
	if !errors.Is(err, errRollback) {
		t.Fatalf("Update: got %v, want the rollback error", err)
	}
	r := <-got
	if !errors.Is(r.err, storage.ErrNotFound) {
		t.Fatalf("concurrent Get saw an uncommitted write: %q, %v", r.v, r.err)
	}
	if !slices.Equal(r.keys, []string{"visible"}) {
		t.Fatalf("concurrent List saw keys %q, want only the committed one", r.keys)
	}
	wantValue(t, s, "visible", []byte("committed"))
}

func testTxDone(t *testing.T, open opener) {
	s := open(t)
	ctx := t.Context()
	var leaked storage.Tx
	if err := s.Update(ctx, func(tx storage.Tx) error { leaked = tx; return nil }); err != nil {
		t.Fatalf("Update: %v", err)
	}
	if err := leaked.Put(ctx, "late", []byte("x")); err == nil {
		t.Errorf("Put on a finished transaction succeeded")
	}
	if _, err := leaked.Get(ctx, "late"); err == nil || errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Get on a finished transaction: got %v, want an error other than ErrNotFound", err)
	}
	if _, err := leaked.List(ctx, "", "", 0); err == nil {
		t.Errorf("List on a finished transaction succeeded")
	}
	if err := leaked.Create(ctx, "late", nil); err == nil {
		t.Errorf("Create on a finished transaction succeeded")
	}
	if err := leaked.Delete(ctx, "late"); err == nil {
		t.Errorf("Delete on a finished transaction succeeded")
	}
	wantNotFound(t, s, "late")
}

func testCanceledContext(t *testing.T, open opener) {
	s := open(t)
	mustPut(t, s, "k", []byte("v"))
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	check := func(op string, err error) {
		t.Helper()
		if !errors.Is(err, context.Canceled) {
			t.Errorf("%s with a canceled context: got %v, want context.Canceled", op, err)
		}
	}
	_, err := s.Get(ctx, "k")
	check("Get", err)
	_, err = s.List(ctx, "", "", 0)
	check("List", err)
	check("Put", s.Put(ctx, "p", []byte("v")))
	check("Create", s.Create(ctx, "c", []byte("v")))
	check("Delete", s.Delete(ctx, "k"))
	ran := false
	check("Update", s.Update(ctx, func(tx storage.Tx) error {
		ran = true
		return tx.Put(ctx, "u", []byte("v"))
	}))
	if ran {
		t.Errorf("Update ran fn with a canceled context")
	}
	wantKeys(t, s, "", "", 0, []string{"k"})
}

// increment adds one to the decimal counter at key inside tx.
func increment(ctx context.Context, tx storage.Tx, key string) error {
	n := 0
	v, err := tx.Get(ctx, key)
	switch {
	case errors.Is(err, storage.ErrNotFound):
	case err != nil:
		return err
	default:
		if n, err = strconv.Atoi(string(v)); err != nil {
			return err
		}
	}
	return tx.Put(ctx, key, []byte(strconv.Itoa(n+1)))
}

func testConcurrentCounters(t *testing.T, open opener) {
	s := open(t)
	ctx := t.Context()
	const workers, rounds = 8, 25
	var wg sync.WaitGroup
	errs := make(chan error, workers*rounds)
	for w := range workers {
		wg.Go(func() {
			for range rounds {
				errs <- s.Update(ctx, func(tx storage.Tx) error {
					// Both counters in one transaction: they must stay equal.
					if err := increment(ctx, tx, "c/shared"); err != nil {
						return err
					}
					if err := increment(ctx, tx, "c/mirror"); err != nil {
						return err
					}
					return increment(ctx, tx, fmt.Sprintf("c/worker/%d", w))
				})
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("Update: %v", err)
		}
	}
	wantValue(t, s, "c/shared", []byte(strconv.Itoa(workers*rounds)))
	wantValue(t, s, "c/mirror", []byte(strconv.Itoa(workers*rounds)))
	for w := range workers {
		wantValue(t, s, fmt.Sprintf("c/worker/%d", w), []byte(strconv.Itoa(rounds)))
	}
}

func testConcurrentCreate(t *testing.T, open opener) {
	s := open(t)
	ctx := t.Context()
	const workers = 16
	results := make(chan error, 2*workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() { results <- s.Create(ctx, "once", []byte(strconv.Itoa(w))) })
		// The same race through Update: read, then create if absent.
		wg.Go(func() {
			results <- s.Update(ctx, func(tx storage.Tx) error {
				if _, err := tx.Get(ctx, "once-tx"); err == nil {
					return storage.ErrExists
				} else if !errors.Is(err, storage.ErrNotFound) {
					return err
				}
				return tx.Put(ctx, "once-tx", []byte(strconv.Itoa(w)))
			})
		})
	}
	wg.Wait()
	close(results)
	won := 0
	for err := range results {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, storage.ErrExists):
			t.Fatalf("Create race: %v", err)
		}
	}
	if won != 2 {
		t.Fatalf("%d creators won, want exactly one per key", won)
	}
}

func testConcurrentReaders(t *testing.T, open opener) {
	s := open(t)
	ctx := t.Context()
	// A writer keeps two keys equal; readers must never see a torn pair
	// through List, which reads both in one snapshot.
	mustPut(t, s, "pair/a", []byte("0"))
	mustPut(t, s, "pair/b", []byte("0"))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				es, err := s.List(ctx, "pair/", "", 0)
				if err != nil {
					errs <- err
					return
				}
				if len(es) != 2 || !bytes.Equal(es[0].Value, es[1].Value) {
					errs <- fmt.Errorf("torn read: %q", es)
					return
				}
				if _, err := s.Get(ctx, "pair/a"); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	for i := 1; i <= 50; i++ {
		v := []byte(strconv.Itoa(i))
		err := s.Update(ctx, func(tx storage.Tx) error {
			if err := tx.Put(ctx, "pair/a", v); err != nil {
				return err
			}
			return tx.Put(ctx, "pair/b", v)
		})
		if err != nil {
			t.Fatalf("Update: %v", err)
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func testClose(t *testing.T, open opener) {
	s := open(t)
	ctx := t.Context()
	mustPut(t, s, "k", []byte("v"))
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := s.Get(ctx, "k"); err == nil || errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Get after Close: got %v, want an error other than ErrNotFound", err)
	}
	if err := s.Put(ctx, "k", nil); err == nil {
		t.Errorf("Put after Close succeeded")
	}
	if _, err := s.List(ctx, "", "", 0); err == nil {
		t.Errorf("List after Close succeeded")
	}
	if err := s.Update(ctx, func(storage.Tx) error { return nil }); err == nil {
		t.Errorf("Update after Close succeeded")
	}
}

// openerAt is the signature of RunPersistent's openAt argument.
type openerAt = func(t *testing.T, dir string) storage.Store

func mustClose(t *testing.T, s storage.Store) {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

func testReopen(t *testing.T, openAt openerAt) {
	dir := t.TempDir()
	ctx := t.Context()
	binary := []byte("\x00\x01\xfe\xff\x00")
	s := openAt(t, dir)
	mustPut(t, s, "put", []byte("put"))
	mustPut(t, s, "binary", binary)
	mustPut(t, s, "empty", nil)
	mustPut(t, s, "deleted", []byte("x"))
	if err := s.Create(ctx, "created", []byte("created")); err != nil {
		t.Fatalf("Create: %v", err)
	}
	if err := s.Delete(ctx, "deleted"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	err := s.Update(ctx, func(tx storage.Tx) error {
		if err := tx.Put(ctx, "updated", []byte("updated")); err != nil {
			return err
		}
		return tx.Put(ctx, "put", []byte("put again"))
	})
	if err != nil {
		t.Fatalf("Update: %v", err)
	}
	mustClose(t, s)

	s = openAt(t, dir)
	wantValue(t, s, "put", []byte("put again"))
	wantValue(t, s, "binary", binary)
	wantValue(t, s, "empty", []byte{})
	wantValue(t, s, "created", []byte("created"))
	wantValue(t, s, "updated", []byte("updated"))
	wantNotFound(t, s, "deleted")
	wantKeys(t, s, "", "", 0, []string{"binary", "created", "empty", "put", "updated"})
	if err := s.Create(ctx, "created", nil); !errors.Is(err, storage.ErrExists) {
		t.Fatalf("Create after reopen: got %v, want ErrExists", err)
	}
}

func testReopenAfterRollback(t *testing.T, openAt openerAt) {
	dir := t.TempDir()
	ctx := t.Context()
	s := openAt(t, dir)
	mustPut(t, s, "k", []byte("committed"))
	err := s.Update(ctx, func(tx storage.Tx) error {
		if err := tx.Put(ctx, "k", []byte("rolled back")); err != nil {
			return err
		}
		if err := tx.Put(ctx, "ghost", []byte("x")); err != nil {
			return err
		}
		return errRollback
	})
	if !errors.Is(err, errRollback) {
		t.Fatalf("Update: got %v, want the rollback error", err)
	}
	mustClose(t, s)

	s = openAt(t, dir)
	wantValue(t, s, "k", []byte("committed"))
	wantNotFound(t, s, "ghost")
}

func testReopenMany(t *testing.T, openAt openerAt) {
	dir := t.TempDir()
	ctx := t.Context()
	for i := range 4 {
		s := openAt(t, dir)
		wantKeys(t, s, "n/", "", 0, func() []string {
			var ks []string
			for j := range i {
				ks = append(ks, fmt.Sprintf("n/%d", j))
			}
			return ks
		}())
		if err := s.Update(ctx, func(tx storage.Tx) error {
			return increment(ctx, tx, "count")
		}); err != nil {
			t.Fatalf("Update: %v", err)
		}
		mustPut(t, s, fmt.Sprintf("n/%d", i), nil)
		mustClose(t, s)
	}
	s := openAt(t, dir)
	wantValue(t, s, "count", []byte("4"))
}
