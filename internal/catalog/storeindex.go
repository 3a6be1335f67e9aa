package catalog

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"

	"github.com/kmsd/kmsd/internal/storage"
)

// The store index answers the two questions about a custom key store's
// keys that once needed a read of every key record (on a million keys,
// close to a minute each): whether the store still holds any KMS key
// (DeleteCustomKeyStore's CustomKeyStoreHasCMKsException) and whether an
// external key is already used by a KMS key of the store (CreateKey's
// XksKeyAlreadyInUseException). Every key record in a custom key store
// has the entries
//
//	storekey/<storeId>/<name>                   (StoreHasKeys)
//	xkskey/<storeId>/<xksKeyId>/<name>          (external keys; XksKeyInUse)
//
// with <xksKeyId> path-escaped, so no id can reach into another's entries.
// Like the sweep index (sweepindex.go) they are written and deleted in the
// transaction that writes or deletes the record, from the record it
// replaces as read in that transaction, so the index is exactly the
// records' — a key in any state, PendingDeletion included, is in it until
// its record is deleted at the end of its waiting period, which is what
// AWS counts. The xkskey entries name the key, so that two keys using one
// external key (possible in a store written before the index, where the
// check and the create were not one transaction) are both counted.
// Stores made before the index are indexed once, page by page, by the
// first reader or sweep round (storeIndexedPath marks them done); kmsd
// marks an empty store indexed at start (InitStoreIndex).

const (
	storeKeyPrefix = "storekey/"
	xksKeyPrefix   = "xkskey/"
	// storeIndexedPath marks a store whose key records are all indexed.
	storeIndexedPath = "storekey-indexed"
)

// storeIndexPaths are k's store index entries; none for a nil k or a key
// in no custom key store.
func storeIndexPaths(k *Key) []string {
	if k == nil || k.CustomKeyStoreID == "" {
		return nil
	}
	ps := []string{storeKeyPrefix + k.CustomKeyStoreID + "/" + k.Name()}
	if k.XksKeyID != "" {
		ps = append(ps, xksKeyIndexPrefix(k.CustomKeyStoreID, k.XksKeyID)+k.Name())
	}
	return ps
}

// xksKeyIndexPrefix is the prefix of the xkskey entries of external key
// xksKeyID in store storeID.
func xksKeyIndexPrefix(storeID, xksKeyID string) string {
	return xksKeyPrefix + storeID + "/" + url.PathEscape(xksKeyID) + "/"
}

// indexStore keeps the store index of a record replaced in tx: old is the
// record as read in tx (nil: none), next the one written (nil: deleted).
func indexStore(ctx context.Context, tx storage.Tx, old, next *Key) error {
	ops, nps := storeIndexPaths(old), storeIndexPaths(next)
	for _, p := range ops {
		if !slices.Contains(nps, p) {
			if err := tx.Delete(ctx, p); err != nil {
				return err
			}
		}
	}
	for _, p := range nps {
		if !slices.Contains(ops, p) {
			if err := tx.Put(ctx, p, []byte{}); err != nil {
				return err
			}
		}
	}
	return nil
}

// indexRecord keeps every index of a key record replaced in tx (the sweep
// index and the store index); old and next as for indexSweep.
func indexRecord(ctx context.Context, tx storage.Tx, old, next *Key) error {
	if err := indexSweep(ctx, tx, old, next); err != nil {
		return err
	}
	return indexStore(ctx, tx, old, next)
}

// StoreHasKeys reports whether any KMS key, in any key state, lives in
// custom key store storeID, reading one index entry rather than every key.
func (c *Catalog) StoreHasKeys(ctx context.Context, storeID string) (bool, error) {
	return c.anyEntry(ctx, storeKeyPrefix+storeID+"/")
}

// StoreHasKeysIn is StoreHasKeys read through tx, the transaction that
// deletes custom key store storeID, so that a key created meanwhile
// through another node is seen here or the create sees the store gone
// (catalog.CreateKeyIf with keystore.CheckCreateKey): never a key left in
// a deleted store. It reads only through tx and writes nothing — an entry
// its record does not have is skipped, not dropped — and relies on the
// index, so call StoreHasKeys first, which indexes an older store.
func StoreHasKeysIn(ctx context.Context, tx storage.Reader, storeID string) (bool, error) {
	prefix := storeKeyPrefix + storeID + "/"
	after := ""
	for {
		es, err := tx.List(ctx, prefix, after, 16)
		if err != nil {
			return false, fmt.Errorf("catalog: read the store index: %w", err)
		}
		for _, e := range es {
			k, err := getKey(ctx, tx, e.Key[len(prefix):])
			if errors.Is(err, ErrNotFound) {
				continue
			}
			if err != nil {
				return false, err
			}
			if slices.Contains(storeIndexPaths(k), e.Key) {
				return true, nil
			}
		}
		if len(es) < 16 {
			return false, nil
		}
		after = es[len(es)-1].Key
	}
}

