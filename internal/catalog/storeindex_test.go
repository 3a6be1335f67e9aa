package catalog

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/storage"
)

// storeIndexOf returns the store index entries stored in c and those its
// key records call for (found by reading every record), both sorted.
func storeIndexOf(t *testing.T, c *Catalog) (stored, want []string) {
	t.Helper()
	for _, prefix := range []string{storeKeyPrefix, xksKeyPrefix} {
		es, err := c.store.List(t.Context(), prefix, "", 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			stored = append(stored, e.Key)
		}
	}
	err := c.ScanKeys(t.Context(), func(k *Key) error {
		want = append(want, storeIndexPaths(k)...)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(stored)
	slices.Sort(want)
	return stored, want
}

// storeAnswers asks c the two questions the index answers.
func storeAnswers(t *testing.T, c *Catalog, store, xksKey string) (has, inUse bool) {
	t.Helper()
	var err error
	if has, err = c.StoreHasKeys(t.Context(), store); err != nil {
		t.Fatal(err)
	}
	if inUse, err = c.XksKeyInUse(t.Context(), store, xksKey); err != nil {
		t.Fatal(err)
	}
	return has, inUse
}

// storeKey is a key of custom key store store (an external key when
// xksKey is set).
func storeKey(t *testing.T, c *Catalog, id, store, xksKey string) *Key {
	k := realKey(t, c, id)
	k.CustomKeyStoreID, k.XksKeyID = store, xksKey
	if xksKey != "" {
		k.Origin = "EXTERNAL_KEY_STORE"
	} else {
		k.Origin = "AWS_CLOUDHSM"
	}
	return k
}

// TestStoreIndexFollowsWrites: through create (each way the catalog
// creates keys), scheduling and cancelling deletion and the final
// deletion, the store index holds exactly the entries of the stored
// records, a key pending deletion still counts, and StoreHasKeys and
// XksKeyInUse answer from it; a store id or XksKeyId that is a prefix of
// another's is not confused with it.
func TestStoreIndexFollowsWrites(t *testing.T) {
	ctx := t.Context()
	c := newCatalog(t)
	if err := c.InitStoreIndex(ctx); err != nil {
		t.Fatal(err)
	}
	const xks, hsm = "cks-0123456789abcdef0", "cks-fedcba98765432100"
	check := func(step string) {
		t.Helper()
		if stored, want := storeIndexOf(t, c); !slices.Equal(stored, want) {
			t.Fatalf("%s: index %v, want %v", step, stored, want)
		}
	}
	ids := func(i int) string { return fmt.Sprintf("%08d-2222-4000-8000-000000000000", i) }
	// Keys in no store, one HSM key, and external keys made each way.
	if err := c.CreateKeys(ctx, []*Key{realKey(t, c, ids(0)), realKey(t, c, ids(1))}); err != nil {
		t.Fatal(err)
	}
	if has, _ := storeAnswers(t, c, xks, "ext-a"); has {
		t.Fatal("StoreHasKeys of a store with no keys")
	}
	if err := c.CreateKey(ctx, storeKey(t, c, ids(2), hsm, "")); err != nil {
		t.Fatal(err)
	}
	if err := c.CreateKey(ctx, storeKey(t, c, ids(3), xks, "ext-a")); err != nil {
		t.Fatal(err)
	}
	if err := c.CreateKeys(ctx, []*Key{storeKey(t, c, ids(4), xks, "ext-b")}); err != nil {
		t.Fatal(err)
	}
	if err := c.CreateAll(ctx, []*Key{storeKey(t, c, ids(5), xks, "ext/c")}, nil, nil); err != nil {
		t.Fatal(err)
	}
	check("after creation")
	for _, q := range []struct {
		store, xksKey string
		has, inUse    bool
	}{
		{xks, "ext-a", true, true},
		{xks, "ext-b", true, true},
		{xks, "ext/c", true, true},
		{xks, "ext", true, false},     // a prefix of ext-a, ext-b and ext/c
		{xks, "ext-", true, false},    // a prefix of ext-a
		{xks, "ext-a-2", true, false}, // has ext-a as its prefix
		{hsm, "ext-a", true, false},   // the key is in the other store
		{xks[:len(xks)-1], "ext-a", false, false},
		{"cks-00000000000000000", "ext-a", false, false},
	} {
		if has, inUse := storeAnswers(t, c, q.store, q.xksKey); has != q.has || inUse != q.inUse {
			t.Errorf("store %s, XksKeyId %q: has %v, in use %v; want %v, %v", q.store, q.xksKey, has, inUse, q.has, q.inUse)
		}
	}

	// Scheduled for deletion: still counts. Cancelled: still counts.
	when := time.Now().Add(7 * 24 * time.Hour)
	for _, id := range []string{ids(2), ids(3)} {
		if _, err := c.UpdateKey(ctx, id, func(k *Key) error {
			k.State, k.DeletionDate = keys.PendingDeletion, &when
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	check("after scheduling deletion")
	if has, inUse := storeAnswers(t, c, hsm, ""); !has || inUse {
		t.Errorf("HSM store with its key pending deletion: has %v, in use %v; want true, false", has, inUse)
	}
	if _, inUse := storeAnswers(t, c, xks, "ext-a"); !inUse {
		t.Error("ext-a of a key pending deletion is not in use")
	}
	if _, err := c.UpdateKey(ctx, ids(3), func(k *Key) error {
		k.State, k.DeletionDate = keys.Disabled, nil
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	check("after cancelling deletion")
	if _, inUse := storeAnswers(t, c, xks, "ext-a"); !inUse {
		t.Error("ext-a is not in use after its key's deletion was cancelled")
	}

	// The final deletion takes the key out.
	if err := c.DeleteKey(ctx, ids(2)); err != nil {
		t.Fatal(err)
	}
	if has, _ := storeAnswers(t, c, hsm, ""); has {
		t.Error("HSM store still has keys after its only key was deleted")
	}
	for _, id := range []string{ids(3), ids(4), ids(5)} {
		if has, _ := storeAnswers(t, c, xks, ""); !has {
			t.Fatalf("external store has no keys before %s is deleted", id)
		}
		if err := c.DeleteKey(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	check("after deletion")
	if has, inUse := storeAnswers(t, c, xks, "ext-a"); has || inUse {
		t.Errorf("external store after its keys were deleted: has %v, ext-a in use %v", has, inUse)
	}
	// The XksKeyId is free again.
	if err := c.CreateKey(ctx, storeKey(t, c, ids(6), xks, "ext-a")); err != nil {
		t.Fatal(err)
	}
	check("after reuse")
	// CreateKey itself refuses an XksKeyId in use in the store, in its
	// transaction (a race past kms's check), and stores nothing; another
	// store may use it.
	if err := c.CreateKey(ctx, storeKey(t, c, ids(7), xks, "ext-a")); !errors.Is(err, ErrXksKeyInUse) {
		t.Fatalf("CreateKey with ext-a in use: %v, want ErrXksKeyInUse", err)
	}
	if _, err := c.Key(ctx, ids(7)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("refused key stored: %v", err)
	}
	if err := c.CreateKey(ctx, storeKey(t, c, ids(8), "cks-11111111111111111", "ext-a")); err != nil {
		t.Fatalf("ext-a in another store: %v", err)
	}
	check("after a refused CreateKey")
	if _, inUse := storeAnswers(t, c, xks, "ext-a"); !inUse {
		t.Error("ext-a not in use after a new key took it")
	}

	// Entries no record has (left by a writer that did not keep the
	// index) do not count and are dropped when met.
	stale := []string{
		storeKeyPrefix + hsm + "/" + ids(99),
		xksKeyIndexPrefix(xks, "ext-z") + ids(99),
		xksKeyIndexPrefix(xks, "ext-a") + ids(2), // a key of another store, deleted
	}
	for _, p := range stale {
		if err := c.store.Put(ctx, p, []byte{}); err != nil {
			t.Fatal(err)
		}
	}
	if has, inUse := storeAnswers(t, c, hsm, "ext-z"); has || inUse {
		t.Errorf("stale entries count: HSM store has %v, ext-z in use %v", has, inUse)
	}
	if has, inUse := storeAnswers(t, c, xks, "ext-z"); !has || inUse {
		t.Errorf("external store with a stale ext-z entry: has %v, ext-z in use %v; want true, false", has, inUse)
	}
	if _, inUse := storeAnswers(t, c, xks, "ext-a"); !inUse {
		t.Error("ext-a not in use beside a stale entry")
	}
	check("after stale entries were met") // the first two are gone
	for _, p := range stale[:2] {
		if _, err := c.store.Get(ctx, p); err == nil {
			t.Errorf("stale entry %s was not dropped", p)
		}
	}
}

// TestStoreIndexOfOldStore: a store written before the index (records put
// straight into storage, no entries, no mark) is not marked at start; the
// first question indexes it once (two keys sharing one XksKeyId both
// counted) and marks it, so that later questions — from this process or
// another starting on the same database, and from several at once — read
// a handful of records, not every key. An empty store is marked at start.
func TestStoreIndexOfOldStore(t *testing.T) {
	ctx := t.Context()
	c0 := newCatalog(t)
	if err := c0.InitStoreIndex(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c0.store.Get(ctx, storeIndexedPath); err != nil {
		t.Fatalf("an empty store is not marked indexed at start: %v", err)
	}

	old := newCatalog(t)
	const xks, hsm = "cks-0123456789abcdef0", "cks-fedcba98765432100"
	put := func(k *Key) {
		t.Helper()
		b, err := json.Marshal(k)
		if err != nil {
			t.Fatal(err)
		}
		if err := old.store.Put(ctx, keyPath(k.Name()), b); err != nil {
			t.Fatal(err)
		}
	}
	const n = 1200 // more than two indexing pages
	for i := range n {
		id := fmt.Sprintf("%08d-3333-4000-8000-000000000000", i)
		switch {
		case i == 700:
			put(storeKey(t, old, id, hsm, ""))
		case i == 900 || i == 1100: // one XksKeyId, two keys
			put(storeKey(t, old, id, xks, "ext-a"))
		default:
			put(realKey(t, old, id))
		}
	}
	cs := &countingStore{Store: old.store}
	oc := New(cs, old.barrier)
	if err := oc.InitStoreIndex(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := old.store.Get(ctx, storeIndexedPath); err == nil {
		t.Fatal("a store with keys from before the index was marked indexed at start")
	}
	if stored, _ := storeIndexOf(t, oc); len(stored) != 0 {
		t.Fatalf("the store from before the index has %d index entries", len(stored))
	}
	// Several processes start on it at once (as nodes on one PostgreSQL).
	errs := make(chan error, 3)
	for range 3 {
		go func() { errs <- New(old.store, old.barrier).EnsureStoreIndex(ctx) }()
	}
	for range 3 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if has, inUse := storeAnswers(t, oc, xks, "ext-a"); !has || !inUse {
		t.Fatalf("indexed old store: has %v, ext-a in use %v; want true, true", has, inUse)
	}
	stored, want := storeIndexOf(t, oc)
	if !slices.Equal(stored, want) || len(want) != 5 {
		t.Fatalf("index built from the old store: %v, want %v (5 entries)", stored, want)
	}
	if _, err := old.store.Get(ctx, storeIndexedPath); err != nil {
		t.Fatalf("the old store is not marked indexed: %v", err)
	}
	// One of the two keys sharing ext-a goes: ext-a is still in use.
	if err := oc.DeleteKey(ctx, fmt.Sprintf("%08d-3333-4000-8000-000000000000", 900)); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*Catalog{oc, New(cs, old.barrier)} {
		cs.read.Store(0)
		has, inUse := storeAnswers(t, c, xks, "ext-a")
		if !has || !inUse {
			t.Errorf("after one of two keys of ext-a went: has %v, in use %v", has, inUse)
		}
		if hasHSM, _ := storeAnswers(t, c, hsm, "x"); !hasHSM {
			t.Error("HSM store's key not found")
		}
		// Per question at most the mark, one index entry and its record.
		if reads := cs.read.Load(); reads > 10 {
			t.Errorf("four questions on %d keys read %d records", n, reads)
		}
	}
}

var _ storage.Store = (*countingStore)(nil)
