// Package awsjson implements the server side of the AWS JSON 1.1 protocol:
// operation names from X-Amz-Target, strict decoding of request bodies into
// wire shapes, the {"__type","message"} error envelope and the
// x-amzn-RequestId header. It knows nothing of KMS.
//
// Flat bodies and answers (string and blob members only: Encrypt, Sign,
// Verify, GenerateMac, data keys and pairs) skip encoding/json's
// reflection (fast.go, fastencode.go); fuzz tests hold those paths to
// encoding/json's results byte for byte, and anything else goes through
// encoding/json.
package awsjson

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync"
	"unicode/utf8"
)

// ContentType is the media type of requests and responses.
const ContentType = "application/x-amz-json-1.1"

// Error is an error as the client sees it: an exception name, a message
// and the HTTP status it travels with.
type Error struct {
	Code    string
	Message string
	Status  int
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Errorf returns a client fault (400) named code.
func Errorf(code, msg string) *Error {
	return &Error{Code: code, Message: msg, Status: http.StatusBadRequest}
}

// Target splits an X-Amz-Target header "Prefix.Operation". ok is false when
// the header does not name an operation of prefix.
func Target(h, prefix string) (op string, ok bool) {
	if len(h) <= len(prefix)+1 || h[:len(prefix)] != prefix || h[len(prefix)] != '.' {
		return "", false
	}
	return h[len(prefix)+1:], true
}

// Decode reads a request body into v. An empty body counts as {}. A body
// that is not a JSON object, or a member of the wrong JSON type, is a
// SerializationException; unknown members are ignored, as AWS does.
//
// So is a body that is not UTF-8, or that escapes half of a UTF-16
// surrogate pair ("\ud800" alone): encoding/json would store U+FFFD in its
// place, and a Description or tag would then differ from what was sent.
func Decode(body []byte, v any) *Error {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return nil
	}
	if body[0] != '{' {
		return Errorf("SerializationException", "Start of structure or map found where not expected.")
	}
	if i := invalidText(body); i >= 0 {
		return unexpectedAt(i)
	}
	if fastDecode(body, v) {
		return nil
	}
	if err := json.Unmarshal(body, v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return Errorf("SerializationException", typeMessage(te))
		}
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return unexpectedAt(int(se.Offset))
		}
		// base64 errors and other value errors.
		return Errorf("SerializationException", "Could not parse request body: "+sanitize(err.Error()))
	}
	return nil
}

// unexpectedAt is AWS's answer to a body that is not JSON text, with the
// offset of the offending byte.
func unexpectedAt(offset int) *Error {
	return Errorf("SerializationException", "Could not parse request body into json: Unexpected character at offset "+itoa(offset))
}

// invalidText returns the offset of the first byte of body that is not
// UTF-8, or of the first \u escape of a surrogate that is not the high half
// of a pair followed by the escaped low half; -1 if there is none. Escapes
// are found by their backslash: outside strings a backslash is a syntax
// error the decoder reports anyway. The common body, ASCII without escapes,
// costs one utf8.Valid pass and one IndexByte pass.
func invalidText(body []byte) int {
	if !utf8.Valid(body) {
		for i := 0; i < len(body); {
			r, n := utf8.DecodeRune(body[i:])
			if r == utf8.RuneError && n <= 1 {
				return i
			}
			i += n
		}
	}
	for i := 0; i < len(body); {
		j := bytes.IndexByte(body[i:], '\\')
		if j < 0 {
			return -1
		}
		i += j
		r, ok := escapedUnit(body, i)
		switch {
		case !ok:
			i += 2 // not \uXXXX: a one-character escape, or a syntax error
		case r < 0xd800 || r > 0xdfff:
			i += 6
		case r <= 0xdbff:
			if lo, ok := escapedUnit(body, i+6); ok && 0xdc00 <= lo && lo <= 0xdfff {
				i += 12
				continue
			}
			return i
		default:
			return i // a low half with no high half before it
		}
	}
	return -1
}

// escapedUnit decodes the UTF-16 code unit of a \uXXXX escape at body[i:].
func escapedUnit(body []byte, i int) (rune, bool) {
	if i+6 > len(body) || body[i] != '\\' || body[i+1] != 'u' {
		return 0, false
	}
	var r rune
	for _, c := range body[i+2 : i+6] {
		switch {
		case '0' <= c && c <= '9':
			r = r<<4 | rune(c-'0')
		case 'a' <= c && c <= 'f':
			r = r<<4 | rune(c-'a'+10)
		case 'A' <= c && c <= 'F':
			r = r<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	return r, true
}

func typeMessage(te *json.UnmarshalTypeError) string {
	want := "STRING_VALUE"
	switch te.Type.Kind().String() {
	case "int32", "int64", "int":
		want = "INTEGER_VALUE"
	case "bool":
		want = "BOOLEAN_VALUE"
	case "struct", "map", "ptr":
		want = "STRUCTURE"
	case "slice":
		if te.Type.Elem().Kind().String() == "uint8" {
			want = "BLOB_VALUE"
		} else {
			want = "LIST"
		}
	}
	field := te.Field
	if field == "" {
		field = "request"
	}
	return "Unexpected " + te.Value + " for member '" + field + "', expected " + want
}

// sanitize keeps decoder messages short and free of echoed input.
func sanitize(s string) string {
	if i := strings.Index(s, ": "); i >= 0 && strings.HasPrefix(s, "json") {
		s = s[i+2:]
	}
	if len(s) > 200 {
		s = s[:200]
	}
	return s
}

var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// WriteJSON writes a 200 response with v as its body.
func WriteJSON(w http.ResponseWriter, requestID string, v any) {
	buf := bufPool.Get().(*bytes.Buffer)
	buf.Reset()
	// The body may carry a plaintext or a private key: it is cleared
	// before the buffer goes back to the pool.
	defer func() { clear(buf.Bytes()); bufPool.Put(buf) }()
	avail := buf.AvailableBuffer()
	b, ok := appendFast(avail, v)
	if ok {
		buf.Write(b) // keeps the grown array in the pool
		if cap(b) != cap(avail) {
			defer clear(b) // appendFast outgrew the buffer: an array of its own
		}
	} else {
		enc := json.NewEncoder(buf)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(v); err != nil {
			WriteError(w, requestID, &Error{Code: "InternalFailure", Message: "The request processing has failed because of an unknown error, exception or failure.", Status: 500})
			return
		}
		b = buf.Bytes()
		b = b[:len(b)-1] // Encode's newline
	}
	h := w.Header()
	h["Content-Type"] = []string{ContentType}
	h["X-Amzn-Requestid"] = []string{requestID}
	h["Content-Length"] = []string{itoa(len(b))}
	w.WriteHeader(http.StatusOK)
	w.Write(b)
}

type envelope struct {
	Type    string `json:"__type"`
	Message string `json:"message,omitempty"`
}

// WriteError writes e as the error envelope.
func WriteError(w http.ResponseWriter, requestID string, e *Error) {
	b, _ := json.Marshal(envelope{Type: e.Code, Message: e.Message})
	h := w.Header()
	h["Content-Type"] = []string{ContentType}
	h["X-Amzn-Requestid"] = []string{requestID}
	h["X-Amzn-Errortype"] = []string{e.Code}
	h["Content-Length"] = []string{itoa(len(b))}
	status := e.Status
	if status == 0 {
		status = http.StatusBadRequest
	}
	w.WriteHeader(status)
	w.Write(b)
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b [20]byte
	i := len(b)
	for n > 0 {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
	}
	return string(b[i:])
}
