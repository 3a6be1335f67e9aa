package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// Resource aliases used by the case files.
const (
	keyK    = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
	keyK2   = "arn:aws:kms:us-west-2:111122223333:key/0987dcba-09fe-87dc-65ba-ab0987654321"
	keyK444 = "arn:aws:kms:us-east-1:444455556666:key/abcd1234-a123-456a-a12b-a123b4cd56ef"
)

var resources = map[string]string{"K": keyK, "K2": keyK2, "K444": keyK444}

// principals are the aliases the case files use; anything else is an ARN
// or "service:NAME", "web:PROVIDER".
var principals = map[string]Principal{
	"alice":      mustPrincipal("arn:aws:iam::111122223333:user/alice", "AIDAALICEEXAMPLE"),
	"alice-path": mustPrincipal("arn:aws:iam::111122223333:user/division/alice", "AIDAALICEEXAMPLE"),
	"bob":        mustPrincipal("arn:aws:iam::111122223333:user/bob", "AIDABOBEXAMPLE"),
	"user-app":   mustPrincipal("arn:aws:iam::111122223333:user/App", "AIDAUSERAPPEXAMPLE"),
	"user-star":  {Type: IAMUser, ARN: "arn:aws:iam::111122223333:user/star", Account: "111122223333", Name: "*"},
	"root":       RootPrincipal("111122223333"),
	"root-444":   RootPrincipal("444455556666"),
	"app":        mustPrincipal("arn:aws:sts::111122223333:assumed-role/App/s1", "AROAAPPEXAMPLE:s1"),
	"app-s2":     mustPrincipal("arn:aws:sts::111122223333:assumed-role/App/s2", "AROAAPPEXAMPLE:s2"),
	"app-role":   mustPrincipal("arn:aws:iam::111122223333:role/App", "AROAAPPEXAMPLE"),
	"app-with-role-arn": func() Principal {
		p := mustPrincipal("arn:aws:sts::111122223333:assumed-role/App/s1", "AROAAPPEXAMPLE:s1")
		p.RoleARN = "arn:aws:iam::111122223333:role/service/App"
		return p
	}(),
	"admin":      mustPrincipal("arn:aws:sts::111122223333:assumed-role/KeyAdmin/admin-session", "AROAADMINEXAMPLE:admin-session"),
	"other-role": mustPrincipal("arn:aws:sts::111122223333:assumed-role/Other/s1", "AROAOTHEREXAMPLE:s1"),
	"fed":        mustPrincipal("arn:aws:sts::111122223333:federated-user/dave", "111122223333:dave"),
	"carol":      mustPrincipal("arn:aws:iam::444455556666:user/carol", "AIDACAROLEXAMPLE"),
	"partner":    mustPrincipal("arn:aws:sts::444455556666:assumed-role/Partner/p1", "AROAPARTNEREXAMPLE:p1"),
	"anonymous":  AnonymousPrincipal(),
}

func mustPrincipal(arn, userID string) Principal {
	p, err := PrincipalFromARN(arn)
	if err != nil {
		panic(err)
	}
	p.UserID = userID
	return p
}

// reqSpec is the request part shared by every case file.
type reqSpec struct {
	Principal string                     `json:"principal"`
	Action    string                     `json:"action"`
	Resource  string                     `json:"resource"`
	Context   map[string]json.RawMessage `json:"context"`
	EC        map[string]string          `json:"ec"`
	Time      string                     `json:"time"`
}

func (s *reqSpec) request(t testing.TB) *Request {
	t.Helper()
	p, ok := principals[s.Principal]
	switch {
	case s.Principal == "":
		p = principals["alice"]
	case ok:
	case strings.HasPrefix(s.Principal, "service:"):
		p = ServicePrincipal(strings.TrimPrefix(s.Principal, "service:"))
	case strings.HasPrefix(s.Principal, "web:"):
		p = Principal{Type: WebIdentityUser, ARN: "web-identity", Provider: strings.TrimPrefix(s.Principal, "web:")}
	default:
		var err error
		if p, err = PrincipalFromARN(s.Principal); err != nil {
			t.Fatal(err)
		}
	}
	action, resource := s.Action, s.Resource
	if action == "" {
		action = "kms:Encrypt"
	}
	if r, ok := resources[resource]; ok || resource == "" {
		resource = r
		if resource == "" {
			resource = keyK
		}
	}
	r := NewRequest(p, action, resource)
	if s.Time != "" {
		now, err := time.Parse(time.RFC3339, s.Time)
		if err != nil {
			t.Fatal(err)
		}
		r.SetTime(now)
	}
	if s.EC != nil {
		r.SetEncryptionContext(s.EC)
	}
	for k, raw := range s.Context {
		var one string
		if json.Unmarshal(raw, &one) == nil {
			r.Set(k, one)
			continue
		}
		var many []string
		if err := json.Unmarshal(raw, &many); err != nil {
			t.Fatalf("context %s: %v", k, err)
		}
		if r.Context[k] = many; many == nil {
			r.Context[k] = []string{}
		}
	}
	return r
}

