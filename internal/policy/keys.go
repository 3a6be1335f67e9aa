package policy

import (
	"strconv"
	"strings"
)

// Availability says whether kmsd has a value for a condition key where
// AWS has one. It decides whether a policy may name the key: evaluating a
// key as absent when AWS would have a value silently skips a Deny.
type Availability uint8

const (
	// Filled: kmsd sets the key on every request where AWS does.
	Filled Availability = iota + 1
	// NeverSet: AWS sets the key only in circumstances that cannot arise
	// with kmsd (a call made through an AWS service, a VPC endpoint, MFA),
	// so absent is AWS's answer too.
	NeverSet
	// Pending: only operations or parameters kmsd does not implement yet
	// set the key; it is filled when they land. A policy may name it.
	Pending
	// Unknowable: AWS would have a value that kmsd cannot know (AWS
	// Organizations, the session's issue time, HTTP headers kmsd does not
	// keep). A policy naming the key is refused.
	Unknowable
)

// Operation shorthands in ConditionKey.Ops.
const (
	// EveryRequest: every request, whatever its operation.
	EveryRequest = "*"
	// KeyOperations: every operation on a KMS key (kms.KeyScope).
	KeyOperations = "key"
)

// ConditionKey is one condition key of AWS KMS or of the global context.
type ConditionKey struct {
	// Name as AWS documents it. A name ending in ':' or '/' is a prefix:
	// aws:ResourceTag/ stands for aws:ResourceTag/<tag key>.
	Name  string
	Avail Availability
	// Ops are the KMS operations that set the key (EveryRequest,
	// KeyOperations or operation names), for a Pending key those that
	// will; none for NeverSet and Unknowable keys.
	Ops []string
}

// Prefix reports whether the key stands for a family of keys.
func (k *ConditionKey) Prefix() bool {
	return strings.HasSuffix(k.Name, ":") || strings.HasSuffix(k.Name, "/")
}

// Operations that take a KMS key for cryptography.
var (
	encryptOps = []string{"Encrypt", "Decrypt", "ReEncrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext"}
	ecOps      = append(append([]string(nil), encryptOps...), "CreateGrant")
	aliasOps   = append(append([]string(nil), encryptOps...), "DescribeKey")
)

