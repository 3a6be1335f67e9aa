package audit

import (
	"encoding/json"
	"reflect"
	"sort"
	"strconv"
	"unicode/utf8"
)

// AppendSanitized appends v as JSON with the rules of Sanitize — nil
// members, binary values and secret-named members left out, lowerCamel
// names — writing directly rather than through maps, since it runs once
// per request. ok is false when nothing would be recorded.
func AppendSanitized(b []byte, v any) (out []byte, ok bool) {
	mark := len(b)
	out, ok = appendValue(b, reflect.ValueOf(v), 0)
	if ok && string(out[mark:]) == "{}" {
		return out[:mark], false
	}
	return out, ok
}

func appendValue(b []byte, v reflect.Value, depth int) ([]byte, bool) {
	if depth > 8 || !v.IsValid() {
		return b, false
	}
	for v.Kind() == reflect.Pointer || v.Kind() == reflect.Interface {
		if v.IsNil() {
			return b, false
		}
		if v.Kind() == reflect.Pointer && v.Type().Implements(jsonMarshaler) {
			return appendMarshaler(b, v)
		}
		v = v.Elem()
	}
	switch v.Kind() {
	case reflect.Struct:
		if v.Type().Implements(jsonMarshaler) || v.Type().Implements(textMarshaler) {
			return appendMarshaler(b, v)
		}
		b = append(b, '{')
		n := 0
		for _, f := range planOf(v.Type()) {
			before := len(b)
			if n > 0 {
				b = append(b, ',')
			}
			b = appendString(b, f.name)
			b = append(b, ':')
			var ok bool
			if b, ok = appendValue(b, v.Field(f.index), depth+1); !ok {
				b = b[:before]
				continue
			}
			n++
		}
		return append(b, '}'), true
	case reflect.Map:
		if v.IsNil() || v.Type().Key().Kind() != reflect.String {
			return b, false
		}
		keys := make([]string, 0, v.Len())
		iter := v.MapRange()
		secretCheck := v.Type().Elem().Kind() != reflect.String
		for iter.Next() {
			k := iter.Key().String()
			if secretCheck && IsSecret(k) {
				continue
			}
			keys = append(keys, k)
		}
		sort.Strings(keys)
		b = append(b, '{')
		n := 0
		for _, k := range keys {
			before := len(b)
			if n > 0 {
				b = append(b, ',')
			}
			b = appendString(b, k)
			b = append(b, ':')
			var ok bool
			if b, ok = appendValue(b, v.MapIndex(reflect.ValueOf(k).Convert(v.Type().Key())), depth+1); !ok {
				b = b[:before]
				continue
			}
			n++
		}
		return append(b, '}'), true
	case reflect.Slice, reflect.Array:
		if v.Type().Elem().Kind() == reflect.Uint8 || (v.Kind() == reflect.Slice && v.IsNil()) {
			return b, false // binary: plaintext, ciphertext, key material, …
		}
		b = append(b, '[')
		for i := 0; i < v.Len(); i++ {
			if i > 0 {
				b = append(b, ',')
			}
			var ok bool
			if b, ok = appendValue(b, v.Index(i), depth+1); !ok {
				b = append(b, "null"...)
			}
		}
		return append(b, ']'), true
	case reflect.String:
		return appendString(b, v.String()), true
	case reflect.Bool:
		return strconv.AppendBool(b, v.Bool()), true
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return strconv.AppendInt(b, v.Int(), 10), true
	case reflect.Uint, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return strconv.AppendUint(b, v.Uint(), 10), true
	case reflect.Float32, reflect.Float64:
		return appendMarshaler(b, v)
	}
	return b, false
}

func appendMarshaler(b []byte, v reflect.Value) ([]byte, bool) {
	j, err := json.Marshal(v.Interface())
	if err != nil {
		return b, false
	}
	return append(b, j...), true
}

