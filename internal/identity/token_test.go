package identity

import (
	"context"
	"encoding/base64"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/barrier"
	"github.com/kmsd/kmsd/internal/storage"
	"github.com/kmsd/kmsd/internal/storage/sqlite"
)

// node opens a Store over st with the given root key and the test
// configuration of newStore, as a second kmsd process over the same
// database (or the same one after a restart) would.
func node(t *testing.T, st storage.Store, rootKey []byte, now time.Time) *Store {
	t.Helper()
	ctx := context.Background()
	b, err := barrier.New(rootKey)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(ctx, st, b)
	if err != nil {
		t.Fatal(err)
	}
	s.SetClock(func() time.Time { return now })
	assume := map[string]string{"sts": `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"sts:*","Resource":"*"}]}`}
	cfg := &Config{Accounts: []AccountConfig{{ID: acct,
		Users: []UserConfig{{Name: "alice", Policies: assume, AccessKeys: []KeyConfig{{ID: aliceKey, Secret: "alice-secret"}}}}}}}
	for name, trust := range trusts {
		cfg.Accounts[0].Roles = append(cfg.Accounts[0].Roles, RoleConfig{Name: name, AssumeRolePolicy: trust, Policies: assume})
	}
	if err := s.Apply(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	return s
}

func sharedStore(t *testing.T) storage.Store {
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// TestSessionTokenAcrossNodes: a session issued by one Store is accepted,
// with the same principal, session policy, tags and source identity, by
// another Store over the same database with the same root key, which never
// saw it issued; tampering, moving the token to another access key, another
// root key, expiry and a re-created role all refuse it.
func TestSessionTokenAcrossNodes(t *testing.T) {
	st := sharedStore(t)
	root := make([]byte, barrier.KeySize)
	root[0] = 7
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	a := node(t, st, root, t0)
	b := node(t, st, root, t0.Add(time.Minute))

	caller := alice(t, a)
	policy := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["kms:Decrypt","sts:AssumeRole","sts:SetSourceIdentity"],"Resource":"*"}]}`
	cr, err := a.AssumeRole(caller, &AssumeRoleInput{RoleARN: roleARN("tags"), RoleSessionName: "s1",
		DurationSeconds: ptr(int64(900)), Policy: &policy,
		Tags: []Tag{{"team", "blue"}}, TransitiveTagKeys: []string{"team"}, SourceIdentity: ptr("alice-laptop")})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(cr.SessionToken, tokenPrefix) {
		t.Errorf("token %q does not start with %q", cr.SessionToken, tokenPrefix)
	}
	if strings.Contains(cr.SessionToken, cr.SecretAccessKey) {
		t.Error("the session token shows the secret access key")
	}
	want, ok := a.IdentityFor(cr.AccessKeyID, cr.SessionToken)
	if !ok {
		t.Fatal("the issuing store does not know its own session")
	}
	if _, ok := b.Identity(cr.AccessKeyID); ok {
		t.Fatal("the second store knows the session without its token: the test proves nothing")
	}
	secret, ok := b.SecretFor(cr.AccessKeyID, cr.SessionToken)
	if !ok || secret != cr.SecretAccessKey {
		t.Fatalf("second store: SecretFor = %v, want the session's secret", ok)
	}
	got, ok := b.IdentityFor(cr.AccessKeyID, cr.SessionToken)
	if !ok {
		t.Fatal("second store refuses the session")
	}
	if !reflect.DeepEqual(got.Principal, want.Principal) || got.SessionToken != want.SessionToken ||
		!got.Expires.Equal(want.Expires) || !reflect.DeepEqual(got.TransitiveTagKeys, want.TransitiveTagKeys) {
		t.Errorf("second store's identity\n %+v\nwant\n %+v", got, want)
	}
	if len(got.SessionPolicies) != 1 || len(got.Policies) != len(want.Policies) {
		t.Errorf("second store: %d session policies, %d policies; want 1, %d", len(got.SessionPolicies), len(got.Policies), len(want.Policies))
	}
	// A session assumed on b from a's session chains as on a.
	chained, err := b.AssumeRole(got, &AssumeRoleInput{RoleARN: roleARN("tags"), RoleSessionName: "s2"})
	if err != nil {
		t.Fatalf("role chaining on the second store: %v", err)
	}
	if id, ok := a.IdentityFor(chained.AccessKeyID, chained.SessionToken); !ok || id.Principal.Tags["team"] != "blue" || id.Principal.SourceIdentity != "alice-laptop" {
		t.Errorf("the session chained on the second store, on the first: %v %+v", ok, id)
	}

	// Refusals, each on a store that has not cached the token.
	raw, _ := base64.RawStdEncoding.DecodeString(cr.SessionToken[len(tokenPrefix):])
	flip := func(i int) string {
		r := append([]byte(nil), raw...)
		r[i] ^= 1
		return tokenPrefix + base64.RawStdEncoding.EncodeToString(r)
	}
	other := make([]byte, barrier.KeySize)
	other[0] = 8
	refusals := []struct {
		name, akid, token string
		s                 func() *Store
	}{
		{"a flipped bit in the ciphertext", cr.AccessKeyID, flip(len(raw) - 20), func() *Store { return node(t, st, root, t0) }},
		{"a flipped bit in the nonce", cr.AccessKeyID, flip(3), func() *Store { return node(t, st, root, t0) }},
		{"another version", cr.AccessKeyID, flip(0), func() *Store { return node(t, st, root, t0) }},
		{"truncated", cr.AccessKeyID, cr.SessionToken[:len(cr.SessionToken)-4], func() *Store { return node(t, st, root, t0) }},
		{"without its prefix", cr.AccessKeyID, cr.SessionToken[len(tokenPrefix):], func() *Store { return node(t, st, root, t0) }},
		{"no token", cr.AccessKeyID, "", func() *Store { return node(t, st, root, t0) }},
		{"another access key id", "ASIA" + strings.Repeat("Q", 16), cr.SessionToken, func() *Store { return node(t, st, root, t0) }},
		{"another root key", cr.AccessKeyID, cr.SessionToken, func() *Store { return node(t, st, other, t0) }},
		{"expired", cr.AccessKeyID, cr.SessionToken, func() *Store { return node(t, st, root, t0.Add(900*time.Second)) }},
	}
	for _, c := range refusals {
		t.Run(c.name, func(t *testing.T) {
			s := c.s()
			if _, ok := s.SecretFor(c.akid, c.token); ok {
				t.Error("SecretFor accepted it")
			}
			if _, ok := s.IdentityFor(c.akid, c.token); ok {
				t.Error("IdentityFor accepted it")
			}
		})
	}
	// The cache answers only for the token it opened, and not past expiry.
	if _, ok := b.IdentityFor(cr.AccessKeyID, flip(len(raw)-20)); ok {
		t.Error("a store that cached the session accepts a tampered token")
	}
	b.SetClock(func() time.Time { return t0.Add(900 * time.Second) })
	if _, ok := b.SecretFor(cr.AccessKeyID, cr.SessionToken); ok {
		t.Error("a cached session is accepted after its expiry")
	}
}

// TestSessionTokenAfterRestart: a session survives a restart of the only
// kmsd (a Store opened again over the same database), for a role declared
// in the configuration (whose id is derived, not stored) and for a role
// created through the API; a role deleted and created again under the same
// name does not inherit the old role's sessions.
func TestSessionTokenAfterRestart(t *testing.T) {
	ctx := context.Background()
	st := sharedStore(t)
	root := make([]byte, barrier.KeySize)
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	a := node(t, st, root, t0)
	trust := trusts["plain"]
	if _, err := a.CreateRole(ctx, acct, "api-role", "/", trust, "", 3600); err != nil {
		t.Fatal(err)
	}
	caller := alice(t, a)
	config, err := a.AssumeRole(caller, &AssumeRoleInput{RoleARN: roleARN("plain"), RoleSessionName: "cfg"})
	if err != nil {
		t.Fatal(err)
	}
	api, err := a.AssumeRole(caller, &AssumeRoleInput{RoleARN: roleARN("api-role"), RoleSessionName: "api"})
	if err != nil {
		t.Fatal(err)
	}

	restarted := node(t, st, root, t0.Add(time.Minute))
	for _, cr := range []*Credentials{config, api} {
		if id, ok := restarted.IdentityFor(cr.AccessKeyID, cr.SessionToken); !ok || id.Principal.ARN != cr.AssumedRoleARN || id.Principal.UserID != cr.AssumedRoleID {
			t.Errorf("after a restart, session %s: %v %+v", cr.AssumedRoleARN, ok, id)
		}
	}

	if err := restarted.DeleteRole(ctx, acct, "api-role"); err != nil {
		t.Fatal(err)
	}
	if _, ok := restarted.IdentityFor(api.AccessKeyID, api.SessionToken); ok {
		t.Error("a session of a deleted role is accepted")
	}
	if _, err := restarted.CreateRole(ctx, acct, "api-role", "/", trust, "", 3600); err != nil {
		t.Fatal(err)
	}
	again := node(t, st, root, t0.Add(2*time.Minute))
	if _, ok := again.IdentityFor(api.AccessKeyID, api.SessionToken); ok {
		t.Error("a session of a deleted role is accepted once a role of the same name exists again")
	}
}

// TestSessionOfRoleMadeElsewhere: a role created through one Store after
// another Store (another node) started is found in the database when a
// session of it comes to the other Store.
func TestSessionOfRoleMadeElsewhere(t *testing.T) {
	ctx := context.Background()
	st := sharedStore(t)
	root := make([]byte, barrier.KeySize)
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	a := node(t, st, root, t0)
	b := node(t, st, root, t0)
	if _, err := a.CreateRole(ctx, acct, "late-role", "/", trusts["plain"], "", 3600); err != nil {
		t.Fatal(err)
	}
	cr, err := a.AssumeRole(alice(t, a), &AssumeRoleInput{RoleARN: roleARN("late-role"), RoleSessionName: "late"})
	if err != nil {
		t.Fatal(err)
	}
	if id, ok := b.IdentityFor(cr.AccessKeyID, cr.SessionToken); !ok || id.Principal.ARN != cr.AssumedRoleARN {
		t.Errorf("the other store: %v %+v", ok, id)
	}
}
