// Package identity keeps kmsd's principals and their access keys, and
// resolves the access key id of a signed request to its secret (for SigV4
// verification) and its principal. Secrets are stored sealed by the
// barrier and held in memory for verification.
package identity

import (
	"context"
	"encoding/base32"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/kmsd/kmsd/internal/barrier"
	"github.com/kmsd/kmsd/internal/storage"
)

// Principal is an IAM identity a request can act as.
type Principal struct {
	Account string `json:"account"`
	ARN     string `json:"arn"`
	Name    string `json:"name"`
}

// Root returns the root principal of account.
func Root(account string) Principal {
	return Principal{Account: account, ARN: "arn:aws:iam::" + account + ":root", Name: "root"}
}

type record struct {
	Principal Principal `json:"principal"`
	Secret    []byte    `json:"secret"` // sealed
}

type entry struct {
	secret    string
	principal Principal
}

// Store holds access keys.
type Store struct {
	store   storage.Store
	barrier *barrier.Barrier
	mu      sync.RWMutex
	keys    map[string]entry
}

const prefix = "identity/accesskey/"

// Open loads every access key from store.
func Open(ctx context.Context, st storage.Store, b *barrier.Barrier) (*Store, error) {
	s := &Store{store: st, barrier: b, keys: map[string]entry{}}
	entries, err := st.List(ctx, prefix, "", 0)
	if err != nil {
		return nil, fmt.Errorf("identity: load access keys: %w", err)
	}
	for _, e := range entries {
		var r record
		if err := json.Unmarshal(e.Value, &r); err != nil {
			return nil, fmt.Errorf("identity: decode %s: %w", e.Key, err)
		}
		secret, err := b.Open(e.Key, r.Secret)
		if err != nil {
			return nil, fmt.Errorf("identity: open secret of %s: %w", e.Key[len(prefix):], err)
		}
		s.keys[e.Key[len(prefix):]] = entry{secret: string(secret), principal: r.Principal}
	}
	return s, nil
}

// Secret returns the secret access key of akid (sigv4.SecretLookup).
func (s *Store) Secret(akid string) (string, bool) {
	s.mu.RLock()
	e, ok := s.keys[akid]
	s.mu.RUnlock()
	return e.secret, ok
}

// Principal returns the principal akid belongs to.
func (s *Store) Principal(akid string) (Principal, bool) {
	s.mu.RLock()
	e, ok := s.keys[akid]
	s.mu.RUnlock()
	return e.principal, ok
}

// Lookup returns both the secret and the principal of akid.
func (s *Store) Lookup(akid string) (secret string, p Principal, ok bool) {
	s.mu.RLock()
	e, ok := s.keys[akid]
	s.mu.RUnlock()
	return e.secret, e.principal, ok
}

// Put stores an access key for p, replacing one with the same id.
func (s *Store) Put(ctx context.Context, akid, secret string, p Principal) error {
	if akid == "" || secret == "" {
		return errors.New("identity: empty access key id or secret")
	}
	sealed, err := s.barrier.Seal(prefix+akid, []byte(secret))
	if err != nil {
		return err
	}
	b, err := json.Marshal(record{Principal: p, Secret: sealed})
	if err != nil {
		return err
	}
	if err := s.store.Put(ctx, prefix+akid, b); err != nil {
		return fmt.Errorf("identity: store access key: %w", err)
	}
	s.mu.Lock()
	s.keys[akid] = entry{secret: secret, principal: p}
	s.mu.Unlock()
	return nil
}

// Count reports how many access keys exist.
func (s *Store) Count() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.keys)
}

// NewKeyPair makes an access key id in AWS's form (AKIA + 16 base32
// characters) and a 40-character secret.
func NewKeyPair(rand io.Reader) (akid, secret string, err error) {
	b := make([]byte, 40)
	if _, err := io.ReadFull(rand, b); err != nil {
		return "", "", err
	}
	id := base32.StdEncoding.EncodeToString(b[:10])
	sec := base64.StdEncoding.EncodeToString(b[10:])
	sec = strings.NewReplacer("=", "").Replace(sec)
	return "AKIA" + id[:16], sec[:40], nil
}
