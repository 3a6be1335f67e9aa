package identity

import (
	"context"
	"errors"
	"math/rand"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/barrier"
	"github.com/kmsd/kmsd/internal/policy"
	"github.com/kmsd/kmsd/internal/storage/sqlite"
)

const (
	acct     = "111122223333"
	aliceKey = "AKIAALICEEXAMPLE0001"
)

// trust policies of the test roles, by role name.
var trusts = map[string]string{
	"plain": `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"sts:AssumeRole"}]}`,
	"ext": `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"sts:AssumeRole",
		"Condition":{"StringEquals":{"sts:ExternalId":"secret-id"}}}]}`,
	"ext-not": `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"sts:AssumeRole"},
		{"Effect":"Deny","Principal":{"AWS":"*"},"Action":"sts:AssumeRole","Condition":{"StringNotEquals":{"sts:ExternalId":"secret-id"}}}]}`,
	"tags": `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"sts:AssumeRole"},
		{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"sts:TagSession","Condition":{"StringEquals":{"aws:RequestTag/team":"blue"}}},
		{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"sts:SetSourceIdentity","Condition":{"StringLike":{"sts:SourceIdentity":"alice*"}}}]}`,
}

func newStore(t *testing.T) *Store {
	t.Helper()
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	b, err := barrier.New(make([]byte, barrier.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(ctx, st, b)
	if err != nil {
		t.Fatal(err)
	}
	s.SetClock(func() time.Time { return time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC) })
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

func alice(t *testing.T, s *Store) *Identity {
	id, ok := s.Identity(aliceKey)
	if !ok {
		t.Fatal("alice has no identity")
	}
	return id
}

func ptr[T any](v T) *T { return &v }

func roleARN(name string) string { return "arn:aws:iam::" + acct + ":role/" + name }

// randomText is n letters from a fixed seed: incompressible enough to
// fill the packed policy space.
func randomText(r *rand.Rand, n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"[r.Intn(62)]
	}
	return string(b)
}

func TestAssumeRole(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	var bigTags []Tag
	for i := 0; i < 50; i++ {
		bigTags = append(bigTags, Tag{Key: randomText(r, 128), Value: randomText(r, 256)})
	}
	tooMany := make([]Tag, 51)
	for i := range tooMany {
		tooMany[i] = Tag{Key: "k" + itoa(i), Value: "v"}
	}
	// The longest inline policy fits the packed space, however random.
	head := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:Decrypt","Resource":"arn:aws:kms:us-east-1:111122223333:key/`
	longPolicy := head + randomText(r, 2048-len(head)-4) + `"}]}`
	arns := make([]string, 11)
	for i := range arns {
		arns[i] = "arn:aws:iam::111122223333:policy/p" + itoa(i)
	}
	for _, c := range []struct {
		name string
		role string
		in   AssumeRoleInput
		code string // "" for success
		msg  string // exact message; "" to check the code only
		has  string // a part of the message
	}{
		{name: "plain", role: "plain"},
		{name: "external-id/right", role: "ext", in: AssumeRoleInput{ExternalID: ptr("secret-id")}},
		{name: "external-id/wrong", role: "ext", in: AssumeRoleInput{ExternalID: ptr("other-id")}, code: "AccessDenied",
			msg: "User: arn:aws:iam::111122223333:user/alice is not authorized to perform: sts:AssumeRole on resource: arn:aws:iam::111122223333:role/ext"},
		{name: "external-id/missing", role: "ext", code: "AccessDenied"},
		{name: "external-id-not-equals/right", role: "ext-not", in: AssumeRoleInput{ExternalID: ptr("secret-id")}},
		{name: "external-id-not-equals/wrong", role: "ext-not", in: AssumeRoleInput{ExternalID: ptr("other-id")}, code: "AccessDenied"},
		{name: "external-id-not-equals/missing", role: "ext-not", code: "AccessDenied"},
		{name: "external-id/too-short", role: "ext", in: AssumeRoleInput{ExternalID: ptr("x")}, code: "ValidationError",
			msg: "1 validation error detected: Value 'x' at 'externalId' failed to satisfy constraint: Member must have length greater than or equal to 2"},
		{name: "external-id/bad-character", role: "ext", in: AssumeRoleInput{ExternalID: ptr("a b")}, code: "ValidationError",
			msg: `1 validation error detected: Value 'a b' at 'externalId' failed to satisfy constraint: Member must satisfy regular expression pattern: [\w+=,.@:\/-]*`},
		{name: "tags/need-tag-session", role: "plain", in: AssumeRoleInput{Tags: []Tag{{"team", "blue"}}}, code: "AccessDenied",
			msg: "User: arn:aws:iam::111122223333:user/alice is not authorized to perform: sts:TagSession on resource: arn:aws:iam::111122223333:role/plain"},
		{name: "tags/tag-session-allowed", role: "tags", in: AssumeRoleInput{Tags: []Tag{{"team", "blue"}}}},
		{name: "tags/request-tag-condition", role: "tags", in: AssumeRoleInput{Tags: []Tag{{"team", "red"}}}, code: "AccessDenied",
			has: "sts:TagSession"},
		{name: "tags/duplicate-keys", role: "tags", in: AssumeRoleInput{Tags: []Tag{{"team", "blue"}, {"Team", "blue"}}}, code: "ValidationError",
			msg: "Duplicate tag keys found. Please note that Tag keys are case insensitive."},
		{name: "tags/too-many", role: "tags", in: AssumeRoleInput{Tags: tooMany}, code: "ValidationError",
			has: "at 'tags' failed to satisfy constraint: Member must have length less than or equal to 50"},
		{name: "tags/key-too-long", role: "tags", in: AssumeRoleInput{Tags: []Tag{{strings.Repeat("k", 129), "v"}}}, code: "ValidationError",
			has: "at 'tags.1.member.key' failed to satisfy constraint: Member must have length less than or equal to 128"},
		{name: "tags/value-too-long", role: "tags", in: AssumeRoleInput{Tags: []Tag{{"team", strings.Repeat("v", 257)}}}, code: "ValidationError",
			has: "at 'tags.1.member.value' failed to satisfy constraint: Member must have length less than or equal to 256"},
		{name: "tags/transitive-not-in-tags", role: "tags", in: AssumeRoleInput{Tags: []Tag{{"team", "blue"}}, TransitiveTagKeys: []string{"dept"}},
			code: "InvalidParameterValue", msg: "The specified transitive tag key must be included in the requested tags."},
		{name: "tags/packed-too-large", role: "tags", in: AssumeRoleInput{Tags: bigTags}, code: "PackedPolicyTooLarge",
			has: "% of allotted space, please use smaller policy."},
		{name: "source-identity/allowed", role: "tags", in: AssumeRoleInput{SourceIdentity: ptr("alice@example.com")}},
		{name: "source-identity/condition", role: "tags", in: AssumeRoleInput{SourceIdentity: ptr("bob")}, code: "AccessDenied",
			has: "sts:SetSourceIdentity"},
		{name: "source-identity/needs-permission", role: "plain", in: AssumeRoleInput{SourceIdentity: ptr("alice")}, code: "AccessDenied",
			has: "sts:SetSourceIdentity"},
		{name: "duration/899", role: "plain", in: AssumeRoleInput{DurationSeconds: ptr(int64(899))}, code: "ValidationError",
			msg: "1 validation error detected: Value '899' at 'durationSeconds' failed to satisfy constraint: Member must have value greater than or equal to 900"},
		{name: "duration/900", role: "plain", in: AssumeRoleInput{DurationSeconds: ptr(int64(900))}},
		{name: "duration/3600", role: "plain", in: AssumeRoleInput{DurationSeconds: ptr(int64(3600))}},
		{name: "duration/3601", role: "plain", in: AssumeRoleInput{DurationSeconds: ptr(int64(3601))}, code: "ValidationError",
			msg: "The requested DurationSeconds exceeds the MaxSessionDuration set for this role."},
		{name: "duration/43201", role: "plain", in: AssumeRoleInput{DurationSeconds: ptr(int64(43201))}, code: "ValidationError",
			msg: "1 validation error detected: Value '43201' at 'durationSeconds' failed to satisfy constraint: Member must have value less than or equal to 43200"},
		{name: "session-name/too-short", role: "plain", in: AssumeRoleInput{RoleSessionName: "s"}, code: "ValidationError",
			msg: "1 validation error detected: Value 's' at 'roleSessionName' failed to satisfy constraint: Member must have length greater than or equal to 2"},
		{name: "session-name/too-long", role: "plain", in: AssumeRoleInput{RoleSessionName: strings.Repeat("s", 65)}, code: "ValidationError",
			has: "Member must have length less than or equal to 64"},
		{name: "session-name/bad-character", role: "plain", in: AssumeRoleInput{RoleSessionName: "my session"}, code: "ValidationError",
			msg: `1 validation error detected: Value 'my session' at 'roleSessionName' failed to satisfy constraint: Member must satisfy regular expression pattern: [\w+=,.@-]*`},
		{name: "two-errors", role: "plain", in: AssumeRoleInput{RoleSessionName: "s", DurationSeconds: ptr(int64(60))}, code: "ValidationError",
			has: "2 validation errors detected: Value 's' at 'roleSessionName'"},
		{name: "policy/inline", role: "plain", in: AssumeRoleInput{Policy: ptr(`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:Decrypt","Resource":"*"}]}`)}},
		{name: "policy/longest-fits", role: "plain", in: AssumeRoleInput{Policy: &longPolicy}},
		{name: "policy/too-long", role: "plain", in: AssumeRoleInput{Policy: ptr(strings.Repeat(" ", 2049))}, code: "ValidationError",
			has: "at 'policy' failed to satisfy constraint: Member must have length less than or equal to 2048"},
		{name: "policy/malformed", role: "plain", in: AssumeRoleInput{Policy: ptr(`{"Statement":`)}, code: "MalformedPolicyDocument"},
		{name: "policy/names-principal", role: "plain", in: AssumeRoleInput{Policy: ptr(`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:Decrypt","Resource":"*"}]}`)},
			code: "MalformedPolicyDocument"},
		{name: "policy-arns/unknown", role: "plain", in: AssumeRoleInput{PolicyARNs: []string{"arn:aws:iam::111122223333:policy/p"}}, code: "NoSuchEntity",
			msg: "Policy arn:aws:iam::111122223333:policy/p does not exist or is not attachable."},
		{name: "policy-arns/too-many", role: "plain", in: AssumeRoleInput{PolicyARNs: arns}, code: "ValidationError",
			has: "at 'policyArns' failed to satisfy constraint: Member must have length less than or equal to 10"},
		{name: "unsupported/mfa", role: "plain", in: AssumeRoleInput{SerialNumber: ptr("arn:aws:iam::111122223333:mfa/alice"), TokenCode: ptr("123456")}, code: "AccessDenied",
			has: "MFA"},
		{name: "unsupported/provided-contexts", role: "plain", in: AssumeRoleInput{ProvidedContexts: 1}, code: "ValidationError", has: "ProvidedContexts"},
		{name: "unknown-role", role: "nope", code: "AccessDenied"},
		{name: "no-role", role: "", code: "ValidationError",
			msg: "1 validation error detected: Value null at 'roleArn' failed to satisfy constraint: Member must not be null"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := newStore(t)
			in := c.in
			if c.role != "" {
				in.RoleARN = roleARN(c.role)
			}
			if in.RoleSessionName == "" {
				in.RoleSessionName = "s1"
			}
			cr, err := s.AssumeRole(alice(t, s), &in)
			if c.code == "" {
				if err != nil {
					t.Fatalf("AssumeRole: %v", err)
				}
				if cr.AssumedRoleARN != "arn:aws:sts::"+acct+":assumed-role/"+c.role+"/"+in.RoleSessionName {
					t.Errorf("assumed role ARN %s", cr.AssumedRoleARN)
				}
				return
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("AssumeRole = %v, %v; want %s", cr, err, c.code)
			}
			if e.Code != c.code || (c.msg != "" && e.Message != c.msg) || !strings.Contains(e.Message, c.has) {
				t.Errorf("error %s: %q\nwant  %s: %q (containing %q)", e.Code, e.Message, c.code, c.msg, c.has)
			}
		})
	}
}

