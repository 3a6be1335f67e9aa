// Package policy is the IAM policy language as AWS KMS uses it: it parses
// and validates JSON policy documents (key policies and identity-based
// policies), evaluates them against a request, and combines key policy,
// identity policies and grants the way KMS authorises a call.
//
// The package is pure: no I/O, no clock, no storage. Callers build a
// Request (the principal, the action, the key ARN and the condition keys
// of the call, including the current time) and ask Decide, DecideIAMOnly
// or a single Policy's Evaluate. Everything that can be prepared ahead —
// wildcard patterns, numbers, dates, CIDR blocks, principal ARNs — is
// compiled by Parse, so that evaluation on the Encrypt hot path does not
// allocate.
//
// Parse errors are *Error values whose Message is the text a client sees in
// MalformedPolicyDocumentException; where KMS's own wording is documented
// or widely observed it is used, elsewhere IAM's.
package policy

import (
	"errors"
	"fmt"
)

// Kind tells which sort of policy a document is; it decides what the
// document must and must not contain and how Principal is evaluated.
type Kind uint8

const (
	// KeyPolicy is a resource-based policy attached to a KMS key. Every
	// statement names its principals (Principal or NotPrincipal).
	KeyPolicy Kind = iota
	// IdentityPolicy is attached to a user or role; it names no principal
	// and applies to whoever it is attached to.
	IdentityPolicy
)

func (k Kind) String() string {
	switch k {
	case KeyPolicy:
		return "key policy"
	case IdentityPolicy:
		return "identity policy"
	}
	return fmt.Sprintf("Kind(%d)", k)
}

// Decision is the outcome of evaluating one policy against a request.
type Decision uint8

const (
	// NotApplicable: no statement matched; the policy neither allows nor denies.
	NotApplicable Decision = iota
	// Allow: at least one Allow statement matched and no Deny did.
	Allow
	// Deny: a Deny statement matched (an explicit deny).
	Deny
)

func (d Decision) String() string {
	switch d {
	case NotApplicable:
		return "NotApplicable"
	case Allow:
		return "Allow"
	case Deny:
		return "Deny"
	}
	return fmt.Sprintf("Decision(%d)", d)
}

// Versions a document may declare. A document without Version is read as
// 2008-10-17, in which policy variables are plain text.
const (
	Version2012 = "2012-10-17"
	Version2008 = "2008-10-17"
)

// MaxKeyPolicySize is KMS's quota on a key policy document, in bytes.
const MaxKeyPolicySize = 32 << 10

// Sentinel errors, for errors.Is. Every *Error wraps one of them.
var (
	// ErrMalformed: the document is not a valid policy
	// (MalformedPolicyDocumentException).
	ErrMalformed = errors.New("malformed policy document")
	// ErrLockout: the new key policy would not let its author change it
	// again. It is a kind of ErrMalformed, as KMS reports it.
	ErrLockout = fmt.Errorf("key policy lockout: %w", ErrMalformed)
	// ErrTooLarge: the key policy exceeds MaxKeyPolicySize
	// (LimitExceededException).
	ErrTooLarge = errors.New("key policy too large")
)

// Messages clients see. KMS's own texts where known, IAM's elsewhere.
const (
	msgInvalidJSON       = "This policy contains invalid Json"
	msgSyntax            = "Syntax errors in policy."
	msgLegacy            = "The policy failed legacy parsing"
	msgSidUnique         = "Statement IDs (SID) in a single policy must be unique."
	msgNoActions         = "Policy statement must contain actions."
	msgNoResources       = "Policy statement must contain resources."
	msgVendor            = "Actions/Conditions must be prefaced by a vendor, e.g., iam, sdb, ec2, etc."
	msgOneColon          = "Actions/Condition can contain only one colon."
	msgInvalidPrincipals = "Policy contains a statement with one or more invalid principals."
	msgNoPrincipal       = "Policy contains a statement with no principal"
	msgHasPrincipal      = "Policy document should not specify a principal."
	msgLockout           = "The new key policy will not allow you to update the key policy in the future."
	msgTooLarge          = "The key policy exceeds the maximum size of 32768 bytes."
)

