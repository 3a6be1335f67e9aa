package awsjson

import (
	"bytes"
	"encoding/json"
	"testing"
)

// encShape is a response shape appendFast writes; plainShape one without
// omitzero; mapShape one it leaves to encoding/json.
type (
	encShape struct {
		KeyId     *string `json:"KeyId,omitzero"`
		Signature []byte  `json:"Signature,omitzero"`
		Valid     *bool   `json:"Valid,omitzero"`
		Algorithm *string `json:"Algorithm,omitzero"`
		internal  int     //lint:ignore U1000 an unexported field encoding/json never writes
	}
	plainShape struct {
		KeyId *string
		Blob  []byte `json:"Blob"`
		Flag  *bool  `json:",omitzero"`
	}
	mapShape struct {
		KeyId *string           `json:"KeyId,omitzero"`
		Tags  map[string]string `json:"Tags,omitzero"`
	}
	emptyShape     struct{}
	omitEmptyShape struct {
		KeyId *string `json:"KeyId,omitempty"`
	}
)

// marshalerShape has a MarshalJSON of its own.
type marshalerShape struct{ KeyId *string }

func (*marshalerShape) MarshalJSON() ([]byte, error) { return []byte(`{"own":true}`), nil }

func encodeJSON(t *testing.T, v any) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		t.Fatal(err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
}

// FuzzFastEncode: what appendFast writes is byte for byte what
// encoding/json writes; what it declines it leaves b untouched.
func FuzzFastEncode(f *testing.F) {
	f.Add("arn:aws:kms:us-east-1:111122223333:key/1234abcd", []byte{1, 2, 3}, "ECDSA_SHA_256", uint8(0xff), true)
	f.Add("", []byte{}, "", uint8(0), false)
	f.Add("caf\u00e9", []byte(nil), "a\"b", uint8(0x0f), false)
	f.Add("<&>", []byte("x"), "a\\b\n\u2028", uint8(0x5a), true)
	f.Fuzz(func(t *testing.T, s1 string, blob []byte, s2 string, set uint8, flag bool) {
		pick := func(bit uint8, s *string) *string {
			if set&bit == 0 {
				return nil
			}
			return s
		}
		var b *bool
		if set&4 != 0 {
			b = &flag
		}
		if set&8 == 0 {
			blob = nil
		}
		for _, v := range []any{
			&encShape{KeyId: pick(1, &s1), Signature: blob, Valid: b, Algorithm: pick(2, &s2)},
			&plainShape{KeyId: pick(16, &s1), Blob: blob, Flag: b},
			&mapShape{KeyId: pick(1, &s1)},
			&emptyShape{},
			&omitEmptyShape{KeyId: pick(32, &s2)},
		} {
			prefix := []byte("prefix")
			got, ok := appendFast(prefix, v)
			if !ok {
				if string(got) != "prefix" {
					t.Fatalf("%#v: declined, but wrote %q", v, got)
				}
				continue
			}
			if want := encodeJSON(t, v); !bytes.Equal(got[len("prefix"):], want) {
				t.Fatalf("%#v:\nappendFast    %s\nencoding/json %s", v, got[len("prefix"):], want)
			}
		}
	})
}

// TestFastEncodeTakes: the common answers take the fast path; shapes with
// other members or options do not.
func TestFastEncodeTakes(t *testing.T) {
	id := "arn:aws:kms:us-east-1:111122223333:key/1234abcd"
	for _, tc := range []struct {
		v    any
		fast bool
	}{
		{&encShape{KeyId: &id, Signature: []byte{1}}, true},
		{&plainShape{}, true},
		{&emptyShape{}, true},
		{&mapShape{KeyId: &id}, false},
		{&omitEmptyShape{KeyId: &id}, false},
		{encShape{KeyId: &id}, false},
		{(*encShape)(nil), false},
		{&marshalerShape{KeyId: &id}, false},
	} {
		if _, ok := appendFast(nil, tc.v); ok != tc.fast {
			t.Errorf("%#v: fast path %v, want %v", tc.v, ok, tc.fast)
		}
	}
}
