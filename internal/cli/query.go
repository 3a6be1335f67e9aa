package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"sort"
	"strings"
	"unicode"

	jmespath "github.com/jmespath-community/go-jmespath"
	"github.com/jmespath-community/go-jmespath/pkg/parsing"
)

// query is a compiled --query expression. JMESPath runs on plain Go maps;
// query keeps what it needs to give the result back the key order Python
// would have: the order of the response's own objects, and the order a
// multi-select hash names its keys in.
type query struct {
	expr   string
	jp     jmespath.JMESPath
	hashes [][]string // key lists of the expression's multi-select hashes
}

func compileQuery(expr string) (*query, error) {
	src := legacyLiterals(expr)
	jp, err := compileJMESPath(src)
	if err != nil && src != expr {
		// Report the error against the expression as written.
		_, err = compileJMESPath(expr)
	}
	if err != nil {
		// Python jmespath's wording: the kind of error, the expression,
		// and a caret under the place it went wrong.
		kind, off := "Invalid token", len(expr)
		var se parsing.SyntaxError
		if errors.As(err, &se) {
			off = se.Offset
		}
		if off >= len(expr) {
			kind, off = "Incomplete expression", len(expr)
		}
		return nil, &paramError{fmt.Sprintf("Bad value for --query %s: Invalid jmespath expression: %s:\n\"%s\"\n%s^", expr, kind, expr, strings.Repeat(" ", off+1))}
	}
	q := &query{expr: expr, jp: jp}
	// Compiled above, so the lexer does not panic on src.
	if ast, err := parsing.NewParser().Parse(src); err == nil {
		q.collect(ast)
	}
	return q, nil
}

// compileJMESPath is jmespath.Compile with a panic of the library turned
// into a syntax error. go-jmespath v1.1.1 (the latest) reads the rune
// after an unquoted identifier's first character from a 128-bit table
// with the test r > 128 where it means r >= 128, so an identifier followed
// by U+0080 ("a\u0080") indexes past the table and panics: kmsctl --query
// crashed with a stack trace where the aws CLI says the expression is
// invalid (found by FuzzLegacyLiterals). The error points at that rune.
func compileJMESPath(expr string) (jp jmespath.JMESPath, err error) {
	defer func() {
		if r := recover(); r != nil {
			off := strings.IndexRune(expr, '\u0080')
			if off < 0 {
				off = len(expr)
			}
			jp, err = nil, parsing.SyntaxError{Expression: expr, Offset: off}
		}
	}()
	return jmespath.Compile(expr)
}

// legacyLiterals rewrites the backtick literals of expr that are not JSON
// (`running`, `alias/x`) as the JSON strings Python's jmespath, and so the
// aws CLI, takes them for: the text with leading white space removed,
// between double quotes, parsed as JSON (a deprecated form, but the one
// AWS's documentation uses everywhere). Literals that are JSON, and text
// in raw strings ('...') and quoted identifiers ("..."), are left as they
// are; a literal that is no JSON string either stays, to fail as before.
func legacyLiterals(expr string) string {
	var b strings.Builder
	for i := 0; i < len(expr); i++ {
		c := expr[i]
		if c != '`' && c != '\'' && c != '"' {
			b.WriteByte(c)
			continue
		}
		// Find the closing delimiter as the lexer does: a backslash
		// escapes the byte after it.
		end := i + 1
		for end < len(expr) && expr[end] != c {
			if expr[end] == '\\' {
				end++
			}
			end++
		}
		if end >= len(expr) {
			b.WriteString(expr[i:]) // unclosed: the parser reports it
			break
		}
		body := expr[i+1 : end]
		if c == '`' {
			lit := strings.ReplaceAll(body, "\\`", "`")
			quoted := "\"" + strings.TrimLeftFunc(body, unicode.IsSpace) + "\""
			if !json.Valid([]byte(lit)) && json.Valid([]byte(strings.ReplaceAll(quoted, "\\`", "`"))) {
				body = quoted
			}
		}
		b.WriteByte(c)
		b.WriteString(body)
		b.WriteByte(c)
		i = end
	}
	return b.String()
}

func (q *query) collect(n parsing.ASTNode) {
	if n.NodeType == parsing.ASTMultiSelectHash {
		var keys []string
		for _, c := range n.Children {
			if k, ok := c.Value.(string); ok {
				keys = append(keys, k)
			}
		}
		q.hashes = append(q.hashes, keys)
	}
	for _, c := range n.Children {
		q.collect(c)
	}
}

// search applies the query to v (a response in kmsctl's value types).
func (q *query) search(v any) (any, error) {
	orders := map[uintptr][]string{}
	plain := toPlain(v, orders)
	res, err := q.jp.Search(plain)
	if err != nil {
		return nil, &generalError{err.Error()}
	}
	return q.fromPlain(res, orders), nil
}

func toPlain(v any, orders map[uintptr][]string) any {
	switch t := v.(type) {
	case *Object:
		m := make(map[string]any, t.Len())
		for _, k := range t.Keys {
			m[k] = toPlain(t.M[k], orders)
		}
		orders[reflect.ValueOf(m).Pointer()] = t.Keys
		return m
	case []any:
		l := make([]any, len(t))
		for i := range t {
			l[i] = toPlain(t[i], orders)
		}
		return l
	case int64:
		return float64(t)
	case []byte:
		return string(t)
	}
	return v
}

func (q *query) fromPlain(v any, orders map[uintptr][]string) any {
	switch t := v.(type) {
	case map[string]any:
		keys, ok := orders[reflect.ValueOf(t).Pointer()]
		if !ok || len(keys) != len(t) {
			keys = q.orderFor(t)
		}
		o := NewObject()
		for _, k := range keys {
			if val, ok := t[k]; ok {
				o.Set(k, q.fromPlain(val, orders))
			}
		}
		return o
	case []any:
		l := make([]any, len(t))
		for i := range t {
			l[i] = q.fromPlain(t[i], orders)
		}
		return l
	case float64:
		if t == math.Trunc(t) && math.Abs(t) < 1<<53 {
			return int64(t)
		}
	case int:
		return int64(t)
	}
	return v
}

// orderFor picks the key order of a map the query built: a multi-select
// hash's own order when the keys match one, else sorted.
func (q *query) orderFor(m map[string]any) []string {
	for _, h := range q.hashes {
		if len(h) != len(m) {
			continue
		}
		all := true
		for _, k := range h {
			if _, ok := m[k]; !ok {
				all = false
				break
			}
		}
		if all {
			return h
		}
	}
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
