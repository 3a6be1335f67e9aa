package catalog

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"

	"github.com/kmsd/kmsd/internal/storage"
)

// keyIndex is an index whose entries are kept beside the key records, in
// each key's own write transaction (the sweep index and the store index).
// A store written before the index existed is indexed once; a mark in the
// store says it is done.
type keyIndex struct {
	name  string              // in errors: "sweep", "store"
	mark  string              // the path of the mark: every key record is indexed
	done  *atomic.Bool        // this catalog has seen the mark
	paths func(*Key) []string // the entries of a key record
}

// markIfEmpty marks a store that has no keys yet as indexed, so that keys
// made later need no indexing pass; on a store with keys it leaves the
// indexing to build. Several nodes may call it at once: the mark is read
// and written in one transaction.
func (x keyIndex) markIfEmpty(ctx context.Context, st storage.Store) error {
	if x.done.Load() {
		return nil
	}
	marked := false
	err := st.Update(ctx, func(tx storage.Tx) error {
		marked = false
		if _, err := tx.Get(ctx, x.mark); err == nil {
			marked = true
			return nil
		} else if !errors.Is(err, storage.ErrNotFound) {
			return err
		}
		ks, err := tx.List(ctx, "key/", "", 1)
		if err != nil || len(ks) > 0 {
			return err
		}
		marked = true
		return tx.Put(ctx, x.mark, []byte{})
	})
	if err != nil {
		return fmt.Errorf("catalog: mark the %s index: %w", x.name, err)
	}
	if marked {
		x.done.Store(true)
	}
	return nil
}

// build indexes, once per store, the key records written before the index
// existed: page by page, each page's records read in the transaction that
// writes their entries, then marks the store indexed. It is idempotent
// (entries are put, never created), so several nodes starting on one
// PostgreSQL store may run it at once; a key written or deleted meanwhile
// keeps its own entries in its own transaction.
func (x keyIndex) build(ctx context.Context, st storage.Store) error {
	if x.done.Load() {
		return nil
	}
	if _, err := st.Get(ctx, x.mark); err == nil {
		x.done.Store(true)
		return nil
	} else if !errors.Is(err, storage.ErrNotFound) {
		return fmt.Errorf("catalog: read the %s index mark: %w", x.name, err)
	}
	const page = 500
	after := ""
	for {
		var n int
		var last string
		err := st.Update(ctx, func(tx storage.Tx) error {
			entries, err := tx.List(ctx, "key/", after, page)
			if err != nil {
				return err
			}
			n = len(entries)
			for _, e := range entries {
				k, err := decodeKey(e.Value, nil)
				if err != nil {
					return fmt.Errorf("decode %s: %w", e.Key, err)
				}
				for _, p := range x.paths(k) {
					if err := tx.Put(ctx, p, []byte{}); err != nil {
						return err
					}
				}
				last = e.Key
			}
			if n < page {
				return tx.Put(ctx, x.mark, []byte{})
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("catalog: build the %s index: %w", x.name, err)
		}
		if n < page {
			x.done.Store(true)
			return nil
		}
		after = last
	}
}

// drop deletes index entry p of the key named name if, read in the same
// transaction, the key's record does not have it (it changed since the
// entry was read, was deleted, or the entry was left by a store not
// written by the catalog).
func (x keyIndex) drop(ctx context.Context, st storage.Store, p, name string) error {
	err := st.Update(ctx, func(tx storage.Tx) error {
		k, err := getKey(ctx, tx, name)
		if err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
		if slices.Contains(x.paths(k), p) {
			return nil
		}
		return tx.Delete(ctx, p)
	})
	if err != nil {
		return fmt.Errorf("catalog: drop a stale %s index entry: %w", x.name, err)
	}
	return nil
}
