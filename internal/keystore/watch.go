package keystore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/kmsd/kmsd/internal/storage"
)

// Invalidate reloads the store records among keys, which changed in the
// database — through another node, or this one — so that every node
// answers DescribeCustomKeyStores, and checks a store's state before
// cryptography, as the database has it (feed.Subscriber). A record
// older than the one held (by Rev) is not installed.
func (m *Manager) Invalidate(ctx context.Context, keys []string) error {
	for _, k := range keys {
		id, ok := strings.CutPrefix(k, "keystore/")
		if !ok || strings.Contains(id, "/") {
			continue
		}
		b, err := m.store.Get(ctx, k)
		if errors.Is(err, storage.ErrNotFound) {
			m.mu.Lock()
			delete(m.stores, id)
			m.mu.Unlock()
			continue
		}
		if err != nil {
			return fmt.Errorf("keystore: reload %s: %w", id, err)
		}
		st := new(Store)
		if err := json.Unmarshal(b, st); err != nil {
			return fmt.Errorf("keystore: decode %s: %w", k, err)
		}
		m.install(st)
	}
	return nil
}

// Reset reloads every store record, for when the change feed cannot say
// what changed (feed.Subscriber).
func (m *Manager) Reset(ctx context.Context) error {
	entries, err := m.store.List(ctx, "keystore/", "", 0)
	if err != nil {
		return fmt.Errorf("keystore: reload: %w", err)
	}
	stores := make(map[string]*Store, len(entries))
	for _, e := range entries {
		st := new(Store)
		if err := json.Unmarshal(e.Value, st); err != nil {
			return fmt.Errorf("keystore: decode %s: %w", e.Key, err)
		}
		stores[st.ID] = st
	}
	m.mu.Lock()
	for id, st := range stores {
		// A write of this process that committed after the List above
		// is kept (install's rule).
		if cur, ok := m.stores[id]; ok && cur.Rev > st.Rev {
			stores[id] = cur
		}
	}
	m.stores = stores
	m.mu.Unlock()
	return nil
}
