// Package storage is the contract between kmsd's typed persistence (catalog)
// and the databases that hold its bytes: a small, context-aware, ordered
// key-value store with serializable read-write transactions.
//
// The contract is deliberately narrow, in the manner of OpenBao's
// sdk/physical, so that an embedded driver (storage/sqlite) and a shared one
// (storage/postgres) can both honour it exactly; package storagetest is the
// conformance suite every driver runs. This package imports no driver.
//
// Keys are non-empty, valid UTF-8 strings of at most MaxKeyLen bytes with no
// NUL byte, and they order by their bytes (which for UTF-8 is code-point
// order), never by a locale's collation. Values are arbitrary bytes, empty
// included. Values handed to and returned by a store are never shared with it:
// callers may modify them freely.
package storage

import (
	"context"
	"errors"
	"fmt"
	"unicode/utf8"
)

// Errors every driver returns for the conditions below; test for them with
// errors.Is.
var (
	// ErrNotFound is returned by Get when the key is absent.
	ErrNotFound = errors.New("storage: not found")
	// ErrExists is returned by Create when the key is already present.
	ErrExists = errors.New("storage: already exists")
	// ErrInvalidKey is returned when a key, prefix or cursor breaks the key
	// rules in the package documentation.
	ErrInvalidKey = errors.New("storage: invalid key")
)

// MaxKeyLen is the longest key, in bytes, that every driver accepts. It keeps
// keys within what a PostgreSQL B-tree index entry can hold.
const MaxKeyLen = 2048

// Entry is one key and its value.
type Entry struct {
	Key   string
	Value []byte
}

// Reader is the read half of the contract.
type Reader interface {
	// Get returns the value stored at key, or ErrNotFound when it is absent.
	Get(ctx context.Context, key string) ([]byte, error)
	// List returns the entries whose key starts with prefix and sorts after
	// after (an empty after means from the start), ascending by key in byte
	// order, at most limit of them (limit <= 0: all). Paging is List with
	// after set to the last key of the previous page.
	List(ctx context.Context, prefix, after string, limit int) ([]Entry, error)
}

// Tx is what a read-write transaction can do.
type Tx interface {
	Reader
	// Put creates or replaces the value at key.
	Put(ctx context.Context, key string, value []byte) error
	// Create stores value at key, or returns ErrExists if key is present;
	// the existing value is left untouched.
	Create(ctx context.Context, key string, value []byte) error
	// Delete removes key; deleting an absent key is not an error.
	Delete(ctx context.Context, key string) error
}

// Store is a database holding one key space.
//
// Each Tx method called on the Store itself runs as one durable transaction
// of its own. All methods are safe for concurrent use.
type Store interface {
	Tx
	// Update runs fn in a serializable read-write transaction: reads in fn
	// see fn's own writes, other callers see none of them until commit, and
	// concurrent Updates behave as if run one after another. If fn returns an
	// error (or panics) nothing it wrote is kept and that error is returned
	// unchanged. A nil result means the transaction committed durably
	// (synced to stable storage) before Update returned.
	//
	// tx is valid only until fn returns. fn must not call methods of the
	// Store itself, which may wait for the transaction fn is running in, and
	// should expect to be the only writer while it runs, so it must be short.
	Update(ctx context.Context, fn func(tx Tx) error) error
	// Close releases the store. Calling it again is harmless and returns
	// nil; any other method called after Close returns an error.
	Close() error
}

// ValidateKey reports, wrapping ErrInvalidKey, whether key breaks the key
// rules in the package documentation.
func ValidateKey(key string) error {
	if key == "" {
		return fmt.Errorf("%w: empty", ErrInvalidKey)
	}
	return validateBound("key", key)
}

// ValidateRange checks the prefix and after arguments of List, which follow
// the key rules except that either may be empty.
func ValidateRange(prefix, after string) error {
	if err := validateBound("prefix", prefix); err != nil {
		return err
	}
	return validateBound("after", after)
}

func validateBound(what, s string) error {
	switch {
	case len(s) > MaxKeyLen:
		return fmt.Errorf("%w: %s is %d bytes, longer than %d", ErrInvalidKey, what, len(s), MaxKeyLen)
	case !utf8.ValidString(s):
		return fmt.Errorf("%w: %s is not valid UTF-8", ErrInvalidKey, what)
	}
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			return fmt.Errorf("%w: %s contains a NUL byte", ErrInvalidKey, what)
		}
	}
	return nil
}

// PrefixEnd returns the upper bound of the keys starting with prefix: for
// every valid UTF-8 string s, s starts with prefix exactly when
// prefix <= s < end. Drivers scan a prefix as that index range rather than
// with LIKE, whose wildcards (% and _) and case folding would be wrong. ok is
// false when there is no upper bound (an empty prefix, or one made only of
// U+10FFFF): then s starts with prefix exactly when prefix <= s.
//
// The bound is computed on runes rather than bytes so that it is itself valid
// UTF-8, which drivers with a UTF-8 text type (PostgreSQL) require.
// prefix must be valid UTF-8.
func PrefixEnd(prefix string) (end string, ok bool) {
	for p := prefix; p != ""; {
		r, size := utf8.DecodeLastRuneInString(p)
		p = p[:len(p)-size]
		next := r + 1
		if next > utf8.MaxRune {
			continue // carry into the previous rune
		}
		if next == 0xD800 {
			next = 0xE000 // skip the surrogates, which UTF-8 cannot encode
		}
		return p + string(next), true
	}
	return "", false
}
