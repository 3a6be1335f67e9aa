package identity

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/kmsd/kmsd/internal/storage"
)

// The IAM writes read what they check and change in the transaction that
// writes it, never from this process's maps, which another node's writes
// reach only through the change feed: so two nodes cannot both create a
// name, nor lose each other's policy changes. The maps are updated after
// the commit (and again when the feed brings the change).

// callerError carries an IAM error out of storage.Update unchanged.
type callerError struct{ err error }

func (e callerError) Error() string { return e.err.Error() }

func txError(err error) error {
	var ce callerError
	if errors.As(err, &ce) {
		return ce.err
	}
	return fmt.Errorf("identity: %w", err)
}

// txUser applies fn to user account/name as stored, and stores it, in one
// transaction.
func (s *Store) txUser(ctx context.Context, account, name string, fn func(u *User) error) (*User, error) {
	return txPolicyHolder(ctx, s, userPrefix+account+"/"+name, noSuchUser(name), fn)
}

// txRole is txUser for roles.
func (s *Store) txRole(ctx context.Context, account, name string, fn func(r *Role) error) (*Role, error) {
	return txPolicyHolder(ctx, s, rolePrefix+account+"/"+name, noSuchRole(name), fn)
}

// policyHolder is a stored User or Role: a record with inline policies.
type policyHolder[T any] interface {
	*T
	compile(strict bool) error
	policies() *map[string]string
}

func (u *User) policies() *map[string]string { return &u.Policies }
func (r *Role) policies() *map[string]string { return &r.Policies }

// txPolicyHolder reads the record at key (missing: the caller's error when
// it is absent), applies fn, checks its policies and stores it, in one
// transaction.
func txPolicyHolder[T any, P policyHolder[T]](ctx context.Context, s *Store, key string, missing error, fn func(P) error) (P, error) {
	var next P
	err := s.store.Update(ctx, func(tx storage.Tx) error {
		b, err := tx.Get(ctx, key)
		if errors.Is(err, storage.ErrNotFound) {
			return callerError{missing}
		}
		if err != nil {
			return err
		}
		next = new(T)
		if err := json.Unmarshal(b, next); err != nil {
			return err
		}
		if pm := next.policies(); *pm == nil {
			*pm = map[string]string{}
		}
		if err := fn(next); err != nil {
			return callerError{err}
		}
		if err := next.compile(true); err != nil {
			return callerError{malformedPolicy(err)}
		}
		if b, err = json.Marshal(next); err != nil {
			return err
		}
		return tx.Put(ctx, key, b)
	})
	if err != nil {
		return nil, txError(err)
	}
	return next, nil
}

// nameTaken says whether a stored entity under pfx (userPrefix or
// rolePrefix) of account has name, ignoring case as IAM does.
func nameTaken(ctx context.Context, tx storage.Reader, pfx, account, name string) (bool, error) {
	entries, err := tx.List(ctx, pfx+account+"/", "", 0)
	if err != nil {
		return false, err
	}
	for _, e := range entries {
		if strings.EqualFold(e.Key[len(pfx)+len(account)+1:], name) {
			return true, nil
		}
	}
	return false, nil
}

// storedKeysOf returns the ids of the stored access keys of user
// account/name as tx reads them.
func storedKeysOf(ctx context.Context, tx storage.Reader, account, name string) ([]string, error) {
	entries, err := tx.List(ctx, prefix, "", 0)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		var r record
		if err := json.Unmarshal(e.Value, &r); err != nil {
			return nil, err
		}
		user := r.User
		if user == "" {
			user = r.Principal.Name
		}
		if r.Principal.Account == account && user == name {
			out = append(out, e.Key[len(prefix):])
		}
	}
	return out, nil
}

// createStored stores value at key if no entity under pfx of account has
// name (ignoring case), in one transaction; exists is the error otherwise.
func (s *Store) createStored(ctx context.Context, pfx, account, name string, value []byte, exists error) error {
	err := s.store.Update(ctx, func(tx storage.Tx) error {
		taken, err := nameTaken(ctx, tx, pfx, account, name)
		if err != nil {
			return err
		}
		if taken {
			return callerError{exists}
		}
		return tx.Create(ctx, pfx+account+"/"+name, value)
	})
	if errors.Is(err, storage.ErrExists) {
		return exists
	}
	if err != nil {
		return txError(err)
	}
	return nil
}
