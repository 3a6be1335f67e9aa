package catalog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
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

// grants is the per-key grant cache, kept beside the key cache. A key's
// grants are read from storage once, then kept in step by every write.
type grants struct {
	mu    sync.RWMutex
	byKey map[string][]*Grant // key name (Name) → grants in creation order
}

var grantCaches sync.Map // *Catalog → *grants

func (c *Catalog) grantCache() *grants {
	if g, ok := grantCaches.Load(c); ok {
		return g.(*grants)
	}
	g, _ := grantCaches.LoadOrStore(c, &grants{byKey: map[string][]*Grant{}})
	return g.(*grants)
}

func grantPath(keyName, id string) string { return "grant/" + keyName + "/" + id }

// KeyName is the name (Name) of the key the grant is on.
func (g *Grant) KeyName() string { return Name(g.Region, g.KeyID) }

// Grants returns the grants of the key named keyID (Name), oldest first.
// The slice is shared: never modify it.
func (c *Catalog) Grants(ctx context.Context, keyID string) ([]*Grant, error) {
	g := c.grantCache()
	g.mu.RLock()
	list, ok := g.byKey[keyID]
	g.mu.RUnlock()
	if ok {
		return list, nil
	}
	entries, err := c.store.List(ctx, "grant/"+keyID+"/", "", 0)
	if err != nil {
		return nil, fmt.Errorf("catalog: list grants: %w", err)
	}
	list = make([]*Grant, 0, len(entries))
	for _, e := range entries {
		gr := new(Grant)
		if err := json.Unmarshal(e.Value, gr); err != nil {
			return nil, fmt.Errorf("catalog: decode %s: %w", e.Key, err)
		}
		list = append(list, gr)
	}
	sortGrants(list)
	g.mu.Lock()
	if cur, ok := g.byKey[keyID]; ok {
		list = cur
	} else {
		g.byKey[keyID] = list
	}
	g.mu.Unlock()
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
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	cur, err := c.Grants(ctx, gr.KeyName())
	if err != nil {
		return err
	}
	if err := c.store.Create(ctx, grantPath(gr.KeyName(), gr.ID), b); err != nil {
		if errors.Is(err, storage.ErrExists) {
			return ErrExists
		}
		return fmt.Errorf("catalog: create grant: %w", err)
	}
	next := append(append(make([]*Grant, 0, len(cur)+1), cur...), gr)
	g := c.grantCache()
	g.mu.Lock()
	g.byKey[gr.KeyName()] = next
	g.mu.Unlock()
	return nil
}

// DeleteGrant removes grant id of the key named keyID (Name); ErrNotFound
// if absent.
func (c *Catalog) DeleteGrant(ctx context.Context, keyID, id string) error {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	cur, err := c.Grants(ctx, keyID)
	if err != nil {
		return err
	}
	next := make([]*Grant, 0, len(cur))
	found := false
	for _, gr := range cur {
		if gr.ID == id {
			found = true
			continue
		}
		next = append(next, gr)
	}
	if !found {
		return ErrNotFound
	}
	if err := c.store.Delete(ctx, grantPath(keyID, id)); err != nil {
		return fmt.Errorf("catalog: delete grant: %w", err)
	}
	g := c.grantCache()
	g.mu.Lock()
	g.byKey[keyID] = next
	g.mu.Unlock()
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
// the key is deleted.
func (c *Catalog) DeleteGrants(ctx context.Context, keyID string) error {
	list, err := c.Grants(ctx, keyID)
	if err != nil {
		return err
	}
	for _, gr := range list {
		if err := c.DeleteGrant(ctx, keyID, gr.ID); err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
	}
	return nil
}
