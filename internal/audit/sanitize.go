package audit

import (
	"encoding"
	"reflect"
	"sync"
)

// secretNames are field names (lower case, without separators) whose
// values are never recorded, whatever their type.
var secretNames = map[string]bool{
	"plaintext": true, "ciphertextblob": true, "ciphertextforrecipient": true,
	"privatekeyplaintext": true, "privatekeyciphertextblob": true,
	"keystorepassword": true, "password": true, "xksproxyauthenticationcredential": true,
	"rawsecretaccesskey": true, "secretaccesskey": true, "accesskeysecret": true,
	"sessiontoken": true, "granttoken": true, "granttokens": true,
	"encryptedkeymaterial": true, "importtoken": true, "message": true,
	"signature": true, "mac": true, "sharedsecret": true, "publickey": true,
	"trustanchorcertificate": false, "secret": true, "credentials": true,
}

// IsSecret reports whether a parameter of this name is never recorded.
func IsSecret(name string) bool {
	var buf [64]byte
	b := buf[:0]
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c == '_' || c == '-':
			continue
		case c >= 'A' && c <= 'Z':
			c += 'a' - 'A'
		}
		b = append(b, c)
	}
	return secretNames[string(b)]
}

// field is how one struct field is recorded: its CloudTrail name, or
// skipped (unexported or secret).
type field struct {
	index int
	name  string
}

// plans caches, per struct type, the fields Sanitize records, so the
// reflection and name checks run once per type, not once per request.
var plans sync.Map // reflect.Type → []field

func planOf(t reflect.Type) []field {
	if p, ok := plans.Load(t); ok {
		return p.([]field)
	}
	var fs []field
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if f.IsExported() && !IsSecret(f.Name) {
			fs = append(fs, field{index: i, name: lowerCamel(f.Name)})
		}
	}
	plans.Store(t, fs)
	return fs
}

// Sanitize copies a request or response shape (a struct, a pointer to
// one, or a map) into plain JSON values with CloudTrail's lowerCamel
// member names, leaving out nil members, every []byte value and every
// member IsSecret names. It returns nil for an empty result.
func Sanitize(v any) any {
	out := sanitize(reflect.ValueOf(v), 0)
	if m, ok := out.(map[string]any); ok && len(m) == 0 {
		return nil
	}
	return out
}

var textMarshaler = reflect.TypeFor[encoding.TextMarshaler]()
var jsonMarshaler = reflect.TypeFor[interface{ MarshalJSON() ([]byte, error) }]()

func sanitize(v reflect.Value, depth int) any {
	if depth > 8 || !v.IsValid() {
		return nil
	}
	for v.Kind() == reflect.Pointer || v.Kind() == reflect.Interface {
		if v.IsNil() {
			return nil
		}
		if v.Type().Implements(jsonMarshaler) && v.Kind() == reflect.Pointer && v.Elem().Kind() == reflect.Struct && v.Elem().NumField() == 1 {
			return v.Interface() // wrapper types such as kmsapi.Time
		}
		v = v.Elem()
	}
	switch v.Kind() {
	case reflect.Struct:
		if v.Type().Implements(jsonMarshaler) || v.Type().Implements(textMarshaler) {
			return v.Interface()
		}
		m := map[string]any{}
		for _, f := range planOf(v.Type()) {
			if x := sanitize(v.Field(f.index), depth+1); x != nil {
				m[f.name] = x
			}
		}
		return m
	case reflect.Map:
		if v.IsNil() {
			return nil
		}
		m := map[string]any{}
		iter := v.MapRange()
		for iter.Next() {
			k, ok := iter.Key().Interface().(string)
			if !ok {
				continue
			}
			if v.Type().Elem().Kind() != reflect.String && IsSecret(k) {
				continue
			}
			if x := sanitize(iter.Value(), depth+1); x != nil {
				m[k] = x
			}
		}
		return m
	case reflect.Slice, reflect.Array:
		if v.Type().Elem().Kind() == reflect.Uint8 {
			return nil // binary: plaintext, ciphertext, key material, …
		}
		if v.Kind() == reflect.Slice && v.IsNil() {
			return nil
		}
		out := make([]any, 0, v.Len())
		for i := 0; i < v.Len(); i++ {
			out = append(out, sanitize(v.Index(i), depth+1))
		}
		return out
	case reflect.String, reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Float32, reflect.Float64:
		return v.Interface()
	}
	return nil
}

// lowerCamel turns a Go/wire member name into CloudTrail's spelling:
// KeyId → keyId, CustomKeyStoreId → customKeyStoreId.
func lowerCamel(s string) string {
	if s == "" {
		return s
	}
	b := []byte(s)
	if b[0] >= 'A' && b[0] <= 'Z' {
		b[0] += 'a' - 'A'
	}
	return string(b)
}