// ConditionKeys is the one table of the condition keys kmsd knows: every
// key AWS documents for KMS and for the global request context, with
// whether and where kmsd sets it. Policy validation
// (CheckConditionKeys) and the kms package's policy matrix test read it.
var ConditionKeys = []ConditionKey{
	// Global keys that follow from the principal and the connection.
	{KeyPrincipalArn, Filled, []string{EveryRequest}},
	{KeyPrincipalAccount, Filled, []string{EveryRequest}},
	{KeyPrincipalType, Filled, []string{EveryRequest}},
	{KeyUserID, Filled, []string{EveryRequest}},
	{KeyUsername, Filled, []string{EveryRequest}}, // IAM users only, as AWS
	{KeyPrincipalTagPrefix, Filled, []string{EveryRequest}},
	{KeyPrincipalIsAWSService, Filled, []string{EveryRequest}},
	{KeyPrincipalServiceName, NeverSet, nil}, // service principals, which never call kmsd
	{KeyViaAWSService, Filled, []string{EveryRequest}},
	{KeyMultiFactorAuthPresent, Filled, []string{EveryRequest}}, // temporary credentials only, as AWS
	{KeySourceIP, Filled, []string{EveryRequest}},
	{KeySecureTransport, Filled, []string{EveryRequest}},
	{KeyCurrentTime, Filled, []string{EveryRequest}},
	{KeyEpochTime, Filled, []string{EveryRequest}},
	{KeyRequestedRegion, Filled, []string{EveryRequest}},
	{KeyResourceAccount, Filled, []string{KeyOperations}},
	{KeyResourceTagPrefix, Filled, []string{KeyOperations}},
	{KeyRequestTagPrefix, Filled, []string{"CreateKey", "TagResource"}},
	{KeyTagKeys, Filled, []string{"CreateKey", "TagResource", "UntagResource"}},
	{"aws:MultiFactorAuthAge", NeverSet, nil},
	{"aws:CalledVia", NeverSet, nil},
	{"aws:CalledViaFirst", NeverSet, nil},
	{"aws:CalledViaLast", NeverSet, nil},
	{"aws:PrincipalServiceNamesList", NeverSet, nil},
	{"aws:SourceArn", NeverSet, nil},
	{"aws:SourceAccount", NeverSet, nil},
	{"aws:SourceOrgID", NeverSet, nil},
	{"aws:SourceOrgPaths", NeverSet, nil},
	{"aws:SourceVpc", NeverSet, nil},
	{"aws:SourceVpce", NeverSet, nil},
	{"aws:SourceVpcArn", NeverSet, nil},
	{"aws:VpcSourceIp", NeverSet, nil},
	{"aws:Ec2InstanceSourceVpc", NeverSet, nil},
	{"aws:Ec2InstanceSourcePrivateIPv4", NeverSet, nil},
	{"aws:SourceIdentity", NeverSet, nil},
	{"aws:FederatedProvider", Pending, []string{"AssumeRoleWithWebIdentity", "AssumeRoleWithSAML"}},
	{"aws:TokenIssueTime", Unknowable, nil},
	{"aws:PrincipalOrgID", Unknowable, nil},
	{"aws:PrincipalOrgPaths", Unknowable, nil},
	{"aws:ResourceOrgID", Unknowable, nil},
	{"aws:ResourceOrgPaths", Unknowable, nil},
	{"aws:UserAgent", Unknowable, nil},
	{"aws:Referer", Unknowable, nil},

	// AWS KMS keys.
	{KeyCallerAccount, Filled, []string{EveryRequest}},
	{KeyViaService, NeverSet, nil}, // no AWS service calls kmsd
	{KeyKeySpec, Filled, []string{"CreateKey", KeyOperations}},
	{KeyKeyUsage, Filled, []string{"CreateKey", KeyOperations}},
	{KeyKeyOrigin, Filled, []string{"CreateKey", KeyOperations}},
	{KeyCustomerMasterKeySpec, Filled, []string{"CreateKey", KeyOperations}},
	{KeyCustomerMasterKeyUsage, Filled, []string{"CreateKey", KeyOperations}},
	{KeyMultiRegion, Filled, []string{"CreateKey", KeyOperations}},
	{KeyResourceAliases, Filled, []string{KeyOperations}},
	{KeyRequestAlias, Filled, aliasOps}, // when the caller names an alias
	{KeyEncryptionAlgorithm, Filled, encryptOps},
	{KeyEncryptionContextPrefix, Filled, ecOps},
	{KeyEncryptionContextKeys, Filled, ecOps},
	{KeyReEncryptOnSameKey, Filled, []string{"ReEncrypt"}},
	{KeyGrantOperations, Filled, []string{"CreateGrant"}},
	{KeyGrantConstraintType, Filled, []string{"CreateGrant"}},
	{KeyGranteePrincipal, Filled, []string{"CreateGrant"}},
	{KeyRetiringPrincipal, Filled, []string{"CreateGrant"}},
	{KeyGrantIsForAWSResource, Filled, []string{"CreateGrant", "ListGrants", "RevokeGrant"}},
	{KeyBypassLockoutCheck, Filled, []string{"CreateKey", "PutKeyPolicy"}},
	{KeyRotationPeriodInDays, Filled, []string{"EnableKeyRotation"}},
	{KeyPendingWindowInDays, Filled, []string{"ScheduleKeyDeletion"}},
	{KeyMultiRegionKeyType, Filled, []string{"CreateKey", KeyOperations}}, // multi-Region keys only
	{KeyPrimaryRegion, Filled, []string{"UpdatePrimaryRegion"}},
	{KeyReplicaRegion, Filled, []string{"ReplicateKey"}},
	{KeyDataKeyPairSpec, Pending, []string{"GenerateDataKeyPair", "GenerateDataKeyPairWithoutPlaintext"}},
	{KeySigningAlgorithm, Pending, []string{"Sign", "Verify"}},
	{KeyMessageType, Pending, []string{"Sign", "Verify"}},
	{KeyMacAlgorithm, Pending, []string{"GenerateMac", "VerifyMac"}},
	{KeyKeyAgreementAlgorithm, Pending, []string{"DeriveSharedSecret"}},
	{KeyExpirationModel, Filled, []string{"ImportKeyMaterial"}},
	{KeyValidTo, Filled, []string{"ImportKeyMaterial"}},
	{KeyWrappingAlgorithm, Filled, []string{"GetParametersForImport"}},
	{KeyWrappingKeySpec, Filled, []string{"GetParametersForImport"}},
	{"kms:RecipientAttestation:", Pending, []string{"Decrypt", "GenerateDataKey", "GenerateDataKeyPair", "GenerateRandom", "DeriveSharedSecret"}},
}