// library holds the named policies of testdata/policies.json.
var library = func() map[string]json.RawMessage {
	var m map[string]json.RawMessage
	b, err := os.ReadFile(filepath.Join("testdata", "policies.json"))
	if err == nil {
		err = json.Unmarshal(b, &m)
	}
	if err != nil {
		panic(err)
	}
	return m
}()

// policyText turns a case's policy reference (a library name or an inline
// document) into document text.
func policyText(t testing.TB, ref json.RawMessage) string {
	t.Helper()
	var name string
	if json.Unmarshal(ref, &name) == nil {
		doc, ok := library[name]
		if !ok {
			t.Fatalf("no policy %q in testdata/policies.json", name)
		}
		return string(doc)
	}
	return string(ref)
}

func parseKind(t testing.TB, s string) Kind {
	switch s {
	case "", "key":
		return KeyPolicy
	case "identity":
		return IdentityPolicy
	}
	t.Fatalf("unknown kind %q", s)
	return 0
}

func mustParse(t testing.TB, doc string, kind Kind) *Policy {
	t.Helper()
	p, err := Parse(doc, kind)
	if err != nil {
		t.Fatalf("Parse: %v\n%s", err, doc)
	}
	return p
}

func readCases(t testing.TB, file string, v any) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", file))
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
}

type evalCase struct {
	Name       string            `json:"name"`
	Kind       string            `json:"kind"`
	Policy     json.RawMessage   `json:"policy"`
	Statement  json.RawMessage   `json:"statement"`
	Statements []json.RawMessage `json:"statements"`
	Condition  json.RawMessage   `json:"condition"`
	Version    *string           `json:"version"`
	reqSpec
	Want    string  `json:"want"`
	WantVia *bool   `json:"wantVia"`
	WantSid *string `json:"wantSid"`
}

// document builds the case's policy text from whichever form it uses.
func (c *evalCase) document(t testing.TB, kind Kind) string {
	if c.Policy != nil {
		return policyText(t, c.Policy)
	}
	stmts := c.Statements
	switch {
	case c.Statement != nil:
		stmts = []json.RawMessage{c.Statement}
	case c.Condition != nil:
		principal := `"Principal": "*", `
		if kind == IdentityPolicy {
			principal = ""
		}
		stmts = []json.RawMessage{json.RawMessage(`{"Effect": "Allow", ` + principal + `"Action": "*", "Resource": "*", "Condition": ` + string(c.Condition) + `}`)}
	}
	version := `"Version": "2012-10-17", `
	if c.Version != nil {
		version = ""
		if *c.Version != "" {
			version = `"Version": "` + *c.Version + `", `
		}
	}
	b, err := json.Marshal(stmts)
	if err != nil {
		t.Fatal(err)
	}
	return `{` + version + `"Statement": ` + string(b) + `}`
}

func loadEvalCases(t testing.TB) []evalCase {
	var f struct {
		Comment string     `json:"comment"`
		Cases   []evalCase `json:"cases"`
	}
	readCases(t, "evaluate.json", &f)
	return f.Cases
}

func TestEvaluate(t *testing.T) {
	cases := loadEvalCases(t)
	if len(cases) < 150 {
		t.Errorf("only %d evaluation cases", len(cases))
	}
	for _, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			kind := parseKind(t, c.Kind)
			p := mustParse(t, c.document(t, kind), kind)
			r := c.request(t)
			res := p.Explain(r)
			if got := res.Decision.String(); got != c.Want {
				t.Fatalf("decision = %s, want %s", got, c.Want)
			}
			if got := p.Evaluate(r); got != res.Decision {
				t.Errorf("Evaluate = %s, Explain = %s", got, res.Decision)
			}
			if c.WantVia != nil && res.ViaAccount != *c.WantVia {
				t.Errorf("ViaAccount = %v, want %v", res.ViaAccount, *c.WantVia)
			}
			if c.WantSid != nil && res.Sid != *c.WantSid {
				t.Errorf("Sid = %q, want %q", res.Sid, *c.WantSid)
			}
		})
	}
}

