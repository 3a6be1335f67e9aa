package awsjson

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

// decodeCases are request bodies with the exception Decode should give
// ("" for none) and, for a SerializationException, its message. They seed
// FuzzDecode.
var decodeCases = []struct {
	name, body, code, msg string
}{
	{name: "empty", body: ``},
	{name: "object", body: `{"KeyId":"k","Description":"caf\u00e9 ☕"}`},
	{name: "valid surrogate pair", body: `{"Description":"\ud83d\ude00 \uD83D\uDE00"}`},
	{name: "escaped backslash before u", body: `{"Description":"\\ud800"}`},
	{name: "raw U+FFFD is text", body: "{\"Description\":\"\uFFFD \\ufffd\"}"},
	{name: "raw supplementary character", body: "{\"Description\":\"\U0001F600\"}"},
	{name: "not an object", body: `[1]`, code: "SerializationException", msg: "Start of structure or map found where not expected."},
	{name: "syntax", body: `{"KeyId":`, code: "SerializationException", msg: "Could not parse request body into json: Unexpected character at offset 9"},
	{name: "invalid byte in a string", body: "{\"Description\":\"a\xffb\"}", code: "SerializationException",
		msg: "Could not parse request body into json: Unexpected character at offset 17"},
	{name: "truncated sequence in a string", body: "{\"Description\":\"\xe2\x98\"}", code: "SerializationException",
		msg: "Could not parse request body into json: Unexpected character at offset 16"},
	{name: "encoded surrogate in a string", body: "{\"Description\":\"\xed\xa0\x80\"}", code: "SerializationException",
		msg: "Could not parse request body into json: Unexpected character at offset 16"},
	{name: "invalid byte outside strings", body: "{\"Limit\":5}\xff", code: "SerializationException",
		msg: "Could not parse request body into json: Unexpected character at offset 11"},
	{name: "invalid byte in a member name", body: "{\"Li\xc0mit\":5}", code: "SerializationException",
		msg: "Could not parse request body into json: Unexpected character at offset 4"},
	{name: "lone high surrogate", body: `{"Description":"\ud800"}`, code: "SerializationException",
		msg: "Could not parse request body into json: Unexpected character at offset 16"},
	{name: "lone high surrogate at the end of a string", body: `{"Description":"ab\uDBFF"}`, code: "SerializationException",
		msg: "Could not parse request body into json: Unexpected character at offset 18"},
	{name: "lone low surrogate", body: `{"Description":"\udc00"}`, code: "SerializationException",
		msg: "Could not parse request body into json: Unexpected character at offset 16"},
	{name: "high surrogate then a letter", body: `{"Description":"\ud800\u0041"}`, code: "SerializationException",
		msg: "Could not parse request body into json: Unexpected character at offset 16"},
	{name: "two high surrogates", body: `{"Description":"\ud800\ud800"}`, code: "SerializationException",
		msg: "Could not parse request body into json: Unexpected character at offset 16"},
	{name: "lone surrogate in a member name", body: `{"\udfff":1}`, code: "SerializationException",
		msg: "Could not parse request body into json: Unexpected character at offset 2"},
	{name: "lone surrogate after an escaped backslash", body: `{"Description":"\\\ud800"}`, code: "SerializationException",
		msg: "Could not parse request body into json: Unexpected character at offset 18"},
	{name: "wrong type", body: `{"Limit":"5"}`, code: "SerializationException", msg: "Unexpected string for member 'Limit', expected INTEGER_VALUE"},
	{name: "backslash at the end", body: `{"a":"\`, code: "SerializationException"},
	{name: "short escape at the end", body: `{"a":"\ud8`, code: "SerializationException"},
}

type input struct {
	KeyId       *string
	Description *string
	Limit       *int32
}

func TestDecode(t *testing.T) {
	for _, tc := range decodeCases {
		t.Run(tc.name, func(t *testing.T) {
			var in input
			err := Decode([]byte(tc.body), &in)
			if tc.code == "" {
				if err != nil {
					t.Fatalf("Decode = %v, want success", err)
				}
				if in.Description != nil && !utf8.ValidString(*in.Description) {
					t.Errorf("Description %q is not valid UTF-8", *in.Description)
				}
				return
			}
			if err == nil || err.Code != tc.code || err.Status != 400 || (tc.msg != "" && err.Message != tc.msg) {
				t.Fatalf("Decode = %#v, want 400 %s %q", err, tc.code, tc.msg)
			}
		})
	}
}

// FuzzDecode: Decode never substitutes U+FFFD for what it cannot decode.
// Whatever it accepts decodes to strings whose U+FFFD characters were in
// the body, written out or escaped.
func FuzzDecode(f *testing.F) {
	for _, tc := range decodeCases {
		f.Add([]byte(tc.body))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var v any
		if err := Decode(body, &v); err != nil {
			if err.Code != "SerializationException" || err.Status != 400 {
				t.Fatalf("Decode error %#v", err)
			}
			return
		}
		if !utf8.Valid(body) {
			t.Fatalf("accepted invalid UTF-8 %q", body)
		}
		got := countReplacements(v)
		lower := bytes.ToLower(body)
		if max := bytes.Count(body, []byte("\uFFFD")) + bytes.Count(lower, []byte(`\ufffd`)); got > max {
			t.Fatalf("%q decoded to %d U+FFFD, the body has at most %d", body, got, max)
		}
	})
}

// countReplacements counts U+FFFD in the strings (and member names) of v.
func countReplacements(v any) int {
	switch x := v.(type) {
	case string:
		return strings.Count(x, "\uFFFD")
	case map[string]any:
		n := 0
		for k, e := range x {
			n += strings.Count(k, "\uFFFD") + countReplacements(e)
		}
		return n
	case []any:
		n := 0
		for _, e := range x {
			n += countReplacements(e)
		}
		return n
	}
	return 0
}

type encryptInput struct {
	KeyId             *string
	Plaintext         []byte
	EncryptionContext map[string]string
}

// BenchmarkDecode decodes a typical Encrypt request and one with 4 KiB of
// plaintext, the largest KMS accepts.
func BenchmarkDecode(b *testing.B) {
	for _, tc := range []struct {
		name string
		n    int
	}{{"small", 13}, {"4KiB", 4096}} {
		body, _ := json.Marshal(map[string]any{
			"KeyId":             "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
			"Plaintext":         base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0xa5}, tc.n)),
			"EncryptionContext": map[string]string{"Department": "10-Accounting", "Purpose": "caf\u00e9 \\ test"},
		})
		b.Run(tc.name, func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				var in encryptInput
				if err := Decode(body, &in); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkInvalidText is the cost Decode adds to refuse what is not
// text: a 200-byte Encrypt body and one with 4 KiB of plaintext.
func BenchmarkInvalidText(b *testing.B) {
	for _, n := range []int{13, 4096} {
		body, _ := json.Marshal(map[string]any{
			"KeyId":             "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
			"Plaintext":         base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0xa5}, n)),
			"EncryptionContext": map[string]string{"Department": "10-Accounting", "Purpose": "caf\u00e9 \\ test"},
		})
		b.Run(strconv.Itoa(len(body))+"B", func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				if invalidText(body) >= 0 {
					b.Fatal("refused")
				}
			}
		})
	}
}
