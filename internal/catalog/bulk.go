package catalog

import (
	"context"
	"errors"
	"fmt"

	"github.com/kmsd/kmsd/internal/storage"
)

// CreateKeys stores many new key records in one durable transaction, with
// exactly the records CreateKey writes (the key record and its index
// entry), so that a load generator can make a large catalog without one
// transaction per key. Either all are stored or none (ErrExists if any name
// is taken). The records are not cached: they are read through the cache
// like records another process wrote.
func (c *Catalog) CreateKeys(ctx context.Context, ks []*Key) error {
	bs := make([][]byte, len(ks))
	for i, k := range ks {
		b, err := encodeKey(k)
		if err != nil {
			return err
		}
		bs[i] = b
	}
	err := c.store.Update(ctx, func(tx storage.Tx) error {
		for i, k := range ks {
			if err := tx.Create(ctx, keyPath(k.Name()), bs[i]); err != nil {
				return err
			}
			if err := indexRecord(ctx, tx, nil, k); err != nil {
				return err
			}
			if err := tx.Put(ctx, keyIndexPath(k.Account, k.Region, k.ID), []byte{}); err != nil {
				return err
			}
		}
		return nil
	})
	if errors.Is(err, storage.ErrExists) {
		return ErrExists
	}
	if err != nil {
		return fmt.Errorf("catalog: create keys: %w", err)
	}
	return nil
}

// ScanKeys calls fn for every stored key record, in name order, decoding
// each from the store without caching it: a sweep over every key (due
// deletions, rotations, …) then costs memory for one page of records, not
// for the whole catalog, which on a large store (a million keys) would
// otherwise all stay cached after the first sweep. The records handed to
// fn are the store's at the time of the read; like any record, never
// modify one (use UpdateKey, which reads the current one).
func (c *Catalog) ScanKeys(ctx context.Context, fn func(k *Key) error) error {
	const page = 500
	after := ""
	for {
		entries, err := c.store.List(ctx, "key/", after, page)
		if err != nil {
			return fmt.Errorf("catalog: scan keys: %w", err)
		}
		for _, e := range entries {
			k, err := decodeKey(e.Value, &c.policies)
			if err != nil {
				return fmt.Errorf("catalog: decode key %s: %w", e.Key[len("key/"):], err)
			}
			if err := fn(k); err != nil {
				return err
			}
		}
		if len(entries) < page {
			return nil
		}
		after = entries[len(entries)-1].Key
	}
}
