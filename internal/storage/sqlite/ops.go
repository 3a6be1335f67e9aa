package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/kmsd/kmsd/internal/storage"
)

// stmts are the data statements, prepared once per database handle so that
// the hot paths (Get above all) never parse SQL.
type stmts struct {
	get       *sql.Stmt
	listFrom  *sql.Stmt // prefix <= key < end
	listAfter *sql.Stmt // after < key < end
	put       *sql.Stmt // nil on the reader
	create    *sql.Stmt // nil on the reader
	del       *sql.Stmt // nil on the reader
}

// Prefix scans are index ranges on the primary key, never LIKE: LIKE treats
// % and _ as wildcards and folds ASCII case. The end bound comes from
// storage.PrefixEnd.
const (
	sqlGet       = `SELECT value FROM kv WHERE key = ?`
	sqlListFrom  = `SELECT key, value FROM kv WHERE key >= ? AND key < ? ORDER BY key LIMIT ?`
	sqlListAfter = `SELECT key, value FROM kv WHERE key > ? AND key < ? ORDER BY key LIMIT ?`
	sqlPut       = `INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value`
	sqlCreate    = `INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING`
	sqlDelete    = `DELETE FROM kv WHERE key = ?`
)

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
	prep(&st.listFrom, sqlListFrom)
	prep(&st.listAfter, sqlListAfter)
	if write {
		prep(&st.put, sqlPut)
		prep(&st.create, sqlCreate)
		prep(&st.del, sqlDelete)
	}
	return st, err
}

func (st *stmts) close() error {
	var errs []error
	for _, s := range []*sql.Stmt{st.get, st.listFrom, st.listAfter, st.put, st.create, st.del} {
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
		if err := rows.Scan(&e.Key, &e.Value); err != nil {
			return nil, fmt.Errorf("sqlite: list: %w", err)
		}
		if e.Value == nil {
			e.Value = []byte{}
		}
		es = append(es, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: list: %w", err)
	}
	return es, nil
}

// blob keeps an empty value a zero-length BLOB: the driver binds a nil slice
// as NULL, which the NOT NULL column refuses.
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
	if _, err := o.stmt(ctx, o.st.put).ExecContext(ctx, key, blob(value)); err != nil {
		return fmt.Errorf("sqlite: put: %w", err)
	}
	return nil
}

func (o ops) create(ctx context.Context, key string, value []byte) error {
	if err := storage.ValidateKey(key); err != nil {
		return err
	}
	res, err := o.stmt(ctx, o.st.create).ExecContext(ctx, key, blob(value))
	if err != nil {
		return fmt.Errorf("sqlite: create: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("sqlite: create: %w", err)
	}
	if n == 0 {
		return storage.ErrExists
	}
	return nil
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
