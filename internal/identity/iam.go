package identity

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"sort"
	"strings"
	"time"

	"github.com/kmsd/kmsd/internal/policy"
	"github.com/kmsd/kmsd/internal/storage"
)

type cryptoRand struct{}

func (cryptoRand) Read(b []byte) (int, error) { return rand.Read(b) }

// MaxKeysPerUser is IAM's quota of access keys per user.
const MaxKeysPerUser = 2

func validName(kind, name string, max int) error {
	if name == "" || len(name) > max {
		return &Error{"ValidationError", "1 validation error detected: Value '" + name + "' at '" + kind + "' failed to satisfy constraint: Member must have length less than or equal to " + itoa(max), ErrInvalid}
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("_+=,.@-", c)) {
			return &Error{"ValidationError", "1 validation error detected: Value '" + name + "' at '" + kind + "' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\w+=,.@-]+", ErrInvalid}
		}
	}
	return nil
}

func validPath(p string) (string, error) {
	if p == "" {
		return "/", nil
	}
	if !strings.HasPrefix(p, "/") || !strings.HasSuffix(p, "/") || len(p) > 512 {
		return "", &Error{"ValidationError", "The specified value for path is invalid. It must begin and end with / and contain only alphanumeric characters and/or / characters.", ErrInvalid}
	}
	return p, nil
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b [20]byte
	i := len(b)
	for n > 0 {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
	}
	return string(b[i:])
}

func malformedPolicy(err error) error {
	msg := "Syntax errors in policy."
	var pe *policy.Error
	if errors.As(err, &pe) {
		msg = pe.Message
	}
	return &Error{"MalformedPolicyDocument", msg, ErrMalformed}
}

// CreateUser creates user name in account.
func (s *Store) CreateUser(ctx context.Context, account, name, path string) (*User, error) {
	if err := validName("userName", name, 64); err != nil {
		return nil, err
	}
	path, err := validPath(path)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.findUser(account, name) != nil {
		return nil, &Error{"EntityAlreadyExists", "User with name " + name + " already exists.", ErrExists}
	}
	u := &User{Account: account, Name: name, Path: path, ID: s.newID("AIDA"), Created: s.now().UTC().Truncate(time.Second)}
	if err := u.compile(true); err != nil {
		return nil, err
	}
	b, err := json.Marshal(u)
	if err != nil {
		return nil, err
	}
	if err := s.createStored(ctx, userPrefix, account, name, b, &Error{"EntityAlreadyExists", "User with name " + name + " already exists.", ErrExists}); err != nil {
		return nil, err
	}
	s.users[account+"/"+name] = u
	return u, nil
}

// findUser looks a user up ignoring case, as IAM names are unique
// case-insensitively. Callers hold mu.
func (s *Store) findUser(account, name string) *User {
	if u, ok := s.users[account+"/"+name]; ok {
		return u
	}
	for _, u := range s.users {
		if u.Account == account && strings.EqualFold(u.Name, name) {
			return u
		}
	}
	return nil
}

// GetUser returns user name of account.
func (s *Store) GetUser(account, name string) (*User, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	u, ok := s.users[account+"/"+name]
	if !ok {
		return nil, noSuchUser(name)
	}
	return u, nil
}

