// Package identity keeps kmsd's accounts and IAM identities — users and
// roles with their inline identity policies, access keys, and the
// temporary credentials of assumed-role sessions — and resolves the access
// key id of a signed request to its secret (for SigV4 verification) and to
// the Identity it acts as: a policy.Principal with its parsed identity
// policies, ready for authorization.
//
// Users, roles and long-term access keys are stored (secrets sealed by the
// barrier); identities declared in the configuration file are held in
// memory only and replaced as a whole on reload; session credentials are
// sealed into their session tokens (token.go), so that every kmsd with the
// same root key accepts them, across restarts, with no shared table; the
// sessions held in memory are a cache of opened tokens. Everything a
// request needs is answered from memory: each mutation rebuilds the
// affected Identity values, so the hot path is one map lookup.
package identity

import (
	"context"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base32"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/kmsd/kmsd/internal/barrier"
	"github.com/kmsd/kmsd/internal/policy"
	"github.com/kmsd/kmsd/internal/storage"
)

// Principal is the legacy form of a user principal, kept for callers that
// create access keys directly (the administrator bootstrap).
type Principal struct {
	Account string `json:"account"`
	ARN     string `json:"arn"`
	Name    string `json:"name"`
}

// Root returns the root principal of account.
func Root(account string) Principal {
	return Principal{Account: account, ARN: "arn:aws:iam::" + account + ":root", Name: "root"}
}

// Identity is what a request signed with one access key acts as. Values
// are immutable snapshots shared between requests.
type Identity struct {
	AccessKeyID string
	Principal   policy.Principal
	// Policies are the identity policies attached to the user, or to the
	// role of a session, parsed once.
	Policies []*policy.Policy
	// SessionPolicies are a role session's session policies (AssumeRole's
	// Policy and PolicyArns), parsed: they limit Policies as
	// policy.Decide describes. nil for sessions without them and for
	// long-term keys. Every authorization must pass them on (AuthzIdentity).
	SessionPolicies []*policy.Policy
	// TransitiveTagKeys are the session tags (Principal.Tags) that pass on
	// to the sessions this session creates by assuming another role.
	TransitiveTagKeys []string
	// SessionToken is set for temporary credentials; a request must carry
	// it (X-Amz-Security-Token).
	SessionToken string
	Expires      time.Time // zero for long-term keys
}

// AuthzIdentity is what the identity's policies contribute to a policy
// decision: its identity policies and its session policies.
func (id *Identity) AuthzIdentity() policy.Identity {
	return policy.Identity{Policies: id.Policies, Session: id.SessionPolicies}
}

// Temporary reports whether the identity comes from session credentials.
func (id *Identity) Temporary() bool { return id.SessionToken != "" }

// User is an IAM user.
type User struct {
	Account  string            `json:"account"`
	Name     string            `json:"name"`
	Path     string            `json:"path"`
	ID       string            `json:"id"` // AIDA…
	Created  time.Time         `json:"created"`
	Policies map[string]string `json:"policies,omitempty"` // inline, by name

	config bool
	parsed []*policy.Policy
}

// ARN is the user's ARN.
func (u *User) ARN() string { return "arn:aws:iam::" + u.Account + ":user" + u.Path + u.Name }

// Role is an IAM role.
type Role struct {
	Account          string            `json:"account"`
	Name             string            `json:"name"`
	Path             string            `json:"path"`
	ID               string            `json:"id"` // AROA…
	Created          time.Time         `json:"created"`
	AssumeRolePolicy string            `json:"assumeRolePolicy"`
	Description      string            `json:"description,omitempty"`
	MaxSession       int32             `json:"maxSession,omitempty"` // seconds
	Policies         map[string]string `json:"policies,omitempty"`

	config bool
	parsed []*policy.Policy
	trust  *policy.Policy
}

// ARN is the role's ARN.
func (r *Role) ARN() string { return "arn:aws:iam::" + r.Account + ":role" + r.Path + r.Name }

// AccessKey is a long-term access key's public part.
type AccessKey struct {
	ID      string
	User    string
	Status  string // Active or Inactive
	Created time.Time
}

// record is the stored form of a long-term access key. Principal is
// read for keys written before users existed.
type record struct {
	Principal Principal `json:"principal"`
	User      string    `json:"user,omitempty"`
	Status    string    `json:"status,omitempty"`
	Created   time.Time `json:"created,omitzero"`
	Secret    []byte    `json:"secret"` // sealed
}

type keyEntry struct {
	secret  string
	account string
	user    string
	status  string
	created time.Time
	config  bool
}

type session struct {
	secret, token string
	expires       time.Time
	ident         *Identity
}

