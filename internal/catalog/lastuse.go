package catalog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/kmsd/kmsd/internal/storage"
)

// LastUse is the last recorded successful use of one key, the answer of
// GetKeyLastUsage. It is kept under its own prefix
// ("unfed/lastuse/<account>/<region>/<key id>"), not in the key record: it
// changes far more often than the key, and is written in batches by a
// tracker that may lag the key's own writes. Related multi-Region keys
// share a key id but not a Region, so each has its own record.
//
// The prefix is storage.UnfedPrefix: nothing caches these records (the
// tracker reads them from the store), so their writes are left out of the
// change feed, which halves what a key's first recorded use writes. Older
// kmsd versions kept them at "lastuse/<account>/<region>/<key id>", in the
// feed; those are still read (the newer of the two records wins) and
// deleted with the key, but no longer written.
type LastUse struct {
	Account   string    `json:"account"`
	Region    string    `json:"region"`
	KeyID     string    `json:"keyId"`
	Operation string    `json:"op"`
	Time      time.Time `json:"time"`
	EventID   string    `json:"eventId"`   // the audit record's eventID
	RequestID string    `json:"requestId"` // the call's x-amzn-RequestId
}

func lastUsePath(account, region, id string) string {
	return storage.UnfedPrefix + "lastuse/" + account + "/" + region + "/" + id
}

// legacyLastUsePath is where kmsd versions before storage.UnfedPrefix kept
// the record.
func legacyLastUsePath(account, region, id string) string {
	return "lastuse/" + account + "/" + region + "/" + id
}

// trackingStartPath holds when kmsd began to track key usage.
const trackingStartPath = "lastuse-start"

// LastUse returns the stored last use of key id of account and region, or
// ErrNotFound if none is stored. Last-use records bypass the catalog's
// cache: their writer (the tracker in package lastuse) keeps its own.
func (c *Catalog) LastUse(ctx context.Context, account, region, id string) (*LastUse, error) {
	var newest *LastUse
	for _, p := range []string{lastUsePath(account, region, id), legacyLastUsePath(account, region, id)} {
		b, err := c.store.Get(ctx, p)
		if errors.Is(err, storage.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("catalog: get last use: %w", err)
		}
		u := new(LastUse)
		if err := json.Unmarshal(b, u); err != nil {
			return nil, fmt.Errorf("catalog: decode last use of %s: %w", id, err)
		}
		if newest == nil || u.Time.After(newest.Time) {
			newest = u
		}
	}
	if newest == nil {
		return nil, ErrNotFound
	}
	return newest, nil
}

// PutLastUses stores uses in one transaction. A stored use at least as
// recent as the given one is kept, so that two nodes sharing a store, or
// a flush racing a slower one, never move a key's last use back in time.
//
// A flush costs a fixed number of storage steps, whatever its size: all
// records are created in one storage.CreateBatch (a key's first use, the
// common case on a large store, where most keys are used now and then);
// the records of the keys that already had one are read in one
// storage.GetBatch, compared here, and the newer uses written in one
// storage.PutBatch — on PostgreSQL one statement each per chunk, rather
// than a round trip per use. The transaction is serializable, so a
// concurrent flush from another node that writes a key read here makes
// one of the two run again and compare against the other's record.
func (c *Catalog) PutLastUses(ctx context.Context, uses []LastUse) error {
	entries := make([]storage.Entry, len(uses))
	for i := range uses {
		u := &uses[i]
		b, err := json.Marshal(u)
		if err != nil {
			return fmt.Errorf("catalog: put last uses: %w", err)
		}
		entries[i] = storage.Entry{Key: lastUsePath(u.Account, u.Region, u.KeyID), Value: b}
	}
	err := c.store.Update(ctx, func(tx storage.Tx) error {
		exists, err := storage.CreateBatch(ctx, tx, entries)
		if err != nil {
			return err
		}
		var at []int // indexes of the uses whose key had a record
		var keys []string
		for i, e := range entries {
			if exists[i] {
				at, keys = append(at, i), append(keys, e.Key)
			}
		}
		if len(at) == 0 {
			return nil
		}
		stored, err := storage.GetBatch(ctx, tx, keys)
		if err != nil {
			return err
		}
		// newest is the time each key's record holds once the puts
		// before are done, so that a key used twice in one flush keeps
		// the later use whatever the order. A record that does not
		// decode is replaced.
		newest := make(map[string]time.Time, len(at))
		for j := range at {
			if _, ok := newest[keys[j]]; ok || stored[j] == nil {
				continue
			}
			var cur LastUse
			if json.Unmarshal(stored[j], &cur) == nil {
				newest[keys[j]] = cur.Time
			}
		}
		var puts []storage.Entry
		for _, i := range at {
			k := entries[i].Key
			if cur, ok := newest[k]; ok && !cur.Before(uses[i].Time) {
				continue
			}
			newest[k] = uses[i].Time
			puts = append(puts, entries[i])
		}
		return storage.PutBatch(ctx, tx, puts)
	})
	if err != nil {
		return fmt.Errorf("catalog: put last uses: %w", err)
	}
	return nil
}

// DeleteLastUse removes the last use of key id of account and region (and
// a record an older kmsd kept), as the key itself is deleted; deleting an
// absent record is not an error.
func (c *Catalog) DeleteLastUse(ctx context.Context, account, region, id string) error {
	err := c.store.Update(ctx, func(tx storage.Tx) error {
		if err := tx.Delete(ctx, lastUsePath(account, region, id)); err != nil {
			return err
		}
		return tx.Delete(ctx, legacyLastUsePath(account, region, id))
	})
	if err != nil {
		return fmt.Errorf("catalog: delete last use: %w", err)
	}
	return nil
}

// TrackingStart returns when kmsd began to track key usage: the time
// stored by the first call ever made on this store, which stores now.
// Keys older than that have no usage recorded from before it.
func (c *Catalog) TrackingStart(ctx context.Context, now time.Time) (time.Time, error) {
	b, err := now.UTC().MarshalText()
	if err != nil {
		return time.Time{}, err
	}
	err = c.store.Create(ctx, trackingStartPath, b)
	if err == nil {
		return now, nil
	}
	if !errors.Is(err, storage.ErrExists) {
		return time.Time{}, fmt.Errorf("catalog: store tracking start: %w", err)
	}
	if b, err = c.store.Get(ctx, trackingStartPath); err != nil {
		return time.Time{}, fmt.Errorf("catalog: get tracking start: %w", err)
	}
	var t time.Time
	if err := t.UnmarshalText(b); err != nil {
		return time.Time{}, fmt.Errorf("catalog: decode tracking start: %w", err)
	}
	return t, nil
}
