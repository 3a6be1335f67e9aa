package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"github.com/kmsd/kmsd/internal/storage"
)

// stmts are the data statements, prepared once per database handle so that
// the hot paths (Get above all) never parse SQL.
type stmts struct {
	get       *sql.Stmt
	head      *sql.Stmt // the change feed's generation and last sequence number
	listFrom  *sql.Stmt // prefix <= key < end
	listAfter *sql.Stmt // after < key < end
	put       *sql.Stmt // nil on the reader
	create    *sql.Stmt // nil on the reader
	del       *sql.Stmt // nil on the reader
	putRef    *sql.Stmt // nil on the reader
	createRef *sql.Stmt // nil on the reader
	insBig    *sql.Stmt // nil on the reader
	delBig    *sql.Stmt // nil on the reader
	createN   *sql.Stmt // nil on the reader: creates batchRows entries
	getN      *sql.Stmt // nil on the reader: reads batchRows keys
}

// inlineMax is the longest value written into kv's own row; a longer one
// is written as a row of kv_big, which kv.big names (schema version 4).
//
// kv is WITHOUT ROWID, so its B-tree keeps whole rows in its interior
// pages too. With key records (~0.8 KB) inline, a million keys made it ten
// levels deep with ~70,000 interior pages, and a point read of a key not
// read before pulled five or six pages from the OS. With long values out
// of line kv's rows are small (key, a short value or a row id): its
// interior pages and kv_big's (row ids only) are a few thousand in all,
// and a point read of a long value reads two leaf pages, kv's and
// kv_big's. Short values — index entries (empty), last-use records, most
// control records — stay inline, so scans of them (ListKeys pages the key
// index) read kv alone. kv_big's ids grow, so a new long value is
// appended at its end. A value is found whichever way it was written (the
// reads take kv.value, or else kv_big's), so inlineMax may change between
// versions without a migration.
const inlineMax = 320

// Prefix scans are index ranges on the primary key, never LIKE: LIKE treats
// % and _ as wildcards and folds ASCII case. The end bound comes from
// storage.PrefixEnd.
const (
	sqlGet       = `SELECT coalesce(kv.value, b.value) FROM kv LEFT JOIN kv_big b ON b.id = kv.big WHERE kv.key = ?`
	sqlListFrom  = `SELECT kv.key, coalesce(kv.value, b.value) FROM kv LEFT JOIN kv_big b ON b.id = kv.big WHERE kv.key >= ? AND kv.key < ? ORDER BY kv.key LIMIT ?`
	sqlListAfter = `SELECT kv.key, coalesce(kv.value, b.value) FROM kv LEFT JOIN kv_big b ON b.id = kv.big WHERE kv.key > ? AND kv.key < ? ORDER BY kv.key LIMIT ?`
	sqlPut       = `INSERT INTO kv (key, value, big) VALUES (?, ?, NULL) ON CONFLICT (key) DO UPDATE SET value = excluded.value, big = NULL`
	sqlCreate    = `INSERT INTO kv (key, value, big) VALUES (?, ?, NULL) ON CONFLICT (key) DO NOTHING`
	sqlDelete    = `DELETE FROM kv WHERE key = ?`
	sqlPutRef    = `INSERT INTO kv (key, value, big) VALUES (?, NULL, ?) ON CONFLICT (key) DO UPDATE SET value = NULL, big = excluded.big`
	sqlCreateRef = `INSERT INTO kv (key, value, big) VALUES (?, NULL, ?) ON CONFLICT (key) DO NOTHING`
	sqlInsBig    = `INSERT INTO kv_big (value) VALUES (?)`
	sqlDelBig    = `DELETE FROM kv_big WHERE id = ?`
	sqlHead      = `SELECT (SELECT value FROM kmsd_meta WHERE name = 'generation'), coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'kv_changes'), 0)`
)

// batchRows is how many entries one statement of createBatch creates:
// multi-row INSERTs of 100 rows created 8,000 entries in one transaction
// about 15% faster than single-row ones (4.5 against 5.5 µs a row on the
// shared test machine; 500 rows gained nothing more), with 200 parameters,
// far below SQLite's limit.
const batchRows = 100

