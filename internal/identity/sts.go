package identity

import (
	"bytes"
	"compress/flate"
	"encoding/json"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/kmsd/kmsd/internal/policy"
)

// Condition keys of an AssumeRole request (trust policy evaluation).
const (
	keyExternalID        = "sts:ExternalId"
	keyRoleSessionName   = "sts:RoleSessionName"
	keyStsSourceIdentity = "sts:SourceIdentity"
	keyTransitiveTagKeys = "sts:TransitiveTagKeys"
)

// STS quotas, as AWS documents them.
const (
	maxSessionPolicyLen = 2048
	maxPolicyARNs       = 10
	maxSessionTags      = 50
	minDuration         = 900
	maxDuration         = 43200
	chainedMaxDuration  = 3600
	// packedBudget is the allotted space of the packed form of session
	// policies and tags, in bytes of DEFLATE output. AWS does not document
	// its packed binary format; kmsd estimates it by compressing the
	// compact inline policy, the policy ARNs and the session tags together,
	// which like AWS's format rewards repetition and punishes long random
	// values (50 tags of random 128-character keys and 256-character values
	// exceed it; a 2048-character policy does not).
	packedBudget = 2048
)

// Tag is one session tag.
type Tag struct{ Key, Value string }

// AssumeRoleInput is an AssumeRole request. Optional parameters are nil
// when absent, so that an empty value is validated as AWS does.
type AssumeRoleInput struct {
	RoleARN, RoleSessionName string
	DurationSeconds          *int64
	// Policy is the inline session policy; PolicyARNs name managed session
	// policies.
	Policy            *string
	PolicyARNs        []string
	Tags              []Tag
	TransitiveTagKeys []string
	ExternalID        *string
	SourceIdentity    *string
	// Parameters kmsd does not implement, refused when set.
	SerialNumber, TokenCode *string
	ProvidedContexts        int

	// SourceIP and SecureTransport feed aws:SourceIp and
	// aws:SecureTransport of the trust policy evaluation.
	SourceIP        string
	SecureTransport bool
}

// Credentials are temporary credentials of a role session.
type Credentials struct {
	AccessKeyID, SecretAccessKey, SessionToken string
	Expiration                                 time.Time
	AssumedRoleARN, AssumedRoleID              string
	// PackedPolicySize is the percentage of the allotted space the session
	// policies and tags use; -1 when none were passed.
	PackedPolicySize int
	SourceIdentity   string
}

// validation collects Coral-style validation errors ("1 validation error
// detected: Value 'x' at 'field' failed to satisfy constraint: …").
type validation []string

func (v *validation) add(value, field, constraint string) {
	*v = append(*v, "Value '"+value+"' at '"+field+"' failed to satisfy constraint: Member must "+constraint)
}

func (v *validation) length(value, field string, min, max int) {
	n := len([]rune(value))
	if n < min {
		v.add(value, field, "have length greater than or equal to "+itoa(min))
	}
	if n > max {
		v.add(value, field, "have length less than or equal to "+itoa(max))
	}
}

func (v *validation) pattern(value, field, pattern string, ok func(rune) bool) {
	for _, c := range value {
		if !ok(c) {
			v.add(value, field, "satisfy regular expression pattern: "+pattern)
			return
		}
	}
}

func (v validation) err() error {
	switch len(v) {
	case 0:
		return nil
	case 1:
		return &Error{"ValidationError", "1 validation error detected: " + v[0], ErrInvalid}
	}
	return &Error{"ValidationError", itoa(len(v)) + " validation errors detected: " + strings.Join(v, "; "), ErrInvalid}
}

func word(c rune) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_'
}

// sessionNameRune is [\w+=,.@-] (RoleSessionName, SourceIdentity).
func sessionNameRune(c rune) bool { return word(c) || strings.ContainsRune("+=,.@-", c) }

// externalIDRune is [\w+=,.@:\/-].
func externalIDRune(c rune) bool { return word(c) || strings.ContainsRune("+=,.@:/-", c) }

// tagRune is [\p{L}\p{Z}\p{N}_.:/=+\-@].
func tagRune(c rune) bool {
	return unicode.IsLetter(c) || unicode.In(c, unicode.Z) || unicode.IsNumber(c) || strings.ContainsRune("_.:/=+-@", c)
}

// policyRune is [\u0009\u000A\u000D\u0020-\u00FF].
func policyRune(c rune) bool { return c == '\t' || c == '\n' || c == '\r' || c >= 0x20 && c <= 0xff }