// Store holds accounts, identities and access keys.
type Store struct {
	store   storage.Store
	barrier *barrier.Barrier
	now     func() time.Time
	rand    io.Reader

	mu       sync.RWMutex
	users    map[string]*User // account/name
	roles    map[string]*Role // account/name
	keys     map[string]*keyEntry
	sessions map[string]*session
	idents   map[string]*Identity // akid → identity of long-term keys
	accounts map[string]bool      // declared accounts

	// tokenGCM seals session tokens (token.go), made once from the
	// barrier.
	tokenOnce sync.Once
	tokenGCM  cipher.AEAD
	tokenErr  error
}

const (
	prefix     = "identity/accesskey/"
	userPrefix = "identity/user/"
	rolePrefix = "identity/role/"
)

// Errors the IAM operations return; *Error carries IAM's code.
var (
	ErrNoSuchEntity = errors.New("identity: no such entity")
	ErrExists       = errors.New("identity: entity already exists")
	ErrMalformed    = errors.New("identity: malformed policy document")
	ErrInvalid      = errors.New("identity: invalid input")
	ErrConflict     = errors.New("identity: delete conflict")
	ErrLimit        = errors.New("identity: limit exceeded")
	ErrDenied       = errors.New("identity: access denied")
)

// Error is an IAM/STS error: Code is IAM's error code, Message the text
// the client sees.
type Error struct {
	Code    string
	Message string
	Err     error
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }
func (e *Error) Unwrap() error { return e.Err }

func noSuchUser(name string) error {
	return &Error{"NoSuchEntity", "The user with name " + name + " cannot be found.", ErrNoSuchEntity}
}
func noSuchRole(name string) error {
	return &Error{"NoSuchEntity", "The role with name " + name + " cannot be found.", ErrNoSuchEntity}
}

// Open loads every user, role and access key from st.
func Open(ctx context.Context, st storage.Store, b *barrier.Barrier) (*Store, error) {
	s := &Store{
		store: st, barrier: b, now: time.Now, rand: randReader,
		users: map[string]*User{}, roles: map[string]*Role{}, keys: map[string]*keyEntry{},
		sessions: map[string]*session{}, idents: map[string]*Identity{}, accounts: map[string]bool{},
	}
	users, err := st.List(ctx, userPrefix, "", 0)
	if err != nil {
		return nil, fmt.Errorf("identity: load users: %w", err)
	}
	for _, e := range users {
		u := new(User)
		if err := json.Unmarshal(e.Value, u); err != nil {
			return nil, fmt.Errorf("identity: decode %s: %w", e.Key, err)
		}
		if err := u.compile(false); err != nil {
			return nil, fmt.Errorf("identity: %s: %w", e.Key, err)
		}
		s.users[u.Account+"/"+u.Name] = u
	}
	roles, err := st.List(ctx, rolePrefix, "", 0)
	if err != nil {
		return nil, fmt.Errorf("identity: load roles: %w", err)
	}
	for _, e := range roles {
		r := new(Role)
		if err := json.Unmarshal(e.Value, r); err != nil {
			return nil, fmt.Errorf("identity: decode %s: %w", e.Key, err)
		}
		if err := r.compile(false); err != nil {
			return nil, fmt.Errorf("identity: %s: %w", e.Key, err)
		}
		s.roles[r.Account+"/"+r.Name] = r
	}
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
		ke := &keyEntry{secret: string(secret), account: r.Principal.Account, user: r.User, status: r.Status, created: r.Created}
		if ke.user == "" {
			ke.user = r.Principal.Name
		}
		if ke.status == "" {
			ke.status = "Active"
		}
		if _, ok := s.users[ke.account+"/"+ke.user]; !ok {
			// A key from before users were stored: give it its user.
			u := &User{Account: ke.account, Name: ke.user, Path: "/", ID: s.newID("AIDA"), Created: s.now().UTC()}
			if err := s.putUser(ctx, u); err != nil {
				return nil, err
			}
		}
		s.keys[e.Key[len(prefix):]] = ke
	}
	s.rebuild()
	return s, nil
}

// SetClock sets the clock (sessions expire by it).
func (s *Store) SetClock(now func() time.Time) { s.now = now }

// compile parses the user's policies. strict also refuses condition keys
// kmsd cannot evaluate (policy.CheckConditionKeys); policies stored by an
// earlier kmsd are loaded without that check, so that kmsd still starts.
func (u *User) compile(strict bool) error {
	u.parsed = u.parsed[:0]
	for _, name := range sortedKeys(u.Policies) {
		p, err := parseIdentityPolicy(u.Policies[name], strict)
		if err != nil {
			return err
		}
		u.parsed = append(u.parsed, p)
	}
	return nil
}