type decideCase struct {
	Name      string            `json:"name"`
	KeyPolicy json.RawMessage   `json:"keyPolicy"`
	Identity  []json.RawMessage `json:"identity"`
	// Session lists the caller's session policies (AssumeRole's Policy
	// and PolicyArns).
	Session []json.RawMessage `json:"session"`
	// Grants: a grant to the principal itself allows; GrantToRole: a
	// grant to the role behind the session allows.
	Grants      bool `json:"grants"`
	GrantToRole bool `json:"grantToRole"`
	reqSpec
	Reason string `json:"reason"`
	Safe   *bool  `json:"safe"`
}

type decideFile struct {
	Comment string       `json:"comment"`
	Decide  []decideCase `json:"decide"`
	IAMOnly []decideCase `json:"iamOnly"`
	Lockout []decideCase `json:"lockout"`
}

func (c *decideCase) policies(t testing.TB) (*Policy, Identity) {
	var kp *Policy
	if c.KeyPolicy != nil && string(c.KeyPolicy) != "null" {
		kp = mustParse(t, policyText(t, c.KeyPolicy), KeyPolicy)
	}
	var id Identity
	for _, ref := range c.Identity {
		id.Policies = append(id.Policies, mustParse(t, policyText(t, ref), IdentityPolicy))
	}
	for _, ref := range c.Session {
		id.Session = append(id.Session, mustParse(t, policyText(t, ref), IdentityPolicy))
	}
	return kp, id
}

func (c *decideCase) grant() GrantMatch {
	switch {
	case c.Grants:
		return GrantToPrincipal
	case c.GrantToRole:
		return GrantToRole
	}
	return NoGrant
}

var reasonByName = map[string]Reason{
	"AllowedByKeyPolicy": AllowedByKeyPolicy, "AllowedByKeyPolicyAndIAM": AllowedByKeyPolicyAndIAM,
	"AllowedByGrant": AllowedByGrant, "AllowedByIAM": AllowedByIAM, "AllowedAsRoot": AllowedAsRoot,
	"DeniedByKeyPolicy": DeniedByKeyPolicy, "DeniedByIAM": DeniedByIAM,
	"NoKeyPolicyAllows": NoKeyPolicyAllows, "NoIAMAllows": NoIAMAllows,
	"DeniedBySessionPolicy": DeniedBySessionPolicy, "NoSessionPolicyAllows": NoSessionPolicyAllows,
}

func reasonFor(t testing.TB, name string) Reason {
	r, ok := reasonByName[name]
	if !ok {
		t.Fatalf("unknown reason %q", name)
	}
	return r
}

func TestDecide(t *testing.T) {
	var f decideFile
	readCases(t, "decide.json", &f)
	for _, c := range f.Decide {
		t.Run(c.Name, func(t *testing.T) {
			kp, ids := c.policies(t)
			want := reasonFor(t, c.Reason)
			allowed, got := Decide(kp, ids, c.grant(), c.request(t))
			if got != want || allowed != want.Allowed() {
				t.Errorf("Decide = %v, %v; want %v, %v", allowed, got, want.Allowed(), want)
			}
		})
	}
}

func TestDecideIAMOnly(t *testing.T) {
	var f decideFile
	readCases(t, "decide.json", &f)
	for _, c := range f.IAMOnly {
		t.Run(c.Name, func(t *testing.T) {
			_, ids := c.policies(t)
			want := reasonFor(t, c.Reason)
			allowed, got := DecideIAMOnly(ids, c.request(t))
			if got != want || allowed != want.Allowed() {
				t.Errorf("DecideIAMOnly = %v, %v; want %v, %v", allowed, got, want.Allowed(), want)
			}
		})
	}
}

