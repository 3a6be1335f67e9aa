package hsm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/kmsd/kmsd/internal/storage"
)

// Cluster records live in the store, which several kmsd nodes may share
// (PostgreSQL). The store is the truth:
//
//   - every read-modify-write of a record runs in one storage.Update
//     transaction that reads the record it changes (update, act), so two
//     nodes changing one cluster at once never lose a change;
//   - the CloudHSM API's reads (DescribeClusters, the checks before a
//     change, the key store layer's Describe) read the store (get, list);
//   - the map s.clusters is a cache for the data plane (Encrypt, Decrypt,
//     …) and the background loops, refreshed by this node's own writes and
//     by the change feed (Invalidate, Reset: the Service is a
//     feed.Subscriber), a newer Rev never replaced by an older one.
//
// The per-cluster mutex (lock) only orders this node's own changes of a
// cluster, so that its token side effects do not interleave; correctness
// across nodes does not depend on it.

// errConflict: the fields a change with side effects made were changed by
// someone else between its read and its write (act).
var errConflict = errors.New("hsm: the cluster changed meanwhile; try again")

// callerError carries fn's own error out of storage.Update unchanged.
type callerError struct{ err error }

func (e callerError) Error() string { return e.err.Error() }
func (e callerError) Unwrap() error { return e.err }

func unwrapCaller(id string, err error) error {
	var ce callerError
	if errors.As(err, &ce) {
		return ce.err
	}
	if err != nil {
		return fmt.Errorf("hsm: store cluster %s: %w", id, err)
	}
	return nil
}

// readRecord reads cluster id in r (a transaction or the store).
func readRecord(ctx context.Context, r storage.Reader, id string) (*record, error) {
	b, err := r.Get(ctx, recordPath(id))
	if errors.Is(err, storage.ErrNotFound) {
		return nil, callerError{ErrClusterNotFound}
	}
	if err != nil {
		return nil, err
	}
	rec := new(record)
	if err := json.Unmarshal(b, rec); err != nil {
		return nil, fmt.Errorf("hsm: decode cluster %s: %w", id, err)
	}
	return rec, nil
}

// isRecordKey says key is a cluster record (not a sub-path).
func clusterIDOf(key string) (string, bool) {
	id, ok := strings.CutPrefix(key, "hsm/cluster/")
	return id, ok && id != "" && !strings.Contains(id, "/")
}

// fresh reads cluster id from the store and refreshes the cache with it.
func (s *Service) fresh(ctx context.Context, id string) (*record, error) {
	r, err := readRecord(ctx, s.store, id)
	if err != nil {
		if errors.Is(err, ErrClusterNotFound) {
			return nil, ErrClusterNotFound
		}
		return nil, fmt.Errorf("hsm: read cluster %s: %w", id, err)
	}
	s.install(r)
	return r, nil
}

