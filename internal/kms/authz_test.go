package kms

import (
	"context"
	"strings"
	"testing"

	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/policy"
)

func mustIdentityPolicy(t *testing.T, doc string) *policy.Policy {
	t.Helper()
	p, err := policy.Parse(doc, policy.IdentityPolicy)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func userCaller(t *testing.T, account, name string, docs ...string) *Caller {
	t.Helper()
	p, err := policy.PrincipalFromARN("arn:aws:iam::" + account + ":user/" + name)
	if err != nil {
		t.Fatal(err)
	}
	c := &Caller{Account: account, Region: "us-east-1", ARN: p.ARN, Principal: p}
	for _, d := range docs {
		c.Policies = append(c.Policies, mustIdentityPolicy(t, d))
	}
	return c
}

const allowAll = `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}`

// TestAuthorizationTable checks that every KMS operation of the model has
// an entry, and the scopes the issue names.
func TestAuthorizationTable(t *testing.T) {
	for name := range kmsapi.Operations {
		if _, ok := Authorizations[name]; !ok {
			t.Errorf("operation %s has no authorization entry", name)
		}
	}
	want := map[string]Scope{
		"CreateKey": IAMScope, "ListKeys": IAMScope, "ListAliases": IAMScope, "GenerateRandom": IAMScope,
		"ConnectCustomKeyStore": StoreScope, "CreateCustomKeyStore": StoreScope, "DeleteCustomKeyStore": StoreScope,
		"DescribeCustomKeyStores": StoreScope, "DisconnectCustomKeyStore": StoreScope, "UpdateCustomKeyStore": StoreScope,
		"cloudhsm:CreateCluster": StoreScope, "cloudhsm:DescribeClusters": StoreScope,
		"Encrypt": KeyScope, "Decrypt": KeyScope, "PutKeyPolicy": KeyScope,
	}
	for op, sc := range want {
		if got := Authorizations[op].Scope; got != sc {
			t.Errorf("%s: scope %v, want %v", op, got, sc)
		}
	}
}

// TestStoreScopeNeverCrossAccount: custom key store (and CloudHSM
// cluster) operations are decided by IAM alone, and refused for a store
// of another account even when every policy would allow.
func TestStoreScopeNeverCrossAccount(t *testing.T) {
	f := newFixture(t)
	storeARN := "arn:aws:kms:us-east-1:111122223333:custom-key-store/cks-1234567890abcdef0"
	tests := []struct {
		name   string
		caller *Caller
		op     string
		res    string
		acct   string
		want   string // "" allowed, else a substring of the denial
	}{
		{"own account, IAM allows", userCaller(t, "111122223333", "ops", allowAll), "ConnectCustomKeyStore", storeARN, "111122223333", ""},
		{"own account, no IAM policy", userCaller(t, "111122223333", "ops"), "ConnectCustomKeyStore", storeARN, "111122223333", "because no identity-based policy allows the kms:ConnectCustomKeyStore action"},
		{"own account, explicit deny", userCaller(t, "111122223333", "ops", allowAll, `{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Action":"kms:ConnectCustomKeyStore","Resource":"*"}]}`), "ConnectCustomKeyStore", storeARN, "111122223333", "explicit deny"},
		{"other account, IAM allows everything", userCaller(t, "444455556666", "carol", allowAll), "ConnectCustomKeyStore", storeARN, "111122223333", "User: arn:aws:iam::444455556666:user/carol is not authorized to perform: kms:ConnectCustomKeyStore"},
		{"other account root", &Caller{Account: "444455556666", Region: "us-east-1", ARN: "arn:aws:iam::444455556666:root"}, "DeleteCustomKeyStore", storeARN, "111122223333", "kms:DeleteCustomKeyStore"},
		{"other account, trusted (emulator)", &Caller{Account: "444455556666", Region: "us-east-1", ARN: "arn:aws:iam::444455556666:root", Trusted: true}, "UpdateCustomKeyStore", storeARN, "111122223333", "kms:UpdateCustomKeyStore"},
		{"cluster of another account", userCaller(t, "444455556666", "carol", allowAll), "cloudhsm:DeleteCluster", "arn:aws:cloudhsm:us-east-1:111122223333:cluster/cluster-abc", "111122223333", "cloudhsm:DeleteCluster"},
		{"describe all, own account", userCaller(t, "111122223333", "ops", `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:DescribeCustomKeyStores","Resource":"*"}]}`), "DescribeCustomKeyStores", "*", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := f.svc.AuthorizeStore(tt.caller, tt.op, tt.res, tt.acct)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("denied: %v", err)
				}
				return
			}
			wantException(t, err, "AccessDeniedException")
			if !strings.Contains(Exception(err).Message, tt.want) {
				t.Fatalf("message %q, want it to contain %q", Exception(err).Message, tt.want)
			}
		})
	}
}

