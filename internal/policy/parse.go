package policy

import (
	"errors"
	"sort"
	"strconv"
	"strings"
)

// statement is one compiled Statement.
type statement struct {
	sid  string
	deny bool
	// inert: a key policy statement without Action or Resource. KMS
	// accepts such a policy but the statement has no effect.
	inert        bool
	notPrincipal bool
	principals   []principalEntry // key policies only
	notAction    bool
	actions      []pattern
	notResource  bool
	resources    []pattern
	conditions   []condition
}

var (
	topElements       = []string{"Version", "Id", "Statement"}
	statementElements = []string{"Sid", "Effect", "Principal", "NotPrincipal", "Action", "NotAction", "Resource", "NotResource", "Condition"}
)

// Parse parses, validates and compiles a policy document of the given
// kind. It rejects a malformed document with an *Error wrapping
// ErrMalformed whose Message is the text for
// MalformedPolicyDocumentException.
//
// Checks run in IAM's order, so that a document with several faults is
// reported as AWS reports it: JSON, then structure ("Syntax errors in
// policy."), then element values ("The policy failed legacy parsing"),
// principals, Sid uniqueness and presence of actions, resource format,
// action format, presence of resources.
//
// A key policy statement without Action or Resource is accepted and has no
// effect, as KMS documents; an identity policy must have both.
func Parse(doc string, kind Kind) (*Policy, error) {
	root, err := decodeJSON(doc)
	if err != nil {
		if errors.Is(err, errDuplicate) || errors.Is(err, errTooDeep) {
			return nil, malformed(msgSyntax, "%v", err)
		}
		return nil, malformed(msgInvalidJSON, "%v", err)
	}
	p := &Policy{kind: kind}
	stmts, err := checkSyntax(root, p)
	if err != nil {
		return nil, err
	}
	for _, checks := range []func(int, *jval) error{
		checkLegacy,
		func(i int, s *jval) error { return checkPrincipalPresence(i, s, kind) },
	} {
		for i, s := range stmts {
			if err := checks(i, s); err != nil {
				return nil, err
			}
		}
	}
	if kind == IdentityPolicy {
		if err := checkSidsUnique(stmts); err != nil {
			return nil, err
		}
		for i, s := range stmts {
			if !hasValues(s, "Action", "NotAction") {
				return nil, malformed(msgNoActions, "statement %d", i)
			}
		}
	}
	for i, s := range stmts {
		if err := checkResourceFormat(i, s); err != nil {
			return nil, err
		}
	}
	for i, s := range stmts {
		if err := checkActionFormat(i, s); err != nil {
			return nil, err
		}
	}
	if kind == IdentityPolicy {
		for i, s := range stmts {
			if !hasValues(s, "Resource", "NotResource") {
				return nil, malformed(msgNoResources, "statement %d", i)
			}
		}
	}
	vars := p.version == Version2012
	p.statements = make([]statement, len(stmts))
	for i, s := range stmts {
		if err := compileStatement(&p.statements[i], s, kind, vars); err != nil {
			return nil, err
		}
	}
	p.collectRefs()
	return p, nil
}

// checkSyntax checks the shape of the document and returns its statements.
func checkSyntax(root *jval, p *Policy) ([]*jval, error) {
	if root.kind != jObject {
		return nil, malformed(msgSyntax, "document is not a JSON object")
	}
	if err := onlyElements(root, topElements, "document"); err != nil {
		return nil, err
	}
	if v := root.get("Version"); v != nil {
		if v.kind != jString || (v.text != Version2012 && v.text != Version2008) {
			return nil, malformed(msgSyntax, "Version must be %q or %q", Version2012, Version2008)
		}
		p.version = v.text
	}
	if v := root.get("Id"); v != nil {
		if v.kind != jString {
			return nil, malformed(msgSyntax, "Id is not a string")
		}
		p.id = v.text
	}
	st := root.get("Statement")
	var stmts []*jval
	switch {
	case st == nil:
		return nil, malformed(msgSyntax, "no Statement")
	case st.kind == jObject:
		stmts = []*jval{st}
	case st.kind == jArray && len(st.arr) > 0:
		stmts = st.arr
	default:
		return nil, malformed(msgSyntax, "Statement must be an object or a non-empty list")
	}
	for i, s := range stmts {
		if err := checkStatementSyntax(i, s); err != nil {
			return nil, err
		}
	}
	return stmts, nil
}

func onlyElements(v *jval, allowed []string, where string) error {
	for _, k := range v.keys {
		found := false
		for _, a := range allowed {
			if k == a {
				found = true
				break
			}
		}
		if !found {
			return malformed(msgSyntax, "%s: unknown element %q", where, k)
		}
	}
	return nil
}

