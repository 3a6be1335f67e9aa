package policy

// Result is a policy's decision with what led to it.
type Result struct {
	Decision Decision
	// Sid of the deciding statement: the first matching Deny, else the
	// first matching Allow (preferring one that names the principal).
	Sid string
	// ViaAccount is set on an Allow from a key policy that names the
	// principal only through its account (arn:aws:iam::ACCOUNT:root): KMS
	// then requires the principal's IAM policies to allow the call too.
	ViaAccount bool
	// Session is set on an Allow from a key policy statement that names
	// the caller's role session by its own ARN
	// (arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION): session policies
	// do not limit such a permission.
	Session bool
}

// Evaluate decides the request against p alone: Deny if any statement
// that applies denies, Allow if one allows, NotApplicable otherwise. Key
// policies match the request's principal against Principal/NotPrincipal;
// identity policies apply to whoever they are attached to.
func (p *Policy) Evaluate(r *Request) Decision {
	return p.Explain(r).Decision
}

// Explain is Evaluate with the deciding statement and, for key policies,
// whether an Allow reaches the principal only through its account.
func (p *Policy) Explain(r *Request) Result {
	if p == nil {
		return Result{}
	}
	var res Result
	direct := false
	for i := range p.statements {
		s := &p.statements[i]
		m := s.applies(r, p.kind)
		if m == noMatch {
			continue
		}
		if s.deny {
			return Result{Decision: Deny, Sid: s.sid}
		}
		via := m == matchAccount
		if m == matchSession {
			res.Session = true
		}
		switch {
		case res.Decision == NotApplicable:
			res = Result{Decision: Allow, Sid: s.sid, ViaAccount: via, Session: res.Session}
			direct = !via
		case !via && !direct:
			res.Sid, res.ViaAccount, direct = s.sid, false, true
		}
	}
	return res
}

// applies reports whether the statement covers the request, cheapest
// tests first, and how it names the principal (matchDirect for identity
// policies, which name none).
func (s *statement) applies(r *Request, kind Kind) principalMatch {
	if s.inert {
		return noMatch
	}
	if matchAnyPattern(s.actions, r.Action, r, foldASCII) == s.notAction {
		return noMatch
	}
	m := matchDirect
	if kind == KeyPolicy {
		if m = s.principalApplies(&r.Principal); m == noMatch {
			return noMatch
		}
	}
	if matchAnyPattern(s.resources, r.Resource, r, exactCase) == s.notResource {
		return noMatch
	}
	for i := range s.conditions {
		if !s.conditions[i].eval(r) {
			return noMatch
		}
	}
	return m
}

func matchAnyPattern(ps []pattern, s string, r *Request, fold foldMode) bool {
	for i := range ps {
		if ps[i].match(s, r, fold) {
			return true
		}
	}
	return false
}
