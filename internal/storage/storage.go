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
//
// Two optional capabilities serve several processes on one database, and
// both drivers implement them so that one node and many run the same code:
// Watcher, a change feed that never skips a committed change (for caches),
// and Leaser, expiring leases in database time with writes fenced by them
// (for one controller at a time). They follow MULTINODE.md §7.1, except
// that Watcher also has Prune (pruning is the feed owner's decision), that
// a reader starts from the zero Cursor and gets a Reset carrying the
// position to continue from, and that TryAcquire by the current holder
// renews its lease at the same epoch. A third, WriteFencer, fences every
// write of a handle by a lease it holds (a node's node lease): a process
// paused past that lease's expiry commits nothing when it resumes.
//
// Three optional capabilities are a transaction's, each doing in one step
// (one statement per chunk on PostgreSQL) what the Tx does key by key:
// BatchCreator (Create), BatchGetter (Get), BatchPutter (Put) and
// BatchDeleter (Delete). The Tx of
// both drivers' Updates offers all three, and the functions CreateBatch,
// GetBatch and PutBatch use them when they can, falling back to the
// per-key methods with the same results.
package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"
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
	// ErrCommitUnknown is returned (wrapped) by Update when the driver
	// cannot tell whether the transaction committed.
	ErrCommitUnknown = errors.New("storage: commit outcome unknown")
	// ErrLeaseLost is returned by Leaser.Renew when the lease expired or
	// another holder took it.
	ErrLeaseLost = errors.New("storage: lease lost")
	// ErrFenced is returned by Leaser.UpdateFenced when the lease it is
	// fenced by is no longer held at that epoch, and by writes of a
	// handle whose WriteFencer lease expired before they could commit;
	// fn's writes are not kept.
	ErrFenced = errors.New("storage: fenced: lease no longer held")
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

// BatchCreator is the optional capability of a Tx to create many keys in
// one step: on PostgreSQL one statement per batch instead of one round trip
// per key. Both drivers' Update transactions offer it; call it through the
// function CreateBatch, which falls back to Create for a Tx without it (a
// wrapper that adds something to Create must offer it too, adding the same,
// or hide it).
type BatchCreator interface {
	// CreateBatch is Create of every entry, in order, as one operation:
	// each entry whose key is absent is stored; each whose key is present
	// — before the batch, or at an earlier entry of the same batch — is
	// left untouched and reported by exists[i] (len(exists) ==
	// len(entries)), which is not an error. Every key is validated before
	// anything is written: an invalid key fails the whole batch with
	// ErrInvalidKey and writes nothing. Created keys enter the change feed
	// as Create's do. On any other error some entries may have been
	// written; the caller returns the error and Update drops them.
	CreateBatch(ctx context.Context, entries []Entry) (exists []bool, err error)
}

// CreateBatch creates entries in tx with tx's BatchCreator, or with one
// Create per entry when tx has none, and reports which keys existed (see
// BatchCreator). The results are the same either way.
func CreateBatch(ctx context.Context, tx Tx, entries []Entry) ([]bool, error) {
	if bc, ok := tx.(BatchCreator); ok {
		return bc.CreateBatch(ctx, entries)
	}
	for _, e := range entries {
		if err := ValidateKey(e.Key); err != nil {
			return nil, err
		}
	}
	exists := make([]bool, len(entries))
	for i, e := range entries {
		err := tx.Create(ctx, e.Key, e.Value)
		switch {
		case errors.Is(err, ErrExists):
			exists[i] = true
		case err != nil:
			return nil, err
		}
	}
	return exists, nil
}

// BatchGetter is the optional capability of a Tx to read many keys in one
// step: on PostgreSQL one statement per chunk of keys instead of one round
// trip per key. Both drivers' Update transactions offer it; call it
// through the function GetBatch, which falls back to Get for a Tx without
// it.
type BatchGetter interface {
	// GetBatch is Get of every key as one operation: values[i]
	// (len(values) == len(keys)) is the value stored at keys[i], or nil
	// when the key is absent, which is not an error; a present empty
	// value is empty and not nil. A key repeated in keys gets its value at
	// each position, each a copy of its own. Every key is validated before
	// anything is read: an invalid key fails the whole batch with
	// ErrInvalidKey. The reads are the transaction's as Get's are: they see
	// its own writes, and every key read — present or absent — counts as
	// read for its serializability, so that a concurrent transaction that
	// writes one of them cannot both commit with it unless one ran wholly
	// after the other.
	GetBatch(ctx context.Context, keys []string) (values [][]byte, err error)
}

