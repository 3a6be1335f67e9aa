package awsjson

import (
	"encoding/base64"
	"encoding/json"
	"reflect"
	"testing"
	"unicode/utf8"
)

// fastShape has members fastDecode stores and members it leaves to
// encoding/json.
type fastShape struct {
	KeyId             *string           `json:"KeyId,omitzero"`
	Message           []byte            `json:"Message,omitzero"`
	Signature         []byte            `json:"Signature,omitzero"`
	Description       *string           // no tag: the field name
	EncryptionContext map[string]string `json:"EncryptionContext,omitzero"`
	GrantTokens       []string          `json:"GrantTokens,omitzero"`
	DryRun            *bool             `json:"DryRun,omitzero"`
	Limit             *int32            `json:"Limit,omitzero"`
	Skipped           *string           `json:"-"`
	Name              string            `json:"Name,omitzero"`
	hidden            *string           //lint:ignore U1000 an unexported field encoding/json never sets
}

var fastSeeds = []string{
	`{}`, ` { } `, `{"KeyId":"1234abcd-12ab-34cd-56ef-1234567890ab","Message":"aGVsbG8=","Signature":"AAAA"}`,
	`{"KeyId":"alias/x","Message":""}`, `{"KeyId":"a","KeyId":"b"}`, `{"keyid":"a"}`, `{"KEYID":"a","KeyId":"b"}`,
	`{"KeyId":"a\"b"}`, `{"KeyId":"a\u0041"}`, `{"Message":"aGVsbG8"}`, `{"Message":"aGVs bG8="}`, `{"KeyId":null}`,
	`{"KeyId":"a","EncryptionContext":{"k":"v"}}`, `{"KeyId":"a","DryRun":true}`, `{"Limit":5}`, `{"KeyId":"a"} x`,
	`{"KeyId":"a",}`, `{"KeyId" : "a" , "Description":"caf` + "\u00e9" + `"}`, "{\"KeyId\":\"a\tb\"}", `{"Skipped":"s"}`,
	`{"hidden":"h"}`, `{"Name":"n"}`, `{"Unknown":"u"}`, `[]`, `{"KeyId":"a"`, `{"KeyId":1}`, "\n{\"Message\":\"AA==\"}\r\n",
	`{"Message":"////"}`, `{"Message":"A==="}`, `{"Message":"QQ"}`,
	// Blob members are read by blobString: raw newlines (the base64
	// decoder would skip them), escapes and control characters in them.
	"{\"Message\":\"aGVs\nbG8=\"}", "{\"Message\":\"aGVs\rbG8=\"}", "{\"Message\":\"aGVs\tbG8=\"}",
	`{"Message":"aGVs\nbG8="}`, `{"Message":"aGVs\"","KeyId":"a"}`, `{"Message":"\u0041AAA"}`, `{"Message":"AAAA\\"}`,
	`{"Message":"AAAA`, `{"Message":"AAAA"`, `{"Message":AAAA"}`,
	// Encryption contexts: objects of strings, and what is left to
	// encoding/json (numbers, nulls, escapes, nesting, duplicates).
	`{"EncryptionContext":{}}`, `{"EncryptionContext":{ }}`, `{"EncryptionContext":{"a":"1","a":"2"}}`,
	`{"EncryptionContext":{"A":"1","a":"2"}}`, `{"EncryptionContext":{"a":"1",}}`, `{"EncryptionContext":{"a":1}}`,
	`{"EncryptionContext":null}`, `{"EncryptionContext":{"a":null}}`, `{"EncryptionContext":{"a":{"b":"c"}}}`,
	`{"EncryptionContext":{"a":"x:y,z}"} , "KeyId":"k"}`, `{ "EncryptionContext" : { "a" : "b" , "c" : "" } }`,
	`{"EncryptionContext":{"a\u0041":"b"}}`, `{"EncryptionContext":{"a":"b"},"EncryptionContext":{"c":"d"}}`,
	`{"EncryptionContext":{"a":"b"}`, `{"EncryptionContext":{"a":"b"`, `{"EncryptionContext":{"a" "b"}}`,
	`{"EncryptionContext":["a"]}`, `{"encryptioncontext":{"a":"b"}}`, `{"EncryptionContext":{"":""}}`,
}

