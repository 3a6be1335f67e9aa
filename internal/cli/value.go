package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/text/width"
)

// Values inside kmsctl are the types Python's json module gives the aws
// CLI, so that formatting follows it exactly:
//
//	*Object (a dict, insertion-ordered), []any, string, int64, float64,
//	bool, nil, and []byte for decoded blob inputs.

// Object is an insertion-ordered string-keyed map, like a Python dict.
type Object struct {
	Keys []string
	M    map[string]any
}

// NewObject returns an empty Object.
func NewObject() *Object { return &Object{M: map[string]any{}} }

// Set sets k to v, appending k when new.
func (o *Object) Set(k string, v any) {
	if _, ok := o.M[k]; !ok {
		o.Keys = append(o.Keys, k)
	}
	o.M[k] = v
}

// Get returns the value of k.
func (o *Object) Get(k string) (any, bool) {
	v, ok := o.M[k]
	return v, ok
}

// Delete removes k.
func (o *Object) Delete(k string) {
	if _, ok := o.M[k]; !ok {
		return
	}
	delete(o.M, k)
	for i, kk := range o.Keys {
		if kk == k {
			o.Keys = append(o.Keys[:i:i], o.Keys[i+1:]...)
			break
		}
	}
}

// Len is the number of keys.
func (o *Object) Len() int { return len(o.Keys) }

// SortedKeys returns the keys in sorted order.
func (o *Object) SortedKeys() []string {
	ks := append([]string(nil), o.Keys...)
	sort.Strings(ks)
	return ks
}

// errExtraData is a JSON document followed by more than whitespace.
var errExtraData = errors.New("extra data after JSON value")

// decodeJSON parses JSON keeping object key order and telling integers
// (int64) from floats (float64), as Python's json.loads does.
func decodeJSON(data []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	v, err := decodeValue(dec)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errExtraData
	}
	return v, nil
}

func decodeValue(dec *json.Decoder) (any, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			o := NewObject()
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return nil, err
				}
				v, err := decodeValue(dec)
				if err != nil {
					return nil, err
				}
				o.Set(kt.(string), v)
			}
			if _, err := dec.Token(); err != nil {
				return nil, err
			}
			return o, nil
		case '[':
			l := []any{}
			for dec.More() {
				v, err := decodeValue(dec)
				if err != nil {
					return nil, err
				}
				l = append(l, v)
			}
			if _, err := dec.Token(); err != nil {
				return nil, err
			}
			return l, nil
		}
		return nil, fmt.Errorf("unexpected %v", t)
	case json.Number:
		s := t.String()
		if !strings.ContainsAny(s, ".eE") {
			if i, err := strconv.ParseInt(s, 10, 64); err == nil {
				return i, nil
			}
		}
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, err
		}
		return f, nil
	default:
		return t, nil // string, bool, nil
	}
}

// pyJSON writes v as Python's json.dumps(v, indent=indent,
// ensure_ascii=ascii) does; indent < 0 means no indentation
// (separators ", " and ": ").
func pyJSON(w *strings.Builder, v any, indent int, ascii bool) {
	pyJSONAt(w, v, indent, 0, ascii)
}

func pyJSONAt(w *strings.Builder, v any, indent, level int, ascii bool) {
	nl := func(l int) {
		if indent >= 0 {
			w.WriteByte('\n')
			w.WriteString(strings.Repeat(" ", indent*l))
		}
	}
	sep := ", "
	if indent >= 0 {
		sep = ","
	}
	switch t := v.(type) {
	case *Object:
		if t.Len() == 0 {
			w.WriteString("{}")
			return
		}
		w.WriteByte('{')
		for i, k := range t.Keys {
			if i > 0 {
				w.WriteString(sep)
			}
			nl(level + 1)
			pyQuote(w, k, ascii)
			w.WriteString(": ")
			pyJSONAt(w, t.M[k], indent, level+1, ascii)
		}
		nl(level)
		w.WriteByte('}')
	case []any:
		if len(t) == 0 {
			w.WriteString("[]")
			return
		}
		w.WriteByte('[')
		for i, e := range t {
			if i > 0 {
				w.WriteString(sep)
			}
			nl(level + 1)
			pyJSONAt(w, e, indent, level+1, ascii)
		}
		nl(level)
		w.WriteByte(']')
	case string:
		pyQuote(w, t, ascii)
	case []byte:
		pyQuote(w, string(t), ascii)
	default:
		w.WriteString(pyScalar(t, true))
	}
}

