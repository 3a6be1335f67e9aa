package awsjson

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"reflect"
	"sync"
)

// fastDecode decodes the common request body — one flat object whose
// members are all strings without escapes, each naming exactly (same
// case) a *string or []byte member of the struct v points to — without
// encoding/json, which scans every body twice (once to validate it, once
// to decode it) and costs about twice as much on the base64 of a
// signature or a message. It reports false, having changed nothing, for
// any body outside that subset; Decode then hands it to encoding/json,
// so errors, case-insensitive member names, duplicates, escapes, nulls
// and every other kind of member keep encoding/json's behaviour. When it
// reports true, v holds what json.Unmarshal would have stored
// (FuzzFastDecode). body must be valid UTF-8 (Decode checks it first).
func fastDecode(body []byte, v any) bool {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() || rv.Elem().Kind() != reflect.Struct {
		return false
	}
	p := planFor(rv.Elem().Type())
	if p == nil {
		return false
	}
	type member struct {
		f     *fastField
		value []byte
	}
	var found [16]member
	n := 0
	var seen uint64
	i := skipSpace(body, 0)
	if i == len(body) || body[i] != '{' {
		return false
	}
	i = skipSpace(body, i+1)
	if i < len(body) && body[i] == '}' {
		i++
	} else {
		for {
			key, j, ok := plainString(body, i)
			if !ok {
				return false
			}
			f := p.fields[string(key)]
			if f == nil || seen&(1<<f.bit) != 0 || n == len(found) {
				return false
			}
			seen |= 1 << f.bit
			j = skipSpace(body, j)
			if j == len(body) || body[j] != ':' {
				return false
			}
			var value []byte
			if f.blob {
				value, j, ok = blobString(body, skipSpace(body, j+1))
			} else {
				value, j, ok = plainString(body, skipSpace(body, j+1))
			}
			if !ok {
				return false
			}
			found[n] = member{f, value}
			n++
			j = skipSpace(body, j)
			if j == len(body) {
				return false
			}
			if body[j] == '}' {
				i = j + 1
				break
			}
			if body[j] != ',' {
				return false
			}
			i = skipSpace(body, j+1)
		}
	}
	if skipSpace(body, i) != len(body) {
		return false
	}
	// Decode the blobs before storing anything, so that a bad one leaves v
	// untouched for encoding/json to report.
	var blobs [16][]byte
	for k, m := range found[:n] {
		if m.f.blob {
			// As encoding/json does: a slice of DecodedLen, cut to length.
			b := make([]byte, base64.StdEncoding.DecodedLen(len(m.value)))
			l, err := base64.StdEncoding.Decode(b, m.value)
			if err != nil {
				return false
			}
			blobs[k] = b[:l]
		}
	}
	s := rv.Elem()
	for k, m := range found[:n] {
		f := s.Field(m.f.index)
		if m.f.blob {
			f.SetBytes(blobs[k])
		} else {
			str := string(m.value)
			f.Set(reflect.ValueOf(&str))
		}
	}
	return true
}

// fastField is a member fastDecode can store: a *string or a []byte.
type fastField struct {
	index int  // in the struct
	bit   uint // in the set of members seen
	blob  bool // []byte, sent as base64
}

// fastPlan maps member names to the struct fields fastDecode stores.
type fastPlan struct {
	fields map[string]*fastField
}

var fastPlans sync.Map // reflect.Type → *fastPlan (nil: no fast path)

var (
	unmarshalerType = reflect.TypeFor[json.Unmarshaler]()
	stringPtrType   = reflect.TypeFor[*string]()
	bytesType       = reflect.TypeFor[[]byte]()
)

// planFor returns t's plan, nil when t has an embedded field (whose
// members encoding/json would promote) or more than 64 fields.
func planFor(t reflect.Type) *fastPlan {
	if p, ok := fastPlans.Load(t); ok {
		return p.(*fastPlan)
	}
	p := &fastPlan{fields: map[string]*fastField{}}
	if t.NumField() > 64 || reflect.PointerTo(t).Implements(unmarshalerType) {
		p = nil // encoding/json would call its UnmarshalJSON
	}
	names := map[string]bool{}
	for i := 0; p != nil && i < t.NumField(); i++ {
		sf := t.Field(i)
		name, ok := memberName(sf)
		switch {
		case sf.Anonymous || names[name]:
			// Promoted members and clashing names follow rules of
			// encoding/json's own: leave such shapes to it.
			p = nil
			continue
		case !ok:
			continue
		}
		names[name] = true
		if sf.Type == stringPtrType || sf.Type == bytesType {
			p.fields[name] = &fastField{index: i, bit: uint(i), blob: sf.Type == bytesType}
		}
	}
	fastPlans.Store(t, p)
	return p
}

// memberName is the JSON member name encoding/json gives a field; ok is
// false for a field it never decodes (unexported, or tagged "-"). A name
// that is not a plain tag name makes the field one fastDecode leaves to
// encoding/json.
func memberName(sf reflect.StructField) (string, bool) {
	if !sf.IsExported() {
		return "", false
	}
	tag := sf.Tag.Get("json")
	if tag == "-" {
		return "", false
	}
	name := tag
	for i := 0; i < len(tag); i++ {
		if tag[i] == ',' {
			name = tag[:i]
			break
		}
	}
	if name == "" {
		return sf.Name, true
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_') {
			return "", false
		}
	}
	return name, true
}

// plainString reads a JSON string at body[i:] that has no escape and no
// control character, returning its contents and the offset after it.
func plainString(body []byte, i int) ([]byte, int, bool) {
	if i >= len(body) || body[i] != '"' {
		return nil, i, false
	}
	for j := i + 1; j < len(body); j++ {
		switch c := body[j]; {
		case c == '"':
			return body[i+1 : j], j + 1, true
		case c == '\\' || c < 0x20:
			return nil, j, false
		}
	}
	return nil, len(body), false
}

// blobString reads the JSON string of a []byte member at body[i:] for
// base64 decoding, returning its contents and the offset after it. It
// finds the closing quote with one bytes.IndexByte instead of looking at
// each byte as plainString does (a signature or message is most of a
// body): the base64 decoder refuses every byte plainString would — a
// backslash (so a quote taken for the closing one after a backslash fails
// the decode, and with it the whole fast path), and every control
// character except '\r' and '\n', which it skips and which are refused
// here.
func blobString(body []byte, i int) ([]byte, int, bool) {
	if i >= len(body) || body[i] != '"' {
		return nil, i, false
	}
	j := bytes.IndexByte(body[i+1:], '"')
	if j < 0 {
		return nil, len(body), false
	}
	v := body[i+1 : i+1+j]
	if bytes.IndexByte(v, '\n') >= 0 || bytes.IndexByte(v, '\r') >= 0 {
		return nil, i, false
	}
	return v, i + j + 2, true
}

func skipSpace(body []byte, i int) int {
	for i < len(body) {
		switch body[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}