// compile parses the role's policies; strict as for User.compile.
func (r *Role) compile(strict bool) error {
	r.parsed = r.parsed[:0]
	for _, name := range sortedKeys(r.Policies) {
		p, err := parseIdentityPolicy(r.Policies[name], strict)
		if err != nil {
			return err
		}
		r.parsed = append(r.parsed, p)
	}
	if r.AssumeRolePolicy != "" {
		t, err := policy.Parse(trustDocument(r.AssumeRolePolicy), policy.KeyPolicy)
		if err != nil {
			return err
		}
		r.trust = t
	}
	return nil
}

// parseIdentityPolicy parses an identity policy; strict also refuses
// condition keys kmsd cannot evaluate as AWS would
// (policy.CheckConditionKeys).
func parseIdentityPolicy(doc string, strict bool) (*policy.Policy, error) {
	p, err := policy.Parse(doc, policy.IdentityPolicy)
	if err != nil {
		return nil, err
	}
	if err := policy.CheckConditionKeys(p); strict && err != nil {
		return nil, err
	}
	return p, nil
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// rebuild recomputes the Identity of every long-term key. Callers hold mu
// (or own s exclusively). Mutations are rare; requests only read idents.
func (s *Store) rebuild() {
	idents := make(map[string]*Identity, len(s.keys))
	for akid, k := range s.keys {
		u, ok := s.users[k.account+"/"+k.user]
		if !ok || k.status != "Active" {
			continue
		}
		idents[akid] = &Identity{AccessKeyID: akid, Principal: userPrincipal(u), Policies: u.parsed}
	}
	s.idents = idents
}

func userPrincipal(u *User) policy.Principal {
	return policy.Principal{Type: policy.IAMUser, ARN: u.ARN(), Account: u.Account, Name: u.Name, UserID: u.ID}
}

// Secret returns the secret access key of akid (sigv4.SecretLookup).
func (s *Store) Secret(akid string) (string, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if _, ok := s.idents[akid]; ok {
		return s.keys[akid].secret, true
	}
	if ss, ok := s.sessions[akid]; ok && s.now().Before(ss.expires) {
		return ss.secret, true
	}
	return "", false
}

// Identity returns what akid acts as; ok is false for an unknown,
// inactive or expired key.
func (s *Store) Identity(akid string) (*Identity, bool) {
	s.mu.RLock()
	id, ok := s.idents[akid]
	if !ok {
		var ss *session
		if ss, ok = s.sessions[akid]; ok {
			if s.now().Before(ss.expires) {
				id = ss.ident
			} else {
				ok = false
			}
		}
	}
	s.mu.RUnlock()
	return id, ok
}

// SecretFor is Secret for a request that carries token as its session
// token (X-Amz-Security-Token, "" when absent): a session's secret is
// found only with its own token, by opening the token when this process
// has not met it yet. It implements sigv4.TokenLookup.
func (s *Store) SecretFor(akid, token string) (string, bool) {
	s.mu.RLock()
	_, ok := s.idents[akid]
	secret := s.keys[akid]
	s.mu.RUnlock()
	if ok {
		return secret.secret, true
	}
	if ss, ok := s.session(akid, token); ok {
		return ss.secret, true
	}
	return "", false
}

// IdentityFor is Identity for a request that carries token as its session
// token, as SecretFor. The caller still checks that a long-term key comes
// without a token.
func (s *Store) IdentityFor(akid, token string) (*Identity, bool) {
	s.mu.RLock()
	id, ok := s.idents[akid]
	s.mu.RUnlock()
	if ok {
		return id, true
	}
	if ss, ok := s.session(akid, token); ok {
		return ss.ident, true
	}
	return nil, false
}

// Principal returns the legacy principal akid belongs to.
func (s *Store) Principal(akid string) (Principal, bool) {
	id, ok := s.Identity(akid)
	if !ok {
		return Principal{}, false
	}
	return Principal{Account: id.Principal.Account, ARN: id.Principal.ARN, Name: id.Principal.Name}, true
}

// Put stores an access key for the user p names, creating the user if it
// does not exist, and replacing a key with the same id.
func (s *Store) Put(ctx context.Context, akid, secret string, p Principal) error {
	if akid == "" || secret == "" {
		return errors.New("identity: empty access key id or secret")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.users[p.Account+"/"+p.Name]; !ok {
		// Created only if absent: another kmsd on the same database may
		// have created it meanwhile, and its id must stay the one stored.
		u := &User{Account: p.Account, Name: p.Name, Path: "/", ID: s.newID("AIDA"), Created: s.now().UTC()}
		b, err := json.Marshal(u)
		if err != nil {
			return err
		}
		key := userPrefix + p.Account + "/" + p.Name
		if err := s.store.Create(ctx, key, b); errors.Is(err, storage.ErrExists) {
			if b, err = s.store.Get(ctx, key); err != nil {
				return err
			}
			u = new(User)
			if err := json.Unmarshal(b, u); err != nil {
				return err
			}
		} else if err != nil {
			return fmt.Errorf("identity: store user: %w", err)
		}
		if err := u.compile(false); err != nil {
			return err
		}
		s.users[p.Account+"/"+p.Name] = u
	}
	if err := s.putKey(ctx, akid, &keyEntry{secret: secret, account: p.Account, user: p.Name, status: "Active", created: s.now().UTC()}); err != nil {
		return err
	}
	s.rebuild()
	return nil
}

// keyRecord is the stored form of access key akid, its secret sealed.
// Callers hold mu.
func (s *Store) keyRecord(akid string, k *keyEntry) ([]byte, error) {
	sealed, err := s.barrier.Seal(prefix+akid, []byte(k.secret))
	if err != nil {
		return nil, err
	}
	arn := "arn:aws:iam::" + k.account + ":user/" + k.user
	if u, ok := s.users[k.account+"/"+k.user]; ok {
		arn = u.ARN()
	}
	return json.Marshal(record{Principal: Principal{Account: k.account, ARN: arn, Name: k.user}, User: k.user, Status: k.status, Created: k.created, Secret: sealed})
}

func (s *Store) putKey(ctx context.Context, akid string, k *keyEntry) error {
	if !k.config {
		b, err := s.keyRecord(akid, k)
		if err != nil {
			return err
		}
		if err := s.store.Put(ctx, prefix+akid, b); err != nil {
			return fmt.Errorf("identity: store access key: %w", err)
		}
	}
	s.keys[akid] = k
	return nil
}

func (s *Store) putUser(ctx context.Context, u *User) error {
	if err := u.compile(true); err != nil {
		return err
	}
	if !u.config {
		b, err := json.Marshal(u)
		if err != nil {
			return err
		}
		if err := s.store.Put(ctx, userPrefix+u.Account+"/"+u.Name, b); err != nil {
			return fmt.Errorf("identity: store user: %w", err)
		}
	}
	s.users[u.Account+"/"+u.Name] = u
	return nil
}

// Count reports how many long-term access keys exist.
func (s *Store) Count() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.keys)
}