// pyQuote writes s as a JSON string the way Python's encoder does.
func pyQuote(w *strings.Builder, s string, ascii bool) {
	w.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"':
			w.WriteString(`\"`)
		case '\\':
			w.WriteString(`\\`)
		case '\n':
			w.WriteString(`\n`)
		case '\r':
			w.WriteString(`\r`)
		case '\t':
			w.WriteString(`\t`)
		case '\b':
			w.WriteString(`\b`)
		case '\f':
			w.WriteString(`\f`)
		default:
			switch {
			case r < 0x20:
				fmt.Fprintf(w, `\u%04x`, r)
			case ascii && r > 0x7e && r < 0x10000:
				fmt.Fprintf(w, `\u%04x`, r)
			case ascii && r >= 0x10000:
				r -= 0x10000
				fmt.Fprintf(w, `\u%04x\u%04x`, 0xd800+(r>>10), 0xdc00+(r&0x3ff))
			case ascii && r == 0x7f:
				w.WriteString(`\u007f`)
			default:
				w.WriteRune(r)
			}
		}
	}
	w.WriteByte('"')
}

// pyScalar renders a scalar as Python's str() (json false: "True",
// "None") or as JSON (json true: "true", "null").
func pyScalar(v any, asJSON bool) string {
	switch t := v.(type) {
	case nil:
		if asJSON {
			return "null"
		}
		return "None"
	case bool:
		switch {
		case asJSON && t:
			return "true"
		case asJSON:
			return "false"
		case t:
			return "True"
		}
		return "False"
	case int64:
		return strconv.FormatInt(t, 10)
	case int:
		return strconv.Itoa(t)
	case float64:
		return pyFloat(t, asJSON)
	case string:
		return t
	case []byte:
		return string(t)
	}
	return fmt.Sprint(v)
}

// pyFloat is Python's repr of a float.
func pyFloat(f float64, asJSON bool) string {
	switch {
	case math.IsNaN(f):
		return "NaN"
	case math.IsInf(f, 1):
		return "Infinity"
	case math.IsInf(f, -1):
		return "-Infinity"
	}
	abs := math.Abs(f)
	if abs != 0 && (abs < 1e-4 || abs >= 1e16) {
		s := strconv.FormatFloat(f, 'e', -1, 64)
		// Go writes 1e+16, Python 1e+16; Go 1e-05, Python 1e-05.
		return s
	}
	s := strconv.FormatFloat(f, 'f', -1, 64)
	if !strings.ContainsAny(s, ".") {
		s += ".0"
	}
	return s
}

// pyRepr renders v as Python's str() of a container would (repr of
// elements): {'a': 1}, ['x'], True, None. It is what botocore prints in
// validation messages.
func pyRepr(v any) string {
	var b strings.Builder
	pyReprTo(&b, v, false)
	return b.String()
}

func pyReprTo(b *strings.Builder, v any, inner bool) {
	switch t := v.(type) {
	case *Object:
		b.WriteByte('{')
		for i, k := range t.Keys {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(pyStrRepr(k))
			b.WriteString(": ")
			pyReprTo(b, t.M[k], true)
		}
		b.WriteByte('}')
	case []any:
		b.WriteByte('[')
		for i, e := range t {
			if i > 0 {
				b.WriteString(", ")
			}
			pyReprTo(b, e, true)
		}
		b.WriteByte(']')
	case string:
		if inner {
			b.WriteString(pyStrRepr(t))
		} else {
			b.WriteString(t)
		}
	case []byte:
		b.WriteString("b" + pyStrRepr(string(t)))
	default:
		b.WriteString(pyScalar(t, false))
	}
}

// pyStrRepr is Python's repr() of a str.
func pyStrRepr(s string) string {
	q := byte('\'')
	if strings.Contains(s, "'") && !strings.Contains(s, `"`) {
		q = '"'
	}
	var b strings.Builder
	b.WriteByte(q)
	for _, r := range s {
		switch {
		case r == '\\':
			b.WriteString(`\\`)
		case r == rune(q):
			b.WriteByte('\\')
			b.WriteRune(r)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\x%02x`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte(q)
	return b.String()
}

// pyTypeName is str(type(v)) in Python.
func pyTypeName(v any) string {
	switch v.(type) {
	case nil:
		return "<class 'NoneType'>"
	case bool:
		return "<class 'bool'>"
	case int64, int:
		return "<class 'int'>"
	case float64:
		return "<class 'float'>"
	case string:
		return "<class 'str'>"
	case []byte:
		return "<class 'bytes'>"
	case []any:
		return "<class 'list'>"
	case *Object:
		return "<class 'dict'>"
	}
	return "<class 'object'>"
}

// textLen is the display width the aws CLI's table uses
// (get_text_length): characters whose East Asian width is wide,
// fullwidth or ambiguous count two.
func textLen(s string) int {
	n := 0
	for _, r := range s {
		switch width.LookupRune(r).Kind() {
		case width.EastAsianWide, width.EastAsianFullwidth, width.EastAsianAmbiguous:
			n += 2
		default:
			n++
		}
	}
	return n
}