// validate checks the request's parameters as STS's model constrains them.
func (in *AssumeRoleInput) validate() error {
	var v validation
	if in.RoleARN == "" {
		v = append(v, "Value null at 'roleArn' failed to satisfy constraint: Member must not be null")
	} else {
		v.length(in.RoleARN, "roleArn", 20, 2048)
	}
	if in.RoleSessionName == "" {
		v = append(v, "Value null at 'roleSessionName' failed to satisfy constraint: Member must not be null")
	} else {
		v.length(in.RoleSessionName, "roleSessionName", 2, 64)
		v.pattern(in.RoleSessionName, "roleSessionName", `[\w+=,.@-]*`, sessionNameRune)
	}
	if len(in.PolicyARNs) > maxPolicyARNs {
		v.add("["+strings.Join(in.PolicyARNs, ", ")+"]", "policyArns", "have length less than or equal to "+itoa(maxPolicyARNs))
	}
	for i, arn := range in.PolicyARNs {
		v.length(arn, "policyArns."+itoa(i+1)+".member.arn", 20, 2048)
	}
	if in.Policy != nil {
		v.length(*in.Policy, "policy", 1, maxSessionPolicyLen)
		v.pattern(*in.Policy, "policy", `[\u0009\u000A\u000D\u0020-\u00FF]+`, policyRune)
	}
	if d := in.DurationSeconds; d != nil {
		s := strconv.FormatInt(*d, 10)
		if *d < minDuration {
			v.add(s, "durationSeconds", "have value greater than or equal to "+itoa(minDuration))
		}
		if *d > maxDuration {
			v.add(s, "durationSeconds", "have value less than or equal to "+itoa(maxDuration))
		}
	}
	if len(in.Tags) > maxSessionTags {
		v.add(tagList(in.Tags), "tags", "have length less than or equal to "+itoa(maxSessionTags))
	}
	for i, t := range in.Tags {
		f := "tags." + itoa(i+1) + ".member."
		v.length(t.Key, f+"key", 1, 128)
		v.pattern(t.Key, f+"key", `[\p{L}\p{Z}\p{N}_.:/=+\-@]+`, tagRune)
		v.length(t.Value, f+"value", 0, 256)
		v.pattern(t.Value, f+"value", `[\p{L}\p{Z}\p{N}_.:/=+\-@]*`, tagRune)
	}
	if len(in.TransitiveTagKeys) > maxSessionTags {
		v.add("["+strings.Join(in.TransitiveTagKeys, ", ")+"]", "transitiveTagKeys", "have length less than or equal to "+itoa(maxSessionTags))
	}
	for i, k := range in.TransitiveTagKeys {
		f := "transitiveTagKeys." + itoa(i+1) + ".member"
		v.length(k, f, 1, 128)
		v.pattern(k, f, `[\p{L}\p{Z}\p{N}_.:/=+\-@]+`, tagRune)
	}
	if in.ExternalID != nil {
		v.length(*in.ExternalID, "externalId", 2, 1224)
		v.pattern(*in.ExternalID, "externalId", `[\w+=,.@:\/-]*`, externalIDRune)
	}
	if in.SerialNumber != nil {
		v.length(*in.SerialNumber, "serialNumber", 9, 256)
	}
	if in.TokenCode != nil {
		v.length(*in.TokenCode, "tokenCode", 6, 6)
	}
	if in.SourceIdentity != nil {
		v.length(*in.SourceIdentity, "sourceIdentity", 2, 64)
		v.pattern(*in.SourceIdentity, "sourceIdentity", `[\w+=,.@-]*`, sessionNameRune)
	}
	return v.err()
}

