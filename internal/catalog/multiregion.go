package catalog

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/storage"
)

// Kinds of Transition.
const (
	// TransitionReplica: a new replica leaves Creating.
	TransitionReplica = "replica"
	// TransitionPrimary: UpdatePrimaryRegion's swap of roles, after which
	// the keys in Updating return to their earlier state.
	TransitionPrimary = "primary"
)

// Transition is an asynchronous change of a multi-Region key that is due
// at a time. It is written in the same transaction as the state it ends
// (Creating, Updating), so a process killed in between finds it in
// storage and completes it after a restart.
type Transition struct {
	Kind string    `json:"kind"` // TransitionReplica or TransitionPrimary
	Due  time.Time `json:"due"`
	// Restore is the state a key in Updating returns to.
	Restore keys.State `json:"restore,omitempty"`
	// PrimaryRegion is the Region of the new primary key
	// (TransitionPrimary).
	PrimaryRegion string `json:"primaryRegion,omitempty"`
}

// MultiRegion reports whether k is a multi-Region key.
func (k *Key) MultiRegion() bool { return k.PrimaryRegion != "" }

// IsPrimary reports whether k is a multi-Region primary key.
func (k *Key) IsPrimary() bool { return k.PrimaryRegion != "" && k.PrimaryRegion == k.Region }

// IsReplica reports whether k is a multi-Region replica key.
func (k *Key) IsReplica() bool { return k.PrimaryRegion != "" && k.PrimaryRegion != k.Region }

// RelatedRegions is the Regions of k's related multi-Region keys, k's own
// excluded: the primary's first, then the replicas' in creation order.
func (k *Key) RelatedRegions() []string {
	if k.PrimaryRegion == "" {
		return nil
	}
	var out []string
	for _, r := range append([]string{k.PrimaryRegion}, k.ReplicaRegions...) {
		if r != k.Region && !slices.Contains(out, r) {
			out = append(out, r)
		}
	}
	return out
}

// Batch is what one UpdateRelated call writes beside the records it
// updates: new records, and records it deletes.
type Batch struct {
	creates []*Key
	deletes []string // names
}

// Create adds a new key record (a replica) to the transaction; the
// transaction fails with ErrExists if its name is taken.
func (b *Batch) Create(k *Key) { b.creates = append(b.creates, k) }

// Delete removes the key named name, which must be one of the records
// passed to fn, with its index entry and the aliases of its Region that
// point to it. Its grants are not touched: DeleteGrants first.
func (b *Batch) Delete(name string) { b.deletes = append(b.deletes, name) }

// ErrNoChange, returned by an UpdateRelated fn, means there is nothing to
// write; UpdateRelated then returns the records unchanged and no error.
// Returned by an UpdateKeys fn, it leaves that one key unchanged.
var ErrNoChange = errors.New("catalog: no change")

// UpdateRelated applies fn to copies of the record of the key named name
// and of its related multi-Region keys — ks[0] is name's, then those of
// name's RelatedRegions that exist — and stores the results, with what fn
// adds to its Batch, in one storage transaction that also read them:
// either every related key changes or none does, and the set read is the
// set written. It is UpdateKey for a set of records, and like it may run
// fn more than once (each time with a fresh Batch). An error from fn
// leaves every record unchanged and is returned. For a single-Region key
// ks holds its record alone.
func (c *Catalog) UpdateRelated(ctx context.Context, name string, fn func(ks []*Key, b *Batch) error) ([]*Key, error) {
	var curs, nexts []*Key
	var b Batch
	var deleted map[string]bool
	var dropped []string
	gens := map[string]uint64{}
	noChange := false
	err := c.store.Update(ctx, func(tx storage.Tx) error {
		curs, nexts, b, dropped, noChange = nil, nil, Batch{}, nil, false
		deleted = map[string]bool{}
		first, err := getKey(ctx, tx, name)
		if err != nil {
			return err
		}
		curs = []*Key{first}
		for _, r := range first.RelatedRegions() {
			k, err := getKey(ctx, tx, Name(r, first.ID))
			if errors.Is(err, ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			curs = append(curs, k)
		}
		nexts = make([]*Key, len(curs))
		for i, k := range curs {
			if nexts[i], err = clone(k); err != nil {
				return err
			}
			if _, ok := gens[k.Name()]; !ok {
				gens[k.Name()] = c.stamp(keyPath(k.Name()))
			}
		}
		if err := fn(nexts, &b); err != nil {
			if errors.Is(err, ErrNoChange) {
				noChange = true
				return nil
			}
			return callerError{err}
		}
		for _, n := range b.deletes {
			deleted[n] = true
		}
		for i, k := range nexts {
			if deleted[k.Name()] {
				continue
			}
			k.Policy = c.policies.share(k.Policy)
			v, err := encodeKey(k)
			if err != nil {
				return err
			}
			if err := indexRecord(ctx, tx, curs[i], k); err != nil {
				return err
			}
			if err := tx.Put(ctx, keyPath(k.Name()), v); err != nil {
				return err
			}
		}
		for _, k := range b.creates {
			k.Policy = c.policies.share(k.Policy)
			v, err := encodeKey(k)
			if err != nil {
				return err
			}
			if err := tx.Create(ctx, keyPath(k.Name()), v); err != nil {
				return err
			}
			if err := indexRecord(ctx, tx, nil, k); err != nil {
				return err
			}
			if err := tx.Put(ctx, keyIndexPath(k.Account, k.Region, k.ID), []byte{}); err != nil {
				return err
			}
		}
		// Each deleted key goes with the aliases of its Region that
		// point to it, read in this transaction.
		for _, k := range curs {
			if !deleted[k.Name()] {
				continue
			}
			d, err := deleteAliasesOf(ctx, tx, k)
			if err != nil {
				return err
			}
			dropped = append(dropped, d...)
			if err := tx.Delete(ctx, keyIndexPath(k.Account, k.Region, k.ID)); err != nil {
				return err
			}
			if err := indexRecord(ctx, tx, k, nil); err != nil {
				return err
			}
			if err := tx.Delete(ctx, keyPath(k.Name())); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, unwrapUpdate("update related keys", err)
	}
	if noChange {
		return curs, nil
	}
	evict := dropped
	for i, k := range nexts {
		p := keyPath(k.Name())
		if deleted[k.Name()] {
			evict = append(evict, p)
			c.mu.Lock()
			c.forgetParsed(curs[i])
			c.mu.Unlock()
			continue
		}
		c.install(p, gens[k.Name()], func() {
			c.forgetParsed(curs[i])
			c.putKey(k.Name(), k)
		})
	}
	for _, k := range b.creates {
		// Not stamped before the transaction: evicted, read on first use.
		evict = append(evict, keyPath(k.Name()))
	}
	c.invalidate(evict)
	out := nexts[:0:0]
	for _, k := range nexts {
		if !deleted[k.Name()] {
			out = append(out, k)
		}
	}
	return out, nil
}
