package policy

import (
	"errors"
	"sort"
	"strconv"
	"strings"
	"time"
)

// PrincipalType is the kind of identity that makes a request, named as
// CloudTrail's userIdentity.type names it.
type PrincipalType string

// Principal types.
const (
	Root            PrincipalType = "Root"
	IAMUser         PrincipalType = "IAMUser"
	Role            PrincipalType = "Role" // a role acting as itself (kmsd extension)
	AssumedRole     PrincipalType = "AssumedRole"
	FederatedUser   PrincipalType = "FederatedUser"
	WebIdentityUser PrincipalType = "WebIdentityUser"
	SAMLUser        PrincipalType = "SAMLUser"
	AWSService      PrincipalType = "AWSService"
	Anonymous       PrincipalType = "Anonymous"
)

// Principal is the identity a request acts as.
type Principal struct {
	Type PrincipalType
	// ARN: arn:aws:iam::111122223333:user/alice, …:root,
	// arn:aws:sts::111122223333:assumed-role/Admin/session; for AWSService
	// the service principal ("logs.amazonaws.com").
	ARN     string
	Account string // 12-digit account id; "" for services and anonymous
	// Name: the user name (IAMUser), the role name (Role, AssumedRole), the
	// federated user's name; "" for Root.
	Name    string
	Session string // role session name (AssumedRole)
	UserID  string // aws:userid, e.g. AIDA…, AROA…:session; the account id for Root
	// RoleARN is the full ARN of the role behind an assumed-role session,
	// path included (a session ARN drops the path). Optional.
	RoleARN string
	// Provider is the identity provider of WebIdentityUser and SAMLUser
	// principals, matched by a Federated principal element.
	Provider string
	// Tags are the session tags of a role session (aws:PrincipalTag/<key>),
	// or the tags of a user or role. Shared, never modified.
	Tags map[string]string
	// SourceIdentity is the source identity set on a role session
	// (aws:SourceIdentity); it persists through role chaining.
	SourceIdentity string
}

// isAWS reports whether p is an identity of an AWS account, one that
// account-level principals and IAM policies govern.
func (p *Principal) isAWS() bool {
	switch p.Type {
	case Root, IAMUser, Role, AssumedRole, FederatedUser:
		return true
	}
	return false
}

// partition is the ARN partition of p ("aws" by default).
func (p *Principal) partition() string {
	if strings.HasPrefix(p.ARN, "arn:") {
		if part, _, ok := strings.Cut(p.ARN[4:], ":"); ok && part != "" {
			return part
		}
	}
	return "aws"
}

// PrincipalFromARN derives a principal from its ARN: an account root, an
// IAM user or role, an assumed-role session or a federated user. UserID
// is left for the caller, who knows it.
func PrincipalFromARN(arn string) (Principal, error) {
	parts := strings.SplitN(arn, ":", 6)
	if len(parts) != 6 || parts[0] != "arn" || parts[1] == "" || parts[3] != "" || !isAccountID(parts[4]) {
		return Principal{}, errors.New("policy: not a principal ARN: " + strconv.Quote(arn))
	}
	p := Principal{ARN: arn, Account: parts[4]}
	res := parts[5]
	switch parts[2] {
	case "iam":
		switch {
		case res == "root":
			p.Type, p.UserID = Root, p.Account
			return p, nil
		case strings.HasPrefix(res, "user/"):
			p.Type, p.Name = IAMUser, lastSegment(res)
		case strings.HasPrefix(res, "role/"):
			p.Type, p.Name, p.RoleARN = Role, lastSegment(res), arn
		}
	case "sts":
		if rest, ok := strings.CutPrefix(res, "assumed-role/"); ok {
			role, session, ok := strings.Cut(rest, "/")
			if ok && role != "" && session != "" && !strings.Contains(session, "/") {
				p.Type, p.Name, p.Session = AssumedRole, role, session
			}
		} else if rest, ok := strings.CutPrefix(res, "federated-user/"); ok && rest != "" && !strings.Contains(rest, "/") {
			p.Type, p.Name = FederatedUser, rest
		}
	}
	if p.Type == "" || p.Name == "" {
		return Principal{}, errors.New("policy: not a principal ARN: " + strconv.Quote(arn))
	}
	return p, nil
}