var sqlCreateN = `INSERT INTO kv (key, value, big) VALUES ` +
	strings.TrimSuffix(strings.Repeat("(?, ?, NULL), ", batchRows), ", ") +
	` ON CONFLICT (key) DO NOTHING RETURNING key`

// sqlGetN reads batchRows keys in one statement (GetBatch): a statement a
// key cost a merge of last uses more than the B-tree it read.
var sqlGetN = `SELECT kv.key, coalesce(kv.value, b.value) FROM kv LEFT JOIN kv_big b ON b.id = kv.big WHERE kv.key IN (` +
	strings.TrimSuffix(strings.Repeat("?, ", batchRows), ", ") + `)`

func prepare(ctx context.Context, db *sql.DB, write bool) (_ *stmts, err error) {
	st := &stmts{}
	defer func() {
		if err != nil {
			st.close()
		}
	}()
	prep := func(dst **sql.Stmt, query string) {
		if err == nil {
			if *dst, err = db.PrepareContext(ctx, query); err != nil {
				err = fmt.Errorf("sqlite: prepare %q: %w", query, err)
			}
		}
	}
	prep(&st.get, sqlGet)
	prep(&st.head, sqlHead)
	prep(&st.listFrom, sqlListFrom)
	prep(&st.listAfter, sqlListAfter)
	if write {
		prep(&st.put, sqlPut)
		prep(&st.create, sqlCreate)
		prep(&st.del, sqlDelete)
		prep(&st.putRef, sqlPutRef)
		prep(&st.createRef, sqlCreateRef)
		prep(&st.insBig, sqlInsBig)
		prep(&st.delBig, sqlDelBig)
		prep(&st.createN, sqlCreateN)
		prep(&st.getN, sqlGetN)
	}
	return st, err
}

func (st *stmts) close() error {
	var errs []error
	for _, s := range []*sql.Stmt{st.get, st.head, st.listFrom, st.listAfter, st.put, st.create, st.del, st.putRef, st.createRef, st.insBig, st.delBig, st.createN, st.getN} {
		if s != nil {
			errs = append(errs, s.Close())
		}
	}
	return errors.Join(errs...)
}

// ops carries out the contract's operations with one set of statements,
// either each in a transaction of its own (tx nil) or inside tx.
type ops struct {
	st *stmts
	tx *sql.Tx
}

func (o ops) stmt(ctx context.Context, s *sql.Stmt) *sql.Stmt {
	if o.tx == nil {
		return s
	}
	return o.tx.StmtContext(ctx, s)
}

func (o ops) get(ctx context.Context, key string) ([]byte, error) {
	if err := storage.ValidateKey(key); err != nil {
		return nil, err
	}
	var v []byte
	err := o.stmt(ctx, o.st.get).QueryRowContext(ctx, key).Scan(&v)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return nil, storage.ErrNotFound
	case err != nil:
		return nil, fmt.Errorf("sqlite: get: %w", err)
	case v == nil:
		v = []byte{} // an empty BLOB scans as nil
	}
	return v, nil
}

