package policy

import (
	"bytes"
	"encoding/base64"
	"math"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// opKind is the positive form of a condition operator; negated operators
// (StringNotEquals, NotIpAddress, …) are the same kind with negate set.
type opKind uint8

const (
	opStringEquals opKind = iota
	opStringEqualsIgnoreCase
	opStringLike
	opNumericEquals
	opNumericLessThan
	opNumericLessThanEquals
	opNumericGreaterThan
	opNumericGreaterThanEquals
	opDateEquals
	opDateLessThan
	opDateLessThanEquals
	opDateGreaterThan
	opDateGreaterThanEquals
	opBool
	opBinaryEquals
	opIPAddress
	opArn // ArnEquals and ArnLike are the same test
	opNull
)

type operator struct {
	op     opKind
	negate bool
}

// operators are the base names IAM accepts, before the ForAllValues: /
// ForAnyValue: prefix and the IfExists suffix. Names are case-sensitive.
var operators = map[string]operator{
	"StringEquals":              {opStringEquals, false},
	"StringNotEquals":           {opStringEquals, true},
	"StringEqualsIgnoreCase":    {opStringEqualsIgnoreCase, false},
	"StringNotEqualsIgnoreCase": {opStringEqualsIgnoreCase, true},
	"StringLike":                {opStringLike, false},
	"StringNotLike":             {opStringLike, true},
	"NumericEquals":             {opNumericEquals, false},
	"NumericNotEquals":          {opNumericEquals, true},
	"NumericLessThan":           {opNumericLessThan, false},
	"NumericLessThanEquals":     {opNumericLessThanEquals, false},
	"NumericGreaterThan":        {opNumericGreaterThan, false},
	"NumericGreaterThanEquals":  {opNumericGreaterThanEquals, false},
	"DateEquals":                {opDateEquals, false},
	"DateNotEquals":             {opDateEquals, true},
	"DateLessThan":              {opDateLessThan, false},
	"DateLessThanEquals":        {opDateLessThanEquals, false},
	"DateGreaterThan":           {opDateGreaterThan, false},
	"DateGreaterThanEquals":     {opDateGreaterThanEquals, false},
	"Bool":                      {opBool, false},
	"BinaryEquals":              {opBinaryEquals, false},
	"IpAddress":                 {opIPAddress, false},
	"NotIpAddress":              {opIPAddress, true},
	"ArnEquals":                 {opArn, false},
	"ArnNotEquals":              {opArn, true},
	"ArnLike":                   {opArn, false},
	"ArnNotLike":                {opArn, true},
	"Null":                      {opNull, false},
}

// setQual is the set operator prefix of a condition.
type setQual uint8

const (
	setNone setQual = iota
	setAll          // ForAllValues:
	setAny          // ForAnyValue:
)

// parseOperator splits a condition operator into its parts.
func parseOperator(name string) (op operator, set setQual, ifExists, ok bool) {
	if rest, cut := strings.CutPrefix(name, "ForAllValues:"); cut {
		name, set = rest, setAll
	} else if rest, cut := strings.CutPrefix(name, "ForAnyValue:"); cut {
		name, set = rest, setAny
	}
	if rest, cut := strings.CutSuffix(name, "IfExists"); cut {
		name, ifExists = rest, true
	}
	op, ok = operators[name]
	if op.op == opNull {
		// Null tests presence itself: a set prefix or IfExists changes nothing.
		set, ifExists = setNone, false
	}
	return op, set, ifExists, ok
}

// condition is one key of one operator block, with its values.
type condition struct {
	operator
	set      setQual
	ifExists bool
	key      string // as written
	lower    string
	values   []condValue
}

// condValue is one policy value, compiled for its operator.
type condValue struct {
	pat pattern   // string operators; ARN operators on non-ARN text
	arn []pattern // ARN operators: the six fields
	num number
	t   time.Time
	ip  netip.Prefix
	bin []byte
	b   bool
	ok  bool // the value parsed for its operator
}

// compileValue prepares raw for op; vars says whether policy variables
// are substituted (Version 2012-10-17).
func compileValue(op opKind, raw string, vars bool) condValue {
	var v condValue
	switch op {
	case opStringEquals, opStringEqualsIgnoreCase:
		v.pat, v.ok = compilePattern(raw, false, vars), true
	case opStringLike:
		v.pat, v.ok = compilePattern(raw, true, vars), true
	case opArn:
		fields := splitARN(raw)
		if len(fields) == 6 {
			v.arn = make([]pattern, 6)
			for i, f := range fields {
				v.arn[i] = compilePattern(f, true, vars)
			}
		} else {
			v.pat = compilePattern(raw, true, vars)
		}
		v.ok = true
	case opNumericEquals, opNumericLessThan, opNumericLessThanEquals, opNumericGreaterThan, opNumericGreaterThanEquals:
		v.num, v.ok = parseNumber(raw)
	case opDateEquals, opDateLessThan, opDateLessThanEquals, opDateGreaterThan, opDateGreaterThanEquals:
		v.t, v.ok = parseDate(raw)
	case opBool, opNull:
		v.b, v.ok = parseBool(raw)
	case opBinaryEquals:
		b, err := base64.StdEncoding.DecodeString(raw)
		v.bin, v.ok = b, err == nil
	case opIPAddress:
		v.ip, v.ok = parseCIDR(raw)
	}
	return v
}

// eval reports whether the condition holds for r, with IAM's rules for
// absent keys, multiple values and the set operators:
//
//   - a key absent from the request fails a positive operator and passes a
//     negated one; IfExists passes it; ForAllValues passes it (the empty
//     set) and ForAnyValue fails it.
//   - several policy values OR: a positive operator holds when the request
//     value matches any of them, a negated one when it matches none.
//   - ForAnyValue holds when some request value passes; ForAllValues when
//     every request value does.
func (c *condition) eval(r *Request) bool {
	vals, present := r.lookup(c.key, c.lower)
	if c.op == opNull {
		for i := range c.values {
			if v := &c.values[i]; v.ok && v.b != present {
				return true
			}
		}
		return false
	}
	if !present {
		switch {
		case c.ifExists, c.set == setAll:
			return true
		case c.set == setAny:
			return false
		}
		return c.negate
	}
	switch c.set {
	case setAny:
		for _, rv := range vals {
			if c.matchAny(rv, r) != c.negate {
				return true
			}
		}
		return false
	case setAll:
		for _, rv := range vals {
			if c.matchAny(rv, r) == c.negate {
				return false
			}
		}
		return true
	}
	for _, rv := range vals {
		if c.matchAny(rv, r) {
			return !c.negate
		}
	}
	return c.negate
}

// matchAny reports whether request value rv matches any policy value
// under the positive form of the operator.
func (c *condition) matchAny(rv string, r *Request) bool {
	switch c.op {
	case opNumericEquals, opNumericLessThan, opNumericLessThanEquals, opNumericGreaterThan, opNumericGreaterThanEquals:
		n, ok := parseNumber(rv)
		if !ok {
			return false
		}
		for i := range c.values {
			if v := &c.values[i]; v.ok && compareOK(c.op-opNumericEquals, n.cmp(v.num)) {
				return true
			}
		}
		return false
	case opDateEquals, opDateLessThan, opDateLessThanEquals, opDateGreaterThan, opDateGreaterThanEquals:
		t, ok := parseDate(rv)
		if !ok {
			return false
		}
		for i := range c.values {
			if v := &c.values[i]; v.ok && compareOK(c.op-opDateEquals, t.Compare(v.t)) {
				return true
			}
		}
		return false
	case opIPAddress:
		a, err := netip.ParseAddr(rv)
		if err != nil {
			return false
		}
		a = a.Unmap().WithZone("")
		for i := range c.values {
			if v := &c.values[i]; v.ok && v.ip.Contains(a) {
				return true
			}
		}
		return false
	case opBool:
		b, ok := parseBool(rv)
		if !ok {
			return false
		}
		for i := range c.values {
			if v := &c.values[i]; v.ok && v.b == b {
				return true
			}
		}
		return false
	}
	for i := range c.values {
		if c.values[i].ok && c.matchOne(&c.values[i], rv, r) {
			return true
		}
	}
	return false
}

// matchOne handles the operators whose values are patterns, and binary.
func (c *condition) matchOne(v *condValue, rv string, r *Request) bool {
	switch c.op {
	case opStringEquals, opStringLike:
		return v.pat.match(rv, r, exactCase)
	case opStringEqualsIgnoreCase:
		return v.pat.match(rv, r, foldFull)
	case opArn:
		if v.arn == nil {
			return v.pat.match(rv, r, exactCase)
		}
		rest := rv
		for i := 0; i < 5; i++ {
			j := strings.IndexByte(rest, ':')
			if j < 0 || !v.arn[i].match(rest[:j], r, exactCase) {
				return false
			}
			rest = rest[j+1:]
		}
		return v.arn[5].match(rest, r, exactCase)
	case opBinaryEquals:
		if base64.StdEncoding.DecodedLen(len(rv)) < len(v.bin) {
			return false
		}
		b, err := base64.StdEncoding.DecodeString(rv)
		return err == nil && bytes.Equal(b, v.bin)
	}
	return false
}

// compareOK applies a comparison (0 Equals, 1 LessThan, 2 LessThanEquals,
// 3 GreaterThan, 4 GreaterThanEquals) to cmp(request, policy).
func compareOK(rel opKind, cmp int) bool {
	switch rel {
	case 0:
		return cmp == 0
	case 1:
		return cmp < 0
	case 2:
		return cmp <= 0
	case 3:
		return cmp > 0
	case 4:
		return cmp >= 0
	}
	return false
}

// number keeps integers exact and falls back to float64 for the rest.
type number struct {
	i     int64
	f     float64
	isInt bool
}

func parseNumber(s string) (number, bool) {
	if i, err := strconv.ParseInt(s, 10, 64); err == nil {
		return number{i: i, f: float64(i), isInt: true}, true
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return number{}, false
	}
	return number{f: f}, true
}

func (a number) cmp(b number) int {
	if a.isInt && b.isInt {
		switch {
		case a.i < b.i:
			return -1
		case a.i > b.i:
			return 1
		}
		return 0
	}
	switch {
	case a.f < b.f:
		return -1
	case a.f > b.f:
		return 1
	}
	return 0
}

// dateLayouts are the ISO 8601 forms IAM accepts; time.Parse also takes
// fractional seconds after the seconds field of each.
var dateLayouts = []string{
	time.RFC3339,
	"2006-01-02T15:04:05Z0700",
	"2006-01-02T15:04:05",
	"2006-01-02T15:04Z07:00",
	"2006-01-02T15:04",
	"2006-01-02T15Z07:00",
	"2006-01-02",
}

// parseDate reads an ISO 8601 date-time (UTC when no zone is given) or,
// for text without 'T' or '-', epoch seconds.
func parseDate(s string) (time.Time, bool) {
	if s == "" {
		return time.Time{}, false
	}
	if !strings.ContainsAny(s, "Tt-") {
		if i, err := strconv.ParseInt(s, 10, 64); err == nil {
			if i < 0 || i > 1<<40 {
				return time.Time{}, false
			}
			return time.Unix(i, 0), true
		}
		f, err := strconv.ParseFloat(s, 64)
		if err != nil || f < 0 || f > 1<<40 {
			return time.Time{}, false
		}
		sec, frac := math.Modf(f)
		return time.Unix(int64(sec), int64(frac*1e9)), true
	}
	if strings.ContainsAny(s, "tz") {
		s = strings.ToUpper(s)
	}
	for _, l := range dateLayouts {
		if t, err := time.Parse(l, s); err == nil {
			return t, true
		}
	}
	return time.Time{}, false
}

func parseBool(s string) (v, ok bool) {
	switch {
	case strings.EqualFold(s, "true"):
		return true, true
	case strings.EqualFold(s, "false"):
		return false, true
	}
	return false, false
}

// parseCIDR reads a CIDR block; a bare address is a single-address block.
func parseCIDR(s string) (netip.Prefix, bool) {
	if p, err := netip.ParsePrefix(s); err == nil {
		if p.Addr().Is4In6() {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		return p.Masked(), p.Bits() >= 0
	}
	if a, err := netip.ParseAddr(s); err == nil && a.Zone() == "" {
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), true
	}
	return netip.Prefix{}, false
}

// splitARN splits an ARN pattern into its six fields (the last keeps its
// colons), not splitting inside ${…}. Text with fewer fields is returned
// as it splits.
func splitARN(s string) []string {
	var out []string
	start, depth := 0, 0
	for i := 0; i < len(s) && len(out) < 5; i++ {
		switch {
		case s[i] == '$' && i+1 < len(s) && s[i+1] == '{':
			depth++
			i++
		case s[i] == '}' && depth > 0:
			depth--
		case s[i] == ':' && depth == 0:
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}
