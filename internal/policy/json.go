package policy

import (
	"encoding/json"
	"errors"
	"io"
	"strings"
)

// jkind is the type of a JSON value.
type jkind uint8

const (
	jNull jkind = iota
	jBool
	jNumber
	jString
	jArray
	jObject
)

// jval is a decoded JSON value that keeps object members in document
// order. encoding/json's map decoding would silently keep the last of two
// members with the same name; a policy with duplicate elements is
// ambiguous, so the decoder here rejects it.
type jval struct {
	kind jkind
	text string  // string contents, number literal, "true"/"false"
	arr  []*jval // jArray
	keys []string
	vals []*jval // jObject, parallel to keys
}

// get returns the member named name of an object, or nil.
func (v *jval) get(name string) *jval {
	for i, k := range v.keys {
		if k == name {
			return v.vals[i]
		}
	}
	return nil
}

// maxDepth bounds nesting: a policy is at most five levels deep
// (document, Statement list, statement, Condition, operator, values).
const maxDepth = 16

var (
	errDuplicate = errors.New("duplicate object member")
	errTooDeep   = errors.New("nesting too deep")
)

// decodeJSON decodes doc, which must hold exactly one JSON value.
func decodeJSON(doc string) (*jval, error) {
	dec := json.NewDecoder(strings.NewReader(doc))
	dec.UseNumber()
	v, err := readValue(dec, 0)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		if err == nil {
			err = errors.New("data after the document")
		}
		return nil, err
	}
	return v, nil
}

func readValue(dec *json.Decoder, depth int) (*jval, error) {
	if depth > maxDepth {
		return nil, errTooDeep
	}
	tok, err := dec.Token()
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	switch t := tok.(type) {
	case nil:
		return &jval{kind: jNull}, nil
	case bool:
		if t {
			return &jval{kind: jBool, text: "true"}, nil
		}
		return &jval{kind: jBool, text: "false"}, nil
	case json.Number:
		return &jval{kind: jNumber, text: string(t)}, nil
	case string:
		return &jval{kind: jString, text: t}, nil
	case json.Delim:
		switch t {
		case '[':
			v := &jval{kind: jArray}
			for dec.More() {
				e, err := readValue(dec, depth+1)
				if err != nil {
					return nil, err
				}
				v.arr = append(v.arr, e)
			}
			_, err := dec.Token() // ']'
			return v, err
		case '{':
			v := &jval{kind: jObject}
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return nil, err
				}
				k, _ := kt.(string) // the decoder guarantees a string here
				if v.get(k) != nil {
					return nil, errDuplicate
				}
				e, err := readValue(dec, depth+1)
				if err != nil {
					return nil, err
				}
				v.keys = append(v.keys, k)
				v.vals = append(v.vals, e)
			}
			_, err := dec.Token() // '}'
			return v, err
		}
	}
	return nil, errors.New("unexpected JSON token")
}

// strings returns a string-or-list-of-strings element as a list; ok is
// false for any other shape.
func (v *jval) strings() (out []string, ok bool) {
	switch v.kind {
	case jString:
		return []string{v.text}, true
	case jArray:
		out = make([]string, 0, len(v.arr))
		for _, e := range v.arr {
			if e.kind != jString {
				return nil, false
			}
			out = append(out, e.text)
		}
		return out, true
	}
	return nil, false
}

// scalars is strings for condition values, which may also be JSON numbers
// and booleans (taken as their literal text).
func (v *jval) scalars() (out []string, ok bool) {
	switch v.kind {
	case jString, jNumber, jBool:
		return []string{v.text}, true
	case jArray:
		out = make([]string, 0, len(v.arr))
		for _, e := range v.arr {
			switch e.kind {
			case jString, jNumber, jBool:
				out = append(out, e.text)
			default:
				return nil, false
			}
		}
		return out, true
	}
	return nil, false
}