func (o ops) list(ctx context.Context, prefix, after string, limit int) ([]storage.Entry, error) {
	if err := storage.ValidateRange(prefix, after); err != nil {
		return nil, err
	}
	end, ok := storage.PrefixEnd(prefix)
	if !ok {
		end = noEnd
	}
	if limit <= 0 {
		limit = -1 // no LIMIT in SQLite
	}
	// One lower bound, so that SQLite seeks straight to it: the greater of
	// key >= prefix and key > after implies the other.
	q, lo := o.st.listFrom, prefix
	if after >= prefix {
		q, lo = o.st.listAfter, after
	}
	rows, err := o.stmt(ctx, q).QueryContext(ctx, lo, end, limit)
	if err != nil {
		return nil, fmt.Errorf("sqlite: list: %w", err)
	}
	defer rows.Close()
	var es []storage.Entry
	for rows.Next() {
		var e storage.Entry
		var v sql.RawBytes // the driver's own copy: see blob
		if err := rows.Scan(&e.Key, &v); err != nil {
			return nil, fmt.Errorf("sqlite: list: %w", err)
		}
		e.Value = blob(v)
		es = append(es, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: list: %w", err)
	}
	return es, nil
}

// blob keeps an empty value a zero-length BLOB: the driver binds a nil slice
// as NULL, which the NOT NULL column refuses.
//
// Rows of many values (list, queryValues) scan them as sql.RawBytes and
// keep them: modernc.org/sqlite copies every BLOB it returns into a new
// slice of its own (conn.columnBlob), which database/sql would copy again
// for a []byte. A merge of last uses on a million keys reads over 150 MB
// of buckets and journal rows; the second copy was a sixth of its
// allocations. TestRawBytesKept fails if a driver version reuses them.
func blob(v []byte) []byte {
	if v == nil {
		return []byte{}
	}
	return v
}

func (o ops) put(ctx context.Context, key string, value []byte) error {
	if err := storage.ValidateKey(key); err != nil {
		return err
	}
	if len(value) > inlineMax {
		id, err := o.insertBig(ctx, value)
		if err != nil {
			return fmt.Errorf("sqlite: put: %w", err)
		}
		if _, err := o.stmt(ctx, o.st.putRef).ExecContext(ctx, key, id); err != nil {
			return fmt.Errorf("sqlite: put: %w", err)
		}
		return nil
	}
	if _, err := o.stmt(ctx, o.st.put).ExecContext(ctx, key, blob(value)); err != nil {
		return fmt.Errorf("sqlite: put: %w", err)
	}
	return nil
}

func (o ops) insertBig(ctx context.Context, value []byte) (int64, error) {
	res, err := o.stmt(ctx, o.st.insBig).ExecContext(ctx, value)
	if err != nil {
		return 0, err
	}
	return res.LastInsertId()
}

func (o ops) create(ctx context.Context, key string, value []byte) error {
	if err := storage.ValidateKey(key); err != nil {
		return err
	}
	var res sql.Result
	var id int64
	var err error
	if len(value) > inlineMax {
		if id, err = o.insertBig(ctx, value); err == nil {
			res, err = o.stmt(ctx, o.st.createRef).ExecContext(ctx, key, id)
		}
	} else {
		res, err = o.stmt(ctx, o.st.create).ExecContext(ctx, key, blob(value))
	}
	if err != nil {
		return fmt.Errorf("sqlite: create: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("sqlite: create: %w", err)
	}
	if n == 0 {
		if id != 0 {
			if _, err := o.stmt(ctx, o.st.delBig).ExecContext(ctx, id); err != nil {
				return fmt.Errorf("sqlite: create: %w", err)
			}
		}
		return storage.ErrExists
	}
	return nil
}

// createBatch creates entries whose values are kept inline (at most
// inlineMax bytes) batchRows at a time with one multi-row INSERT, and the
// rest — the remainder, and long values, which go to kv_big — one by one
// as create does; the keys are all validated first. A key repeated in the
// batch is sent once: the later entries exist.
func (o ops) createBatch(ctx context.Context, entries []storage.Entry) ([]bool, error) {
	for _, e := range entries {
		if err := storage.ValidateKey(e.Key); err != nil {
			return nil, err
		}
	}
	exists := make([]bool, len(entries))
	seen := make(map[string]bool, len(entries))
	var short, rest []int // the first entry of each key, in order
	for i, e := range entries {
		switch {
		case seen[e.Key]:
			exists[i] = true
		case len(e.Value) > inlineMax:
			rest = append(rest, i)
		default:
			short = append(short, i)
		}
		seen[e.Key] = true
	}
	if len(short) >= batchRows {
		many := o.stmt(ctx, o.st.createN)
		args := make([]any, 0, 2*batchRows)
		created := make(map[string]bool, batchRows)
		for ; len(short) >= batchRows; short = short[batchRows:] {
			args = args[:0]
			clear(created)
			for _, i := range short[:batchRows] {
				args = append(args, entries[i].Key, blob(entries[i].Value))
			}
			if err := queryKeys(ctx, many, args, created); err != nil {
				return nil, fmt.Errorf("sqlite: create batch: %w", err)
			}
			for _, i := range short[:batchRows] {
				exists[i] = !created[entries[i].Key]
			}
		}
	}
	for _, i := range append(short, rest...) {
		err := o.create(ctx, entries[i].Key, entries[i].Value)
		switch {
		case errors.Is(err, storage.ErrExists):
			exists[i] = true
		case err != nil:
			return nil, err
		}
	}
	return exists, nil
}

// getBatch reads keys one by one with the prepared point read, bound to
// the transaction once: SQLite runs in this process, so a statement per
// key costs no round trip, only the read itself. The keys are all
// validated first.
func (o ops) getBatch(ctx context.Context, keys []string) ([][]byte, error) {
	if err := storage.ValidateKeys(keys); err != nil {
		return nil, err
	}
	values := make([][]byte, len(keys))
	rest := keys
	if len(keys) >= batchRows && o.st.getN != nil {
		many := o.stmt(ctx, o.st.getN)
		args := make([]any, batchRows)
		found := make(map[string][]byte, batchRows)
		given := make(map[string]bool, batchRows)
		for at := 0; len(rest) >= batchRows; at, rest = at+batchRows, rest[batchRows:] {
			for j, k := range rest[:batchRows] {
				args[j] = k
			}
			clear(found)
			clear(given)
			if err := queryValues(ctx, many, args, found); err != nil {
				return nil, fmt.Errorf("sqlite: get batch: %w", err)
			}
			storage.OwnValues(values[at:at+batchRows], rest[:batchRows], found, given)
		}
	}
	st := o.stmt(ctx, o.st.get)
	for i := len(keys) - len(rest); i < len(keys); i++ {
		var v []byte
		err := st.QueryRowContext(ctx, keys[i]).Scan(&v)
		switch {
		case errors.Is(err, sql.ErrNoRows):
		case err != nil:
			return nil, fmt.Errorf("sqlite: get batch: %w", err)
		default:
			values[i] = blob(v) // an empty BLOB scans as nil
		}
	}
	return values, nil
}

// queryValues runs st with args and records each row's key and value.
func queryValues(ctx context.Context, st *sql.Stmt, args []any, values map[string][]byte) error {
	rows, err := st.QueryContext(ctx, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var k string
		var v sql.RawBytes // the driver's own copy: see blob
		if err := rows.Scan(&k, &v); err != nil {
			return err
		}
		values[k] = blob(v) // an empty BLOB scans as nil
	}
	return rows.Err()
}

// putBatch puts entries one by one with put, in order, so that the last
// entry of a key wins and kv_big stays exact (put's statements and the
// triggers of schema version 4 keep it so); put's statements are bound to
// the transaction once, not per entry. The keys are all validated first.
func (o ops) putBatch(ctx context.Context, entries []storage.Entry) error {
	for _, e := range entries {
		if err := storage.ValidateKey(e.Key); err != nil {
			return err
		}
	}
	bound := ops{st: &stmts{put: o.stmt(ctx, o.st.put), putRef: o.stmt(ctx, o.st.putRef), insBig: o.stmt(ctx, o.st.insBig)}}
	for _, e := range entries {
		if err := bound.put(ctx, e.Key, e.Value); err != nil {
			return err
		}
	}
	return nil
}

// queryKeys runs st, which returns keys, and adds them to keys.
func queryKeys(ctx context.Context, st *sql.Stmt, args []any, keys map[string]bool) error {
	rows, err := st.QueryContext(ctx, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var k string
		if err := rows.Scan(&k); err != nil {
			return err
		}
		keys[k] = true
	}
	return rows.Err()
}

func (o ops) delete(ctx context.Context, key string) error {
	if err := storage.ValidateKey(key); err != nil {
		return err
	}
	if _, err := o.stmt(ctx, o.st.del).ExecContext(ctx, key); err != nil {
		return fmt.Errorf("sqlite: delete: %w", err)
	}
	return nil
}