// ListUsers lists account's users whose path starts with pathPrefix, by name.
func (s *Store) ListUsers(account, pathPrefix string) []*User {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []*User
	for _, u := range s.users {
		if u.Account == account && strings.HasPrefix(u.Path, pathPrefix) {
			out = append(out, u)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// DeleteUser deletes a user that has no access keys and no policies.
func (s *Store) DeleteUser(ctx context.Context, account, name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	u, ok := s.users[account+"/"+name]
	if !ok {
		return noSuchUser(name)
	}
	if u.config {
		return &Error{"UnmodifiableEntity", "User " + name + " is declared in kmsd's configuration file and cannot be changed through the API.", ErrInvalid}
	}
	for _, k := range s.keys {
		if k.account == account && k.user == name && k.config {
			return &Error{"DeleteConflict", "Cannot delete entity, must delete access keys first.", ErrConflict}
		}
	}
	// The conflicts as the database has them, checked where the user is
	// deleted.
	err := s.store.Update(ctx, func(tx storage.Tx) error {
		b, err := tx.Get(ctx, userPrefix+account+"/"+name)
		if errors.Is(err, storage.ErrNotFound) {
			return callerError{noSuchUser(name)}
		}
		if err != nil {
			return err
		}
		var stored User
		if err := json.Unmarshal(b, &stored); err != nil {
			return err
		}
		if keys, err := storedKeysOf(ctx, tx, account, name); err != nil {
			return err
		} else if len(keys) > 0 {
			return callerError{&Error{"DeleteConflict", "Cannot delete entity, must delete access keys first.", ErrConflict}}
		}
		if len(stored.Policies) > 0 {
			return callerError{&Error{"DeleteConflict", "Cannot delete entity, must delete policies first.", ErrConflict}}
		}
		return tx.Delete(ctx, userPrefix+account+"/"+name)
	})
	if err != nil {
		return txError(err)
	}
	delete(s.users, account+"/"+name)
	s.rebuild()
	return nil
}

// CreateAccessKey makes a new long-term access key for a user. The secret
// is returned once and never again.
func (s *Store) CreateAccessKey(ctx context.Context, account, user string) (AccessKey, string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	u, ok := s.users[account+"/"+user]
	if !ok {
		return AccessKey{}, "", noSuchUser(user)
	}
	if u.config {
		return AccessKey{}, "", &Error{"UnmodifiableEntity", "User " + user + " is declared in kmsd's configuration file and cannot be changed through the API.", ErrInvalid}
	}
	n := 0
	for _, k := range s.keys {
		if k.account == account && k.user == user {
			n++
		}
	}
	if n >= MaxKeysPerUser {
		return AccessKey{}, "", &Error{"LimitExceeded", "Cannot exceed quota for AccessKeysPerUser: 2", ErrLimit}
	}
	akid, secret, err := NewKeyPair(s.rand)
	if err != nil {
		return AccessKey{}, "", err
	}
	k := &keyEntry{secret: secret, account: account, user: user, status: "Active", created: s.now().UTC().Truncate(time.Second)}
	b, err := s.keyRecord(akid, k)
	if err != nil {
		return AccessKey{}, "", err
	}
	// The user and the quota as the database has them.
	err = s.store.Update(ctx, func(tx storage.Tx) error {
		if _, err := tx.Get(ctx, userPrefix+account+"/"+user); errors.Is(err, storage.ErrNotFound) {
			return callerError{noSuchUser(user)}
		} else if err != nil {
			return err
		}
		if keys, err := storedKeysOf(ctx, tx, account, user); err != nil {
			return err
		} else if len(keys) >= MaxKeysPerUser {
			return callerError{&Error{"LimitExceeded", "Cannot exceed quota for AccessKeysPerUser: 2", ErrLimit}}
		}
		return tx.Create(ctx, prefix+akid, b)
	})
	if err != nil {
		return AccessKey{}, "", txError(err)
	}
	s.keys[akid] = k
	s.rebuild()
	return AccessKey{ID: akid, User: user, Status: k.status, Created: k.created}, secret, nil
}

// DeleteAccessKey deletes one of user's access keys.
func (s *Store) DeleteAccessKey(ctx context.Context, account, user, akid string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.users[account+"/"+user]; !ok {
		return noSuchUser(user)
	}
	k, ok := s.keys[akid]
	if !ok || k.account != account || k.user != user {
		return &Error{"NoSuchEntity", "The Access Key with id " + akid + " cannot be found.", ErrNoSuchEntity}
	}
	if k.config {
		return &Error{"UnmodifiableEntity", "Access key " + akid + " is declared in kmsd's configuration file and cannot be changed through the API.", ErrInvalid}
	}
	err := s.store.Update(ctx, func(tx storage.Tx) error {
		if _, err := tx.Get(ctx, prefix+akid); errors.Is(err, storage.ErrNotFound) {
			return callerError{&Error{"NoSuchEntity", "The Access Key with id " + akid + " cannot be found.", ErrNoSuchEntity}}
		} else if err != nil {
			return err
		}
		return tx.Delete(ctx, prefix+akid)
	})
	if err != nil {
		return txError(err)
	}
	delete(s.keys, akid)
	s.rebuild()
	return nil
}

// ListAccessKeys lists user's access keys.
func (s *Store) ListAccessKeys(account, user string) ([]AccessKey, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if _, ok := s.users[account+"/"+user]; !ok {
		return nil, noSuchUser(user)
	}
	var out []AccessKey
	for id, k := range s.keys {
		if k.account == account && k.user == user {
			out = append(out, AccessKey{ID: id, User: user, Status: k.status, Created: k.created})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// PutUserPolicy adds or replaces an inline identity policy of a user.
func (s *Store) PutUserPolicy(ctx context.Context, account, user, name, doc string) error {
	if err := validName("policyName", name, 128); err != nil {
		return err
	}
	if _, err := parseIdentityPolicy(doc, true); err != nil {
		return malformedPolicy(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	u, ok := s.users[account+"/"+user]
	if !ok {
		return noSuchUser(user)
	}
	if u.config {
		return &Error{"UnmodifiableEntity", "User " + user + " is declared in kmsd's configuration file and cannot be changed through the API.", ErrInvalid}
	}
	n, err := s.txUser(ctx, account, user, func(n *User) error { n.Policies[name] = doc; return nil })
	if err != nil {
		return err
	}
	s.users[account+"/"+user] = n
	s.rebuild()
	return nil
}

// GetUserPolicy returns an inline policy of a user.
func (s *Store) GetUserPolicy(account, user, name string) (string, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	u, ok := s.users[account+"/"+user]
	if !ok {
		return "", noSuchUser(user)
	}
	doc, ok := u.Policies[name]
	if !ok {
		return "", &Error{"NoSuchEntity", "The user policy with name " + name + " cannot be found.", ErrNoSuchEntity}
	}
	return doc, nil
}

// ListUserPolicies lists the names of a user's inline policies.
func (s *Store) ListUserPolicies(account, user string) ([]string, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	u, ok := s.users[account+"/"+user]
	if !ok {
		return nil, noSuchUser(user)
	}
	return sortedKeys(u.Policies), nil
}

// DeleteUserPolicy removes an inline policy from a user.
func (s *Store) DeleteUserPolicy(ctx context.Context, account, user, name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	u, ok := s.users[account+"/"+user]
	if !ok {
		return noSuchUser(user)
	}
	if _, ok := u.Policies[name]; !ok {
		return &Error{"NoSuchEntity", "The user policy with name " + name + " cannot be found.", ErrNoSuchEntity}
	}
	if u.config {
		return &Error{"UnmodifiableEntity", "User " + user + " is declared in kmsd's configuration file and cannot be changed through the API.", ErrInvalid}
	}
	n, err := s.txUser(ctx, account, user, func(n *User) error {
		if _, ok := n.Policies[name]; !ok {
			return &Error{"NoSuchEntity", "The user policy with name " + name + " cannot be found.", ErrNoSuchEntity}
		}
		delete(n.Policies, name)
		return nil
	})
	if err != nil {
		return err
	}
	s.users[account+"/"+user] = n
	s.rebuild()
	return nil
}

// CreateRole creates a role with its trust (assume-role) policy.
func (s *Store) CreateRole(ctx context.Context, account, name, path, trust, description string, maxSession int32) (*Role, error) {
	if err := validName("roleName", name, 64); err != nil {
		return nil, err
	}
	path, err := validPath(path)
	if err != nil {
		return nil, err
	}
	if _, err := policy.Parse(trustDocument(trust), policy.KeyPolicy); err != nil {
		return nil, malformedPolicy(err)
	}
	if maxSession == 0 {
		maxSession = 3600
	}
	if maxSession < 3600 || maxSession > 43200 {
		return nil, &Error{"ValidationError", "1 validation error detected: Value '" + itoa(int(maxSession)) + "' at 'maxSessionDuration' failed to satisfy constraint: Member must have value between 3600 and 43200", ErrInvalid}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range s.roles {
		if r.Account == account && strings.EqualFold(r.Name, name) {
			return nil, &Error{"EntityAlreadyExists", "Role with name " + name + " already exists.", ErrExists}
		}
	}
	r := &Role{Account: account, Name: name, Path: path, ID: s.newID("AROA"), Created: s.now().UTC().Truncate(time.Second),
		AssumeRolePolicy: trust, Description: description, MaxSession: maxSession}
	if err := r.compile(true); err != nil {
		return nil, err
	}
	b, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	if err := s.createStored(ctx, rolePrefix, account, name, b, &Error{"EntityAlreadyExists", "Role with name " + name + " already exists.", ErrExists}); err != nil {
		return nil, err
	}
	s.roles[account+"/"+name] = r
	return r, nil
}

// GetRole returns role name of account.
func (s *Store) GetRole(account, name string) (*Role, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	r, ok := s.roles[account+"/"+name]
	if !ok {
		return nil, noSuchRole(name)
	}
	return r, nil
}

// ListRoles lists account's roles by name.
func (s *Store) ListRoles(account string) []*Role {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []*Role
	for _, r := range s.roles {
		if r.Account == account {
			out = append(out, r)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// PutRolePolicy adds or replaces an inline identity policy of a role.
// Sessions already issued see the new policies at once.
func (s *Store) PutRolePolicy(ctx context.Context, account, role, name, doc string) error {
	if err := validName("policyName", name, 128); err != nil {
		return err
	}
	if _, err := parseIdentityPolicy(doc, true); err != nil {
		return malformedPolicy(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.roles[account+"/"+role]
	if !ok {
		return noSuchRole(role)
	}
	if r.config {
		return &Error{"UnmodifiableEntity", "Role " + role + " is declared in kmsd's configuration file and cannot be changed through the API.", ErrInvalid}
	}
	n, err := s.txRole(ctx, account, role, func(n *Role) error { n.Policies[name] = doc; return nil })
	if err != nil {
		return err
	}
	s.roles[account+"/"+role] = n
	s.refreshSessions(n)
	return nil
}

// DeleteRolePolicy removes an inline policy from a role.
func (s *Store) DeleteRolePolicy(ctx context.Context, account, role, name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.roles[account+"/"+role]
	if !ok {
		return noSuchRole(role)
	}
	if _, ok := r.Policies[name]; !ok {
		return &Error{"NoSuchEntity", "The role policy with name " + name + " cannot be found.", ErrNoSuchEntity}
	}
	if r.config {
		return &Error{"UnmodifiableEntity", "Role " + role + " is declared in kmsd's configuration file and cannot be changed through the API.", ErrInvalid}
	}
	n, err := s.txRole(ctx, account, role, func(n *Role) error {
		if _, ok := n.Policies[name]; !ok {
			return &Error{"NoSuchEntity", "The role policy with name " + name + " cannot be found.", ErrNoSuchEntity}
		}
		delete(n.Policies, name)
		return nil
	})
	if err != nil {
		return err
	}
	s.roles[account+"/"+role] = n
	s.refreshSessions(n)
	return nil
}

// DeleteRole deletes a role without inline policies.
func (s *Store) DeleteRole(ctx context.Context, account, name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.roles[account+"/"+name]
	if !ok {
		return noSuchRole(name)
	}
	if r.config {
		return &Error{"UnmodifiableEntity", "Role " + name + " is declared in kmsd's configuration file and cannot be changed through the API.", ErrInvalid}
	}
	err := s.store.Update(ctx, func(tx storage.Tx) error {
		b, err := tx.Get(ctx, rolePrefix+account+"/"+name)
		if errors.Is(err, storage.ErrNotFound) {
			return callerError{noSuchRole(name)}
		}
		if err != nil {
			return err
		}
		var stored Role
		if err := json.Unmarshal(b, &stored); err != nil {
			return err
		}
		if len(stored.Policies) > 0 {
			return callerError{&Error{"DeleteConflict", "Cannot delete entity, must delete policies first.", ErrConflict}}
		}
		return tx.Delete(ctx, rolePrefix+account+"/"+name)
	})
	if err != nil {
		return txError(err)
	}
	delete(s.roles, account+"/"+name)
	s.refreshSessions(&Role{Account: account, Name: name})
	return nil
}

// refreshSessions gives the sessions of role r its current policies; a
// deleted role (no ID) ends them. Callers hold mu.
func (s *Store) refreshSessions(r *Role) {
	for akid, ss := range s.sessions {
		if ss.ident.Principal.Account != r.Account || ss.ident.Principal.Name != r.Name {
			continue
		}
		if r.ID == "" {
			delete(s.sessions, akid)
			continue
		}
		id := *ss.ident
		id.Policies = r.parsed
		ss.ident = &id
	}
}
