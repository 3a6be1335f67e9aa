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
	// DeniedBySessionPolicy: an explicit deny in a session policy of the
	// caller's role session.
	DeniedBySessionPolicy
	// NoSessionPolicyAllows: the policies that would allow are limited by
	// the session's session policies, and none of them allows (an implicit
	// deny).
	NoSessionPolicyAllows
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
	DeniedBySessionPolicy:    "explicit deny in a session policy",
	NoSessionPolicyAllows:    "no session policy allows",
}

func (r Reason) String() string {
	if s, ok := reasonNames[r]; ok {
		return s
	}
	return fmt.Sprintf("Reason(%d)", uint8(r))
}

// Allowed reports whether the reason is one of the Allowed… reasons.
func (r Reason) Allowed() bool { return r >= AllowedByKeyPolicy && r <= AllowedAsRoot }

// GrantMayAllow reports whether a denial with this reason is implicit, so
// that a grant may still allow the call: an explicit deny never yields to
// a grant.
func (r Reason) GrantMayAllow() bool {
	return r == NoKeyPolicyAllows || r == NoIAMAllows || r == NoSessionPolicyAllows
}

// Identity is what the caller brings to a decision besides its principal:
// the identity policies attached to it (to the user, or to the role of a
// session) and, for a role session created with session policies (the
// Policy and PolicyArns of AssumeRole), those. A session without session
// policies has Session nil and the full permissions of its role.
//
// Session policies limit identity-based permissions and the resource-based
// permissions that reach the session through its role or account; they do
// not limit a key policy or grant that names the session's own ARN, and an
// explicit deny in one always denies. See Decide.
type Identity struct {
	Policies []*Policy
	Session  []*Policy
}

// limited reports whether session policies limit the caller.
func (id *Identity) limited() bool { return len(id.Session) > 0 }

// GrantMatch says whether one of the key's grants allows the call, and
// through which grantee. KMS consults grants only when the policies do not
// allow; the caller works this out (it needs storage) and passes it in.
type GrantMatch uint8

const (
	// NoGrant: no grant allows the call.
	NoGrant GrantMatch = iota
	// GrantToPrincipal: a grant whose grantee is the principal's own ARN
	// (for a role session, the session ARN) allows.
	GrantToPrincipal
	// GrantToRole: a grant whose grantee is the role behind the caller's
	// session allows.
	GrantToRole
)

// Decide authorises a call on a KMS key as KMS does:
//
//  1. An explicit Deny in the key policy, in any identity policy or in any
//     session policy denies.
//  2. The key policy must allow. When it names the principal itself (or
//     "*") and the key is in the principal's account, that suffices. When
//     it allows only the principal's account (arn:aws:iam::ACCOUNT:root),
//     or the principal is in another account than the key, the
//     principal's identity policies must allow as well.
//  3. Otherwise a grant (worked out by the caller) allows.
//  4. Otherwise the call is implicitly denied.
//
// For a role session with session policies (id.Session), whatever allows
// must also be allowed by a session policy, as IAM evaluates sessions: the
// identity policies are intersected with the session policies, and so is a
// key policy statement or grant that reaches the session through its role
// ARN, its account or "*". Only a key policy statement or grant naming the
// session ARN itself (arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION) is
// not limited; where IAM must agree as well (account delegation, another
// account), the identity side is still limited. AWS documents the role ARN
// and session ARN cases for resource-based policies; kmsd reads "*" like
// the role ARN (limited), the safe side, and applies the same rule to
// grants, which are resource-based permissions too: this is the one place
// that decides it.
//
// The root user is governed by no identity policy, so where IAM must
// agree its consent is implied. id.Policies are those attached to the
// principal (directly, through groups, or to the role of a session).
// Decide does not allocate.
func Decide(keyPolicy *Policy, id Identity, grant GrantMatch, r *Request) (bool, Reason) {
	kp := keyPolicy.Explain(r)
	if kp.Decision == Deny {
		return false, DeniedByKeyPolicy
	}
	iamAllow := false
	if r.Principal.Type != Root {
		var deny bool
		iamAllow, deny = evaluateIdentity(id.Policies, r)
		if deny {
			return false, DeniedByIAM
		}
	}
	sessionAllow := true
	if id.limited() {
		var deny bool
		sessionAllow, deny = evaluateIdentity(id.Session, r)
		if deny {
			return false, DeniedBySessionPolicy
		}
	}
	denied := NoKeyPolicyAllows
	if kp.Decision == Allow {
		crossAccount := r.Principal.isAWS() && r.resourceAccount() != "" && r.Principal.Account != r.resourceAccount()
		needIAM := r.Principal.isAWS() && r.Principal.Type != Root && (kp.ViaAccount || crossAccount)
		// The session policies limit the identity side always, and the key
		// policy unless it names the session itself.
		limitedOK := sessionAllow || (!needIAM && kp.Session)
		switch {
		case !needIAM && !crossAccount && !kp.ViaAccount:
			if limitedOK {
				return true, AllowedByKeyPolicy
			}
			denied = NoSessionPolicyAllows
		case needIAM && !iamAllow:
			denied = NoIAMAllows
		case !limitedOK:
			denied = NoSessionPolicyAllows
		default:
			return true, AllowedByKeyPolicyAndIAM
		}
	}
	// A grant is a resource-based permission: one naming the session ARN
	// is not limited by session policies, one naming the role is.
	switch {
	case grant == GrantToPrincipal, grant == GrantToRole && sessionAllow:
		return true, AllowedByGrant
	}
	return false, denied
}

// DecideIAMOnly authorises an operation that acts on no key — CreateKey,
// ListKeys, ListAliases, GenerateRandom, the custom key store operations —
// from identity policies alone: an explicit deny (in an identity or a
// session policy) denies, an allow allows — for a session with session
// policies, an allow in both — and otherwise the call is implicitly
// denied. The root user is allowed.
func DecideIAMOnly(id Identity, r *Request) (bool, Reason) {
	if r.Principal.Type == Root {
		return true, AllowedAsRoot
	}
	allow, deny := evaluateIdentity(id.Policies, r)
	if deny {
		return false, DeniedByIAM
	}
	sessionAllow := true
	if id.limited() {
		var sdeny bool
		if sessionAllow, sdeny = evaluateIdentity(id.Session, r); sdeny {
			return false, DeniedBySessionPolicy
		}
	}
	switch {
	case !allow:
		return false, NoIAMAllows
	case !sessionAllow:
		return false, NoSessionPolicyAllows
	}
	return true, AllowedByIAM
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
	case DeniedBySessionPolicy:
		return head + " with an explicit deny in a session policy"
	case NoSessionPolicyAllows:
		return head + " because no session policy allows the " + r.Action + " action"
	case NoKeyPolicyAllows:
		return head + " because no resource-based policy allows the " + r.Action + " action"
	}
	return head + " because no identity-based policy allows the " + r.Action + " action"
}
