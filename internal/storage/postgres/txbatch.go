package postgres

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/kmsd/kmsd/internal/storage"
)

// sqlGetBatch reads a chunk of keys in one statement (GetBatch, and Get's
// coalesced reads outside a transaction, getbatch.go). In Update's
// serializable transaction the index scan takes SIRead locks on what it
// read, the index pages of absent keys included (or, if PostgreSQL
// chooses a sequential scan, on the whole table), so a concurrent
// transaction writing one of the keys conflicts with this one as it would
// with a Get of it: read-compare-put stays safe.
const sqlGetBatch = `SELECT key, value FROM kv WHERE key = ANY($1::text[])`

// sqlPutBatch puts a chunk of entries in one statement. The kv_changes
// trigger fires per row, for an inserted row as for an updated one, so the
// feed records each key as Put's statement makes it record one. One row
// comes back, not one per key: the transaction's xid, which makes Update
// write its commit marker as after any other write. The caller removes
// duplicate keys first: ON CONFLICT DO UPDATE may not touch a row twice in
// one statement.
const sqlPutBatch = `WITH w AS (
	INSERT INTO kv (key, value) SELECT k, v FROM unnest($1::text[], $2::bytea[]) AS u(k, v)
	ON CONFLICT (key) DO UPDATE SET value = excluded.value RETURNING xmax::text <> '0' AS replaced
) SELECT count(*), pg_current_xact_id()::text, coalesce(bool_or(replaced), false) FROM w`

// readKeys runs sqlGetBatch for keys on q and adds what it finds to
// found.
func readKeys(ctx context.Context, q querier, keys []string, found map[string][]byte) error {
	rows, err := q.Query(ctx, sqlGetBatch, keys)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var k string
		var v []byte
		if err := rows.Scan(&k, &v); err != nil {
			return err
		}
		found[k] = bytea(v)
	}
	return rows.Err()
}

// GetBatch implements storage.BatchGetter: one SELECT … WHERE key = ANY
// per chunk of distinct keys (at most batchRows keys, about batchBytes of
// them), one round trip where Get needs one per key.
func (t *tx) GetBatch(ctx context.Context, keys []string) ([][]byte, error) {
	if t.done.Load() {
		return nil, errTxDone
	}
	for _, k := range keys {
		if err := storage.ValidateKey(k); err != nil {
			return nil, err
		}
	}
	found := make(map[string][]byte, len(keys))
	seen := make(map[string]bool, len(keys))
	var chunk []string
	size := 0
	flush := func() error {
		if len(chunk) == 0 {
			return nil
		}
		if err := readKeys(ctx, t.tx, chunk, found); err != nil {
			return t.note(fmt.Errorf("postgres: get batch: %w", err))
		}
		chunk, size = chunk[:0], 0
		return nil
	}
	for _, k := range keys {
		if seen[k] {
			continue
		}
		seen[k] = true
		chunk = append(chunk, k)
		size += len(k)
		if len(chunk) >= batchRows || size >= batchBytes {
			if err := flush(); err != nil {
				return nil, err
			}
		}
	}
	if err := flush(); err != nil {
		return nil, err
	}
	values := make([][]byte, len(keys))
	storage.OwnValues(values, keys, found, make(map[string]bool, len(found)))
	return values, nil
}

// PutBatch implements storage.BatchPutter: one INSERT … SELECT FROM unnest
// … ON CONFLICT DO UPDATE per chunk of distinct keys, chunked as
// CreateBatch is, each key with the value of its last entry, in key order.
func (t *tx) PutBatch(ctx context.Context, entries []storage.Entry) error {
	if t.done.Load() {
		return errTxDone
	}
	for _, e := range entries {
		if err := storage.ValidateKey(e.Key); err != nil {
			return err
		}
	}
	last := make(map[string]int, len(entries)) // key → index of its last entry
	for i, e := range entries {
		last[e.Key] = i
	}
	// The rows are written, and locked, in key order: concurrent batches
	// over the same keys then wait for each other instead of deadlocking
	// (which PostgreSQL would detect only after deadlock_timeout, and the
	// retry would cost the whole transaction).
	order := make([]int, 0, len(last))
	for _, i := range last {
		order = append(order, i)
	}
	slices.SortFunc(order, func(i, j int) int { return strings.Compare(entries[i].Key, entries[j].Key) })
	var (
		keys []string
		vals [][]byte
		size int
	)
	flush := func() error {
		if len(keys) == 0 {
			return nil
		}
		var n int64
		var xid string
		var replaced bool // some key had a record (Put's test)
		if err := t.tx.QueryRow(ctx, sqlPutBatch, keys, vals).Scan(&n, &xid, &replaced); err != nil {
			return t.note(fmt.Errorf("postgres: put batch: %w", err))
		}
		if n != int64(len(keys)) {
			return fmt.Errorf("postgres: put batch: %d rows written of %d", n, len(keys))
		}
		t.wrote(xid, replaced, keys...)
		keys, vals, size = keys[:0], vals[:0], 0
		return nil
	}
	for _, i := range order {
		e := entries[i]
		keys, vals = append(keys, e.Key), append(vals, bytea(e.Value))
		size += len(e.Key) + len(e.Value)
		if len(keys) >= batchRows || size >= batchBytes {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}

// sqlDeleteBatch deletes a chunk of keys in one statement. The kv_changes
// trigger fires per deleted row, as for Delete. The row that comes back
// holds the count deleted and the transaction's xid, which makes Update
// write its commit marker as after any other write (when a row was
// deleted: a Delete of an absent key writes nothing).
const sqlDeleteBatch = `WITH d AS (
	DELETE FROM kv WHERE key = ANY($1::text[]) RETURNING 1
) SELECT count(*), pg_current_xact_id()::text FROM d`

// DeleteBatch implements storage.BatchDeleter: one DELETE … WHERE key =
// ANY per chunk of distinct keys (at most batchRows, about batchBytes of
// them), in key order, as PutBatch writes.
func (t *tx) DeleteBatch(ctx context.Context, keys []string) error {
	if t.done.Load() {
		return errTxDone
	}
	if err := storage.ValidateKeys(keys); err != nil {
		return err
	}
	distinct := slices.Clone(keys)
	slices.Sort(distinct)
	distinct = slices.Compact(distinct)
	for len(distinct) > 0 {
		n, size := 0, 0
		for n < len(distinct) && n < batchRows && size < batchBytes {
			size += len(distinct[n])
			n++
		}
		var deleted int64
		var xid string
		if err := t.tx.QueryRow(ctx, sqlDeleteBatch, distinct[:n]).Scan(&deleted, &xid); err != nil {
			return t.note(fmt.Errorf("postgres: delete batch: %w", err))
		}
		if deleted > 0 {
			t.wrote(xid, true, distinct[:n]...)
		}
		distinct = distinct[n:]
	}
	return nil
}
