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
// ("lastuse/<account>/<region>/<key id>"), not in the key record: it
// changes far more often than the key, and is written in batches by a
// tracker that may lag the key's own writes. Related multi-Region keys
// share a key id but not a Region, so each has its own record.
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
	return "lastuse/" + account + "/" + region + "/" + id
}

// trackingStartPath holds when kmsd began to track key usage.
const trackingStartPath = "lastuse-start"

// LastUse returns the stored last use of key id of account and region, or
// ErrNotFound if none is stored. Last-use records bypass the catalog's
// cache: their writer (the tracker in package lastuse) keeps its own.
func (c *Catalog) LastUse(ctx context.Context, account, region, id string) (*LastUse, error) {
	b, err := c.store.Get(ctx, lastUsePath(account, region, id))
	if errors.Is(err, storage.ErrNotFound) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("catalog: get last use: %w", err)
	}
	u := new(LastUse)
	if err := json.Unmarshal(b, u); err != nil {
		return nil, fmt.Errorf("catalog: decode last use of %s: %w", id, err)
	}
	return u, nil
}

// PutLastUses stores uses in one transaction. A stored use at least as
// recent as the given one is kept, so that two nodes sharing a store, or
// a flush racing a slower one, never move a key's last use back in time.
func (c *Catalog) PutLastUses(ctx context.Context, uses []LastUse) error {
	err := c.store.Update(ctx, func(tx storage.Tx) error {
		for i := range uses {
			u := &uses[i]
			path := lastUsePath(u.Account, u.Region, u.KeyID)
			if b, err := tx.Get(ctx, path); err == nil {
				var cur LastUse
				if json.Unmarshal(b, &cur) == nil && !cur.Time.Before(u.Time) {
					continue
				}
			} else if !errors.Is(err, storage.ErrNotFound) {
				return err
			}
			b, err := json.Marshal(u)
			if err != nil {
				return err
			}
			if err := tx.Put(ctx, path, b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("catalog: put last uses: %w", err)
	}
	return nil
}

// DeleteLastUse removes the last use of key id of account and region, as
// the key itself is deleted; deleting an absent record is not an error.
func (c *Catalog) DeleteLastUse(ctx context.Context, account, region, id string) error {
	if err := c.store.Delete(ctx, lastUsePath(account, region, id)); err != nil {
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
