package policy

import (
	"encoding/json"
	"errors"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"
)

// seedDocuments collects every policy document of the case files.
func seedDocuments(t testing.TB) []string {
	var docs []string
	for _, raw := range library {
		docs = append(docs, string(raw))
	}
	for _, c := range loadParseCases(t) {
		docs = append(docs, c.document(t))
	}
	for _, c := range loadEvalCases(t) {
		docs = append(docs, c.document(t, parseKind(t, c.Kind)))
	}
	var f decideFile
	readCases(t, "decide.json", &f)
	for _, list := range [][]decideCase{f.Decide, f.IAMOnly, f.Lockout} {
		for _, c := range list {
			if c.KeyPolicy != nil && string(c.KeyPolicy) != "null" {
				docs = append(docs, policyText(t, c.KeyPolicy))
			}
			for _, ref := range c.Identity {
				docs = append(docs, policyText(t, ref))
			}
		}
	}
	return docs
}

// fuzzRequests are evaluated against every document that parses.
func fuzzRequests() []*Request {
	var out []*Request
	for _, name := range []string{"alice", "app", "root", "carol", "anonymous"} {
		r := NewRequest(principals[name], "kms:Encrypt", keyK)
		r.SetEncryptionContext(map[string]string{"purpose": "backup", "tenant": "t-1"})
		r.Set(KeySourceIP, "203.0.113.7")
		r.Set(KeyCurrentTime, "2024-06-01T12:00:00Z")
		r.Set(KeyGrantOperations, "Decrypt", "Encrypt")
		out = append(out, r)
	}
	out = append(out, NewRequest(ServicePrincipal("logs.amazonaws.com"), "kms:CreateKey", "*"))
	return out
}

// FuzzParse feeds arbitrary documents to Parse and evaluates whatever it
// accepts. Neither may panic; an accepted document must evaluate the same
// way twice, and a rejected one must carry a client message.
func FuzzParse(f *testing.F) {
	for _, d := range seedDocuments(f) {
		f.Add(d)
	}
	reqs := fuzzRequests()
	f.Fuzz(func(t *testing.T, doc string) {
		for _, kind := range []Kind{KeyPolicy, IdentityPolicy} {
			p, err := Parse(doc, kind)
			if err != nil {
				pe, ok := err.(*Error)
				if !ok || pe.Message == "" || p != nil {
					t.Fatalf("Parse returned %v, %T %v", p, err, err)
				}
				continue
			}
			p.Principals()
			p.Sids()
			if err := CheckConditionKeys(p); err != nil && !errors.Is(err, ErrMalformed) {
				t.Fatalf("CheckConditionKeys: %v", err)
			}
			for _, k := range p.ConditionKeyRefs() {
				if !p.References(k) {
					t.Fatalf("References(%q) = false for a key the policy reads", k)
				}
			}
			for _, r := range reqs {
				d := p.Evaluate(r)
				if d2 := p.Explain(r).Decision; d2 != d {
					t.Fatalf("Evaluate %v, Explain %v", d, d2)
				}
				if kind == KeyPolicy {
					Decide(p, Identity{}, NoGrant, r)
					_ = CheckLockout(p, r)
				} else {
					Decide(nil, Identity{Policies: []*Policy{p}}, NoGrant, r)
					Decide(p, Identity{Session: []*Policy{p}}, GrantToRole, r)
					DecideIAMOnly(Identity{Policies: []*Policy{p}}, r)
					DecideIAMOnly(Identity{Policies: []*Policy{p}, Session: []*Policy{p}}, r)
				}
			}
		}
	})
}

// globRegexp is the reference meaning of a wildcard pattern.
func globRegexp(pat string, fold bool) *regexp.Regexp {
	var b strings.Builder
	b.WriteString(`^(?s)`)
	if fold {
		b.WriteString(`(?i)`)
	}
	for _, c := range pat {
		switch c {
		case '*':
			b.WriteString(`.*`)
		case '?':
			b.WriteString(`.`)
		default:
			b.WriteString(regexp.QuoteMeta(string(c)))
		}
	}
	b.WriteString(`$`)
	return regexp.MustCompile(b.String())
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// FuzzGlob checks the wildcard matcher against regexp.
func FuzzGlob(f *testing.F) {
	for _, s := range [][2]string{
		{"kms:*", "kms:Encrypt"}, {"kms:?ncrypt", "kms:Decrypt"}, {"a*b*c", "aXbYbZc"}, {"*a", "aaa"},
		{"a?", "aé"}, {"**", ""}, {"?*?", "x"}, {"arn:aws:kms:*:111122223333:key/*", keyK}, {"*ab*ab", "abxab"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, pat, s string) {
		if !utf8.ValidString(pat) || !utf8.ValidString(s) || len(pat) > 64 {
			return
		}
		p := compilePattern(pat, true, false)
		if got, want := p.match(s, nil, exactCase), globRegexp(pat, false).MatchString(s); got != want {
			t.Fatalf("match(%q, %q) = %v, regexp says %v", pat, s, got, want)
		}
		if isASCII(pat) && isASCII(s) {
			want := globRegexp(pat, true).MatchString(s)
			if got := p.match(s, nil, foldFull); got != want {
				t.Fatalf("foldFull match(%q, %q) = %v, regexp says %v", pat, s, got, want)
			}
			a := compileAction(pat)
			if got := a.match(s, nil, foldASCII); got != want {
				t.Fatalf("foldASCII match(%q, %q) = %v, regexp says %v", pat, s, got, want)
			}
		}
	})
}

// negations pairs each operator with its negated form.
var negations = [][2]string{
	{"StringEquals", "StringNotEquals"},
	{"StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase"},
	{"StringLike", "StringNotLike"},
	{"NumericEquals", "NumericNotEquals"},
	{"DateEquals", "DateNotEquals"},
	{"IpAddress", "NotIpAddress"},
	{"ArnEquals", "ArnNotEquals"},
	{"ArnLike", "ArnNotLike"},
}

// FuzzCondition evaluates every operator on arbitrary policy and request
// values: it must not panic, and for a single-valued key an operator and
// its negation must disagree.
func FuzzCondition(f *testing.F) {
	for _, s := range [][2]string{
		{"backup", "backup"}, {"b*", "backup"}, {"100", "99.5"}, {"2024-01-01T00:00:00Z", "1704067200"},
		{"203.0.113.0/24", "203.0.113.9"}, {"arn:aws:iam::*:role/*", "arn:aws:iam::111122223333:role/App"},
		{"${aws:username}", "alice"}, {"true", "TRUE"}, {"AAEC", "AAEC"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, value, reqValue string) {
		v, err := json.Marshal(value)
		if err != nil {
			return
		}
		r := NewRequest(principals["alice"], "kms:Encrypt", keyK)
		r.Set("test:key", reqValue)
		eval := func(op string) (Decision, bool) {
			doc := `{"Version":"2012-10-17","Statement":{"Effect":"Allow","Principal":"*","Action":"*","Resource":"*","Condition":{"` +
				op + `":{"test:key":` + string(v) + `}}}}`
			p, err := Parse(doc, KeyPolicy)
			if err != nil {
				return 0, false // e.g. a date operator with a value that is no date
			}
			return p.Evaluate(r), true
		}
		for op := range operators {
			eval(op)
			eval("ForAnyValue:" + op + "IfExists")
		}
		for _, pair := range negations {
			pos, ok1 := eval(pair[0])
			neg, ok2 := eval(pair[1])
			if ok1 && ok2 && pos == neg {
				t.Fatalf("%s and %s both %v for %q vs %q", pair[0], pair[1], pos, value, reqValue)
			}
		}
	})
}