// HasAccount reports whether account has any identity or was declared.
func (s *Store) HasAccount(account string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.accounts[account] {
		return true
	}
	for _, u := range s.users {
		if u.Account == account {
			return true
		}
	}
	return false
}

// randReader is the default source of ids and secrets.
var randReader io.Reader = cryptoRand{}

// NewKeyPair makes an access key id in AWS's form (AKIA + 16 base32
// characters) and a 40-character secret.
func NewKeyPair(rand io.Reader) (akid, secret string, err error) {
	return newKeyPair(rand, "AKIA")
}

func newKeyPair(rand io.Reader, pfx string) (akid, secret string, err error) {
	b := make([]byte, 40)
	if _, err := io.ReadFull(rand, b); err != nil {
		return "", "", err
	}
	id := base32.StdEncoding.EncodeToString(b[:10])
	sec := base64.StdEncoding.EncodeToString(b[10:])
	sec = strings.NewReplacer("=", "").Replace(sec)
	return pfx + id[:16], sec[:40], nil
}

// newID makes a unique id with AWS's prefix (AIDA, AROA).
func (s *Store) newID(pfx string) string {
	b := make([]byte, 12)
	io.ReadFull(s.rand, b)
	return pfx + base32.StdEncoding.EncodeToString(b)[:17]
}

// configID is the unique id (AIDA, AROA) of the user or role name of
// account declared in the configuration file: derived from the root key,
// so that every kmsd of a deployment, and the same kmsd after a restart,
// gives it the same id (aws:userid, the role id that session tokens
// carry) without storing it. Ids of entities created through the API are
// random and stored.
func (s *Store) configID(pfx, account, name string) string {
	k := s.barrier.Derive("kmsd/identity/config-id")
	defer clear(k)
	m := hmac.New(sha256.New, k)
	m.Write([]byte(pfx + "\x00" + account + "\x00" + name))
	return pfx + base32.StdEncoding.EncodeToString(m.Sum(nil))[:17]
}

// trustDocument adapts a role trust policy for evaluation as a
// resource-based policy: trust policy statements name no Resource (the
// role is implied), which the policy package reads as inert, so each
// statement without Resource or NotResource gets "Resource": "*".
func trustDocument(doc string) string {
	var m map[string]any
	if json.Unmarshal([]byte(doc), &m) != nil {
		return doc
	}
	var stmts []any
	switch st := m["Statement"].(type) {
	case []any:
		stmts = st
	case map[string]any:
		stmts = []any{st}
	}
	for _, x := range stmts {
		if st, ok := x.(map[string]any); ok {
			if _, ok := st["Resource"]; !ok {
				if _, ok := st["NotResource"]; !ok {
					st["Resource"] = "*"
				}
			}
		}
	}
	b, err := json.Marshal(m)
	if err != nil {
		return doc
	}
	return string(b)
}