// BatchPutter is the optional capability of a Tx to put many keys in one
// step: on PostgreSQL one statement per chunk of entries instead of one
// round trip per key. Both drivers' Update transactions offer it; call it
// through the function PutBatch, which falls back to Put for a Tx without
// it (a wrapper that adds something to Put must offer it too, adding the
// same, or hide it).
type BatchPutter interface {
	// PutBatch is Put of every entry, in order, as one operation: each key
	// ends up holding the value of its last entry in the batch. Every key
	// is validated before anything is written: an invalid key fails the
	// whole batch with ErrInvalidKey and writes nothing. Put keys enter the
	// change feed as Put's do (once each at least; under UnfedPrefix not
	// at all). On any other error some entries may have been written; the
	// caller returns the error and Update drops them.
	PutBatch(ctx context.Context, entries []Entry) error
}

// BatchDeleter is the optional capability of a Tx to delete many keys in
// one step: on PostgreSQL one statement per chunk of keys instead of one
// round trip per key. Both drivers' Update transactions offer it; call it
// through the function DeleteBatch, which falls back to Delete for a Tx
// without it (a wrapper that adds something to Delete must offer it too,
// adding the same, or hide it).
type BatchDeleter interface {
	// DeleteBatch is Delete of every key as one operation: each key is
	// absent afterwards; an absent or repeated key is not an error. Every
	// key is validated before anything is deleted: an invalid key fails
	// the whole batch with ErrInvalidKey and deletes nothing. Deleted keys
	// enter the change feed as Delete's do (under UnfedPrefix not at all).
	// On any other error some keys may have been deleted; the caller
	// returns the error and Update restores them.
	DeleteBatch(ctx context.Context, keys []string) error
}

// DeleteBatch deletes keys in tx with tx's BatchDeleter, or with one
// Delete per key when tx has none (see BatchDeleter). The results are
// the same either way.
func DeleteBatch(ctx context.Context, tx Tx, keys []string) error {
	if bd, ok := tx.(BatchDeleter); ok {
		return bd.DeleteBatch(ctx, keys)
	}
	if err := ValidateKeys(keys); err != nil {
		return err
	}
	for _, k := range keys {
		if err := tx.Delete(ctx, k); err != nil {
			return err
		}
	}
	return nil
}

// GetBatch reads keys in tx with tx's BatchGetter, or with one Get per key
// when tx has none (see BatchGetter). The results are the same either way.
func GetBatch(ctx context.Context, tx Tx, keys []string) ([][]byte, error) {
	if bg, ok := tx.(BatchGetter); ok {
		return bg.GetBatch(ctx, keys)
	}
	if err := ValidateKeys(keys); err != nil {
		return nil, err
	}
	values := make([][]byte, len(keys))
	for i, k := range keys {
		v, err := tx.Get(ctx, k)
		switch {
		case errors.Is(err, ErrNotFound):
		case err != nil:
			return nil, err
		default:
			values[i] = v
		}
	}
	return values, nil
}

// OwnValues sets values[i] to found[keys[i]] for each key found, for a
// BatchGetter that read each distinct key once: each position owns its
// value, so a key repeated in keys gets a copy after its first. given
// notes the keys handed out; the caller passes it empty.
func OwnValues(values [][]byte, keys []string, found map[string][]byte, given map[string]bool) {
	for i, k := range keys {
		v, ok := found[k]
		if !ok {
			continue
		}
		if given[k] {
			v = bytes.Clone(v)
		}
		given[k] = true
		values[i] = v
	}
}

// PutBatch puts entries in tx with tx's BatchPutter, or with one Put per
// entry when tx has none (see BatchPutter). The results are the same
// either way.
func PutBatch(ctx context.Context, tx Tx, entries []Entry) error {
	if bp, ok := tx.(BatchPutter); ok {
		return bp.PutBatch(ctx, entries)
	}
	for _, e := range entries {
		if err := ValidateKey(e.Key); err != nil {
			return err
		}
	}
	for _, e := range entries {
		if err := tx.Put(ctx, e.Key, e.Value); err != nil {
			return err
		}
	}
	return nil
}