func TestCheckLockout(t *testing.T) {
	var f decideFile
	readCases(t, "decide.json", &f)
	for _, c := range f.Lockout {
		t.Run(c.Name, func(t *testing.T) {
			kp, _ := c.policies(t)
			err := CheckLockout(kp, c.request(t))
			if c.Safe == nil {
				t.Fatal("lockout case without safe")
			}
			if *c.Safe {
				if err != nil {
					t.Fatalf("CheckLockout = %v, want nil", err)
				}
				return
			}
			var pe *Error
			if !errors.As(err, &pe) || !errors.Is(err, ErrLockout) || !errors.Is(err, ErrMalformed) {
				t.Fatalf("CheckLockout = %v, want a lockout *Error", err)
			}
			if pe.Message != "The new key policy will not allow you to update the key policy in the future." {
				t.Errorf("message = %q", pe.Message)
			}
		})
	}
}

type parseCase struct {
	Name   string          `json:"name"`
	Kind   string          `json:"kind"`
	Doc    *string         `json:"doc"`
	Policy json.RawMessage `json:"policy"`
	Want   string          `json:"want"`
}

func (c *parseCase) document(t testing.TB) string {
	if c.Doc != nil {
		return *c.Doc
	}
	return policyText(t, c.Policy)
}

func loadParseCases(t testing.TB) []parseCase {
	var f struct {
		Comment string      `json:"comment"`
		Cases   []parseCase `json:"cases"`
	}
	readCases(t, "parse.json", &f)
	return f.Cases
}

func TestParse(t *testing.T) {
	for _, c := range loadParseCases(t) {
		t.Run(c.Name, func(t *testing.T) {
			p, err := Parse(c.document(t), parseKind(t, c.Kind))
			if c.Want == "" {
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				if p == nil {
					t.Fatal("Parse returned no policy")
				}
				return
			}
			var pe *Error
			if !errors.As(err, &pe) {
				t.Fatalf("Parse error = %v, want *Error %q", err, c.Want)
			}
			if !errors.Is(err, ErrMalformed) {
				t.Errorf("error %v does not wrap ErrMalformed", err)
			}
			if pe.Message != c.Want {
				t.Errorf("message = %q, want %q (%s)", pe.Message, c.Want, pe.Detail)
			}
			if !strings.Contains(err.Error(), pe.Message) {
				t.Errorf("Error() = %q lacks the message", err.Error())
			}
		})
	}
}

// TestAccessDeniedMessages keeps the AccessDeniedException text of every
// denied decide case in a golden file.
func TestAccessDeniedMessages(t *testing.T) {
	var f decideFile
	readCases(t, "decide.json", &f)
	var out strings.Builder
	emit := func(cases []decideCase, decide func(c *decideCase, r *Request) (bool, Reason)) {
		for i := range cases {
			c := &cases[i]
			r := c.request(t)
			if allowed, reason := decide(c, r); !allowed {
				fmt.Fprintf(&out, "%s\n\t%s\n", c.Name, AccessDeniedMessage(r, reason))
			}
		}
	}
	emit(f.Decide, func(c *decideCase, r *Request) (bool, Reason) {
		kp, ids := c.policies(t)
		return Decide(kp, ids, c.grant(), r)
	})
	emit(f.IAMOnly, func(c *decideCase, r *Request) (bool, Reason) {
		_, ids := c.policies(t)
		return DecideIAMOnly(ids, r)
	})
	golden(t, "access_denied.golden", out.String())
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs (run with -update to accept):\n got: %s\nwant: %s", path, got, want)
	}
}

func TestAccessDeniedMessageForms(t *testing.T) {
	r := NewRequest(principals["alice"], "kms:Encrypt", keyK)
	head := "User: arn:aws:iam::111122223333:user/alice is not authorized to perform: kms:Encrypt on resource: " + keyK
	for _, c := range []struct {
		name   string
		reason Reason
		want   string
	}{
		{"no-identity-policy", NoIAMAllows, head + " because no identity-based policy allows the kms:Encrypt action"},
		{"no-resource-policy", NoKeyPolicyAllows, head + " because no resource-based policy allows the kms:Encrypt action"},
		{"explicit-deny-resource", DeniedByKeyPolicy, head + " with an explicit deny in a resource-based policy"},
		{"explicit-deny-identity", DeniedByIAM, head + " with an explicit deny in an identity-based policy"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := AccessDeniedMessage(r, c.reason); got != c.want {
				t.Errorf("got  %s\nwant %s", got, c.want)
			}
		})
	}
}