// appendString appends s as a JSON string.
func appendString(b []byte, s string) []byte {
	if !utf8.ValidString(s) {
		j, _ := json.Marshal(s) // replaces invalid bytes with U+FFFD
		return append(b, j...)
	}
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		b = append(b, s[start:i]...)
		switch c {
		case '"', '\\':
			b = append(b, '\\', c)
		case '\n':
			b = append(b, '\\', 'n')
		case '\r':
			b = append(b, '\\', 'r')
		case '\t':
			b = append(b, '\\', 't')
		default:
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		}
		start = i + 1
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

const hex = "0123456789abcdef"

// appendRecord appends r as one JSON object, members in the order and
// with the omissions of Record's json tags, without going through
// encoding/json's reflection for the fixed part of the record.
func appendRecord(b []byte, r *Record) []byte {
	str := func(b []byte, name, v string, omitEmpty bool) []byte {
		if omitEmpty && v == "" {
			return b
		}
		b = append(b, ',', '"')
		b = append(b, name...)
		b = append(b, '"', ':')
		return appendString(b, v)
	}
	boolean := func(b []byte, name string, v bool) []byte {
		b = append(b, ',', '"')
		b = append(b, name...)
		b = append(b, '"', ':')
		return strconv.AppendBool(b, v)
	}
	anyValue := func(b []byte, name string, v any, omitEmpty bool) []byte {
		if omitEmpty && isEmpty(v) {
			return b
		}
		b = append(b, ',', '"')
		b = append(b, name...)
		b = append(b, '"', ':')
		switch x := v.(type) {
		case nil:
			return append(b, "null"...)
		case json.RawMessage:
			if len(x) == 0 {
				return append(b, "null"...)
			}
			return append(b, x...)
		}
		j, err := json.Marshal(v)
		if err != nil {
			return append(b, "null"...)
		}
		return append(b, j...)
	}
	b = append(b, `{"eventVersion":`...)
	b = appendString(b, r.EventVersion)
	b = append(b, `,"userIdentity":`...)
	b = appendUserIdentity(b, &r.UserIdentity)
	b = str(b, "eventTime", r.EventTime, false)
	b = str(b, "eventSource", r.EventSource, false)
	b = str(b, "eventName", r.EventName, false)
	b = str(b, "awsRegion", r.AWSRegion, false)
	b = str(b, "sourceIPAddress", r.SourceIPAddress, false)
	b = str(b, "userAgent", r.UserAgent, false)
	b = str(b, "errorCode", r.ErrorCode, true)
	b = str(b, "errorMessage", r.ErrorMessage, true)
	b = anyValue(b, "requestParameters", r.RequestParameters, false)
	b = anyValue(b, "responseElements", r.ResponseElements, false)
	if r.Node != "" && len(r.AdditionalEventData) == 0 && plainNode(r.Node) {
		// Every record of a node: what the map below gives, written
		// without one (TestAdditionalEventDataNode).
		b = append(b, `,"additionalEventData":{"kmsdNode":`...)
		b = appendString(b, r.Node)
		b = append(b, `,"kmsdSeq":`...)
		b = strconv.AppendUint(b, r.Seq, 10)
		b = append(b, '}')
	} else if r.Node != "" {
		// The record's own additional data, then the node and its
		// sequence number; the map may be shared with another record
		// (ReplicateKey's two), so it is copied rather than changed.
		m := make(map[string]any, len(r.AdditionalEventData)+2)
		for k, v := range r.AdditionalEventData {
			m[k] = v
		}
		m["kmsdNode"], m["kmsdSeq"] = r.Node, r.Seq
		b = anyValue(b, "additionalEventData", m, false)
	} else if len(r.AdditionalEventData) > 0 {
		b = anyValue(b, "additionalEventData", r.AdditionalEventData, false)
	}
	b = str(b, "requestID", r.RequestID, false)
	b = str(b, "eventID", r.EventID, false)
	b = boolean(b, "readOnly", r.ReadOnly)
	if len(r.Resources) > 0 {
		b = append(b, `,"resources":[`...)
		for i, res := range r.Resources {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"accountId":`...)
			b = appendString(b, res.AccountID)
			b = append(b, `,"type":`...)
			b = appendString(b, res.Type)
			b = append(b, `,"ARN":`...)
			b = appendString(b, res.ARN)
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	b = str(b, "eventType", r.EventType, false)
	b = boolean(b, "managementEvent", r.ManagementEvent)
	b = str(b, "recipientAccountId", r.RecipientAccountID, false)
	b = str(b, "eventCategory", r.EventCategory, false)
	if len(r.ServiceEventDetails) > 0 {
		b = anyValue(b, "serviceEventDetails", r.ServiceEventDetails, false)
	}
	return append(b, '}')
}

func isEmpty(v any) bool { return v == nil }

// plainNode: appendString writes node as encoding/json does — printable
// ASCII without the characters encoding/json escapes for HTML (<, >, &).
func plainNode(node string) bool {
	for i := 0; i < len(node); i++ {
		if c := node[i]; c < 0x20 || c > 0x7e || c == '<' || c == '>' || c == '&' {
			return false
		}
	}
	return true
}

// appendUserIdentity appends u as encoding/json would, with the omissions
// of its tags: it is in every record, and reflection was the largest cost
// of writing one.
func appendUserIdentity(b []byte, u *UserIdentity) []byte {
	b = append(b, '{')
	n := 0
	field := func(name, v string, omitEmpty bool) {
		if omitEmpty && v == "" {
			return
		}
		if n > 0 {
			b = append(b, ',')
		}
		n++
		b = append(b, '"')
		b = append(b, name...)
		b = append(b, '"', ':')
		b = appendString(b, v)
	}
	field("type", u.Type, true)
	field("principalId", u.PrincipalID, true)
	field("arn", u.ARN, true)
	field("accountId", u.AccountID, true)
	field("accessKeyId", u.AccessKeyID, true)
	field("userName", u.UserName, true)
	if sc := u.SessionContext; sc != nil {
		if n > 0 {
			b = append(b, ',')
		}
		b = append(b, `"sessionContext":{"sessionIssuer":{`...)
		n = 0
		is := &sc.SessionIssuer
		field("type", is.Type, false)
		field("principalId", is.PrincipalID, false)
		field("arn", is.ARN, false)
		field("accountId", is.AccountID, false)
		field("userName", is.UserName, false)
		b = append(b, `},"attributes":{`...)
		n = 0
		field("creationDate", sc.Attributes.CreationDate, true)
		field("mfaAuthenticated", sc.Attributes.MFAAuthenticated, false)
		b = append(b, '}')
		n = 1
		field("sourceIdentity", sc.SourceIdentity, true)
		b = append(b, '}')
		n = 1
	}
	field("invokedBy", u.InvokedBy, true)
	return append(b, '}')
}