// RootPrincipal is the root user of account.
func RootPrincipal(account string) Principal {
	return Principal{Type: Root, ARN: "arn:aws:iam::" + account + ":root", Account: account, UserID: account}
}

// ServicePrincipal is an AWS service calling on its own behalf, such as
// "logs.amazonaws.com".
func ServicePrincipal(service string) Principal {
	return Principal{Type: AWSService, ARN: service, Name: service}
}

// AnonymousPrincipal is an unauthenticated caller.
func AnonymousPrincipal() Principal {
	return Principal{Type: Anonymous, ARN: "anonymous"}
}

func lastSegment(res string) string {
	if i := strings.LastIndexByte(res, '/'); i >= 0 {
		return res[i+1:]
	}
	return res
}

func isAccountID(s string) bool {
	if len(s) != 12 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// Condition keys that KMS and IAM put in a request context. Use these
// (and EncryptionContextKey) rather than string literals.
const (
	KeyEncryptionContextPrefix = "kms:EncryptionContext:"
	KeyEncryptionContextKeys   = "kms:EncryptionContextKeys"
	KeyCallerAccount           = "kms:CallerAccount"
	KeyViaService              = "kms:ViaService"
	KeyGrantOperations         = "kms:GrantOperations"
	KeyGrantConstraintType     = "kms:GrantConstraintType"
	KeyGrantIsForAWSResource   = "kms:GrantIsForAWSResource"
	KeyGranteePrincipal        = "kms:GranteePrincipal"
	KeyRetiringPrincipal       = "kms:RetiringPrincipal"
	KeyKeySpec                 = "kms:KeySpec"
	KeyKeyUsage                = "kms:KeyUsage"
	KeyKeyOrigin               = "kms:KeyOrigin"
	KeyKeyAgreementAlgorithm   = "kms:KeyAgreementAlgorithm"
	KeyRequestAlias            = "kms:RequestAlias"
	KeyResourceAliases         = "kms:ResourceAliases"
	KeyEncryptionAlgorithm     = "kms:EncryptionAlgorithm"
	KeySigningAlgorithm        = "kms:SigningAlgorithm"
	KeyMacAlgorithm            = "kms:MacAlgorithm"
	KeyMessageType             = "kms:MessageType"
	KeyDataKeyPairSpec         = "kms:DataKeyPairSpec"
	KeyExpirationModel         = "kms:ExpirationModel"
	KeyValidTo                 = "kms:ValidTo"
	KeyWrappingAlgorithm       = "kms:WrappingAlgorithm"
	KeyWrappingKeySpec         = "kms:WrappingKeySpec"
	KeyMultiRegion             = "kms:MultiRegion"
	KeyMultiRegionKeyType      = "kms:MultiRegionKeyType"
	KeyPrimaryRegion           = "kms:PrimaryRegion"
	KeyReplicaRegion           = "kms:ReplicaRegion"
	KeyRotationPeriodInDays    = "kms:RotationPeriodInDays"
	KeyPendingWindowInDays     = "kms:ScheduleKeyDeletionPendingWindowInDays"
	KeyBypassLockoutCheck      = "kms:BypassPolicyLockoutSafetyCheck"
	KeyCustomerMasterKeySpec   = "kms:CustomerMasterKeySpec"  // deprecated name of kms:KeySpec
	KeyCustomerMasterKeyUsage  = "kms:CustomerMasterKeyUsage" // deprecated name of kms:KeyUsage
	KeyReEncryptOnSameKey      = "kms:ReEncryptOnSameKey"
	KeyCustomKeyStoreID        = "kms:CustomKeyStoreId" // not AWS's, never set: CheckConditionKeys refuses it

	KeyPrincipalArn     = "aws:PrincipalArn"
	KeyPrincipalAccount = "aws:PrincipalAccount"
	KeyPrincipalType    = "aws:PrincipalType"
	KeyUsername         = "aws:username"
	KeyUserID           = "aws:userid"
	KeySourceIP         = "aws:SourceIp"
	KeyCurrentTime      = "aws:CurrentTime"
	KeyEpochTime        = "aws:EpochTime"
	KeySecureTransport  = "aws:SecureTransport"
	KeyRequestedRegion  = "aws:RequestedRegion"
	KeyViaAWSService    = "aws:ViaAWSService"

	KeyPrincipalIsAWSService  = "aws:PrincipalIsAWSService"
	KeyPrincipalServiceName   = "aws:PrincipalServiceName"
	KeyMultiFactorAuthPresent = "aws:MultiFactorAuthPresent"
	KeyResourceAccount        = "aws:ResourceAccount"
	KeyTagKeys                = "aws:TagKeys"
	// Prefixes: the tag key follows ("aws:ResourceTag/env").
	KeyPrincipalTagPrefix = "aws:PrincipalTag/"
	KeyResourceTagPrefix  = "aws:ResourceTag/"
	KeyRequestTagPrefix   = "aws:RequestTag/"
	KeySourceIdentity     = "aws:SourceIdentity"
)

// EncryptionContextKey is the condition key of one encryption context
// pair: kms:EncryptionContext:<key>.
func EncryptionContextKey(key string) string { return KeyEncryptionContextPrefix + key }

// Request is what a policy is evaluated against: who asks, to do what, to
// which resource, and the condition keys of the call.
type Request struct {
	Principal Principal
	Action    string // "kms:Encrypt"
	Resource  string // the key ARN, or "*" for operations on no key
	// Context maps condition keys to their values. Keys are matched
	// case-insensitively; a key with no values counts as absent.
	Context map[string][]string
	// Shared holds condition keys that many requests have in common (a
	// principal's, the time's), in maps that are never modified, so that
	// a request need not copy them into Context. A key is looked up in
	// Context, then in each Shared map in order: the first that holds
	// the key (spelled the same) decides, even with no values, so Set
	// with no values hides a shared key.
	Shared []map[string][]string
}

// NewRequest starts a request and fills in the global condition keys that
// follow from the principal: aws:PrincipalArn (the role ARN for a role
// session), aws:PrincipalAccount, aws:PrincipalType, aws:userid,
// aws:username (IAM users only), kms:CallerAccount,
// aws:PrincipalIsAWSService, aws:PrincipalServiceName (services only),
// aws:ViaAWSService, aws:MultiFactorAuthPresent (temporary credentials
// only) and aws:PrincipalTag/<key> and
// aws:SourceIdentity.
func NewRequest(p Principal, action, resource string) *Request {
	r := &Request{Principal: p, Action: action, Resource: resource, Context: map[string][]string{}}
	if p.isAWS() {
		arn := p.ARN
		if p.Type == AssumedRole {
			arn = p.RoleARN
			if arn == "" {
				arn = "arn:" + p.partition() + ":iam::" + p.Account + ":role/" + p.Name
			}
		}
		r.Set(KeyPrincipalArn, arn)
		r.Set(KeyPrincipalAccount, p.Account)
		r.Set(KeyCallerAccount, p.Account)
	}
	switch p.Type {
	case Root:
		r.Set(KeyPrincipalType, "Account")
	case IAMUser:
		r.Set(KeyPrincipalType, "User")
		r.Set(KeyUsername, p.Name)
	case Role, AssumedRole:
		r.Set(KeyPrincipalType, "AssumedRole")
	case FederatedUser:
		r.Set(KeyPrincipalType, "FederatedUser")
	case Anonymous:
		r.Set(KeyPrincipalType, "Anonymous")
	}
	switch {
	case p.UserID != "":
		r.Set(KeyUserID, p.UserID)
	case p.Type == Root:
		r.Set(KeyUserID, p.Account)
	}
	// AWS sets these two on every request; no AWS service calls kmsd.
	r.SetBool(KeyPrincipalIsAWSService, p.Type == AWSService)
	r.SetBool(KeyViaAWSService, false)
	switch p.Type {
	case AWSService:
		r.Set(KeyPrincipalServiceName, p.Name)
	case AssumedRole, FederatedUser, WebIdentityUser, SAMLUser:
		// Temporary credentials, issued without MFA. AWS leaves the key
		// out for long-term access keys.
		r.SetBool(KeyMultiFactorAuthPresent, false)
	}
	for k, v := range p.Tags {
		r.Set(KeyPrincipalTagPrefix+k, v)
	}
	if p.SourceIdentity != "" {
		r.Set(KeySourceIdentity, p.SourceIdentity)
	}
	return r
}

// Set replaces the values of a condition key; with no values it removes
// the key.
func (r *Request) Set(key string, values ...string) {
	if r.Context == nil {
		r.Context = map[string][]string{}
	}
	if len(values) == 0 {
		delete(r.Context, key)
		if r.inShared(key, len(r.Shared)) {
			r.Context[key] = nil // hides it: a key with no values is absent
		}
		return
	}
	r.Context[key] = values
}

// inShared reports whether one of the first n Shared maps holds key.
func (r *Request) inShared(key string, n int) bool {
	for _, m := range r.Shared[:n] {
		if _, ok := m[key]; ok {
			return true
		}
	}
	return false
}

// get returns the values of key spelled exactly so: from Context, else
// from the first Shared map that holds it.
func (r *Request) get(key string) ([]string, bool) {
	if v, ok := r.Context[key]; ok {
		return v, true
	}
	for _, m := range r.Shared {
		if v, ok := m[key]; ok {
			return v, true
		}
	}
	return nil, false
}

// SetBool sets a boolean condition key ("true" or "false").
func (r *Request) SetBool(key string, v bool) { r.Set(key, strconv.FormatBool(v)) }

// SetInt sets a numeric condition key.
func (r *Request) SetInt(key string, v int64) { r.Set(key, strconv.FormatInt(v, 10)) }

// SetTime sets aws:CurrentTime and aws:EpochTime from the caller's clock.
func (r *Request) SetTime(now time.Time) {
	r.Set(KeyCurrentTime, now.UTC().Format(time.RFC3339))
	r.Set(KeyEpochTime, strconv.FormatInt(now.Unix(), 10))
}

// SetEncryptionContext sets kms:EncryptionContext:<key> for every pair and
// kms:EncryptionContextKeys to the sorted keys. An empty context leaves
// kms:EncryptionContextKeys absent, as KMS does: ForAllValues conditions on
// it are then true and ForAnyValue conditions false.
func (r *Request) SetEncryptionContext(ec map[string]string) {
	if len(ec) == 0 {
		r.Set(KeyEncryptionContextKeys)
		return
	}
	keys := make([]string, 0, len(ec))
	for k, v := range ec {
		keys = append(keys, k)
		r.Set(EncryptionContextKey(k), v)
	}
	sort.Strings(keys)
	r.Set(KeyEncryptionContextKeys, keys...)
}

// lookup returns the values of a condition key, matching its name without
// regard to ASCII case. key is the name as the policy wrote it and lower
// the same in lower case; the direct probes (of Context, then of each
// Shared map) find every key set through the constants above, and only a
// key that is absent (or spelled with another case) costs a scan.
func (r *Request) lookup(key, lower string) ([]string, bool) {
	if r == nil {
		return nil, false
	}
	if v, ok := r.get(key); ok {
		return v, len(v) > 0
	}
	if v, ok := r.get(lower); ok {
		return v, len(v) > 0
	}
	var found []string
	n := 0
	add := func(k string, v []string) {
		if len(v) == 0 || !equalFoldASCII(k, key) {
			return
		}
		if n == 0 {
			found = v
		} else {
			// Two spellings of one key: their values form one set.
			found = append(append([]string(nil), found...), v...)
		}
		n++
	}
	for k, v := range r.Context {
		add(k, v)
	}
	for i, m := range r.Shared {
		for k, v := range m {
			// A key an earlier map holds is hidden by it.
			if _, ok := r.Context[k]; !ok && !r.inShared(k, i) {
				add(k, v)
			}
		}
	}
	return found, n > 0
}

// resourceAccount is the account field of the request's resource ARN,
// "" when the resource is not an ARN.
func (r *Request) resourceAccount() string {
	return arnField(r.Resource, 4)
}

// arnField returns the i-th colon-separated field of an ARN (0-based, at
// most 4), or "" when s is not an ARN.
func arnField(s string, i int) string {
	if !strings.HasPrefix(s, "arn:") {
		return ""
	}
	for ; i > 0; i-- {
		j := strings.IndexByte(s, ':')
		if j < 0 {
			return ""
		}
		s = s[j+1:]
	}
	if j := strings.IndexByte(s, ':'); j >= 0 {
		return s[:j]
	}
	return ""
}