func TestCheckKeyPolicySize(t *testing.T) {
	base := DefaultKeyPolicy("111122223333")
	for _, c := range []struct {
		name string
		size int
		ok   bool
	}{
		{"default", len(base), true},
		{"at-limit", MaxKeyPolicySize, true},
		{"one-over", MaxKeyPolicySize + 1, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			doc := base
			if pad := c.size - len(base); pad > 0 {
				doc = base[:len(base)-1] + strings.Repeat(" ", pad) + "}"
			}
			if len(doc) != c.size {
				t.Fatalf("built %d bytes, want %d", len(doc), c.size)
			}
			err := CheckKeyPolicySize(doc)
			if c.ok != (err == nil) {
				t.Fatalf("CheckKeyPolicySize = %v", err)
			}
			if err != nil && (!errors.Is(err, ErrTooLarge) || errors.Is(err, ErrMalformed)) {
				t.Errorf("error %v should wrap ErrTooLarge only", err)
			}
			if c.ok {
				mustParse(t, doc, KeyPolicy)
			}
		})
	}
	t.Run("counts-bytes", func(t *testing.T) {
		// 16385 two-byte characters: within the API's character limit,
		// over the byte quota.
		if err := CheckKeyPolicySize(strings.Repeat("é", MaxKeyPolicySize/2+1)); !errors.Is(err, ErrTooLarge) {
			t.Errorf("CheckKeyPolicySize = %v, want ErrTooLarge", err)
		}
	})
}

func TestDefaultKeyPolicy(t *testing.T) {
	p := mustParse(t, DefaultKeyPolicy("111122223333"), KeyPolicy)
	if p.ID() != "key-default-1" || p.Version() != Version2012 || p.Kind() != KeyPolicy {
		t.Errorf("Id %q Version %q Kind %v", p.ID(), p.Version(), p.Kind())
	}
	if got := p.Sids(); len(got) != 1 || got[0] != "Enable IAM User Permissions" {
		t.Errorf("Sids = %q", got)
	}
	golden(t, "default_key_policy.golden", DefaultKeyPolicy("111122223333"))
}

// TestIsDefaultKeyPolicy: exactly DefaultKeyPolicy's text for the same
// account is the default; any other byte, or another account, is not.
func TestIsDefaultKeyPolicy(t *testing.T) {
	const acct = "111122223333"
	def := DefaultKeyPolicy(acct)
	for _, tc := range []struct {
		name, doc, account string
		want               bool
	}{
		{"same account", def, acct, true},
		{"other account's default", DefaultKeyPolicy("444455556666"), acct, false},
		{"default of a shorter account", DefaultKeyPolicy("11112222333"), acct, false},
		{"for another account", def, "444455556666", false},
		{"empty account", DefaultKeyPolicy(""), "", true},
		{"trailing newline", def + "\n", acct, false},
		{"one byte changed", strings.Replace(def, "kms:*", "kms:+", 1), acct, false},
		{"compact form", `{"Version":"2012-10-17","Id":"key-default-1","Statement":[{"Sid":"Enable IAM User Permissions","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"kms:*","Resource":"*"}]}`, acct, false},
		{"empty", "", acct, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := IsDefaultKeyPolicy(tc.doc, tc.account); got != tc.want {
				t.Errorf("IsDefaultKeyPolicy = %v, want %v", got, tc.want)
			}
		})
	}
	ok := false
	if n := testing.AllocsPerRun(100, func() { ok = IsDefaultKeyPolicy(def, acct) }); n != 0 || !ok {
		t.Errorf("IsDefaultKeyPolicy allocates %v times", n)
	}
}

func TestPrincipals(t *testing.T) {
	p := mustParse(t, `{"Version":"2012-10-17","Statement":[
		{"Effect":"Allow","Principal":{"AWS":["111122223333","arn:aws:iam::111122223333:user/alice"]},"Action":"kms:*","Resource":"*"},
		{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root","Service":"logs.amazonaws.com"},"Action":"kms:*","Resource":"*"},
		{"Effect":"Deny","NotPrincipal":{"Federated":"cognito-identity.amazonaws.com"},"Action":"kms:*","Resource":"*"},
		{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*"}]}`, KeyPolicy)
	got := p.Principals()
	want := []PrincipalRef{
		{"AWS", "arn:aws:iam::111122223333:root"},
		{"AWS", "arn:aws:iam::111122223333:user/alice"},
		{"Service", "logs.amazonaws.com"},
		{"Federated", "cognito-identity.amazonaws.com"},
		{"AWS", "*"},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("Principals =\n%v\nwant\n%v", got, want)
	}
}

