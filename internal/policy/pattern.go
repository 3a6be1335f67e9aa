package policy

import (
	"strings"
	"unicode/utf8"
)

// tokKind is the kind of one piece of a compiled pattern.
type tokKind uint8

const (
	tokLit   tokKind = iota // literal text
	tokVar                  // policy variable, resolved from the request
	tokStar                 // '*': any run of characters
	tokQuest                // '?': exactly one character
)

type token struct {
	kind   tokKind
	text   string // literal text; for tokVar the condition key as written
	lower  string // tokVar: the key in lower case
	def    string // tokVar: default value
	hasDef bool
}

// pattern is a compiled policy string: an Action, a Resource or a
// condition value. Parse splits it into literal runs, wildcards and
// policy variables once, so matching never rescans or allocates.
type pattern struct {
	raw   string
	plain bool   // only literal text: compare lit directly
	lit   string // the literal text when plain
	toks  []token
}

// compilePattern compiles s. With wildcards, '*' and '?' match runs and
// single characters; with vars, ${key} is a policy variable (${*}, ${?}
// and ${$} are the literal characters, and ${key, 'default'} gives a
// default for a key the request lacks). A '${' that does not form a
// variable is literal text.
func compilePattern(s string, wildcards, vars bool) pattern {
	p := pattern{raw: s}
	var lit strings.Builder
	flush := func() {
		if lit.Len() > 0 {
			p.toks = append(p.toks, token{kind: tokLit, text: lit.String()})
			lit.Reset()
		}
	}
	for i := 0; i < len(s); {
		c := s[i]
		if vars && c == '$' && i+1 < len(s) && s[i+1] == '{' {
			if end := strings.IndexByte(s[i+2:], '}'); end >= 0 {
				if t, ok := parseVariable(s[i+2 : i+2+end]); ok {
					if t.kind == tokLit {
						lit.WriteString(t.text)
					} else {
						flush()
						p.toks = append(p.toks, t)
					}
					i += 2 + end + 1
					continue
				}
			}
		}
		if wildcards && (c == '*' || c == '?') {
			flush()
			if c == '*' {
				if n := len(p.toks); n == 0 || p.toks[n-1].kind != tokStar {
					p.toks = append(p.toks, token{kind: tokStar})
				}
			} else {
				p.toks = append(p.toks, token{kind: tokQuest})
			}
			i++
			continue
		}
		lit.WriteByte(c)
		i++
	}
	flush()
	switch {
	case len(p.toks) == 0:
		p.plain = true
	case len(p.toks) == 1 && p.toks[0].kind == tokLit:
		p.plain, p.lit = true, p.toks[0].text
	}
	if p.plain {
		p.toks = nil
	}
	return p
}

// parseVariable reads the inside of ${...}.
func parseVariable(body string) (token, bool) {
	switch body {
	case "*", "?", "$":
		return token{kind: tokLit, text: body}, true
	}
	key, def, hasDef := strings.Cut(body, ",")
	key = strings.TrimSpace(key)
	if key == "" || strings.ContainsAny(key, " \t${}'") {
		return token{}, false
	}
	t := token{kind: tokVar, text: key, lower: lowerASCII(key)}
	if hasDef {
		def = strings.TrimSpace(def)
		if len(def) < 2 || def[0] != '\'' || def[len(def)-1] != '\'' {
			return token{}, false
		}
		t.def, t.hasDef = def[1:len(def)-1], true
	}
	return t, true
}

// resolve returns the value of a variable token for r. A variable resolves
// only to a key with exactly one value; otherwise it takes its default,
// and without one the pattern cannot match.
func (t *token) resolve(r *Request) (string, bool) {
	if v, ok := r.lookup(t.text, t.lower); ok && len(v) == 1 {
		return v[0], true
	}
	return t.def, t.hasDef
}

// foldMode is how a match treats letter case.
type foldMode uint8

const (
	exactCase foldMode = iota
	foldASCII          // actions: the pattern was compiled in lower case
	foldFull           // StringEqualsIgnoreCase: Unicode simple folding
)

// compileAction compiles an Action element value: wildcards, no
// variables, and lower case for foldASCII matching.
func compileAction(s string) pattern { return compilePattern(lowerASCII(s), true, false) }

// match reports whether s matches p.
func (p *pattern) match(s string, r *Request, fold foldMode) bool {
	if p.plain {
		switch fold {
		case foldASCII:
			return len(s) == len(p.lit) && hasLowerPrefix(s, p.lit)
		case foldFull:
			return strings.EqualFold(p.lit, s)
		}
		return p.lit == s
	}
	return matchTokens(p.toks, s, r, fold)
}

// matchTokens is the classic wildcard match with backtracking to the last
// star only: between stars a pattern has a fixed length, so the leftmost
// placement of each star-free run is always the best one.
func matchTokens(toks []token, s string, r *Request, fold foldMode) bool {
	ti, si := 0, 0
	starT, starS := -1, 0
	for {
		if ti < len(toks) {
			t := &toks[ti]
			switch t.kind {
			case tokStar:
				if ti == len(toks)-1 {
					return true // a trailing star takes the rest
				}
				starT, starS = ti, si
				ti++
				continue
			case tokQuest:
				if si < len(s) {
					_, n := utf8.DecodeRuneInString(s[si:])
					si += n
					ti++
					continue
				}
			default:
				lit := t.text
				if t.kind == tokVar {
					v, ok := t.resolve(r)
					if !ok {
						return false
					}
					lit = v
				}
				if hasPrefix(s[si:], lit, fold) {
					si += len(lit)
					ti++
					continue
				}
			}
		} else if si == len(s) {
			return true
		}
		if starT < 0 || starS >= len(s) {
			return false
		}
		// Let the last star take one more character, then skip ahead to
		// where the literal after it can start.
		if s[starS] < utf8.RuneSelf {
			starS++
		} else {
			_, n := utf8.DecodeRuneInString(s[starS:])
			starS += n
		}
		if next := &toks[starT+1]; next.kind == tokLit && fold == exactCase {
			i := strings.Index(s[starS:], next.text)
			if i < 0 {
				return false
			}
			starS += i
		}
		ti, si = starT+1, starS
	}
}

func hasPrefix(s, prefix string, fold foldMode) bool {
	if len(s) < len(prefix) {
		return false
	}
	switch fold {
	case foldASCII:
		return hasLowerPrefix(s, prefix)
	case foldFull:
		return strings.EqualFold(s[:len(prefix)], prefix)
	}
	return s[:len(prefix)] == prefix
}

// hasLowerPrefix reports whether s starts with lower, a lower-case
// string, ignoring ASCII case in s. len(s) >= len(lower).
func hasLowerPrefix(s, lower string) bool {
	for i := 0; i < len(lower); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

// equalFoldASCII compares two strings ignoring ASCII case. Condition keys
// are case-insensitive; their names are ASCII.
func equalFoldASCII(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if x == y {
			continue
		}
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

func lowerASCII(s string) string {
	for i := 0; i < len(s); i++ {
		if 'A' <= s[i] && s[i] <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if 'A' <= b[j] && b[j] <= 'Z' {
					b[j] += 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}
