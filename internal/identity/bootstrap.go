package identity

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/kmsd/kmsd/internal/storage"
)

// bootstrapKey records which access key the first start of a database made
// for its administrator.
const bootstrapKey = "identity/bootstrap"

type bootstrapRecord struct {
	Account     string    `json:"account"`
	User        string    `json:"user"`
	AccessKeyID string    `json:"accessKeyId"`
	Created     time.Time `json:"created"`
}

// ErrNoBootstrap is returned by Bootstrap when the database has access
// keys but no administrator made by Bootstrap (it was made by a kmsd from
// before Bootstrap, or with keys given in the environment), or when the
// key Bootstrap made has been deleted since.
var ErrNoBootstrap = errors.New("identity: no bootstrap administrator key")

// Bootstrap gives the database its first administrator: the user name of
// account (created if absent) with the access key newAKID, newSecret (see
// NewKeyPair) — unless the database has one already, whose key it then
// returns. It is one serializable transaction of create-if-absent writes,
// so that of several kmsd processes starting at once on one empty database
// exactly one creates the administrator and every one of them returns the
// same key pair. created says this call made it.
func (s *Store) Bootstrap(ctx context.Context, account, name, newAKID, newSecret string) (akid, secret string, created bool, err error) {
	if newAKID == "" || newSecret == "" {
		return "", "", false, errors.New("identity: bootstrap: empty access key id or secret")
	}
	// Everything random is drawn before the transaction, which a driver
	// may run more than once.
	now := s.now().UTC()
	u := &User{Account: account, Name: name, Path: "/", ID: s.newID("AIDA"), Created: now}
	userJSON, err := json.Marshal(u)
	if err != nil {
		return "", "", false, err
	}
	sealed, err := s.barrier.Seal(prefix+newAKID, []byte(newSecret))
	if err != nil {
		return "", "", false, err
	}
	keyJSON, err := json.Marshal(record{Principal: Principal{Account: account, ARN: u.ARN(), Name: name}, User: name, Status: "Active", Created: now, Secret: sealed})
	if err != nil {
		return "", "", false, err
	}
	markJSON, err := json.Marshal(bootstrapRecord{Account: account, User: name, AccessKeyID: newAKID, Created: now})
	if err != nil {
		return "", "", false, err
	}

	var mark bootstrapRecord
	err = s.store.Update(ctx, func(tx storage.Tx) error {
		created = false
		b, err := tx.Get(ctx, bootstrapKey)
		if err == nil {
			return json.Unmarshal(b, &mark)
		}
		if !errors.Is(err, storage.ErrNotFound) {
			return err
		}
		if keys, err := tx.List(ctx, prefix, "", 1); err != nil {
			return err
		} else if len(keys) > 0 {
			return ErrNoBootstrap
		}
		if err := tx.Create(ctx, userPrefix+account+"/"+name, userJSON); err != nil && !errors.Is(err, storage.ErrExists) {
			return err
		}
		if err := tx.Create(ctx, prefix+newAKID, keyJSON); err != nil {
			return err
		}
		if err := tx.Create(ctx, bootstrapKey, markJSON); err != nil {
			return err
		}
		created = true
		return json.Unmarshal(markJSON, &mark)
	})
	if err != nil {
		return "", "", false, fmt.Errorf("identity: bootstrap: %w", err)
	}
	// This process learns the administrator from the database, whichever
	// process made it.
	if err := s.loadUserAndKey(ctx, mark.Account, mark.User, mark.AccessKeyID); err != nil {
		return "", "", false, err
	}
	s.mu.RLock()
	k, ok := s.keys[mark.AccessKeyID]
	s.mu.RUnlock()
	if !ok {
		return "", "", false, ErrNoBootstrap
	}
	return mark.AccessKeyID, k.secret, created, nil
}

// loadUserAndKey reads the user account/name and the access key akid from
// the database into memory; an access key deleted meanwhile is left out.
func (s *Store) loadUserAndKey(ctx context.Context, account, name, akid string) error {
	ub, err := s.store.Get(ctx, userPrefix+account+"/"+name)
	if err != nil {
		return fmt.Errorf("identity: bootstrap: load user: %w", err)
	}
	u := new(User)
	if err := json.Unmarshal(ub, u); err != nil {
		return err
	}
	if err := u.compile(false); err != nil {
		return err
	}
	kb, err := s.store.Get(ctx, prefix+akid)
	if errors.Is(err, storage.ErrNotFound) {
		kb = nil
	} else if err != nil {
		return fmt.Errorf("identity: bootstrap: load access key: %w", err)
	}
	var ke *keyEntry
	if kb != nil {
		var r record
		if err := json.Unmarshal(kb, &r); err != nil {
			return err
		}
		secret, err := s.barrier.Open(prefix+akid, r.Secret)
		if err != nil {
			return fmt.Errorf("identity: bootstrap: open secret of %s: %w", akid, err)
		}
		ke = &keyEntry{secret: string(secret), account: account, user: r.User, status: r.Status, created: r.Created}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur, ok := s.users[account+"/"+name]; !ok || !cur.config {
		s.users[account+"/"+name] = u
	}
	if ke != nil {
		s.keys[akid] = ke
	}
	s.rebuild()
	return nil
}