func tagList(tags []Tag) string {
	parts := make([]string, len(tags))
	for i, t := range tags {
		parts[i] = "Tag(key=" + t.Key + ", value=" + t.Value + ")"
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

// sessionTags works out the tags of the new session: the caller's
// transitive tags (role chaining) and the tags passed, which may not
// repeat a key (tag keys are case-insensitive) nor override an inherited
// transitive tag. It returns the tags and the transitive keys.
func sessionTags(caller *Identity, in *AssumeRoleInput) (map[string]string, []string, error) {
	tags := map[string]string{}
	seen := map[string]bool{}
	var transitive []string
	if caller.Principal.Type == policy.AssumedRole {
		for _, k := range caller.TransitiveTagKeys {
			if v, ok := caller.Principal.Tags[k]; ok {
				tags[k] = v
				seen[strings.ToLower(k)] = true
				transitive = append(transitive, k)
			}
		}
	}
	inherited := len(tags)
	passed := map[string]bool{}
	for _, t := range in.Tags {
		lk := strings.ToLower(t.Key)
		if passed[lk] {
			return nil, nil, &Error{"ValidationError", "Duplicate tag keys found. Please note that Tag keys are case insensitive.", ErrInvalid}
		}
		if seen[lk] {
			return nil, nil, &Error{"InvalidParameterValue", "One of the specified transitive tag keys can't be set because it conflicts with a transitive tag key from the calling session.", ErrInvalid}
		}
		passed[lk] = true
		tags[t.Key] = t.Value
	}
	if inherited > 0 && len(tags) > maxSessionTags {
		return nil, nil, &Error{"ValidationError", "The number of session tags, including transitive tags from the calling session, exceeds " + itoa(maxSessionTags) + ".", ErrInvalid}
	}
	for _, k := range in.TransitiveTagKeys {
		found := ""
		for _, t := range in.Tags {
			if strings.EqualFold(t.Key, k) {
				found = t.Key
			}
		}
		if found == "" {
			return nil, nil, &Error{"InvalidParameterValue", "The specified transitive tag key must be included in the requested tags.", ErrInvalid}
		}
		transitive = append(transitive, found)
	}
	if len(tags) == 0 {
		tags = nil
	}
	return tags, transitive, nil
}

// packedPolicySize estimates, in percent of the allotted space, how much
// the packed form of the session policies and tags takes (see
// packedBudget); -1 when there are none.
func packedPolicySize(in *AssumeRoleInput, tags map[string]string) int {
	if in.Policy == nil && len(in.PolicyARNs) == 0 && len(tags) == 0 {
		return -1
	}
	var raw bytes.Buffer
	if in.Policy != nil {
		if json.Compact(&raw, []byte(*in.Policy)) != nil {
			raw.WriteString(*in.Policy)
		}
	}
	for _, a := range in.PolicyARNs {
		raw.WriteString("\x00" + a)
	}
	keys := make([]string, 0, len(tags))
	for k := range tags {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		raw.WriteString("\x00" + k + "\x01" + tags[k])
	}
	var out bytes.Buffer
	w, _ := flate.NewWriter(&out, flate.BestCompression)
	w.Write(raw.Bytes())
	w.Close()
	return (out.Len()*100 + packedBudget - 1) / packedBudget
}

func denied(caller *Identity, action, resource string) error {
	return &Error{"AccessDenied", "User: " + caller.Principal.ARN + " is not authorized to perform: " + action + " on resource: " + resource, ErrDenied}
}

// AssumeRole issues temporary credentials for in.RoleARN to caller, if
// the role's trust policy (and, where it trusts only the caller's account
// or the caller is in another account, the caller's own policies) allow
// sts:AssumeRole — and sts:TagSession when tags are passed,
// sts:SetSourceIdentity when the session gets a source identity (passed,
// or inherited by role chaining). The trust policy sees
// sts:ExternalId, sts:RoleSessionName, sts:SourceIdentity,
// aws:RequestTag/<key>, aws:TagKeys and sts:TransitiveTagKeys besides the
// global keys of the caller.
//
// The session's permissions are those of the role's identity policies,
// limited by the session policies (Policy; PolicyArns naming managed
// policies, of which kmsd has none, so any is refused). Session tags
// become the session's aws:PrincipalTag/<key>, the source identity its
// aws:SourceIdentity; a session assuming another role passes on its
// transitive tags and its source identity.
func (s *Store) AssumeRole(caller *Identity, in *AssumeRoleInput) (*Credentials, error) {
	if err := in.validate(); err != nil {
		return nil, err
	}
	p, err := policy.PrincipalFromARN(in.RoleARN)
	if err != nil || p.Type != policy.Role {
		return nil, &Error{"ValidationError", in.RoleARN + " is invalid", ErrInvalid}
	}
	if in.SerialNumber != nil || in.TokenCode != nil {
		return nil, &Error{"AccessDenied", "MultiFactorAuthentication failed: kmsd has no MFA devices, so SerialNumber and TokenCode are not supported.", ErrDenied}
	}
	if in.ProvidedContexts > 0 {
		return nil, &Error{"ValidationError", "kmsd does not support ProvidedContexts (trusted identity propagation).", ErrInvalid}
	}
	var sessionPolicies []*policy.Policy
	if in.Policy != nil {
		sp, err := policy.Parse(*in.Policy, policy.IdentityPolicy)
		if err != nil {
			return nil, malformedPolicy(err)
		}
		sessionPolicies = []*policy.Policy{sp}
	}
	if len(in.PolicyARNs) > 0 {
		// kmsd keeps inline policies only: no managed policy exists to
		// name. Refusing keeps a session from having more permissions than
		// its creator asked for.
		return nil, &Error{"NoSuchEntity", "Policy " + in.PolicyARNs[0] + " does not exist or is not attachable.", ErrNoSuchEntity}
	}
	tags, transitive, err := sessionTags(caller, in)
	if err != nil {
		return nil, err
	}
	packed := packedPolicySize(in, tags)
	if packed > 100 {
		return nil, &Error{"PackedPolicyTooLarge", "Packed policy consumes " + itoa(packed) + "% of allotted space, please use smaller policy.", ErrLimit}
	}
	sourceIdentity := caller.Principal.SourceIdentity
	if in.SourceIdentity != nil {
		if sourceIdentity != "" && *in.SourceIdentity != sourceIdentity {
			return nil, &Error{"ValidationError", "The source identity of a role session cannot be changed: it is " + sourceIdentity + " in the calling session.", ErrInvalid}
		}
		sourceIdentity = *in.SourceIdentity
	}
	chained := caller.Principal.Type == policy.AssumedRole

	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.roles[p.Account+"/"+p.Name]
	if !ok || r.ARN() != in.RoleARN {
		return nil, denied(caller, "sts:AssumeRole", in.RoleARN)
	}
	req := s.trustRequest(caller, in, sourceIdentity)
	id := caller.AuthzIdentity()
	if allowed, _ := policy.Decide(r.trust, id, policy.NoGrant, req); !allowed {
		return nil, denied(caller, "sts:AssumeRole", in.RoleARN)
	}
	// Session tags and a source identity each need their own permission in
	// the trust policy, evaluated with the same condition keys. A source
	// identity inherited through role chaining needs it too, as in AWS.
	for _, extra := range []struct {
		action string
		needed bool
	}{{"sts:TagSession", len(in.Tags) > 0}, {"sts:SetSourceIdentity", sourceIdentity != ""}} {
		if !extra.needed {
			continue
		}
		x := *req
		x.Action = extra.action
		if allowed, _ := policy.Decide(r.trust, id, policy.NoGrant, &x); !allowed {
			return nil, denied(caller, extra.action, in.RoleARN)
		}
	}
	duration := int64(3600)
	if in.DurationSeconds != nil {
		duration = *in.DurationSeconds
	}
	if chained && duration > chainedMaxDuration {
		return nil, &Error{"ValidationError", "The requested DurationSeconds exceeds the 1 hour session limit for roles assumed by role chaining.", ErrInvalid}
	}
	if duration > int64(r.MaxSession) {
		return nil, &Error{"ValidationError", "The requested DurationSeconds exceeds the MaxSessionDuration set for this role.", ErrInvalid}
	}
	akid, secret, err := newKeyPair(s.rand, "ASIA")
	if err != nil {
		return nil, err
	}
	sessARN := sessionARN(r, in.RoleSessionName)
	exp := s.now().Add(time.Duration(duration) * time.Second).UTC().Truncate(time.Second)
	token, err := s.sealToken(akid, &sealedSession{Secret: secret, Account: r.Account, Role: r.Name, RoleID: r.ID,
		Session: in.RoleSessionName, Tags: tags, Transitive: transitive, Source: sourceIdentity, Policy: in.Policy,
		Expires: exp.Unix()})
	if err != nil {
		return nil, err
	}
	sess := &Identity{
		AccessKeyID: akid,
		Principal: policy.Principal{Type: policy.AssumedRole, ARN: sessARN, Account: r.Account, Name: r.Name,
			Session: in.RoleSessionName, UserID: r.ID + ":" + in.RoleSessionName, RoleARN: r.ARN(),
			Tags: tags, SourceIdentity: sourceIdentity},
		Policies: r.parsed, SessionPolicies: sessionPolicies, TransitiveTagKeys: transitive,
		SessionToken: token, Expires: exp,
	}
	s.cacheSession(akid, &session{secret: secret, token: token, expires: exp, ident: sess}, s.now())
	return &Credentials{AccessKeyID: akid, SecretAccessKey: secret, SessionToken: token, Expiration: exp,
		AssumedRoleARN: sessARN, AssumedRoleID: r.ID + ":" + in.RoleSessionName,
		PackedPolicySize: packed, SourceIdentity: sourceIdentity}, nil
}

// trustRequest is the sts:AssumeRole request the trust policy is
// evaluated against.
func (s *Store) trustRequest(caller *Identity, in *AssumeRoleInput, sourceIdentity string) *policy.Request {
	req := policy.NewRequest(caller.Principal, "sts:AssumeRole", in.RoleARN)
	req.SetTime(s.now())
	req.SetBool(policy.KeySecureTransport, in.SecureTransport)
	if in.SourceIP != "" {
		req.Set(policy.KeySourceIP, in.SourceIP)
	}
	req.Set(keyRoleSessionName, in.RoleSessionName)
	if in.ExternalID != nil {
		req.Set(keyExternalID, *in.ExternalID)
	}
	if sourceIdentity != "" {
		req.Set(keyStsSourceIdentity, sourceIdentity)
	}
	keys := make([]string, 0, len(in.Tags))
	for _, t := range in.Tags {
		req.Set(policy.KeyRequestTagPrefix+t.Key, t.Value)
		keys = append(keys, t.Key)
	}
	req.Set(policy.KeyTagKeys, keys...)
	req.Set(keyTransitiveTagKeys, in.TransitiveTagKeys...)
	return req
}