// FuzzFastDecode: whatever fastDecode accepts, it decodes exactly as
// json.Unmarshal does; whatever it declines, it leaves untouched.
func FuzzFastDecode(f *testing.F) {
	for _, s := range fastSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		if !utf8.Valid(body) {
			return // Decode refuses it before fastDecode
		}
		var got fastShape
		if !fastDecode(body, &got) {
			if !reflect.DeepEqual(got, fastShape{}) {
				t.Fatalf("declined %q but stored %+v", body, got)
			}
			return
		}
		var want fastShape
		if err := json.Unmarshal(body, &want); err != nil {
			t.Fatalf("fastDecode accepted %q, json.Unmarshal refuses it: %v", body, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%q:\nfastDecode     %+v\njson.Unmarshal %+v", body, got, want)
		}
	})
}

// unmarshalerShape has an UnmarshalJSON of its own.
type unmarshalerShape struct{ KeyId *string }

func (u *unmarshalerShape) UnmarshalJSON([]byte) error {
	s := "own"
	u.KeyId = &s
	return nil
}

// TestFastDecodeCommon: the bodies kmsd serves most take the fast path.
func TestFastDecodeCommon(t *testing.T) {
	sig := base64.StdEncoding.EncodeToString(make([]byte, 71))
	for _, body := range []string{
		`{"KeyId":"1234abcd-12ab-34cd-56ef-1234567890ab","Message":"aGVsbG8=","Signature":"` + sig + `"}`,
		`{ "KeyId" : "alias/x" ,` + "\n" + `"Message":"aGVsbG8=" }`,
		`{"EncryptionContext":{"aws-crypto-public-key":"AxR4cm9tIHRoZSBTREs=","purpose":"test"},"KeyId":"k","Message":"AAEC"}`,
		`{"EncryptionContext":{}}`,
		`{}`,
	} {
		var v fastShape
		if !fastDecode([]byte(body), &v) {
			t.Errorf("%s: not decoded on the fast path", body)
		}
	}
	prefilled := fastShape{EncryptionContext: map[string]string{"kept": "1"}}
	if fastDecode([]byte(`{"EncryptionContext":{"a":"b"}}`), &prefilled) {
		t.Errorf("a map the caller left in place: decoded on the fast path (encoding/json adds to it)")
	}
	var u unmarshalerShape
	if fastDecode([]byte(`{"KeyId":"a"}`), &u) {
		t.Errorf("a shape with its own UnmarshalJSON: decoded on the fast path")
	}
	for _, body := range []string{`{"KeyId":"a","DryRun":true}`, `{"KeyId":"a","KeyId":"b"}`, `{"keyid":"a"}`, `{"KeyId":"\u0041"}`,
		`{"EncryptionContext":{"a":1}}`, `{"EncryptionContext":null}`} {
		var v fastShape
		if fastDecode([]byte(body), &v) {
			t.Errorf("%s: decoded on the fast path", body)
		}
	}
}

// BenchmarkFastDecode compares Decode (the fast path) with json.Unmarshal
// on a Verify body (all members strings) and on an Encrypt body with an
// encryption context.
func BenchmarkFastDecode(b *testing.B) {
	type verify struct {
		KeyId, SigningAlgorithm *string
		Message, Signature      []byte
	}
	type encrypt struct {
		KeyId             *string
		Plaintext         []byte
		EncryptionContext map[string]string
	}
	bodies := []struct {
		name string
		body []byte
		v    func() any
	}{
		{"Verify", []byte(`{"KeyId":"1234abcd-12ab-34cd-56ef-1234567890ab","Message":"` +
			base64.StdEncoding.EncodeToString(make([]byte, 64)) + `","Signature":"` +
			base64.StdEncoding.EncodeToString(make([]byte, 71)) + `","SigningAlgorithm":"ECDSA_SHA_256"}`),
			func() any { return new(verify) }},
		{"Encrypt", []byte(`{"EncryptionContext":{"purpose":"kmsbench","tenant":"t-42"},` +
			`"KeyId":"1234abcd-12ab-34cd-56ef-1234567890ab","Plaintext":"aGVsbG8="}`),
			func() any { return new(encrypt) }},
	}
	for _, c := range bodies {
		b.Run(c.name+"/Decode", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := Decode(c.body, c.v()); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(c.name+"/json.Unmarshal", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := json.Unmarshal(c.body, c.v()); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