// LookupConditionKey finds the table entry of a condition key named in a
// policy, ignoring case as IAM does; a prefixed key (aws:ResourceTag/env)
// finds its prefix's entry.
func LookupConditionKey(name string) (*ConditionKey, bool) {
	for i := range ConditionKeys {
		k := &ConditionKeys[i]
		if k.Prefix() {
			if len(name) > len(k.Name) && hasLowerPrefix(name, lowerASCII(k.Name)) {
				return k, true
			}
		} else if equalFoldASCII(name, k.Name) {
			return k, true
		}
	}
	return nil, false
}

// CheckConditionKeys refuses a policy that names a condition key kmsd
// cannot evaluate as AWS would: an aws: or kms: key that is not in
// ConditionKeys, or one that is Unknowable. Keys of other services are
// never in a KMS request context, on AWS either, and are accepted. Call it
// where a policy enters kmsd (CreateKey, PutKeyPolicy, the IAM policy
// operations and configuration); the error, an *Error wrapping
// ErrMalformed, names the key.
func CheckConditionKeys(p *Policy) error {
	if p == nil {
		return nil
	}
	for _, ref := range p.refs {
		if !strings.HasPrefix(ref.lower, "aws:") && !strings.HasPrefix(ref.lower, "kms:") {
			continue
		}
		k, ok := LookupConditionKey(ref.name)
		switch {
		case !ok:
			return malformed("Policy contains an unsupported condition key: "+ref.name+" is not a condition key of AWS KMS or of the global context.",
				"condition key %s", strconv.Quote(ref.name))
		case k.Avail == Unknowable:
			return malformed("Policy contains an unsupported condition key: kmsd cannot supply a value for "+ref.name+".",
				"condition key %s", strconv.Quote(ref.name))
		}
	}
	return nil
}

// keyRef is a condition key a policy refers to, in a condition or as a
// policy variable.
type keyRef struct {
	name  string // as written
	lower string
}

// collectRefs records every condition key the compiled statements read.
func (p *Policy) collectRefs() {
	for i := range p.statements {
		st := &p.statements[i]
		for j := range st.resources {
			p.addPatternRefs(&st.resources[j])
		}
		for j := range st.conditions {
			c := &st.conditions[j]
			p.addRef(c.key)
			for k := range c.values {
				p.addPatternRefs(&c.values[k].pat)
				for l := range c.values[k].arn {
					p.addPatternRefs(&c.values[k].arn[l])
				}
			}
		}
	}
}

// addRef records a reference to key once.
func (p *Policy) addRef(key string) {
	lower := lowerASCII(key)
	for _, r := range p.refs {
		if r.lower == lower {
			return
		}
	}
	p.refs = append(p.refs, keyRef{name: key, lower: lower})
}

// addPatternRefs records the policy variables of a compiled pattern.
func (p *Policy) addPatternRefs(pat *pattern) {
	for i := range pat.toks {
		if pat.toks[i].kind == tokVar {
			p.addRef(pat.toks[i].text)
		}
	}
}

// References reports whether p refers to a condition key, in a condition
// or as a policy variable, ignoring case. A key ending in ':' or '/'
// (aws:ResourceTag/, kms:EncryptionContext:) asks for any key with that
// prefix. Callers use it to compute expensive keys only for policies
// that read them; it does not allocate. A nil policy refers to nothing.
func (p *Policy) References(key string) bool {
	if p == nil {
		return false
	}
	prefix := strings.HasSuffix(key, ":") || strings.HasSuffix(key, "/")
	for i := range p.refs {
		r := &p.refs[i]
		if prefix {
			if len(r.name) >= len(key) && equalFoldASCII(r.name[:len(key)], key) {
				return true
			}
		} else if equalFoldASCII(r.name, key) {
			return true
		}
	}
	return false
}

// ConditionKeyRefs lists the condition keys p refers to, as written, in
// document order.
func (p *Policy) ConditionKeyRefs() []string {
	out := make([]string, len(p.refs))
	for i, r := range p.refs {
		out[i] = r.name
	}
	return out
}