func checkStatementSyntax(i int, s *jval) error {
	where := "statement " + strconv.Itoa(i)
	if s.kind != jObject {
		return malformed(msgSyntax, "%s is not an object", where)
	}
	if err := onlyElements(s, statementElements, where); err != nil {
		return err
	}
	for _, pair := range [][2]string{{"Principal", "NotPrincipal"}, {"Action", "NotAction"}, {"Resource", "NotResource"}} {
		if s.get(pair[0]) != nil && s.get(pair[1]) != nil {
			return malformed(msgSyntax, "%s has both %s and %s", where, pair[0], pair[1])
		}
	}
	if e := s.get("Effect"); e == nil || e.kind != jString {
		return malformed(msgSyntax, "%s: Effect missing or not a string", where)
	}
	if v := s.get("Sid"); v != nil && v.kind != jString {
		return malformed(msgSyntax, "%s: Sid is not a string", where)
	}
	for _, name := range []string{"Action", "NotAction", "Resource", "NotResource"} {
		if v := s.get(name); v != nil {
			if _, ok := v.strings(); !ok {
				return malformed(msgSyntax, "%s: %s must be a string or a list of strings", where, name)
			}
		}
	}
	for _, name := range []string{"Principal", "NotPrincipal"} {
		if v := s.get(name); v != nil && v.kind != jString && v.kind != jObject {
			return malformed(msgSyntax, "%s: %s must be \"*\" or an object", where, name)
		}
	}
	if c := s.get("Condition"); c != nil {
		if c.kind != jObject {
			return malformed(msgSyntax, "%s: Condition is not an object", where)
		}
		for j, opName := range c.keys {
			block := c.vals[j]
			if block.kind != jObject {
				return malformed(msgSyntax, "%s: condition %q is not an object", where, opName)
			}
			if _, _, _, ok := parseOperator(opName); !ok && len(block.keys) > 0 {
				return malformed(msgSyntax, "%s: unknown condition operator %q", where, opName)
			}
			for k, key := range block.keys {
				if _, ok := block.vals[k].scalars(); !ok {
					return malformed(msgSyntax, "%s: values of %s %q must be a string or a list of strings", where, opName, key)
				}
			}
		}
	}
	return nil
}

// checkLegacy checks element values: Effect (case-sensitive) and dates.
func checkLegacy(i int, s *jval) error {
	if e := s.get("Effect").text; e != "Allow" && e != "Deny" {
		return malformed(msgLegacy, "statement %d: Effect %q is neither Allow nor Deny", i, e)
	}
	c := s.get("Condition")
	if c == nil {
		return nil
	}
	for j, opName := range c.keys {
		op, _, _, ok := parseOperator(opName)
		if !ok || op.op < opDateEquals || op.op > opDateGreaterThanEquals {
			continue
		}
		for _, vals := range c.vals[j].vals {
			list, _ := vals.scalars()
			for _, d := range list {
				if _, ok := parseDate(d); !ok {
					return malformed(msgLegacy, "statement %d: %s value %q is not a date", i, opName, d)
				}
			}
		}
	}
	return nil
}

func checkPrincipalPresence(i int, s *jval, kind Kind) error {
	has := s.get("Principal") != nil || s.get("NotPrincipal") != nil
	switch {
	case kind == IdentityPolicy && has:
		return malformed(msgHasPrincipal, "statement %d", i)
	case kind == KeyPolicy && !has:
		return malformed(msgNoPrincipal, "statement %d", i)
	case kind == KeyPolicy:
		_, err := compilePrincipals(i, s)
		return err
	}
	return nil
}

// compilePrincipals compiles a statement's Principal or NotPrincipal.
func compilePrincipals(i int, s *jval) ([]principalEntry, error) {
	v := s.get("Principal")
	if v == nil {
		v = s.get("NotPrincipal")
	}
	bad := func(format string, args ...any) error {
		return malformed(msgInvalidPrincipals, "statement %d: "+format, append([]any{i}, args...)...)
	}
	if v.kind == jString {
		if v.text != "*" {
			return nil, bad("principal %q is neither \"*\" nor an object", v.text)
		}
		return []principalEntry{{kind: pAny, value: "*"}}, nil
	}
	if len(v.keys) == 0 {
		return nil, bad("empty principal")
	}
	var out []principalEntry
	for j, typ := range v.keys {
		list, ok := v.vals[j].strings()
		if !ok || len(list) == 0 {
			return nil, bad("%s principal must be a string or a non-empty list of strings", typ)
		}
		for _, val := range list {
			var e principalEntry
			switch typ {
			case "AWS":
				if e, ok = parseAWSPrincipal(val); !ok {
					return nil, bad("invalid AWS principal %q", val)
				}
			case "Service":
				if !validServiceName(val) {
					return nil, bad("invalid service principal %q", val)
				}
				e = principalEntry{kind: pService, value: val}
			case "Federated":
				if val == "" || strings.ContainsAny(val, "*? ") {
					return nil, bad("invalid federated principal %q", val)
				}
				e = principalEntry{kind: pFederated, value: val}
			default:
				return nil, bad("unsupported principal type %q", typ)
			}
			out = append(out, e)
		}
	}
	return out, nil
}

