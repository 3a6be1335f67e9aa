package identity

import (
	"strings"
	"testing"
)

func TestCheckSeed(t *testing.T) {
	const allow = `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:Decrypt","Resource":"*"}]}`
	const trust = `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"sts:AssumeRole"}]}`
	user := func(f func(*SeedUser)) []SeedUser {
		u := SeedUser{Where: "f:1", Account: "111122223333", Name: "alice", Policies: map[string]string{"p": allow},
			AccessKeys: []SeedAccessKey{{ID: "AKIAEXAMPLE00000001", Secret: "a-long-secret"}}}
		if f != nil {
			f(&u)
		}
		return []SeedUser{u}
	}
	role := func(f func(*SeedRole)) []SeedRole {
		r := SeedRole{Where: "f:9", Account: "111122223333", Name: "app", AssumeRolePolicy: trust}
		if f != nil {
			f(&r)
		}
		return []SeedRole{r}
	}
	cases := []struct {
		name string
		us   []SeedUser
		rs   []SeedRole
		want string
	}{
		{"valid", user(nil), role(nil), ""},
		{"user name", user(func(u *SeedUser) { u.Name = "" }), nil, "f:1: user : ValidationError: 1 validation error"},
		{"policy", user(func(u *SeedUser) { u.Policies["p"] = "{" }), nil, "f:1: user alice: policy p:"},
		{"key id", user(func(u *SeedUser) { u.AccessKeys[0].ID = "akia" }), nil, `access key id "akia"`},
		{"short secret", user(func(u *SeedUser) { u.AccessKeys[0].Secret = "short" }), nil, "at least 8 characters"},
		{"twice", append(user(nil), user(func(u *SeedUser) { u.AccessKeys = nil })...), nil, "declared twice"},
		{"no trust", nil, role(func(r *SeedRole) { r.AssumeRolePolicy = "" }), "f:9: role app: AssumeRolePolicyDocument is required"},
		{"session", nil, role(func(r *SeedRole) { r.MaxSession = 60 }), "MaxSessionDuration"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := CheckSeed(c.us, c.rs)
			if c.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want %q", err, c.want)
			}
			if strings.Contains(err.Error(), "a-long-secret") {
				t.Fatal("a secret in an error")
			}
		})
	}
}