// Error is a rejected policy document. Message is the text for the client
// (the exception message); Detail says where and why, for logs and tests.
type Error struct {
	Message string
	Detail  string
	Err     error // ErrMalformed, ErrLockout or ErrTooLarge
}

func (e *Error) Error() string {
	if e.Detail == "" {
		return "policy: " + e.Message
	}
	return "policy: " + e.Message + " (" + e.Detail + ")"
}

func (e *Error) Unwrap() error { return e.Err }

func malformed(msg, format string, args ...any) *Error {
	return &Error{Message: msg, Detail: fmt.Sprintf(format, args...), Err: ErrMalformed}
}

// CheckKeyPolicySize rejects a key policy document longer than
// MaxKeyPolicySize bytes with an error wrapping ErrTooLarge, which KMS
// reports as LimitExceededException. It is separate from Parse because
// the limit is a KMS quota, not part of the policy language.
func CheckKeyPolicySize(doc string) error {
	if len(doc) > MaxKeyPolicySize {
		return &Error{Message: msgTooLarge, Detail: fmt.Sprintf("%d bytes", len(doc)), Err: ErrTooLarge}
	}
	return nil
}

// Policy is a parsed, validated and compiled policy document. It is
// immutable and safe for concurrent use.
type Policy struct {
	kind       Kind
	version    string
	id         string
	statements []statement
	refs       []keyRef // condition keys read, for References
}

// Kind reports which sort of policy p was parsed as.
func (p *Policy) Kind() Kind { return p.kind }

// Version is the document's Version element ("" when absent).
func (p *Policy) Version() string { return p.version }

// ID is the document's Id element.
func (p *Policy) ID() string { return p.id }

// Sids lists the statements' Sid elements in document order ("" for a
// statement without one).
func (p *Policy) Sids() []string {
	out := make([]string, len(p.statements))
	for i := range p.statements {
		out[i] = p.statements[i].sid
	}
	return out
}

// PrincipalRef is a principal a key policy names, in canonical form: an
// AWS account id is written as its root ARN.
type PrincipalRef struct {
	Type  string // "AWS", "Service" or "Federated"
	Value string // "*", an ARN, a service principal or a provider
}

// Principals lists, without duplicates and in document order, every
// principal named in Principal or NotPrincipal elements. KMS requires the
// principals of a key policy to exist; the caller checks them with this.
func (p *Policy) Principals() []PrincipalRef {
	var out []PrincipalRef
	seen := map[PrincipalRef]bool{}
	for i := range p.statements {
		for _, e := range p.statements[i].principals {
			r := e.ref()
			if !seen[r] {
				seen[r] = true
				out = append(out, r)
			}
		}
	}
	return out
}

// DefaultKeyPolicy is the key policy KMS attaches when CreateKey has none,
// byte for byte as GetKeyPolicy returns it: the account's root may do
// everything, which hands the decision to the account's IAM policies. It
// depends on the account alone.
func DefaultKeyPolicy(account string) string {
	return defaultHead + account + defaultTail
}

// IsDefaultKeyPolicy says whether doc is, byte for byte,
// DefaultKeyPolicy(account), without making that text.
func IsDefaultKeyPolicy(doc, account string) bool {
	return len(doc) == len(defaultHead)+len(account)+len(defaultTail) &&
		doc[:len(defaultHead)] == defaultHead &&
		doc[len(defaultHead):len(defaultHead)+len(account)] == account &&
		doc[len(defaultHead)+len(account):] == defaultTail
}

// The default key policy around its account.
const (
	defaultHead = `{
  "Version" : "2012-10-17",
  "Id" : "key-default-1",
  "Statement" : [ {
    "Sid" : "Enable IAM User Permissions",
    "Effect" : "Allow",
    "Principal" : {
      "AWS" : "arn:aws:iam::`
	defaultTail = `:root"
    },
    "Action" : "kms:*",
    "Resource" : "*"
  } ]
}`
)