func checkSidsUnique(stmts []*jval) error {
	seen := map[string]bool{}
	for i, s := range stmts {
		if v := s.get("Sid"); v != nil && v.text != "" {
			if seen[v.text] {
				return malformed(msgSidUnique, "statement %d: Sid %q repeats", i, v.text)
			}
			seen[v.text] = true
		}
	}
	return nil
}

// hasValues reports whether s has a non-empty one of the two elements.
func hasValues(s *jval, name, notName string) bool {
	v := s.get(name)
	if v == nil {
		v = s.get(notName)
	}
	if v == nil {
		return false
	}
	list, _ := v.strings()
	return len(list) > 0
}

func checkResourceFormat(i int, s *jval) error {
	for _, name := range []string{"Resource", "NotResource"} {
		v := s.get(name)
		if v == nil {
			continue
		}
		list, _ := v.strings()
		// IAM reports the last offending value in sorted order.
		sorted := append([]string(nil), list...)
		sort.Sort(sort.Reverse(sort.StringSlice(sorted)))
		for _, res := range sorted {
			if res != "*" && !strings.Contains(res, ":") {
				return malformed("Resource "+res+" must be in ARN format or \"*\".", "statement %d", i)
			}
		}
	}
	return nil
}

func checkActionFormat(i int, s *jval) error {
	for _, name := range []string{"Action", "NotAction"} {
		v := s.get(name)
		if v == nil {
			continue
		}
		list, _ := v.strings()
		for _, a := range list {
			if a == "*" {
				continue
			}
			vendor, _, found := strings.Cut(a, ":")
			switch {
			case !found:
				return malformed(msgVendor, "statement %d: action %q", i, a)
			case strings.Count(a, ":") > 1:
				return malformed(msgOneColon, "statement %d: action %q", i, a)
			case vendor != "*" && !validVendor(vendor):
				return malformed("Vendor "+vendor+" is not valid", "statement %d: action %q", i, a)
			}
		}
	}
	return nil
}

func validVendor(v string) bool {
	if v == "" {
		return false
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// compileStatement turns a validated statement into its evaluable form.
func compileStatement(st *statement, s *jval, kind Kind, vars bool) error {
	if v := s.get("Sid"); v != nil {
		st.sid = v.text
	}
	st.deny = s.get("Effect").text == "Deny"
	if kind == KeyPolicy {
		ps, err := compilePrincipals(0, s)
		if err != nil {
			return err
		}
		st.principals = ps
		st.notPrincipal = s.get("NotPrincipal") != nil
	}
	actions, not := elementValues(s, "Action", "NotAction")
	st.notAction = not
	for _, a := range actions {
		st.actions = append(st.actions, compileAction(a))
	}
	resources, not := elementValues(s, "Resource", "NotResource")
	st.notResource = not
	for _, r := range resources {
		st.resources = append(st.resources, compilePattern(r, true, vars))
	}
	st.inert = len(st.actions) == 0 || len(st.resources) == 0
	if c := s.get("Condition"); c != nil {
		for j, opName := range c.keys {
			op, set, ifExists, ok := parseOperator(opName)
			if !ok {
				continue // an unknown operator with an empty block
			}
			block := c.vals[j]
			for k, key := range block.keys {
				raw, _ := block.vals[k].scalars()
				cond := condition{operator: op, set: set, ifExists: ifExists, key: key, lower: lowerASCII(key)}
				for _, rv := range raw {
					cond.values = append(cond.values, compileValue(op.op, rv, vars))
				}
				st.conditions = append(st.conditions, cond)
			}
		}
	}
	return nil
}

// elementValues returns the values of name or notName and which it was.
func elementValues(s *jval, name, notName string) ([]string, bool) {
	if v := s.get(name); v != nil {
		list, _ := v.strings()
		return list, false
	}
	if v := s.get(notName); v != nil {
		list, _ := v.strings()
		return list, true
	}
	return nil, false
}