// TestSessionIdentity checks what a session acts as: its session
// policies, tags (aws:PrincipalTag/*), source identity, and what role
// chaining passes on.
func TestSessionIdentity(t *testing.T) {
	s := newStore(t)
	in := &AssumeRoleInput{RoleARN: roleARN("tags"), RoleSessionName: "s1",
		Policy:            ptr(`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["sts:AssumeRole","sts:SetSourceIdentity"],"Resource":"*"}]}`),
		Tags:              []Tag{{"team", "blue"}, {"cost", "42"}},
		TransitiveTagKeys: []string{"team"},
		SourceIdentity:    ptr("alice"),
	}
	cr, err := s.AssumeRole(alice(t, s), in)
	if err != nil {
		t.Fatal(err)
	}
	if cr.PackedPolicySize < 1 || cr.PackedPolicySize > 100 || cr.SourceIdentity != "alice" {
		t.Errorf("credentials: packed %d, source identity %q", cr.PackedPolicySize, cr.SourceIdentity)
	}
	sess, ok := s.Identity(cr.AccessKeyID)
	if !ok {
		t.Fatal("no session identity")
	}
	if len(sess.SessionPolicies) != 1 || len(sess.AuthzIdentity().Session) != 1 {
		t.Errorf("session policies %v", sess.SessionPolicies)
	}
	r := policy.NewRequest(sess.Principal, "kms:Encrypt", "*")
	for key, want := range map[string]string{"aws:PrincipalTag/team": "blue", "aws:PrincipalTag/cost": "42", "aws:SourceIdentity": "alice"} {
		if got := r.Context[key]; len(got) != 1 || got[0] != want {
			t.Errorf("%s = %v, want %s", key, got, want)
		}
	}
	// The session policy allows sts:AssumeRole and sts:SetSourceIdentity,
	// so the session may chain;
	// the transitive tag and the source identity pass on, the other tag
	// does not.
	chained, err := s.AssumeRole(sess, &AssumeRoleInput{RoleARN: roleARN("tags"), RoleSessionName: "s2"})
	if err != nil {
		t.Fatal(err)
	}
	next, _ := s.Identity(chained.AccessKeyID)
	if next.Principal.Tags["team"] != "blue" || next.Principal.Tags["cost"] != "" || next.Principal.SourceIdentity != "alice" ||
		len(next.TransitiveTagKeys) != 1 || next.SessionPolicies != nil {
		t.Errorf("chained session: tags %v, transitive %v, source identity %q, session policies %v",
			next.Principal.Tags, next.TransitiveTagKeys, next.Principal.SourceIdentity, next.SessionPolicies)
	}
	// The inherited source identity needs sts:SetSourceIdentity in the
	// next role's trust policy. A chained session cannot override a
	// transitive tag, nor last more than an hour.
	_, err = s.AssumeRole(sess, &AssumeRoleInput{RoleARN: roleARN("plain"), RoleSessionName: "s3"})
	if e := (*Error)(nil); !errors.As(err, &e) || !strings.Contains(e.Message, "sts:SetSourceIdentity") {
		t.Errorf("chained source identity without sts:SetSourceIdentity: %v", err)
	}
	_, err = s.AssumeRole(sess, &AssumeRoleInput{RoleARN: roleARN("tags"), RoleSessionName: "s3", Tags: []Tag{{"Team", "blue"}}})
	if e := (*Error)(nil); !errors.As(err, &e) || e.Code != "InvalidParameterValue" {
		t.Errorf("override transitive tag: %v", err)
	}
	_, err = s.AssumeRole(sess, &AssumeRoleInput{RoleARN: roleARN("tags"), RoleSessionName: "s3", DurationSeconds: ptr(int64(3601))})
	if e := (*Error)(nil); !errors.As(err, &e) || !strings.Contains(e.Message, "role chaining") {
		t.Errorf("chained duration: %v", err)
	}
	// A session policy that does not allow sts:AssumeRole keeps the
	// session from chaining, though its role may.
	limited, err := s.AssumeRole(alice(t, s), &AssumeRoleInput{RoleARN: roleARN("plain"), RoleSessionName: "s4",
		Policy: ptr(`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:Decrypt","Resource":"*"}]}`)})
	if err != nil {
		t.Fatal(err)
	}
	lid, _ := s.Identity(limited.AccessKeyID)
	if _, err := s.AssumeRole(lid, &AssumeRoleInput{RoleARN: roleARN("plain"), RoleSessionName: "s5"}); err == nil {
		t.Error("a session whose session policy lacks sts:AssumeRole chained")
	}
}
