package identity

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/kmsd/kmsd/internal/policy"
)

// Config declares accounts and identities up front (the IAM config file).
// Declared identities live in memory only: every Apply replaces the
// previous declaration as a whole, and they cannot be changed through the
// IAM API.
type Config struct {
	Accounts []AccountConfig `toml:"accounts"`
}

// AccountConfig is one declared account.
type AccountConfig struct {
	ID    string       `toml:"id"`
	Users []UserConfig `toml:"users"`
	Roles []RoleConfig `toml:"roles"`
}

// UserConfig is a declared IAM user with its inline policies (name →
// JSON document) and access keys.
type UserConfig struct {
	Name       string            `toml:"name"`
	Path       string            `toml:"path"`
	Policies   map[string]string `toml:"policies"`
	AccessKeys []KeyConfig       `toml:"access_keys"`
}

// KeyConfig is a declared access key. The secret comes from exactly one
// of Secret, SecretEnv (an environment variable) or SecretFile.
type KeyConfig struct {
	ID         string `toml:"id"`
	Secret     string `toml:"secret"`
	SecretEnv  string `toml:"secret_env"`
	SecretFile string `toml:"secret_file"`
}

// RoleConfig is a declared role.
type RoleConfig struct {
	Name             string            `toml:"name"`
	Path             string            `toml:"path"`
	AssumeRolePolicy string            `toml:"assume_role_policy"`
	MaxSession       int32             `toml:"max_session_duration"`
	Policies         map[string]string `toml:"policies"`
}

func (k *KeyConfig) secret() (string, error) {
	switch {
	case k.Secret != "" && k.SecretEnv == "" && k.SecretFile == "":
		return k.Secret, nil
	case k.SecretEnv != "" && k.Secret == "" && k.SecretFile == "":
		v, ok := os.LookupEnv(k.SecretEnv)
		if !ok || v == "" {
			return "", fmt.Errorf("access key %s: environment variable %s is not set", k.ID, k.SecretEnv)
		}
		return v, nil
	case k.SecretFile != "" && k.Secret == "" && k.SecretEnv == "":
		b, err := os.ReadFile(k.SecretFile)
		if err != nil {
			return "", fmt.Errorf("access key %s: %w", k.ID, err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	return "", fmt.Errorf("access key %s: give exactly one of secret, secret_env, secret_file", k.ID)
}

// Apply validates c and replaces the declared identities with it. On any
// error nothing changes.
func (s *Store) Apply(ctx context.Context, c *Config) error {
	users := map[string]*User{}
	roles := map[string]*Role{}
	keys := map[string]*keyEntry{}
	accounts := map[string]bool{}
	now := s.now().UTC().Truncate(time.Second)
	for _, a := range c.Accounts {
		if _, err := policy.PrincipalFromARN("arn:aws:iam::" + a.ID + ":root"); err != nil {
			return fmt.Errorf("account %q: an account id is 12 digits", a.ID)
		}
		accounts[a.ID] = true
		for _, uc := range a.Users {
			if err := validName("userName", uc.Name, 64); err != nil {
				return fmt.Errorf("account %s: %w", a.ID, err)
			}
			path, err := validPath(uc.Path)
			if err != nil {
				return fmt.Errorf("user %s: %w", uc.Name, err)
			}
			u := &User{Account: a.ID, Name: uc.Name, Path: path, ID: s.configID("AIDA", a.ID, uc.Name), Created: now, Policies: uc.Policies, config: true}
			if err := u.compile(true); err != nil {
				return fmt.Errorf("user %s: policy: %w", uc.Name, err)
			}
			users[a.ID+"/"+uc.Name] = u
			for _, kc := range uc.AccessKeys {
				secret, err := kc.secret()
				if err != nil {
					return err
				}
				if kc.ID == "" {
					return fmt.Errorf("user %s: an access key needs an id", uc.Name)
				}
				keys[kc.ID] = &keyEntry{secret: secret, account: a.ID, user: uc.Name, status: "Active", created: now, config: true}
			}
		}
		for _, rc := range a.Roles {
			if err := validName("roleName", rc.Name, 64); err != nil {
				return fmt.Errorf("account %s: %w", a.ID, err)
			}
			path, err := validPath(rc.Path)
			if err != nil {
				return fmt.Errorf("role %s: %w", rc.Name, err)
			}
			ms := rc.MaxSession
			if ms == 0 {
				ms = 3600
			}
			r := &Role{Account: a.ID, Name: rc.Name, Path: path, ID: s.configID("AROA", a.ID, rc.Name), Created: now, AssumeRolePolicy: rc.AssumeRolePolicy, MaxSession: ms, Policies: rc.Policies, config: true}
			if err := r.compile(true); err != nil {
				return fmt.Errorf("role %s: policy: %w", rc.Name, err)
			}
			roles[a.ID+"/"+rc.Name] = r
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, u := range users {
		if cur, ok := s.users[k]; ok && !cur.config {
			return fmt.Errorf("user %s of account %s exists already (created through the API)", u.Name, u.Account)
		} else if ok {
			u.ID, u.Created = cur.ID, cur.Created // keep ids stable across reloads
		}
	}
	for k, r := range roles {
		if cur, ok := s.roles[k]; ok && !cur.config {
			return fmt.Errorf("role %s of account %s exists already (created through the API)", r.Name, r.Account)
		} else if ok {
			r.ID, r.Created = cur.ID, cur.Created
		}
	}
	for id := range keys {
		if cur, ok := s.keys[id]; ok && !cur.config {
			return errors.New("access key " + id + " exists already (created through the API)")
		}
	}
	for k, u := range s.users {
		if u.config {
			delete(s.users, k)
		}
	}
	for k, r := range s.roles {
		if r.config {
			delete(s.roles, k)
		}
	}
	for id, k := range s.keys {
		if k.config {
			delete(s.keys, id)
		}
	}
	for k, u := range users {
		s.users[k] = u
	}
	for k, r := range roles {
		s.roles[k] = r
	}
	for id, k := range keys {
		s.keys[id] = k
	}
	s.accounts = accounts
	for _, r := range s.roles {
		s.refreshSessions(r)
	}
	s.rebuild()
	return nil
}