// Store is a database holding one key space.
//
// Each Tx method called on the Store itself runs as one durable transaction
// of its own. All methods are safe for concurrent use.
type Store interface {
	Tx
	// Update runs fn in a serializable read-write transaction: reads in fn
	// see fn's own writes, other callers see none of them until commit, and
	// concurrent Updates behave as if run one after another, whichever
	// handle or process on the same database runs them. If fn returns an
	// error (or panics) nothing it wrote is kept and that error is returned
	// unchanged. A nil result means the transaction committed durably
	// (synced to stable storage) before Update returned.
	//
	// Drivers may run fn more than once: a database shared by several
	// processes (PostgreSQL) aborts one of two conflicting serializable
	// transactions, and the driver runs the aborted one again from the
	// start. Only the writes of the run that commits are kept, so fn must
	// act on the database only through tx and keep no state between runs
	// that it does not reset at its start (results it hands out are those
	// of its last run).
	//
	// If the driver cannot learn whether the commit took effect (the
	// connection broke while COMMIT was in flight and the database could not
	// be asked afterwards) Update returns an error wrapping
	// ErrCommitUnknown: the writes may or may not be there, and a caller
	// must not report success.
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

// ValidateKeys validates every key of keys (see ValidateKey): a batch
// operation checks them all before it changes anything.
func ValidateKeys(keys []string) error {
	for _, k := range keys {
		if err := ValidateKey(k); err != nil {
			return err
		}
	}
	return nil
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

// Watcher is the optional change feed of a store whose database other
// handles or processes write: it tells which keys changed, so that a cache
// of them can be kept in step. Both drivers implement it. Keys under
// UnfedPrefix are not in it.
type Watcher interface {
	// Changes returns the keys written (put, created or deleted) by
	// transactions that committed after the position from, in commit-safe
	// order: a change that becomes visible later is never ordered before
	// the returned cursor, so resuming from Next never skips one. At most
	// limit keys are returned (limit <= 0: a driver default); a key may
	// appear more than once, and a change may be delivered again after a
	// Reset. Next is the cursor to resume from.
	//
	// FreshAsOf, when not zero, is an instant on this process's clock such
	// that every transaction committed before it is among the changes
	// delivered up to Next.
	//
	// Reset is true when from is not a position this database can resume
	// from: the zero Cursor (a new reader), a cursor of another database
	// generation (the database was re-created or restored, or — where a
	// server's history can fork, as PostgreSQL's does when a standby is
	// promoted — the history the cursor was made in may have had changes
	// this one lacks), or one older than what Prune removed. Keys is then empty and the caller must drop
	// everything it cached and continue from Next; what it reads
	// afterwards is at least as new as Next.
	Changes(ctx context.Context, from Cursor, limit int) (Batch, error)
	// Prune forgets the changes up to and including upTo, so that cursors
	// before it get Reset. A cursor of another generation is ignored.
	Prune(ctx context.Context, upTo Cursor) error
}

// Prover is an optional capability of a Watcher: the cheap proof that a
// reader which has consumed the feed up to a cursor is not behind, read
// without reading any change, at a cost that does not grow with the
// database.
type Prover interface {
	// Covers reports whether every transaction that committed before
	// Covers was called has all its changes at or before c (a cursor of
	// this database's current generation that Changes returned): a reader
	// that has consumed the feed up to c has then been handed every change
	// committed before the call. False says nothing (the reader polls).
	Covers(ctx context.Context, c Cursor) (bool, error)
}

// Notifier is an optional capability of a Watcher whose database other
// processes write: it says, as soon as another handle's transaction that
// replaced or deleted records in the feed has committed (what a reader
// may have cached; a driver need not announce records only created),
// that Changes has something new,
// so that a reader need not wait for its next poll (MULTINODE.md §4.3,
// "optional accelerator"). It is a hint and nothing more: a notice may be
// lost (a broken connection, a pooler in the way), so readers poll anyway;
// nothing is delivered through it but a position.
type Notifier interface {
	// Notices returns a channel that receives the transaction position
	// (the Cursor.XID) of such a committed transaction of another handle:
	// a reader has its changes once its cursor's
	// XID is above it. Notices that arrive while one is waiting may be
	// merged into the latest. The channel is the same at every call and is
	// never closed.
	Notices() <-chan uint64
}

// UnfedPrefix begins the keys a Watcher's change feed leaves out: a put,
// create or delete of such a key is not among the keys Changes returns.
// It is for records that no process caches — read from the database each
// time they are wanted, and written often, such as the last use of each
// KMS key — so that writing one costs no change record, and the feed's
// readers and its pruning never handle them. In every other way they are
// keys like any other: read, listed, written in transactions alike.
const UnfedPrefix = "unfed/"

// Cursor is a position in a Watcher's change feed. Its fields are opaque
// to callers, comparable only through the Watcher that made them; the zero
// value stands for "no position yet".
type Cursor struct {
	Gen string // database generation: changed when it is re-created, restored or its history forks
	XID uint64 // transaction position (PostgreSQL: xid8; SQLite: 0)
	Seq int64  // change sequence within XID
}

// IsZero says c is the zero Cursor.
func (c Cursor) IsZero() bool { return c == Cursor{} }

// Before says c is an earlier position than d in the feed of one
// generation: both drivers order their cursors by XID, then Seq. Cursors
// of different generations are not ordered (false either way).
func (c Cursor) Before(d Cursor) bool {
	return c.Gen == d.Gen && (c.XID < d.XID || c.XID == d.XID && c.Seq < d.Seq)
}

// Batch is one answer of Watcher.Changes.
type Batch struct {
	Keys      []string
	Next      Cursor
	FreshAsOf time.Time
	Reset     bool
}

// Leaser is the optional lease capability: named, expiring leases whose
// expiry is decided by the database's clock (never the holders'), each
// taking of a lease numbered by an epoch that only grows, and writes fenced
// by a lease, so that at most one holder at a time acts for a name. Both
// drivers implement it.
type Leaser interface {
	// TryAcquire takes the lease name for holder for ttl, if no one holds it
	// or its holder let it expire or released it; the epoch is then one more
	// than the last. If holder already holds it, it is renewed with the
	// same epoch. ok is false (and err nil) when another holder has it.
	TryAcquire(ctx context.Context, name, holder string, ttl time.Duration) (l Lease, ok bool, err error)
	// Renew extends l for ttl from now (database time), or returns
	// ErrLeaseLost if it expired or was taken meanwhile.
	Renew(ctx context.Context, l Lease, ttl time.Duration) (Lease, error)
	// Release gives l up at once, if it is still held; the epoch is kept,
	// so the next holder's is higher. Releasing a lost lease is not an error.
	Release(ctx context.Context, l Lease) error
	// Live returns the unexpired leases whose names start with prefix,
	// ordered by name.
	Live(ctx context.Context, prefix string) ([]Lease, error)
	// UpdateFenced is Update whose transaction first checks, under a lock
	// that holds off any takeover until it ends, that l is still held at
	// its epoch and unexpired; if not, fn does not run (or its writes are
	// dropped) and the error wraps ErrFenced.
	UpdateFenced(ctx context.Context, l Lease, fn func(tx Tx) error) error
}

// WriteFencer is the optional capability of fencing every write of a
// store handle by a lease the handle holds: after FenceWrites(name), each
// writing transaction (Update and the one-key writes, UpdateFenced too;
// not the lease operations themselves) commits only while the database's
// clock is before the expiry of the last holding of lease name that this
// handle acquired or renewed (TryAcquire, Renew), and otherwise fails
// wrapping ErrFenced, its writes dropped. A process paused longer than
// the lease's ttl in the middle of a request (a GC pause, SIGSTOP, a
// suspended VM) so cannot commit once others may have taken the lease as
// expired. Until the handle first holds the lease its writes are not
// fenced; a lease lost later (a failed Renew) or released keeps its
// expiry, so the handle's writes stay fenced by it until it holds the
// lease again. refused, if not nil, is called (without waiting for it)
// for each write the fence refused, so that the holder may try for the
// lease at once. Both drivers implement it: PostgreSQL checks inside
// COMMIT, on the server (a deferred constraint trigger), so no pause of
// the client can fall between the check and the commit; SQLite checks in
// the process just before COMMIT, which leaves a window of one step.
type WriteFencer interface {
	FenceWrites(name string, refused func())
}

// Clock is the optional capability of telling the database's time: the
// clock every node sharing the database agrees on, whatever its own says
// (a lease's expiry is decided by it). A timestamp one node stores for
// another to compare with "now" — when a step falls due — is to be taken
// and compared on it. Both drivers implement it.
type Clock interface {
	// Now returns the database's current time.
	Now(ctx context.Context) (time.Time, error)
}

// Lease is one holding of a named lease.
type Lease struct {
	Name   string
	Holder string
	Epoch  int64
	// Deadline is when the lease expires, on this process's clock: the
	// local instant the acquiring or renewing request was sent plus its
	// ttl, so that it is never later than the database's expiry whatever
	// the clocks say. A holder acts only well before it.
	Deadline time.Time
}

// ValidateLeaseName checks a lease name (or a Live prefix, which may be
// empty) against the key rules.
func ValidateLeaseName(name string) error { return validateBound("lease name", name) }
