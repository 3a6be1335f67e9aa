package catalog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
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
var ErrNoChange = errors.New("catalog: no change")

// UpdateRelated applies fn to copies of the record of the key named name
// and of its related multi-Region keys — ks[0] is name's, then those of
// name's RelatedRegions that exist — and stores the results, with what fn
// adds to its Batch, in one storage transaction: either every related key
// changes or none does. It is UpdateKey for a set of records, and like it
// holds the write lock, so the set read is the set written. An error from
// fn leaves every record unchanged and is returned. For a single-Region
// key ks holds its record alone.
func (c *Catalog) UpdateRelated(ctx context.Context, name string, fn func(ks []*Key, b *Batch) error) ([]*Key, error) {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	first, err := c.Key(ctx, name)
	if err != nil {
		return nil, err
	}
	curs := []*Key{first}
	for _, r := range first.RelatedRegions() {
		k, err := c.Key(ctx, Name(r, first.ID))
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		curs = append(curs, k)
	}
	nexts := make([]*Key, len(curs))
	for i, k := range curs {
		if nexts[i], err = clone(k); err != nil {
			return nil, err
		}
	}
	var b Batch
	if err := fn(nexts, &b); err != nil {
		if errors.Is(err, ErrNoChange) {
			return curs, nil
		}
		return nil, err
	}
	deleted := map[string]bool{}
	for _, n := range b.deletes {
		deleted[n] = true
	}
	type write struct {
		path string
		val  []byte
	}
	var puts, creates []write
	for _, k := range nexts {
		if deleted[k.Name()] {
			continue
		}
		v, err := json.Marshal(k)
		if err != nil {
			return nil, err
		}
		puts = append(puts, write{keyPath(k.Name()), v})
	}
	for _, k := range b.creates {
		v, err := json.Marshal(k)
		if err != nil {
			return nil, err
		}
		creates = append(creates, write{keyPath(k.Name()), v})
	}
	// The aliases of each deleted key's Region that point to it.
	var dropAliases []*Alias
	var dropKeys []*Key
	for _, k := range curs {
		if !deleted[k.Name()] {
			continue
		}
		dropKeys = append(dropKeys, k)
		list, err := c.listAliases(ctx, k.Account, k.Region)
		if err != nil {
			return nil, err
		}
		for _, a := range list {
			if a.KeyID == k.ID {
				dropAliases = append(dropAliases, a)
			}
		}
	}
	err = c.store.Update(ctx, func(tx storage.Tx) error {
		for _, w := range puts {
			if err := tx.Put(ctx, w.path, w.val); err != nil {
				return err
			}
		}
		for i, w := range creates {
			if err := tx.Create(ctx, w.path, w.val); err != nil {
				return err
			}
			k := b.creates[i]
			if err := tx.Put(ctx, keyIndexPath(k.Account, k.Region, k.ID), []byte{}); err != nil {
				return err
			}
		}
		for _, a := range dropAliases {
			if err := tx.Delete(ctx, aliasPath(a.Account, a.Region, a.Name)); err != nil {
				return err
			}
		}
		for _, k := range dropKeys {
			if err := tx.Delete(ctx, keyIndexPath(k.Account, k.Region, k.ID)); err != nil {
				return err
			}
			if err := tx.Delete(ctx, keyPath(k.Name())); err != nil {
				return err
			}
		}
		return nil
	})
	if errors.Is(err, storage.ErrExists) {
		return nil, ErrExists
	}
	if err != nil {
		return nil, fmt.Errorf("catalog: update related keys: %w", err)
	}
	c.mu.Lock()
	for i, k := range nexts {
		if deleted[k.Name()] {
			c.keys[k.Name()] = nil
			for _, v := range curs[i].Versions {
				delete(c.aeads, materialAAD(k.Name(), v.Number))
			}
		} else {
			c.keys[k.Name()] = k
		}
		c.forgetParsed(curs[i])
	}
	for _, a := range dropAliases {
		c.aliases[aliasPath(a.Account, a.Region, a.Name)] = nil
	}
	for _, k := range b.creates {
		c.keys[k.Name()] = k
	}
	c.mu.Unlock()
	out := nexts[:0:0]
	for _, k := range nexts {
		if !deleted[k.Name()] {
			out = append(out, k)
		}
	}
	return out, nil
}
