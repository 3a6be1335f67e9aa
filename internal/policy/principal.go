package policy

import "strings"

// principalKind is what one entry of a Principal element names.
type principalKind uint8

const (
	pAny       principalKind = iota // "*"
	pAccount                        // an account (id or root ARN)
	pUser                           // an IAM user ARN
	pRole                           // an IAM role ARN (matches its sessions too)
	pSession                        // an assumed-role session ARN
	pFedUser                        // a federated-user ARN
	pService                        // {"Service": …}
	pFederated                      // {"Federated": …}
)

// principalEntry is one compiled principal of a Principal element.
type principalEntry struct {
	kind    principalKind
	account string
	name    string // user or role name (pUser, pRole)
	value   string // canonical text: ARN, service, provider
}

func (e *principalEntry) ref() PrincipalRef {
	switch e.kind {
	case pService:
		return PrincipalRef{Type: "Service", Value: e.value}
	case pFederated:
		return PrincipalRef{Type: "Federated", Value: e.value}
	}
	return PrincipalRef{Type: "AWS", Value: e.value}
}

// parseAWSPrincipal compiles one value of {"AWS": …}. Wildcards are only
// allowed as the whole value "*"; unique ids (AIDA…) are not accepted.
func parseAWSPrincipal(s string) (principalEntry, bool) {
	if s == "*" {
		return principalEntry{kind: pAny, value: "*"}, true
	}
	if isAccountID(s) {
		return principalEntry{kind: pAccount, account: s, value: "arn:aws:iam::" + s + ":root"}, true
	}
	if strings.ContainsAny(s, "*? ") {
		return principalEntry{}, false
	}
	parts := strings.SplitN(s, ":", 6)
	if len(parts) != 6 || parts[0] != "arn" || !strings.HasPrefix(parts[1], "aws") || parts[3] != "" || !isAccountID(parts[4]) {
		return principalEntry{}, false
	}
	e := principalEntry{account: parts[4], value: s}
	res := parts[5]
	switch parts[2] {
	case "iam":
		switch {
		case res == "root":
			e.kind = pAccount
			return e, true
		case strings.HasPrefix(res, "user/"):
			e.kind, e.name = pUser, lastSegment(res)
		case strings.HasPrefix(res, "role/"):
			e.kind, e.name = pRole, lastSegment(res)
		default:
			return principalEntry{}, false
		}
		return e, e.name != ""
	case "sts":
		if rest, ok := strings.CutPrefix(res, "assumed-role/"); ok {
			role, session, ok := strings.Cut(rest, "/")
			e.kind = pSession
			return e, ok && role != "" && session != "" && !strings.Contains(session, "/")
		}
		if rest, ok := strings.CutPrefix(res, "federated-user/"); ok {
			e.kind = pFedUser
			return e, rest != "" && !strings.Contains(rest, "/")
		}
	}
	return principalEntry{}, false
}

// validServiceName accepts a DNS-like service principal such as
// "logs.amazonaws.com".
func validServiceName(s string) bool {
	if s == "" || !strings.Contains(s, ".") {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '-') {
			return false
		}
	}
	return true
}

// principalMatch is how an entry names a request's principal.
type principalMatch uint8

const (
	noMatch principalMatch = iota
	matchDirect
	matchAccount // only through the principal's account (IAM delegation)
	matchSession // by the exact ARN of the caller's role session
)

func (e *principalEntry) match(p *Principal) principalMatch {
	switch e.kind {
	case pAny:
		return matchDirect
	case pAccount:
		if !p.isAWS() || p.Account != e.account {
			return noMatch
		}
		if p.Type == Root {
			return matchDirect
		}
		return matchAccount
	case pUser:
		if p.Type == IAMUser && p.Account == e.account && p.Name == e.name {
			return matchDirect
		}
	case pRole:
		if (p.Type == Role || p.Type == AssumedRole) && p.Account == e.account && p.Name == e.name {
			return matchDirect
		}
	case pSession:
		if p.Type == AssumedRole && p.ARN == e.value {
			return matchSession
		}
	case pFedUser:
		if p.Type == FederatedUser && p.ARN == e.value {
			return matchDirect
		}
	case pService:
		if p.Type == AWSService && p.ARN == e.value {
			return matchDirect
		}
	case pFederated:
		if (p.Type == WebIdentityUser || p.Type == SAMLUser) && p.Provider == e.value {
			return matchDirect
		}
	}
	return noMatch
}

// principalApplies reports whether statement s applies to principal p:
// matchSession when an entry names p's session ARN, else matchDirect when
// one names p, else matchAccount when one names only p's account.
//
// With NotPrincipal, IAM treats a request as carrying several identities
// — the session, the role behind it, and the account — and the statement
// applies unless every one of them is listed.
func (s *statement) principalApplies(p *Principal) principalMatch {
	if !s.notPrincipal {
		best := noMatch
		for i := range s.principals {
			switch m := s.principals[i].match(p); m {
			case matchSession:
				return m
			case matchDirect:
				if p.Type != AssumedRole {
					return m
				}
				best = m
			case matchAccount:
				if best == noMatch {
					best = m
				}
			}
		}
		return best
	}
	self := false
	role := p.Type != AssumedRole
	root := !p.isAWS() || p.Type == Root
	for i := range s.principals {
		e := &s.principals[i]
		switch e.kind {
		case pAny:
			return noMatch
		case pAccount:
			if p.isAWS() && p.Account == e.account {
				root = true
				if p.Type == Root {
					self = true
				}
			}
		case pRole:
			if p.Type == AssumedRole && p.Account == e.account && p.Name == e.name {
				role = true
			} else if e.match(p) == matchDirect {
				self = true
			}
		default:
			if m := e.match(p); m == matchDirect || m == matchSession {
				self = true
			}
		}
	}
	if self && role && root {
		return noMatch
	}
	return matchDirect
}
