package xksserver

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"

	"github.com/kmsd/kmsd/internal/xks"
)

// Credential is one SigV4 credential of a logical key store.
type Credential struct {
	AccessKeyID string
	Secret      string
}

var (
	akidRe   = regexp.MustCompile(`^[A-Z2-7]{20,30}$`)
	secretRe = regexp.MustCompile(`^[a-zA-Z0-9/+=]{43,64}$`)
)

// Policy is the part of a key store's configuration that can change while the proxy
// runs (SIGHUP): credentials, which keys it may use, and secondary authorization.
type Policy struct {
	// Credentials: at least one; two (or more) at once let credentials rotate without
	// downtime.
	Credentials []Credential
	// Keys, when not empty, is the allow-list of external key ids this store may use;
	// other ids are KeyNotFoundException.
	Keys []string
	// DisabledKeys are reported DISABLED and refused with InvalidStateException, for
	// key managers (PKCS#11) that have no disabled state of their own.
	DisabledKeys []string
	// Disabled makes every API of the store answer InvalidStateException.
	Disabled bool
	// Rules are the optional secondary authorization (see Rule).
	Rules []Rule
	// Sources, when not empty, are the only client networks this key store answers:
	// a request from any other address gets 403 AccessDeniedException on every API,
	// GetHealthStatus included (see checkSource). Empty: every address.
	Sources []netip.Prefix
	// RateLimit is the store's request quota in requests per second (0: none), with
	// bursts of up to Burst requests (default: one second's worth).
	RateLimit float64
	Burst     int
}

// Validate checks the policy once, at start or reload.
func (p *Policy) Validate() error {
	if len(p.Credentials) == 0 {
		return errors.New("at least one SigV4 credential is required")
	}
	seen := map[string]bool{}
	for _, c := range p.Credentials {
		if !akidRe.MatchString(c.AccessKeyID) {
			return fmt.Errorf("access key id %q: must be 20-30 characters of A-Z and 2-7", c.AccessKeyID)
		}
		if !secretRe.MatchString(c.Secret) {
			return fmt.Errorf("secret of access key id %s: must be 43-64 characters of A-Z a-z 0-9 / + =", c.AccessKeyID)
		}
		if seen[c.AccessKeyID] {
			return fmt.Errorf("access key id %s listed twice", c.AccessKeyID)
		}
		seen[c.AccessKeyID] = true
	}
	for _, k := range slices.Concat(p.Keys, p.DisabledKeys) {
		if !xks.ValidKeyID(k) {
			return fmt.Errorf("key id %q: 1-128 characters of A-Z a-z 0-9 . _ -", k)
		}
	}
	for i, r := range p.Rules {
		if r.Effect != "" && r.Effect != Allow && r.Effect != Deny {
			return fmt.Errorf("rule %d (%s): effect must be %q or %q", i, r.Name, Allow, Deny)
		}
	}
	for _, pr := range p.Sources {
		if !pr.IsValid() {
			return fmt.Errorf("allowed source %v: not a valid CIDR prefix", pr)
		}
	}
	if p.RateLimit < 0 || p.Burst < 0 {
		return errors.New("rate limit and burst must not be negative")
	}
	return nil
}

// Secret implements sigv4.SecretLookup over the policy's credentials.
func (p *Policy) Secret(akid string) (string, bool) {
	for _, c := range p.Credentials {
		if c.AccessKeyID == akid {
			return c.Secret, true
		}
	}
	return "", false
}

func (p *Policy) allowsKey(id string) bool {
	return len(p.Keys) == 0 || slices.Contains(p.Keys, id)
}

func (p *Policy) keyDisabled(id string) bool { return slices.Contains(p.DisabledKeys, id) }

// Rule effects.
const (
	Allow = "allow"
	Deny  = "deny"
)

// Rule is one secondary-authorization statement over requestMetadata. Each non-empty
// field is a list of patterns ('*' matches any run of characters, '?' one character),
// and the request's value must match one of them; empty fields match anything. A
// request matches a rule when every non-empty field matches.
//
// Decision: GetHealthStatus is never subject to rules (to refuse a KMS at health, use
// the network rule, Policy.Sources). Otherwise a matching deny rule
// denies; if any allow rule exists, some allow rule must match; with no rules at all,
// everything is allowed. An absent metadata value is the empty string, so a rule on
// kmsKeyArn never matches GetKeyMetadata calls made by CreateKey (which carry none)
// unless it lists a pattern matching "" such as "*".
type Rule struct {
	Name        string
	Effect      string   // "allow" (default) or "deny"
	Principals  []string // awsPrincipalArn
	Operations  []string // kmsOperation
	KeyARNs     []string // kmsKeyArn
	SourceVPCs  []string // awsSourceVpc
	SourceVPCEs []string // awsSourceVpce
	KeyIDs      []string // externalKeyId
}

func (r *Rule) matches(md *xks.RequestMetadata, keyID string) bool {
	return matchAny(r.Principals, md.AWSPrincipalARN) && matchAny(r.Operations, md.KMSOperation) &&
		matchAny(r.KeyARNs, md.KMSKeyARN) && matchAny(r.SourceVPCs, md.AWSSourceVPC) &&
		matchAny(r.SourceVPCEs, md.AWSSourceVPCE) && matchAny(r.KeyIDs, keyID)
}

// authorize applies the rules; it returns the name of the deciding rule for logs.
func (p *Policy) authorize(md *xks.RequestMetadata, keyID string) (ok bool, rule string) {
	hasAllow := false
	for i := range p.Rules {
		r := &p.Rules[i]
		if r.Effect == Deny && r.matches(md, keyID) {
			return false, ruleName(r, i)
		}
	}
	for i := range p.Rules {
		r := &p.Rules[i]
		if r.Effect == Deny {
			continue
		}
		hasAllow = true
		if r.matches(md, keyID) {
			return true, ruleName(r, i)
		}
	}
	if hasAllow {
		return false, "no allow rule matched"
	}
	return true, ""
}

func ruleName(r *Rule, i int) string {
	if r.Name != "" {
		return r.Name
	}
	return fmt.Sprintf("rule[%d]", i)
}

func matchAny(patterns []string, s string) bool {
	if len(patterns) == 0 {
		return true
	}
	for _, p := range patterns {
		if glob(p, s) {
			return true
		}
	}
	return false
}

// glob matches s against p where '*' is any run of characters (including '/' and
// ':', which ARNs contain) and '?' any one character.
func glob(p, s string) bool {
	px, sx := 0, 0
	nextP, nextS := -1, -1
	for px < len(p) || sx < len(s) {
		if px < len(p) {
			switch c := p[px]; c {
			case '*':
				nextP, nextS = px, sx+1
				px++
				continue
			case '?':
				if sx < len(s) {
					px++
					sx++
					continue
				}
			default:
				if sx < len(s) && s[sx] == c {
					px++
					sx++
					continue
				}
			}
		}
		if nextS > 0 && nextS <= len(s) {
			px, sx = nextP, nextS
			continue
		}
		return false
	}
	return true
}