// TestKeyAuthorization covers key policy + IAM + grants on the service.
func TestKeyAuthorization(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	id := f.createKey(t)
	pt := []byte("hello")
	enc := func(c *Caller, ec map[string]string) error {
		_, err := f.svc.Encrypt(ctx, c, &kmsapi.EncryptRequest{KeyId: &id, Plaintext: pt, EncryptionContext: ec})
		return err
	}
	arn := "arn:aws:kms:us-east-1:111122223333:key/" + id
	allowEncrypt := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:Encrypt","Resource":"` + arn + `"}]}`
	alice := userCaller(t, "111122223333", "alice", allowEncrypt)
	if err := enc(alice, nil); err != nil {
		t.Fatalf("alice encrypt: %v", err)
	}
	_, err := f.svc.DescribeKey(ctx, alice, &kmsapi.DescribeKeyRequest{KeyId: &id})
	wantException(t, err, "AccessDeniedException")
	if msg := Exception(err).Message; msg != "User: arn:aws:iam::111122223333:user/alice is not authorized to perform: kms:DescribeKey on resource: "+arn+" because no identity-based policy allows the kms:DescribeKey action" {
		t.Fatalf("message %q", msg)
	}
	bob := userCaller(t, "111122223333", "bob")
	wantException(t, enc(bob, nil), "AccessDeniedException")

	// Cross-account: IAM alone is not enough; the key policy must allow.
	carol := userCaller(t, "444455556666", "carol", allowAll)
	_, err = f.svc.Encrypt(ctx, carol, &kmsapi.EncryptRequest{KeyId: &arn, Plaintext: pt})
	wantException(t, err, "AccessDeniedException")
	doc := `{"Version":"2012-10-17","Statement":[
{"Sid":"root","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"kms:*","Resource":"*"},
{"Sid":"other","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::444455556666:root"},"Action":["kms:Encrypt","kms:DescribeKey"],"Resource":"*"}]}`
	if _, err := f.svc.PutKeyPolicy(ctx, f.caller, &kmsapi.PutKeyPolicyRequest{KeyId: &id, Policy: &doc}); err != nil {
		t.Fatal(err)
	}
	if _, err = f.svc.Encrypt(ctx, carol, &kmsapi.EncryptRequest{KeyId: &arn, Plaintext: pt}); err != nil {
		t.Fatalf("carol after key policy: %v", err)
	}
	// ...but never by a bare key id, which names a key of carol's account.
	_, err = f.svc.Encrypt(ctx, carol, &kmsapi.EncryptRequest{KeyId: &id, Plaintext: pt})
	wantException(t, err, "NotFoundException")
	// A key policy allowing the other account does not help without IAM.
	carolNoIAM := userCaller(t, "444455556666", "carol")
	_, err = f.svc.Encrypt(ctx, carolNoIAM, &kmsapi.EncryptRequest{KeyId: &arn, Plaintext: pt})
	wantException(t, err, "AccessDeniedException")

	// Grants: bob gets Encrypt with an encryption context constraint.
	g, err := f.svc.CreateGrant(ctx, f.caller, &kmsapi.CreateGrantRequest{KeyId: &id, GranteePrincipal: &bob.ARN,
		Operations: []string{"Encrypt"}, Constraints: &kmsapi.GrantConstraints{EncryptionContextSubset: map[string]string{"purpose": "test"}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := enc(bob, map[string]string{"purpose": "test", "x": "y"}); err != nil {
		t.Fatalf("bob with grant: %v", err)
	}
	wantException(t, enc(bob, map[string]string{"purpose": "other"}), "AccessDeniedException")
	wantException(t, enc(bob, nil), "AccessDeniedException")
	// bob may not retire it (not retiring principal, no RetireGrant op).
	_, err = f.svc.RetireGrant(ctx, bob, &kmsapi.RetireGrantRequest{GrantToken: g.GrantToken})
	wantException(t, err, "AccessDeniedException")
	lg, err := f.svc.ListGrants(ctx, f.caller, &kmsapi.ListGrantsRequest{KeyId: &id})
	if err != nil || len(lg.Grants) != 1 || *lg.Grants[0].GrantId != *g.GrantId {
		t.Fatalf("ListGrants = %+v, %v", lg, err)
	}
	if _, err := f.svc.RevokeGrant(ctx, f.caller, &kmsapi.RevokeGrantRequest{KeyId: &id, GrantId: g.GrantId}); err != nil {
		t.Fatal(err)
	}
	wantException(t, enc(bob, map[string]string{"purpose": "test"}), "AccessDeniedException")
	_, err = f.svc.RevokeGrant(ctx, f.caller, &kmsapi.RevokeGrantRequest{KeyId: &id, GrantId: g.GrantId})
	wantException(t, err, "NotFoundException")

	// A retiring principal may retire; the grantee with RetireGrant may too.
	g2, err := f.svc.CreateGrant(ctx, f.caller, &kmsapi.CreateGrantRequest{KeyId: &id, GranteePrincipal: &bob.ARN,
		RetiringPrincipal: &alice.ARN, Operations: []string{"Encrypt", "CreateGrant"}})
	if err != nil {
		t.Fatal(err)
	}
	// bob may create a grant only within his own.
	_, err = f.svc.CreateGrant(ctx, bob, &kmsapi.CreateGrantRequest{KeyId: &id, GranteePrincipal: &alice.ARN, Operations: []string{"Decrypt"}})
	wantException(t, err, "AccessDeniedException")
	if _, err := f.svc.CreateGrant(ctx, bob, &kmsapi.CreateGrantRequest{KeyId: &id, GranteePrincipal: &alice.ARN, Operations: []string{"Encrypt"}}); err != nil {
		t.Fatalf("bob sub-grant: %v", err)
	}
	lr, err := f.svc.ListRetirableGrants(ctx, f.caller, &kmsapi.ListRetirableGrantsRequest{RetiringPrincipal: &alice.ARN})
	if err != nil || len(lr.Grants) != 1 {
		t.Fatalf("ListRetirableGrants = %+v, %v", lr, err)
	}
	if _, err := f.svc.RetireGrant(ctx, alice, &kmsapi.RetireGrantRequest{KeyId: &id, GrantId: g2.GrantId}); err != nil {
		t.Fatalf("alice retires: %v", err)
	}
	// Invalid operations and constraints.
	_, err = f.svc.CreateGrant(ctx, f.caller, &kmsapi.CreateGrantRequest{KeyId: &id, GranteePrincipal: &bob.ARN, Operations: []string{"Sign"}})
	wantException(t, err, "ValidationException")
	_, err = f.svc.CreateGrant(ctx, f.caller, &kmsapi.CreateGrantRequest{KeyId: &id, GranteePrincipal: &bob.ARN, Operations: []string{"DescribeKey"},
		Constraints: &kmsapi.GrantConstraints{EncryptionContextEquals: map[string]string{"a": "b"}}})
	wantException(t, err, "ValidationException")
}

// TestKeyPolicyCache: the parsed policy follows PutKeyPolicy at once.
func TestKeyPolicyCache(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	id := f.createKey(t)
	alice := userCaller(t, "111122223333", "alice", allowAll)
	if _, err := f.svc.Encrypt(ctx, alice, &kmsapi.EncryptRequest{KeyId: &id, Plaintext: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	doc := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"kms:*","Resource":"*"},
{"Effect":"Deny","Principal":{"AWS":"arn:aws:iam::111122223333:user/alice"},"Action":"kms:Encrypt","Resource":"*"}]}`
	if _, err := f.svc.PutKeyPolicy(ctx, f.caller, &kmsapi.PutKeyPolicyRequest{KeyId: &id, Policy: &doc}); err != nil {
		t.Fatal(err)
	}
	_, err := f.svc.Encrypt(ctx, alice, &kmsapi.EncryptRequest{KeyId: &id, Plaintext: []byte("x")})
	wantException(t, err, "AccessDeniedException")
	if !strings.Contains(Exception(err).Message, "with an explicit deny in a resource-based policy") {
		t.Fatalf("message %q", Exception(err).Message)
	}
}

// TestSessionPolicies: a role session's session policies limit its
// identity policies and grants to its role, not grants to the session.
func TestSessionPolicies(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	id := f.createKey(t)
	pt := []byte("hello")
	session := func(name string, session ...string) *Caller {
		p, err := policy.PrincipalFromARN("arn:aws:sts::111122223333:assumed-role/App/" + name)
		if err != nil {
			t.Fatal(err)
		}
		p.RoleARN, p.UserID = "arn:aws:iam::111122223333:role/App", "AROAAPPEXAMPLE:"+name
		c := &Caller{Account: "111122223333", Region: "us-east-1", ARN: p.ARN, Principal: p,
			Policies: []*policy.Policy{mustIdentityPolicy(t, allowAll)}}
		for _, d := range session {
			c.SessionPolicies = append(c.SessionPolicies, mustIdentityPolicy(t, d))
		}
		return c
	}
	enc := func(c *Caller) error {
		_, err := f.svc.Encrypt(ctx, c, &kmsapi.EncryptRequest{KeyId: &id, Plaintext: pt})
		return err
	}
	decryptOnly := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:Decrypt","Resource":"*"}]}`
	if err := enc(session("full")); err != nil {
		t.Fatalf("session without session policies: %v", err)
	}
	limited := session("s1", decryptOnly)
	err := enc(limited)
	wantException(t, err, "AccessDeniedException")
	if msg := Exception(err).Message; !strings.HasSuffix(msg, "because no session policy allows the kms:Encrypt action") {
		t.Errorf("message %q", msg)
	}
	_, err = f.svc.ListKeys(ctx, limited, &kmsapi.ListKeysRequest{})
	wantException(t, err, "AccessDeniedException")

	// A grant to the role is limited by the session policy…
	role := "arn:aws:iam::111122223333:role/App"
	if _, err := f.svc.CreateGrant(ctx, f.caller, &kmsapi.CreateGrantRequest{KeyId: &id, GranteePrincipal: &role, Operations: []string{"Encrypt"}}); err != nil {
		t.Fatal(err)
	}
	wantException(t, enc(limited), "AccessDeniedException")
	// …one to the session is not.
	if _, err := f.svc.CreateGrant(ctx, f.caller, &kmsapi.CreateGrantRequest{KeyId: &id, GranteePrincipal: &limited.ARN, Operations: []string{"Encrypt"}}); err != nil {
		t.Fatal(err)
	}
	if err := enc(limited); err != nil {
		t.Errorf("grant to the session: %v", err)
	}
	// An explicit deny in a session policy beats every grant.
	denyEncrypt := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"},{"Effect":"Deny","Action":"kms:Encrypt","Resource":"*"}]}`
	err = enc(session("s1", denyEncrypt))
	wantException(t, err, "AccessDeniedException")
	if msg := Exception(err).Message; !strings.HasSuffix(msg, "with an explicit deny in a session policy") {
		t.Errorf("message %q", msg)
	}
}

// TestPrincipalTagsNotCached: two sessions with one ARN but other tags
// see their own aws:PrincipalTag values.
func TestPrincipalTagsNotCached(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	id := f.createKey(t)
	byTag := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:Encrypt","Resource":"*","Condition":{"StringEquals":{"aws:PrincipalTag/team":"blue"}}}]}`
	for _, c := range []struct {
		team string
		ok   bool
	}{{"blue", true}, {"red", false}, {"blue", true}} {
		p, _ := policy.PrincipalFromARN("arn:aws:sts::111122223333:assumed-role/App/s1")
		p.Tags = map[string]string{"team": c.team}
		caller := &Caller{Account: "111122223333", Region: "us-east-1", ARN: p.ARN, Principal: p,
			Policies: []*policy.Policy{mustIdentityPolicy(t, byTag)}}
		_, err := f.svc.Encrypt(ctx, caller, &kmsapi.EncryptRequest{KeyId: &id, Plaintext: []byte("x")})
		if (err == nil) != c.ok {
			t.Errorf("team %s: %v", c.team, err)
		}
	}
}

// TestRetireGrantSessionPolicies: a session may retire a grant that names
// its role only if its session policies allow kms:RetireGrant.
func TestRetireGrantSessionPolicies(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	id := f.createKey(t)
	role := "arn:aws:iam::111122223333:role/App"
	p, _ := policy.PrincipalFromARN("arn:aws:sts::111122223333:assumed-role/App/s1")
	p.RoleARN = role
	session := func(doc string) *Caller {
		return &Caller{Account: "111122223333", Region: "us-east-1", ARN: p.ARN, Principal: p,
			SessionPolicies: []*policy.Policy{mustIdentityPolicy(t, doc)}}
	}
	g, err := f.svc.CreateGrant(ctx, f.caller, &kmsapi.CreateGrantRequest{KeyId: &id, GranteePrincipal: &role, RetiringPrincipal: &role, Operations: []string{"Encrypt"}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.svc.RetireGrant(ctx, session(`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:Decrypt","Resource":"*"}]}`),
		&kmsapi.RetireGrantRequest{KeyId: &id, GrantId: g.GrantId})
	wantException(t, err, "AccessDeniedException")
	if _, err := f.svc.RetireGrant(ctx, session(`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:RetireGrant","Resource":"*"}]}`),
		&kmsapi.RetireGrantRequest{KeyId: &id, GrantId: g.GrantId}); err != nil {
		t.Fatalf("retire with a session policy allowing it: %v", err)
	}
}
