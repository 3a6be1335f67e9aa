package catalog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/kmsd/kmsd/internal/storage"
)

// Grant is the stored record of one grant on a key. Records handed out are
// shared snapshots: never modify one.
type Grant struct {
	ID    string `json:"id"`
	KeyID string `json:"keyId"`
	// Region is the key's Region; empty in grants written before
	// multi-Region keys, whose key ids are unique without it.
	Region            string            `json:"region,omitempty"`
	Name              string            `json:"name,omitempty"`
	Created           time.Time         `json:"created"`
	GranteePrincipal  string            `json:"grantee"`
	RetiringPrincipal string            `json:"retiring,omitempty"`
	IssuingAccount    string            `json:"issuingAccount"` // arn:aws:iam::ACCOUNT:root
	Operations        []string          `json:"operations"`
	ECEquals          map[string]string `json:"ecEquals,omitempty"`
	ECSubset          map[string]string `json:"ecSubset,omitempty"`
	Token             string            `json:"token"`
}

func grantPath(keyName, id string) string { return "grant/" + keyName + "/" + id }

// KeyName is the name (Name) of the key the grant is on.
func (g *Grant) KeyName() string { return Name(g.Region, g.KeyID) }

// Grants returns the grants of the key named keyID (Name), oldest first:
// from the cache when it may be trusted (see the package documentation),
// else from the database. The slice is shared: never modify it.
func (c *Catalog) Grants(ctx context.Context, keyID string) ([]*Grant, error) {
	if c.cacheOK(ctx) {
		c.mu.RLock()
		list, ok := c.grants.Get(keyID)
		c.mu.RUnlock()
		if ok {
			return list, nil
		}
	} else {
		var cancel context.CancelFunc
		ctx, cancel = readCtx(ctx)
		defer cancel()
	}
	p := "grant/" + keyID + "/"
	g := c.stamp(p)
	entries, err := c.store.List(ctx, p, "", 0)
	if err != nil {
		return nil, fmt.Errorf("catalog: list grants: %w", err)
	}
	list := make([]*Grant, 0, len(entries))
	for _, e := range entries {
		gr := new(Grant)
		if err := json.Unmarshal(e.Value, gr); err != nil {
			return nil, fmt.Errorf("catalog: decode %s: %w", e.Key, err)
		}
		list = append(list, gr)
	}
	sortGrants(list)
	c.fill(p, g, func() { c.grants.Add(keyID, list) })
	return list, nil
}

func sortGrants(list []*Grant) {
	for i := 1; i < len(list); i++ {
		for j := i; j > 0 && list[j].Created.Before(list[j-1].Created); j-- {
			list[j], list[j-1] = list[j-1], list[j]
		}
	}
}

// CreateGrant stores a new grant durably.
func (c *Catalog) CreateGrant(ctx context.Context, gr *Grant) error {
	b, err := json.Marshal(gr)
	if err != nil {
		return err
	}
	p := grantPath(gr.KeyName(), gr.ID)
	if err := c.store.Create(ctx, p, b); err != nil {
		if errors.Is(err, storage.ErrExists) {
			return ErrExists
		}
		return fmt.Errorf("catalog: create grant: %w", err)
	}
	c.invalidate([]string{p})
	return nil
}

// DeleteGrant removes grant id of the key named keyID (Name); ErrNotFound
// if absent.
func (c *Catalog) DeleteGrant(ctx context.Context, keyID, id string) error {
	p := grantPath(keyID, id)
	err := c.store.Update(ctx, func(tx storage.Tx) error {
		if _, err := tx.Get(ctx, p); errors.Is(err, storage.ErrNotFound) {
			return ErrNotFound
		} else if err != nil {
			return err
		}
		return tx.Delete(ctx, p)
	})
	if err != nil {
		return unwrapUpdate("delete grant", err)
	}
	c.invalidate([]string{p})
	return nil
}

// AllGrants calls fn for every grant of every key (ListRetirableGrants).
func (c *Catalog) AllGrants(ctx context.Context, fn func(*Grant) error) error {
	entries, err := c.store.List(ctx, "grant/", "", 0)
	if err != nil {
		return fmt.Errorf("catalog: scan grants: %w", err)
	}
	for _, e := range entries {
		gr := new(Grant)
		if err := json.Unmarshal(e.Value, gr); err != nil {
			return fmt.Errorf("catalog: decode %s: %w", e.Key, err)
		}
		if err := fn(gr); err != nil {
			return err
		}
	}
	return nil
}

// DeleteGrants removes every grant of the key named keyID (Name), when
// the key is deleted, in one transaction.
func (c *Catalog) DeleteGrants(ctx context.Context, keyID string) error {
	p := "grant/" + keyID + "/"
	err := c.store.Update(ctx, func(tx storage.Tx) error {
		entries, err := tx.List(ctx, p, "", 0)
		if err != nil {
			return err
		}
		for _, e := range entries {
			if err := tx.Delete(ctx, e.Key); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("catalog: delete grants: %w", err)
	}
	c.mu.Lock()
	c.evictLocked(p)
	c.bump(p)
	c.mu.Unlock()
	return nil
}