// get returns cluster id's record, read from the store, if it belongs to
// c's account and Region. A store that cannot be read answers as an
// absent cluster would not: the error is returned.
func (s *Service) get(ctx context.Context, c Caller, id string) (*record, bool, error) {
	r, err := s.fresh(ctx, id)
	if errors.Is(err, ErrClusterNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	if r.Account != c.Account || r.Region != c.Region {
		return nil, false, nil
	}
	return r, true, nil
}

// byID returns cluster id's cached record whatever its account (the data
// plane and background steps).
func (s *Service) byID(id string) (*record, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	r, ok := s.clusters[id]
	return r, ok
}

// all returns every cluster record in the store, by id.
func (s *Service) all(ctx context.Context) ([]*record, error) {
	entries, err := s.store.List(ctx, "hsm/cluster/", "", 0)
	if err != nil {
		return nil, fmt.Errorf("hsm: list clusters: %w", err)
	}
	var out []*record
	for _, e := range entries {
		if _, ok := clusterIDOf(e.Key); !ok {
			continue
		}
		r := new(record)
		if err := json.Unmarshal(e.Value, r); err != nil {
			return nil, fmt.Errorf("hsm: decode %s: %w", e.Key, err)
		}
		out = append(out, r)
	}
	return out, nil
}

// list returns the records of c's account and Region, read from the
// store, by id.
func (s *Service) list(ctx context.Context, c Caller) ([]*record, error) {
	rs, err := s.all(ctx)
	if err != nil {
		return nil, err
	}
	var out []*record
	for _, r := range rs {
		s.install(r)
		if r.Account == c.Account && r.Region == c.Region {
			out = append(out, r)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// install makes r the cached record of its cluster unless a newer one
// (higher Rev) is cached, and reports the record it replaced.
func (s *Service) install(r *record) (prev *record, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, had := s.clusters[r.ID]
	if had && cur.Rev > r.Rev {
		return nil, false
	}
	s.clusters[r.ID] = r
	return cur, true
}

// written installs next, which this node has just stored over prev, and
// wakes the steps loop (if it runs here) for a backup it marked due.
func (s *Service) written(prev, next *record) {
	s.install(next)
	if next.BackupDue != nil && (prev == nil || prev.BackupDue == nil) {
		s.kick()
	}
}

// markBackup records in next, which a transaction is about to store over
// prev, that a backup is due Config.BackupDelay from now, when the change
// is one a backup must cover — the first contents (initialized, or
// restored) or a change of keys or users — unless one is due already
// (debounced: a burst of changes gets one backup, within BackupDelay of
// its first change). The marker is durable, in the transaction of the
// change; the controller takes the backup (runSteps).
func (s *Service) markBackup(prev, next *record, now time.Time) {
	if next.BackupDue != nil || prev == nil {
		return
	}
	if !backedUp(prev) && backedUp(next) || contentChanged(prev, next) {
		due := now.Add(s.cfg.BackupDelay)
		next.BackupDue = &due
	}
}

// put stores a new record r (create), or overwrites it, and caches it.
func (s *Service) put(ctx context.Context, r *record, create bool) error {
	var prev *record
	now := s.dbNow() // when a backup falls due: markBackup
	err := s.store.Update(ctx, func(tx storage.Tx) error {
		prev = nil
		if !create {
			cur, err := readRecord(ctx, tx, r.ID)
			if err != nil && !errors.Is(err, ErrClusterNotFound) {
				return err
			}
			if cur != nil {
				prev = cur
				r.Rev = cur.Rev + 1
				// A whole record put over one whose backup is due
				// keeps the marker.
				if r.BackupDue == nil {
					r.BackupDue = cur.BackupDue
				}
				s.markBackup(prev, r, now)
			}
		}
		b, err := json.Marshal(r)
		if err != nil {
			return err
		}
		if create {
			return tx.Create(ctx, recordPath(r.ID), b)
		}
		return tx.Put(ctx, recordPath(r.ID), b)
	})
	if err != nil {
		return fmt.Errorf("hsm: store cluster %s: %w", r.ID, err)
	}
	s.written(prev, r)
	return nil
}

// update applies fn to a copy of cluster id's record as the transaction
// that stores the result reads it. An error from fn changes nothing
// (errSkip: nothing to do). fn may run more than once (storage.Update)
// and so must have no side effect outside the record: changes that act
// on the tokens use act.
func (s *Service) update(ctx context.Context, id string, fn func(r *record) error) (*record, error) {
	defer s.lock(id)()
	var prev, next *record
	now := s.dbNow() // when a backup falls due: markBackup
	err := s.store.Update(ctx, func(tx storage.Tx) error {
		cur, err := readRecord(ctx, tx, id)
		if err != nil {
			return err
		}
		prev, next = cur, clone(cur)
		if err := fn(next); err != nil {
			return callerError{err}
		}
		s.markBackup(prev, next, now)
		next.Rev = cur.Rev + 1
		b, err := json.Marshal(next)
		if err != nil {
			return err
		}
		return tx.Put(ctx, recordPath(id), b)
	})
	if err != nil {
		return nil, unwrapCaller(id, err)
	}
	s.written(prev, next)
	return next, nil
}

// act is update for changes with side effects on the tokens (logins, PIN
// changes, keys, new tokens): fn runs once, on a copy of the record read
// from the store, acting on the tokens as it goes; the transaction that
// stores the result then merges it into the record as it is by then —
// the fields fn changed replace theirs — so that a change made meanwhile
// by another node to other fields (a probe's HSM states, a tag) is kept.
// If a field fn changed was also changed meanwhile, nothing is stored and
// the error is errConflict: the caller's side effects stand unrecorded,
// and it must undo them or be safe to run again.
func (s *Service) act(ctx context.Context, id string, fn func(r *record) error) (*record, error) {
	defer s.lock(id)()
	base, err := s.fresh(ctx, id)
	if err != nil {
		return nil, err
	}
	mine := clone(base)
	if err := fn(mine); err != nil {
		return nil, err
	}
	var prev, next *record
	now := s.dbNow() // when a backup falls due: markBackup
	err = s.store.Update(ctx, func(tx storage.Tx) error {
		cur, err := readRecord(ctx, tx, id)
		if err != nil {
			return err
		}
		merged := mine
		if cur.Rev != base.Rev {
			if merged, err = merge(base, mine, cur); err != nil {
				return callerError{err}
			}
		}
		prev, next = cur, clone(merged)
		s.markBackup(prev, next, now)
		next.Rev = cur.Rev + 1
		b, err := json.Marshal(next)
		if err != nil {
			return err
		}
		return tx.Put(ctx, recordPath(id), b)
	})
	if err != nil {
		return nil, unwrapCaller(id, err)
	}
	s.written(prev, next)
	return next, nil
}

// merge applies what changed from base to mine onto cur, field by field
// (the record's JSON members), or returns errConflict when cur changed
// one of those fields too, differently.
func merge(base, mine, cur *record) (*record, error) {
	fields := func(r *record) map[string]json.RawMessage {
		b, err := json.Marshal(r)
		if err != nil {
			panic(err)
		}
		m := map[string]json.RawMessage{}
		if err := json.Unmarshal(b, &m); err != nil {
			panic(err)
		}
		delete(m, "rev")
		return m
	}
	fb, fm, fc := fields(base), fields(mine), fields(cur)
	keys := map[string]bool{}
	for _, m := range []map[string]json.RawMessage{fb, fm, fc} {
		for k := range m {
			keys[k] = true
		}
	}
	for k := range keys {
		if bytes.Equal(fb[k], fm[k]) {
			continue // not mine to change
		}
		if !bytes.Equal(fb[k], fc[k]) && !bytes.Equal(fm[k], fc[k]) {
			if k != "keys" {
				return nil, fmt.Errorf("%w (%s)", errConflict, k)
			}
			// Keys made or deleted through two nodes at once: both sets
			// of changes, key by key.
			keys, err := mergeKeys(base.Keys, mine.Keys, cur.Keys)
			if err != nil {
				return nil, err
			}
			if fm[k], err = json.Marshal(keys); err != nil {
				return nil, err
			}
		}
		if fm[k] == nil {
			delete(fc, k)
		} else {
			fc[k] = fm[k]
		}
	}
	b, err := json.Marshal(fc)
	if err != nil {
		return nil, err
	}
	out := new(record)
	if err := json.Unmarshal(b, out); err != nil {
		return nil, err
	}
	out.Rev = cur.Rev
	return out, nil
}

// mergeKeys applies the keys mine added to and removed from base onto
// cur; a key both added (differently) is errConflict.
func mergeKeys(base, mine, cur []keyRecord) ([]keyRecord, error) {
	in := func(ks []keyRecord, label string) *keyRecord {
		for i := range ks {
			if ks[i].Label == label {
				return &ks[i]
			}
		}
		return nil
	}
	out := append([]keyRecord(nil), cur...)
	for _, k := range mine {
		if in(base, k.Label) != nil {
			continue
		}
		if c := in(cur, k.Label); c != nil {
			if !bytes.Equal(c.Wrapped, k.Wrapped) {
				return nil, fmt.Errorf("%w (key %s)", errConflict, k.Label)
			}
			continue
		}
		out = append(out, k)
	}
	for _, k := range base {
		if in(mine, k.Label) == nil {
			out = slices.DeleteFunc(out, func(x keyRecord) bool { return x.Label == k.Label })
		}
	}
	return out, nil
}

// Invalidate reloads the cluster records among keys, which changed in the
// store — through another node, or this one (feed.Subscriber) — and
// forgets the backups among them, which are read again on use.
func (s *Service) Invalidate(ctx context.Context, keys []string) error {
	for _, k := range keys {
		if id, ok := backupIDOf(k); ok {
			if err := s.reloadBackup(ctx, id); err != nil {
				return err
			}
			continue
		}
		id, ok := clusterIDOf(k)
		if !ok {
			continue
		}
		r, err := readRecord(ctx, s.store, id)
		if errors.Is(err, ErrClusterNotFound) {
			s.mu.Lock()
			delete(s.clusters, id)
			s.mu.Unlock()
			continue
		}
		if err != nil {
			return fmt.Errorf("hsm: reload cluster %s: %w", id, err)
		}
		s.install(r)
	}
	return nil
}

// Reset reloads every cluster and backup record, for when the change feed
// cannot say what changed (feed.Subscriber).
func (s *Service) Reset(ctx context.Context) error {
	rs, err := s.all(ctx)
	if err != nil {
		return err
	}
	seen := map[string]bool{}
	for _, r := range rs {
		seen[r.ID] = true
		s.install(r)
	}
	s.mu.Lock()
	for id := range s.clusters {
		if !seen[id] {
			delete(s.clusters, id)
		}
	}
	s.mu.Unlock()
	return s.reloadBackups(ctx)
}
