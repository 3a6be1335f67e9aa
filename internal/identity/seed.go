package identity

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"maps"
	"regexp"

	"github.com/kmsd/kmsd/internal/policy"
)

// SeedUser is an IAM user a seed file declares (package seed), with its
// inline policies and, for tests, access keys with fixed secrets. Where
// names its place in the file for messages.
type SeedUser struct {
	Where      string
	Account    string
	Name, Path string
	Policies   map[string]string
	AccessKeys []SeedAccessKey
}

// SeedAccessKey is an access key with a fixed secret.
type SeedAccessKey struct {
	ID, Secret string
}

// SeedRole is an IAM role a seed file declares.
type SeedRole struct {
	Where            string
	Account          string
	Name, Path       string
	AssumeRolePolicy string
	Description      string
	MaxSession       int32
	Policies         map[string]string
}

var accessKeyID = regexp.MustCompile(`^[A-Z0-9]{16,128}$`)

// CheckSeed checks declared users and roles as the IAM API would check
// their creation, changing nothing, so that a seed file is refused whole
// before any of it is applied. Messages never contain a secret.
func CheckSeed(us []SeedUser, rs []SeedRole) error {
	names := map[string]bool{}
	akids := map[string]bool{}
	for _, u := range us {
		if err := checkSeedUser(u, names, akids); err != nil {
			return fmt.Errorf("%s: user %s: %w", u.Where, u.Name, err)
		}
	}
	for _, r := range rs {
		if err := checkSeedRole(r, names); err != nil {
			return fmt.Errorf("%s: role %s: %w", r.Where, r.Name, err)
		}
	}
	return nil
}

func checkSeedUser(u SeedUser, names, akids map[string]bool) error {
	if err := validName("userName", u.Name, 64); err != nil {
		return err
	}
	if _, err := validPath(u.Path); err != nil {
		return err
	}
	if names["user/"+u.Account+"/"+u.Name] {
		return errors.New("declared twice")
	}
	names["user/"+u.Account+"/"+u.Name] = true
	if err := checkPolicies(u.Policies); err != nil {
		return err
	}
	for _, k := range u.AccessKeys {
		if !accessKeyID.MatchString(k.ID) {
			return fmt.Errorf("access key id %q: want 16 to 128 upper-case letters and digits", k.ID)
		}
		if akids[k.ID] {
			return fmt.Errorf("access key %s is declared twice", k.ID)
		}
		akids[k.ID] = true
		if len(k.Secret) < 8 {
			return fmt.Errorf("access key %s: the secret must have at least 8 characters", k.ID)
		}
	}
	return nil
}

func checkSeedRole(r SeedRole, names map[string]bool) error {
	if err := validName("roleName", r.Name, 64); err != nil {
		return err
	}
	if _, err := validPath(r.Path); err != nil {
		return err
	}
	if names["role/"+r.Account+"/"+r.Name] {
		return errors.New("declared twice")
	}
	names["role/"+r.Account+"/"+r.Name] = true
	if r.AssumeRolePolicy == "" {
		return errors.New("AssumeRolePolicyDocument is required")
	}
	if _, err := policy.Parse(trustDocument(r.AssumeRolePolicy), policy.KeyPolicy); err != nil {
		return malformedPolicy(err)
	}
	if r.MaxSession != 0 && (r.MaxSession < 3600 || r.MaxSession > 43200) {
		return errors.New("MaxSessionDuration must be from 3600 to 43200 seconds")
	}
	return checkPolicies(r.Policies)
}

func checkPolicies(ps map[string]string) error {
	for name, doc := range ps {
		if err := validName("policyName", name, 128); err != nil {
			return err
		}
		if _, err := parseIdentityPolicy(doc, true); err != nil {
			return fmt.Errorf("policy %s: %w", name, malformedPolicy(err))
		}
	}
	return nil
}

// Seed creates the declared users (with their policies and access keys)
// and roles that do not exist yet, after CheckSeed. Existing ones are
// left as they are; how they differ from the declaration is returned
// (never a secret).
func (s *Store) Seed(ctx context.Context, us []SeedUser, rs []SeedRole) (created, existing, diffs []string, err error) {
	if err := CheckSeed(us, rs); err != nil {
		return nil, nil, nil, err
	}
	for _, su := range us {
		u, err := s.GetUser(su.Account, su.Name)
		if err == nil {
			existing = append(existing, u.ARN())
			if !maps.Equal(u.Policies, su.Policies) && !(len(u.Policies) == 0 && len(su.Policies) == 0) {
				diffs = append(diffs, u.ARN()+": its inline policies differ from the seed file's")
			}
		} else {
			if u, err = s.CreateUser(ctx, su.Account, su.Name, su.Path); err != nil {
				return nil, nil, nil, fmt.Errorf("%s: user %s: %w", su.Where, su.Name, err)
			}
			for name, doc := range su.Policies {
				if err := s.PutUserPolicy(ctx, su.Account, su.Name, name, doc); err != nil {
					return nil, nil, nil, fmt.Errorf("%s: user %s: %w", su.Where, su.Name, err)
				}
			}
			created = append(created, u.ARN())
		}
		for _, k := range su.AccessKeys {
			secret, ok := s.Secret(k.ID)
			if ok {
				existing = append(existing, "access key "+k.ID)
				if p, _ := s.Principal(k.ID); p.Account != su.Account || p.Name != su.Name {
					diffs = append(diffs, "access key "+k.ID+": it belongs to "+p.ARN+", the seed file gives it to "+u.ARN())
				} else if subtle.ConstantTimeCompare([]byte(secret), []byte(k.Secret)) != 1 {
					diffs = append(diffs, "access key "+k.ID+": its secret differs from the seed file's")
				}
				continue
			}
			if err := s.Put(ctx, k.ID, k.Secret, Principal{Account: su.Account, ARN: u.ARN(), Name: su.Name}); err != nil {
				return nil, nil, nil, fmt.Errorf("%s: access key %s: %w", su.Where, k.ID, err)
			}
			created = append(created, "access key "+k.ID)
		}
	}
	for _, sr := range rs {
		r, err := s.GetRole(sr.Account, sr.Name)
		if err == nil {
			existing = append(existing, r.ARN())
			if r.AssumeRolePolicy != sr.AssumeRolePolicy {
				diffs = append(diffs, r.ARN()+": its trust policy differs from the seed file's")
			}
			if !maps.Equal(r.Policies, sr.Policies) && !(len(r.Policies) == 0 && len(sr.Policies) == 0) {
				diffs = append(diffs, r.ARN()+": its inline policies differ from the seed file's")
			}
			continue
		}
		if r, err = s.CreateRole(ctx, sr.Account, sr.Name, sr.Path, sr.AssumeRolePolicy, sr.Description, sr.MaxSession); err != nil {
			return nil, nil, nil, fmt.Errorf("%s: role %s: %w", sr.Where, sr.Name, err)
		}
		for name, doc := range sr.Policies {
			if err := s.PutRolePolicy(ctx, sr.Account, sr.Name, name, doc); err != nil {
				return nil, nil, nil, fmt.Errorf("%s: role %s: %w", sr.Where, sr.Name, err)
			}
		}
		created = append(created, r.ARN())
	}
	return created, existing, diffs, nil
}
