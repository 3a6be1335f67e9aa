package identity

import (
	"context"
	"crypto/rand"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmsd/kmsd/internal/barrier"
	"github.com/kmsd/kmsd/internal/storage/sqlite"
)

func openStore(t *testing.T) *Store {
	t.Helper()
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "kmsd.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	root := make([]byte, 32)
	rand.Read(root)
	b, err := barrier.New(root)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(ctx, st, b)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestUnfillableConditionKeysRefused: the IAM configuration and the IAM
// policy operations refuse an identity policy naming a condition key kmsd
// cannot fill, naming the key; a key kmsd fills is accepted.
func TestUnfillableConditionKeysRefused(t *testing.T) {
	ctx := context.Background()
	doc := func(key string) string {
		return `{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Action":"kms:*","Resource":"*","Condition":{"StringEquals":{"` + key + `":"x"}}}]}`
	}
	for _, c := range []struct {
		key string
		bad bool
	}{
		{"aws:PrincipalOrgID", true},
		{"kms:NoSuchKey", true},
		{"aws:ResourceTag/env", false},
		{"kms:ResourceAliases", false},
	} {
		t.Run(c.key, func(t *testing.T) {
			s := openStore(t)
			cfg := &Config{Accounts: []AccountConfig{{ID: "111122223333",
				Users: []UserConfig{{Name: "alice", Policies: map[string]string{"p": doc(c.key)}}},
				Roles: []RoleConfig{{Name: "App", Policies: map[string]string{"p": doc(c.key)}}}}}}
			err := s.Apply(ctx, cfg)
			if got := err != nil; got != c.bad {
				t.Fatalf("Apply: %v", err)
			}
			if c.bad && !strings.Contains(err.Error(), c.key) {
				t.Errorf("Apply: %v does not name %s", err, c.key)
			}
			if err := s.Apply(ctx, &Config{Accounts: []AccountConfig{{ID: "111122223333"}}}); err != nil {
				t.Fatal(err)
			}
			if _, err := s.CreateUser(ctx, "111122223333", "bob", "/"); err != nil {
				t.Fatal(err)
			}
			err = s.PutUserPolicy(ctx, "111122223333", "bob", "p", doc(c.key))
			if got := err != nil; got != c.bad {
				t.Fatalf("PutUserPolicy: %v", err)
			}
			var e *Error
			if c.bad && (!errors.As(err, &e) || !strings.Contains(e.Error(), c.key) || !errors.Is(err, ErrMalformed)) {
				t.Errorf("PutUserPolicy: %v, want a malformed-policy error naming %s", err, c.key)
			}
		})
	}
}