func TestPrincipalFromARN(t *testing.T) {
	for _, c := range []struct {
		arn  string
		want Principal
		bad  bool
	}{
		{arn: "arn:aws:iam::111122223333:root", want: Principal{Type: Root, Account: "111122223333", UserID: "111122223333"}},
		{arn: "arn:aws:iam::111122223333:user/alice", want: Principal{Type: IAMUser, Account: "111122223333", Name: "alice"}},
		{arn: "arn:aws:iam::111122223333:user/path/to/alice", want: Principal{Type: IAMUser, Account: "111122223333", Name: "alice"}},
		{arn: "arn:aws:iam::111122223333:role/App", want: Principal{Type: Role, Account: "111122223333", Name: "App", RoleARN: "arn:aws:iam::111122223333:role/App"}},
		{arn: "arn:aws:sts::111122223333:assumed-role/App/s1", want: Principal{Type: AssumedRole, Account: "111122223333", Name: "App", Session: "s1"}},
		{arn: "arn:aws-cn:sts::111122223333:federated-user/dave", want: Principal{Type: FederatedUser, Account: "111122223333", Name: "dave"}},
		{arn: "arn:aws:iam::111122223333:group/devs", bad: true},
		{arn: "arn:aws:iam::1111:root", bad: true},
		{arn: "arn:aws:iam:us-east-1:111122223333:root", bad: true},
		{arn: "arn:aws:sts::111122223333:assumed-role/App", bad: true},
		{arn: "arn:aws:iam::111122223333:user/", bad: true},
		{arn: "alice", bad: true},
	} {
		t.Run(c.arn, func(t *testing.T) {
			got, err := PrincipalFromARN(c.arn)
			if c.bad {
				if err == nil {
					t.Fatalf("PrincipalFromARN = %+v, want an error", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			c.want.ARN = c.arn
			if !reflect.DeepEqual(got, c.want) {
				t.Errorf("got  %+v\nwant %+v", got, c.want)
			}
		})
	}
}

func TestNewRequestKeys(t *testing.T) {
	for _, c := range []struct {
		name string
		p    Principal
		want map[string][]string
	}{
		{"user", principals["alice"], map[string][]string{
			KeyPrincipalArn: {"arn:aws:iam::111122223333:user/alice"}, KeyPrincipalAccount: {"111122223333"},
			KeyCallerAccount: {"111122223333"}, KeyPrincipalType: {"User"}, KeyUsername: {"alice"}, KeyUserID: {"AIDAALICEEXAMPLE"},
			KeyPrincipalIsAWSService: {"false"}, KeyViaAWSService: {"false"}}},
		{"session", principals["app"], map[string][]string{
			KeyPrincipalArn: {"arn:aws:iam::111122223333:role/App"}, KeyPrincipalAccount: {"111122223333"},
			KeyCallerAccount: {"111122223333"}, KeyPrincipalType: {"AssumedRole"}, KeyUserID: {"AROAAPPEXAMPLE:s1"},
			KeyPrincipalIsAWSService: {"false"}, KeyViaAWSService: {"false"}, KeyMultiFactorAuthPresent: {"false"}}},
		{"session-role-arn", principals["app-with-role-arn"], map[string][]string{
			KeyPrincipalArn: {"arn:aws:iam::111122223333:role/service/App"}, KeyPrincipalAccount: {"111122223333"},
			KeyCallerAccount: {"111122223333"}, KeyPrincipalType: {"AssumedRole"}, KeyUserID: {"AROAAPPEXAMPLE:s1"},
			KeyPrincipalIsAWSService: {"false"}, KeyViaAWSService: {"false"}, KeyMultiFactorAuthPresent: {"false"}}},
		{"root", RootPrincipal("111122223333"), map[string][]string{
			KeyPrincipalArn: {"arn:aws:iam::111122223333:root"}, KeyPrincipalAccount: {"111122223333"},
			KeyCallerAccount: {"111122223333"}, KeyPrincipalType: {"Account"}, KeyUserID: {"111122223333"},
			KeyPrincipalIsAWSService: {"false"}, KeyViaAWSService: {"false"}}},
		{"tagged", Principal{Type: IAMUser, ARN: "arn:aws:iam::111122223333:user/tina", Account: "111122223333", Name: "tina",
			UserID: "AIDATINA", Tags: map[string]string{"team": "blue"}}, map[string][]string{
			KeyPrincipalArn: {"arn:aws:iam::111122223333:user/tina"}, KeyPrincipalAccount: {"111122223333"},
			KeyCallerAccount: {"111122223333"}, KeyPrincipalType: {"User"}, KeyUsername: {"tina"}, KeyUserID: {"AIDATINA"},
			KeyPrincipalIsAWSService: {"false"}, KeyViaAWSService: {"false"}, KeyPrincipalTagPrefix + "team": {"blue"}}},
		{"service", ServicePrincipal("logs.amazonaws.com"), map[string][]string{
			KeyPrincipalIsAWSService: {"true"}, KeyPrincipalServiceName: {"logs.amazonaws.com"}, KeyViaAWSService: {"false"}}},
		{"anonymous", AnonymousPrincipal(), map[string][]string{KeyPrincipalType: {"Anonymous"},
			KeyPrincipalIsAWSService: {"false"}, KeyViaAWSService: {"false"}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := NewRequest(c.p, "kms:Encrypt", keyK)
			if fmt.Sprint(r.Context) != fmt.Sprint(c.want) {
				t.Errorf("Context =\n%v\nwant\n%v", r.Context, c.want)
			}
		})
	}
}

func TestRequestHelpers(t *testing.T) {
	r := NewRequest(principals["alice"], "kms:Encrypt", keyK)
	r.SetEncryptionContext(map[string]string{"tenant": "t-1", "purpose": "backup"})
	r.SetTime(time.Date(2024, 6, 1, 14, 0, 0, 0, time.FixedZone("CEST", 2*3600)))
	r.SetBool(KeySecureTransport, true)
	r.SetInt(KeyRotationPeriodInDays, 365)
	r.Set(KeyViaService, "s3.us-east-1.amazonaws.com")
	want := map[string]string{
		KeyEncryptionContextKeys:          "[purpose tenant]",
		EncryptionContextKey("purpose"):   "[backup]",
		EncryptionContextKey("tenant"):    "[t-1]",
		KeyCurrentTime:                    "[2024-06-01T12:00:00Z]",
		KeyEpochTime:                      "[1717243200]",
		KeySecureTransport:                "[true]",
		KeyRotationPeriodInDays:           "[365]",
		KeyViaService:                     "[s3.us-east-1.amazonaws.com]",
		"kms:EncryptionContext:not-there": "[]",
	}
	keys := make([]string, 0, len(want))
	for k := range want {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		t.Run(k, func(t *testing.T) {
			if got := fmt.Sprint(r.Context[k]); got != want[k] {
				t.Errorf("%s = %s, want %s", k, got, want[k])
			}
		})
	}
	t.Run("empty-context-removes-keys", func(t *testing.T) {
		r.SetEncryptionContext(nil)
		if _, ok := r.Context[KeyEncryptionContextKeys]; ok {
			t.Error("kms:EncryptionContextKeys still set")
		}
	})
	t.Run("set-without-values-removes", func(t *testing.T) {
		r.Set(KeyViaService)
		if _, ok := r.Context[KeyViaService]; ok {
			t.Error("kms:ViaService still set")
		}
	})
}

func TestReasonStrings(t *testing.T) {
	for r := AllowedByKeyPolicy; r <= NoIAMAllows; r++ {
		t.Run(fmt.Sprint(uint8(r)), func(t *testing.T) {
			if strings.HasPrefix(r.String(), "Reason(") {
				t.Errorf("reason %d has no name", r)
			}
			if want := r <= AllowedAsRoot; r.Allowed() != want {
				t.Errorf("%v.Allowed() = %v", r, r.Allowed())
			}
		})
	}
}

// TestConcurrentEvaluate shares one policy between goroutines (run with -race).
func TestConcurrentEvaluate(t *testing.T) {
	p := mustParse(t, string(library["ec-bench"]), KeyPolicy)
	done := make(chan Decision, 8)
	for i := 0; i < cap(done); i++ {
		go func() {
			r := NewRequest(principals["app"], "kms:Encrypt", keyK)
			r.SetEncryptionContext(map[string]string{"purpose": "backup", "tenant": "t-1"})
			d := NotApplicable
			for j := 0; j < 200; j++ {
				d = p.Evaluate(r)
			}
			done <- d
		}()
	}
	for i := 0; i < cap(done); i++ {
		if d := <-done; d != Allow {
			t.Errorf("decision %v", d)
		}
	}
}
