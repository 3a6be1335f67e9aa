package identity

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/kmsd/kmsd/internal/storage"
)

// Invalidate reloads the stored users, roles and access keys among keys,
// which changed in the database — through another node, or this one — so
// that an access key deleted or deactivated anywhere stops verifying here
// and a changed identity policy applies here (feed.Subscriber).
// Identities declared in the configuration file are left alone; so are
// sessions, which live in the process that issued them.
func (s *Store) Invalidate(ctx context.Context, keys []string) error {
	type change struct {
		key string
		val []byte // nil: deleted
	}
	var changes []change
	for _, k := range keys {
		if !strings.HasPrefix(k, userPrefix) && !strings.HasPrefix(k, rolePrefix) && !strings.HasPrefix(k, prefix) {
			continue
		}
		b, err := s.store.Get(ctx, k)
		if errors.Is(err, storage.ErrNotFound) {
			b, err = nil, nil
		}
		if err != nil {
			return fmt.Errorf("identity: reload %s: %w", k, err)
		}
		changes = append(changes, change{k, b})
	}
	if len(changes) == 0 {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range changes {
		if err := s.applyLocked(c.key, c.val); err != nil {
			return err
		}
	}
	s.rebuild()
	return nil
}

// applyLocked replaces (val nil: removes) the stored record at key in
// memory. s.mu is held.
func (s *Store) applyLocked(key string, val []byte) error {
	switch {
	case strings.HasPrefix(key, userPrefix):
		id := key[len(userPrefix):]
		if cur, ok := s.users[id]; ok && cur.config {
			return nil
		}
		if val == nil {
			delete(s.users, id)
			return nil
		}
		u := new(User)
		if err := json.Unmarshal(val, u); err != nil {
			return fmt.Errorf("identity: decode %s: %w", key, err)
		}
		if err := u.compile(false); err != nil {
			return fmt.Errorf("identity: %s: %w", key, err)
		}
		s.users[id] = u
	case strings.HasPrefix(key, rolePrefix):
		id := key[len(rolePrefix):]
		if cur, ok := s.roles[id]; ok && cur.config {
			return nil
		}
		if val == nil {
			delete(s.roles, id)
			account, name, _ := strings.Cut(id, "/")
			s.refreshSessions(&Role{Account: account, Name: name}) // ends them
			return nil
		}
		r := new(Role)
		if err := json.Unmarshal(val, r); err != nil {
			return fmt.Errorf("identity: decode %s: %w", key, err)
		}
		if err := r.compile(false); err != nil {
			return fmt.Errorf("identity: %s: %w", key, err)
		}
		s.roles[id] = r
		s.refreshSessions(r)
	case strings.HasPrefix(key, prefix):
		akid := key[len(prefix):]
		if cur, ok := s.keys[akid]; ok && cur.config {
			return nil
		}
		if val == nil {
			delete(s.keys, akid)
			return nil
		}
		ke, err := s.decodeKey(key, val)
		if err != nil {
			return err
		}
		s.keys[akid] = ke
	}
	return nil
}

// decodeKey decodes and unseals the stored access key at key.
func (s *Store) decodeKey(key string, val []byte) (*keyEntry, error) {
	var r record
	if err := json.Unmarshal(val, &r); err != nil {
		return nil, fmt.Errorf("identity: decode %s: %w", key, err)
	}
	secret, err := s.barrier.Open(key, r.Secret)
	if err != nil {
		return nil, fmt.Errorf("identity: open secret of %s: %w", key[len(prefix):], err)
	}
	ke := &keyEntry{secret: string(secret), account: r.Principal.Account, user: r.User, status: r.Status, created: r.Created}
	if ke.user == "" {
		ke.user = r.Principal.Name
	}
	if ke.status == "" {
		ke.status = "Active"
	}
	return ke, nil
}

// Reset reloads every stored user, role and access key, for when the
// change feed cannot say what changed (feed.Subscriber).
func (s *Store) Reset(ctx context.Context) error {
	var all []storage.Entry
	for _, p := range []string{userPrefix, rolePrefix, prefix} {
		entries, err := s.store.List(ctx, p, "", 0)
		if err != nil {
			return fmt.Errorf("identity: reload: %w", err)
		}
		all = append(all, entries...)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// Stored records not in the database any more go; declared ones stay.
	seen := map[string]bool{}
	for _, e := range all {
		seen[e.Key] = true
	}
	for id, u := range s.users {
		if !u.config && !seen[userPrefix+id] {
			delete(s.users, id)
		}
	}
	for id, r := range s.roles {
		if !r.config && !seen[rolePrefix+id] {
			delete(s.roles, id)
		}
	}
	for akid, k := range s.keys {
		if !k.config && !seen[prefix+akid] {
			delete(s.keys, akid)
		}
	}
	for _, e := range all {
		if err := s.applyLocked(e.Key, e.Value); err != nil {
			return err
		}
	}
	s.rebuild()
	return nil
}
