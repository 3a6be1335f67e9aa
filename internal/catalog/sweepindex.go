package catalog

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/storage"
)

// The sweep index lets the sweepers read the keys that may be due instead
// of every key. Every key record that some sweeper may act on has one
// entry "sweep/<due>/<name>", where due (SweepDue, in milliseconds since
// the epoch, 20 digits, so entries sort by it) is the earliest instant at
// which any sweeper could act on it; other keys have none. The entry is
// written, moved or deleted in the transaction that writes the record,
// from the record it replaces as read in that transaction, so the index
// is exactly the records' (no process-wide lock, several nodes alike).
// Stores made before the index are indexed once, page by page, the first
// time DueKeys runs (sweepIndexedPath marks them done).

const sweepPrefix = "sweep/"

// sweepIndexedPath marks a store whose key records are all indexed.
const sweepIndexedPath = "sweep-indexed"

// SweepDue says whether a sweeper may ever act on k — it is pending
// deletion, in a multi-Region transition, has automatic rotation
// scheduled, or has material with an expiry — and the earliest instant at
// which one may: the deletion date, the next rotation, the first expiry,
// or the zero time (at once) for a transition or a deletion without a
// date. A sweeper acting on k at now has due <= now.
func SweepDue(k *Key) (due time.Time, ok bool) {
	at := func(t time.Time) {
		if !ok || t.Before(due) {
			due, ok = t, true
		}
	}
	if k.Pending != nil {
		at(time.Time{})
	}
	if k.State == keys.PendingDeletion {
		if k.DeletionDate != nil {
			at(*k.DeletionDate)
		} else {
			at(time.Time{})
		}
	}
	if k.RotationEnabled && k.NextRotation != nil {
		at(*k.NextRotation)
	}
	for i := range k.Versions {
		if k.Versions[i].ValidTo != nil {
			at(*k.Versions[i].ValidTo)
		}
	}
	return due, ok
}

// sweepStamp is the due part of an index entry at t.
func sweepStamp(t time.Time) string {
	ms := max(t.UnixMilli(), 0) // the zero time (at once) is 0
	s := strconv.FormatInt(ms, 10)
	return "00000000000000000000"[len(s):] + s
}

// sweepPath is k's index entry, "" if it has none.
func sweepPath(k *Key) string {
	if k == nil {
		return ""
	}
	due, ok := SweepDue(k)
	if !ok {
		return ""
	}
	return sweepPrefix + sweepStamp(due) + "/" + k.Name()
}

// indexSweep keeps the index of a record replaced in tx: old is the
// record as read in tx (nil: none), next the one written (nil: deleted).
func indexSweep(ctx context.Context, tx storage.Tx, old, next *Key) error {
	op, np := sweepPath(old), sweepPath(next)
	if op == np {
		return nil
	}
	if op != "" {
		if err := tx.Delete(ctx, op); err != nil {
			return err
		}
	}
	if np != "" {
		return tx.Put(ctx, np, []byte{})
	}
	return nil
}

// DueKeys calls fn, in due order, with the current record of every key
// that SweepDue says may be due at now, reading the sweep index and those
// records only — not every key. The records are the store's at the time
// of the read; like any record, never modify one.
func (c *Catalog) DueKeys(ctx context.Context, now time.Time, fn func(k *Key) error) error {
	if err := c.ensureSweepIndex(ctx); err != nil {
		return err
	}
	// Every entry due at now sorts before end.
	end := sweepPrefix + sweepStamp(now) + "0"
	const page = 500
	after := ""
	for {
		entries, err := c.store.List(ctx, sweepPrefix, after, page)
		if err != nil {
			return fmt.Errorf("catalog: read the sweep index: %w", err)
		}
		for _, e := range entries {
			if e.Key >= end {
				return nil
			}
			name := e.Key[len(sweepPrefix)+21:]
			k, err := getKey(ctx, c.store, name)
			if err != nil && !errors.Is(err, ErrNotFound) {
				return fmt.Errorf("catalog: read key %s: %w", name, err)
			}
			if sweepPath(k) != e.Key {
				// Changed since the index was read (then its entry is
				// another, met later or next round), or an entry left
				// by a store not written by the catalog.
				if err := c.sweepIndex().drop(ctx, c.store, e.Key, name); err != nil {
					return err
				}
				continue
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

// InitSweepIndex marks a store that has no keys yet as indexed, so that
// keys made before the first sweep round need no indexing pass; on a store
// with keys it leaves the indexing to the first round (DueKeys). kmsd
// calls it at start, before serving.
func (c *Catalog) InitSweepIndex(ctx context.Context) error {
	return c.sweepIndex().markIfEmpty(ctx, c.store)
}

// ensureSweepIndex indexes, once per store, key records written before
// the sweep index existed: page by page, each page's records read in the
// transaction that writes their entries, then marks the store indexed. A
// store with no keys is marked at once.
func (c *Catalog) ensureSweepIndex(ctx context.Context) error {
	return c.sweepIndex().build(ctx, c.store)
}

// sweepIndex is the sweep index as a keyIndex: a key has at most one entry.
func (c *Catalog) sweepIndex() keyIndex {
	return keyIndex{name: "sweep", mark: sweepIndexedPath, done: &c.sweepIndexed, paths: func(k *Key) []string {
		if p := sweepPath(k); p != "" {
			return []string{p}
		}
		return nil
	}}
}