// XksKeyInUse reports whether a KMS key of external key store storeID, in
// any key state, uses external key xksKeyID, reading one index entry
// rather than every key.
func (c *Catalog) XksKeyInUse(ctx context.Context, storeID, xksKeyID string) (bool, error) {
	return c.anyEntry(ctx, xksKeyIndexPrefix(storeID, xksKeyID))
}

// anyEntry says whether an entry under prefix belongs to a stored key
// record: each entry found is checked against its record (one read), and
// one the record does not have — left by a writer that did not keep the
// index — is dropped, so that it cannot block a store for ever.
func (c *Catalog) anyEntry(ctx context.Context, prefix string) (bool, error) {
	if err := c.EnsureStoreIndex(ctx); err != nil {
		return false, err
	}
	after := ""
	for {
		es, err := c.store.List(ctx, prefix, after, 16)
		if err != nil {
			return false, fmt.Errorf("catalog: read the store index: %w", err)
		}
		for _, e := range es {
			name := e.Key[strings.LastIndexByte(e.Key, '/')+1:]
			k, err := getKey(ctx, c.store, name)
			if err != nil && !errors.Is(err, ErrNotFound) {
				return false, fmt.Errorf("catalog: read key %s: %w", name, err)
			}
			if slices.Contains(storeIndexPaths(k), e.Key) {
				return true, nil
			}
			if err := c.storeIndex().drop(ctx, c.store, e.Key, name); err != nil {
				return false, err
			}
		}
		if len(es) < 16 {
			return false, nil
		}
		after = es[len(es)-1].Key
	}
}

// checkXksKeyFree returns ErrXksKeyInUse if external key k's XksKeyId is
// used by another key record of its store, read in tx, the transaction
// that creates k: two CreateKey calls racing on one XksKeyId (on two
// nodes) cannot both commit. Entries no record has are not counted. It
// relies on the index, so on a store not indexed yet it checks nothing
// (kms checks with XksKeyInUse first, which indexes the store).
func checkXksKeyFree(ctx context.Context, tx storage.Tx, k *Key) error {
	if k.CustomKeyStoreID == "" || k.XksKeyID == "" {
		return nil
	}
	prefix := xksKeyIndexPrefix(k.CustomKeyStoreID, k.XksKeyID)
	es, err := tx.List(ctx, prefix, "", 0)
	if err != nil {
		return err
	}
	for _, e := range es {
		other, err := getKey(ctx, tx, e.Key[len(prefix):])
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		if slices.Contains(storeIndexPaths(other), e.Key) {
			return ErrXksKeyInUse
		}
	}
	return nil
}

// InitStoreIndex marks a store that has no keys yet as indexed, so that
// keys made later need no indexing pass; on a store with keys it leaves
// the indexing to the first reader or sweep round (EnsureStoreIndex). kmsd
// calls it at start, before serving. Several nodes may call it at once:
// the mark is read and written in one transaction.
func (c *Catalog) InitStoreIndex(ctx context.Context) error {
	return c.storeIndex().markIfEmpty(ctx, c.store)
}

// EnsureStoreIndex indexes, once per store, key records written before
// the store index existed: page by page, each page's records read in the
// transaction that writes their entries, then marks the store indexed.
// It is idempotent (entries are put, never created), so several nodes
// starting on one PostgreSQL store may run it at once; a key written or
// deleted meanwhile keeps its own entries in its own transaction.
func (c *Catalog) EnsureStoreIndex(ctx context.Context) error {
	if c.storeIndexed.Load() {
		return nil
	}
	c.storeIndexing.Lock()
	defer c.storeIndexing.Unlock()
	if c.storeIndexed.Load() {
		return nil
	}
	return c.storeIndex().build(ctx, c.store)
}

// storeIndex is the store index as a keyIndex.
func (c *Catalog) storeIndex() keyIndex {
	return keyIndex{name: "store", mark: storeIndexedPath, done: &c.storeIndexed, paths: storeIndexPaths}
}
