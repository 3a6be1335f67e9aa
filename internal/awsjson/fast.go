package awsjson

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"reflect"
	"sync"
)

// fastDecode decodes the common request body — one object whose members
// each name exactly (same case) a member of the struct v points to that
// is a *string or a []byte, given as a string without escapes, or a
// map[string]string, given as an object of such strings (an encryption
// context, which most Encrypt, Decrypt and GenerateDataKey calls carry) —
// without encoding/json, which scans every body twice (once to validate
// it, once to decode it) and costs about three times as much on both
// (BenchmarkFastDecode: a Verify body, an Encrypt body with an encryption
// context). It reports false, having changed nothing, for any body outside
// that subset; Decode then hands it to encoding/json, so errors,
// case-insensitive member names, duplicates, escapes, nulls and every
// other kind of member keep encoding/json's behaviour. When it reports
// true, v holds what json.Unmarshal would have stored (FuzzFastDecode).
// body must be valid UTF-8 (Decode checks it first).
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
		m     map[string]string // a mapField's
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
			var m map[string]string
			switch f.kind {
			case blobField:
				value, j, ok = blobString(body, skipSpace(body, j+1))
			case mapField:
				m, j, ok = plainObject(body, skipSpace(body, j+1))
			default:
				value, j, ok = plainString(body, skipSpace(body, j+1))
			}
			if !ok {
				return false
			}
			found[n] = member{f, value, m}
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
	// untouched for encoding/json to report; a map the caller left in
	// place is left to encoding/json too, which would add to it.
	s := rv.Elem()
	var blobs [16][]byte
	for k, m := range found[:n] {
		if m.f.kind == mapField && !s.Field(m.f.index).IsNil() {
			return false
		}
		if m.f.kind == blobField {
			// As encoding/json does: a slice of DecodedLen, cut to length.
			b := make([]byte, base64.StdEncoding.DecodedLen(len(m.value)))
			l, err := base64.StdEncoding.Decode(b, m.value)
			if err != nil {
				return false
			}
			blobs[k] = b[:l]
		}
	}
	for k, m := range found[:n] {
		f := s.Field(m.f.index)
		switch m.f.kind {
		case blobField:
			f.SetBytes(blobs[k])
		case mapField:
			f.Set(reflect.ValueOf(m.m))
		default:
			str := string(m.value)
			f.Set(reflect.ValueOf(&str))
		}
	}
	return true
}

// fastField is a member fastDecode can store: a *string, a []byte or a
// map[string]string.
type fastField struct {
	index int  // in the struct
	bit   uint // in the set of members seen
	kind  fieldKind
}

type fieldKind uint8

const (
	stringField fieldKind = iota // *string
	blobField                    // []byte, sent as base64
	mapField                     // map[string]string, sent as an object of strings
)

// fastPlan maps member names to the struct fields fastDecode stores.
type fastPlan struct {
	fields map[string]*fastField
}

var fastPlans sync.Map // reflect.Type → *fastPlan (nil: no fast path)

var (
	unmarshalerType = reflect.TypeFor[json.Unmarshaler]()
	stringPtrType   = reflect.TypeFor[*string]()
	bytesType       = reflect.TypeFor[[]byte]()
	stringMapType   = reflect.TypeFor[map[string]string]()
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
		switch sf.Type {
		case stringPtrType:
			p.fields[name] = &fastField{index: i, bit: uint(i), kind: stringField}
		case bytesType:
			p.fields[name] = &fastField{index: i, bit: uint(i), kind: blobField}
		case stringMapType:
			p.fields[name] = &fastField{index: i, bit: uint(i), kind: mapField}
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

// maxPlainPairs bounds the members of an object plainObject accepts: an
// encryption context has a few; a larger one is left to encoding/json.
const maxPlainPairs = 64

// plainObject reads at body[i:] a JSON object whose members' names and
// values are all strings plainString accepts (no escapes, no control
// characters), at most maxPlainPairs of them, returning its map (a later
// member of the same name replacing an earlier one, as in encoding/json)
// and the offset after it.
func plainObject(body []byte, i int) (map[string]string, int, bool) {
	if i >= len(body) || body[i] != '{' {
		return nil, i, false
	}
	m := make(map[string]string)
	i = skipSpace(body, i+1)
	if i < len(body) && body[i] == '}' {
		return m, i + 1, true
	}
	for n := 0; ; n++ {
		if n == maxPlainPairs {
			return nil, i, false
		}
		name, j, ok := plainString(body, i)
		if !ok {
			return nil, j, false
		}
		j = skipSpace(body, j)
		if j == len(body) || body[j] != ':' {
			return nil, j, false
		}
		var value []byte
		if value, j, ok = plainString(body, skipSpace(body, j+1)); !ok {
			return nil, j, false
		}
		m[string(name)] = string(value)
		j = skipSpace(body, j)
		if j == len(body) {
			return nil, j, false
		}
		switch body[j] {
		case '}':
			return m, j + 1, true
		case ',':
			i = skipSpace(body, j+1)
		default:
			return nil, j, false
		}
	}
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
