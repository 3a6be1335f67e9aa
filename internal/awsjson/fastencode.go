package awsjson

import (
	"encoding"
	"encoding/base64"
	"encoding/json"
	"reflect"
	"strings"
	"sync"
)

// appendFast appends v as encoding/json (HTML escaping off) would encode
// it, when v is a pointer to a flat response shape — every field a
// *string, []byte or *bool, tagged omitzero or not at all — whose strings
// are printable ASCII without a quote or backslash: the shape of nearly
// every KMS answer (Encrypt, Sign, Verify, GenerateMac, data keys and
// pairs). That skips encoding/json's reflection walk and its
// intermediate buffer. ok is false, and b unchanged, for anything else,
// which WriteJSON then leaves to encoding/json (FuzzFastEncode checks that
// the bytes are the same).
func appendFast(b []byte, v any) (out []byte, ok bool) {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() || rv.Elem().Kind() != reflect.Struct {
		return b, false
	}
	p := encPlanFor(rv.Elem().Type())
	if p == nil {
		return b, false
	}
	s := rv.Elem()
	mark := len(b)
	b = append(b, '{')
	first := true
	for _, f := range p {
		fv := s.Field(f.index)
		if fv.IsNil() {
			if f.omit {
				continue
			}
			b = appendSep(b, &first)
			b = append(append(b, f.name...), "null"...)
			continue
		}
		switch f.kind {
		case kindString:
			str := fv.Elem().String()
			if !plainASCII(str) {
				return b[:mark], false
			}
			b = appendSep(b, &first)
			b = append(append(b, f.name...), '"')
			b = append(append(b, str...), '"')
		case kindBool:
			b = appendSep(b, &first)
			b = append(b, f.name...)
			if fv.Elem().Bool() {
				b = append(b, "true"...)
			} else {
				b = append(b, "false"...)
			}
		case kindBytes:
			b = appendSep(b, &first)
			b = append(append(b, f.name...), '"')
			b = base64.StdEncoding.AppendEncode(b, fv.Bytes())
			b = append(b, '"')
		}
	}
	return append(b, '}'), true
}

func appendSep(b []byte, first *bool) []byte {
	if *first {
		*first = false
		return b
	}
	return append(b, ',')
}

// plainASCII reports whether encoding/json writes s as it is.
func plainASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

const (
	kindString = iota
	kindBytes
	kindBool
)

// encField is one field appendFast writes.
type encField struct {
	index int
	name  string // `"Name":`
	kind  int
	omit  bool // omitzero: left out when nil
}

var encPlans sync.Map // reflect.Type → []encField (nil: no fast path)

var (
	boolPtrType       = reflect.TypeFor[*bool]()
	marshalerType     = reflect.TypeFor[json.Marshaler]()
	textMarshalerType = reflect.TypeFor[encoding.TextMarshaler]()
)

// encPlanFor returns t's fields in order, nil when t has a field
// appendFast cannot write or a tag option other than omitzero.
func encPlanFor(t reflect.Type) []encField {
	if p, ok := encPlans.Load(t); ok {
		return p.([]encField)
	}
	p := make([]encField, 0, t.NumField())
	if pt := reflect.PointerTo(t); pt.Implements(marshalerType) || pt.Implements(textMarshalerType) {
		p = nil // encoding/json would call its MarshalJSON or MarshalText
	}
	names := map[string]bool{}
	for i := 0; p != nil && i < t.NumField(); i++ {
		sf := t.Field(i)
		name, ok := memberName(sf)
		if !ok {
			if sf.IsExported() && sf.Tag.Get("json") != "-" {
				p = nil // a tag name encoding/json may treat its own way
				break
			}
			continue
		}
		opts := ""
		if tag := sf.Tag.Get("json"); strings.IndexByte(tag, ',') >= 0 {
			opts = tag[strings.IndexByte(tag, ','):]
		}
		f := encField{index: i, name: `"` + name + `":`}
		switch {
		case sf.Anonymous || names[name] || !plainASCII(name):
			p = nil
		case opts == "" || opts == ",":
		case opts == ",omitzero":
			f.omit = true
		default:
			p = nil
		}
		if p == nil {
			break
		}
		switch sf.Type {
		case stringPtrType:
			f.kind = kindString
		case bytesType:
			f.kind = kindBytes
		case boolPtrType:
			f.kind = kindBool
		default:
			p = nil
		}
		if p == nil {
			break
		}
		names[name] = true
		p = append(p, f)
	}
	encPlans.Store(t, p)
	return p
}
