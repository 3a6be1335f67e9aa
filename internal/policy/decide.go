package policy

import "fmt"

// Reason says why Decide or DecideIAMOnly reached its answer.
type Reason uint8

const (
	// AllowedByKeyPolicy: the key policy names the principal (or "*") in
	// the key's own account.
	AllowedByKeyPolicy Reason = iota + 1
	// AllowedByKeyPolicyAndIAM: the key policy allows the principal's
	// account, or the principal is in another account, and the
	// principal's identity policies allow the call too.
	AllowedByKeyPolicyAndIAM
	// AllowedByGrant: a grant allows the call.
	AllowedByGrant
	// AllowedByIAM: for operations on no key, an identity policy allows.
	AllowedByIAM
	// AllowedAsRoot: for operations on no key, the account's root user.
	AllowedAsRoot
	// DeniedByKeyPolicy: an explicit deny in the key policy.
	DeniedByKeyPolicy
	// DeniedByIAM: an explicit deny in an identity policy.
	DeniedByIAM
	// NoKeyPolicyAllows: the key policy allows neither the principal nor
	// its account (an implicit deny).
	NoKeyPolicyAllows
	// NoIAMAllows: the key policy defers to IAM (or the call crosses
	// accounts) and no identity policy allows (an implicit deny).
	NoIAMAllows
)

var reasonNames = map[Reason]string{
	AllowedByKeyPolicy:       "allowed by the key policy",
	AllowedByKeyPolicyAndIAM: "allowed by the key policy and an identity policy",
	AllowedByGrant:           "allowed by a grant",
	AllowedByIAM:             "allowed by an identity policy",
	AllowedAsRoot:            "allowed as the account's root user",
	DeniedByKeyPolicy:        "explicit deny in the key policy",
	DeniedByIAM:              "explicit deny in an identity policy",
	NoKeyPolicyAllows:        "no key policy statement allows",
	NoIAMAllows:              "no identity policy allows",
}

func (r Reason) String() string {
	if s, ok := reasonNames[r]; ok {
		return s
	}
	return fmt.Sprintf("Reason(%d)", uint8(r))
}

// Allowed reports whether the reason is one of the Allowed… reasons.
func (r Reason) Allowed() bool { return r >= AllowedByKeyPolicy && r <= AllowedAsRoot }

// Decide authorises a call on a KMS key as KMS does:
//
//  1. An explicit Deny in the key policy or in any identity policy denies.
//  2. The key policy must allow. When it names the principal itself (or
//     "*") and the key is in the principal's account, that suffices. When
//     it allows only the principal's account (arn:aws:iam::ACCOUNT:root),
//     or the principal is in another account than the key, the
//     principal's identity policies must allow as well.
//  3. Otherwise a grant (grantsAllow, worked out by the caller) allows.
//  4. Otherwise the call is implicitly denied.
//
// The root user is governed by no identity policy, so where IAM must
// agree its consent is implied. identityPolicies are those attached to the
// principal (directly, through groups, or to the role of a session).
func Decide(keyPolicy *Policy, identityPolicies []*Policy, grantsAllow bool, r *Request) (bool, Reason) {
	kp := keyPolicy.Explain(r)
	if kp.Decision == Deny {
		return false, DeniedByKeyPolicy
	}
	iamAllow := false
	if r.Principal.Type != Root {
		var deny bool
		iamAllow, deny = evaluateIdentity(identityPolicies, r)
		if deny {
			return false, DeniedByIAM
		}
	}
	if kp.Decision == Allow {
		crossAccount := r.Principal.isAWS() && r.resourceAccount() != "" && r.Principal.Account != r.resourceAccount()
		needIAM := r.Principal.isAWS() && r.Principal.Type != Root && (kp.ViaAccount || crossAccount)
		switch {
		case !needIAM && !crossAccount && !kp.ViaAccount:
			return true, AllowedByKeyPolicy
		case !needIAM || iamAllow:
			return true, AllowedByKeyPolicyAndIAM
		}
	}
	if grantsAllow {
		return true, AllowedByGrant
	}
	if kp.Decision == Allow {
		return false, NoIAMAllows
	}
	return false, NoKeyPolicyAllows
}

// DecideIAMOnly authorises an operation that acts on no key — CreateKey,
// ListKeys, ListAliases, GenerateRandom, the custom key store operations —
// from identity policies alone: an explicit deny denies, an allow allows,
// and otherwise the call is implicitly denied. The root user is allowed.
func DecideIAMOnly(identityPolicies []*Policy, r *Request) (bool, Reason) {
	if r.Principal.Type == Root {
		return true, AllowedAsRoot
	}
	allow, deny := evaluateIdentity(identityPolicies, r)
	switch {
	case deny:
		return false, DeniedByIAM
	case allow:
		return true, AllowedByIAM
	}
	return false, NoIAMAllows
}

func evaluateIdentity(ps []*Policy, r *Request) (allow, deny bool) {
	for _, p := range ps {
		switch p.Evaluate(r) {
		case Deny:
			return false, true
		case Allow:
			allow = true
		}
	}
	return allow, false
}

// CheckLockout is KMS's policy lockout safety check: it returns an error
// wrapping ErrLockout ("The new key policy will not allow you to update
// the key policy in the future.") unless newKeyPolicy would allow the
// request's principal to call kms:PutKeyPolicy on the key, either directly
// or through its account (which keeps the key manageable by IAM). r is the
// CreateKey or PutKeyPolicy request; its Resource must be the key's ARN.
// Callers skip the check when BypassPolicyLockoutSafetyCheck is true.
func CheckLockout(newKeyPolicy *Policy, r *Request) error {
	check := *r
	check.Action = "kms:PutKeyPolicy"
	if newKeyPolicy.Evaluate(&check) == Allow {
		return nil
	}
	return &Error{Message: msgLockout, Detail: "principal " + r.Principal.ARN, Err: ErrLockout}
}

// AccessDeniedMessage is the AccessDeniedException message for a denied
// request, in AWS's words, for example
//
//	User: arn:aws:iam::111122223333:user/alice is not authorized to perform:
//	kms:Encrypt on resource: arn:aws:kms:us-east-1:111122223333:key/… because
//	no identity-based policy allows the kms:Encrypt action
func AccessDeniedMessage(r *Request, reason Reason) string {
	resource := r.Resource
	if resource == "" {
		resource = "*"
	}
	head := "User: " + r.Principal.ARN + " is not authorized to perform: " + r.Action + " on resource: " + resource
	switch reason {
	case DeniedByKeyPolicy:
		return head + " with an explicit deny in a resource-based policy"
	case DeniedByIAM:
		return head + " with an explicit deny in an identity-based policy"
	case NoKeyPolicyAllows:
		return head + " because no resource-based policy allows the " + r.Action + " action"
	}
	return head + " because no identity-based policy allows the " + r.Action + " action"
}
