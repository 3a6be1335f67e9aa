package xks

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func b64(t testing.TB, s string) []byte {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestCDIVSpecExample is the spec's Appendix C example (spec notes §1.13).
func TestCDIVSpecExample(t *testing.T) {
	got := CDIV([]byte("project=nile,department=marketing"), b64(t, "a2V5X3ZlcnNpb249MQ=="),
		b64(t, "HMrlRw85cAJUd5Ax"), b64(t, "ghxkK1txeDNn3q8Y"), b64(t, "vBxN2ncH1oEkR8WVXpmyYQ=="))
	if hex.EncodeToString(got) != "a8703f2260bd8791ec2d15ea0b23e65a0631eedcf2a13a65cc82db3f47cf5ec7" {
		t.Fatalf("CDIV = %x", got)
	}
	if base64.StdEncoding.EncodeToString(got) != "qHA/ImC9h5HsLRXqCyPmWgYx7tzyoTplzILbP0fPXsc=" {
		t.Fatalf("CDIV base64 = %s", base64.StdEncoding.EncodeToString(got))
	}
}

// GCMVector is one row of the spec notes' AES-GCM table: key 00..1f, IV 00..0b,
// plaintext "Hello World!", the spec's effective AAD construction.
type GCMVector struct {
	Name, AAD, Metadata, Ciphertext, Tag, CDIV string
}

// GCMVectors are the rows of that table.
var GCMVectors = []GCMVector{
	{"aad+metadata", "project=nile,department=marketing", "key_version=1", "D2e6d6rFlXT/LfOq", "z16Jpi+YEVrPfy7xOkRNVw==", "f3I7NWF4DGjk7+jfvjeSU5DvQJDKZ/RQztaBma/YHso="},
	{"aad only", "project=nile,department=marketing", "", "D2e6d6rFlXT/LfOq", "oD3KqtYrMSdh/L3FQun+ag==", "ndew6iqil9so4xVeXqDoAWYgTm8gWoAIkLjPnyJAWhk="},
	{"nothing", "", "", "D2e6d6rFlXT/LfOq", "+DX8ZJOvQVMTeK7gwOAsdg==", "doMOaf+m+SLxEOfkUsWQLZ7ogxHdDMkxCl3238JWldo="},
}

func TestGCMVectors(t *testing.T) {
	key := make([]byte, 32)
	for i := range key {
		key[i] = byte(i)
	}
	iv := b64(t, "AAECAwQFBgcICQoL")
	block, _ := aes.NewCipher(key)
	gcm, _ := cipher.NewGCM(block)
	for _, v := range GCMVectors {
		t.Run(v.Name, func(t *testing.T) {
			eff, err := EffectiveAAD([]byte(v.AAD), []byte(v.Metadata))
			if err != nil {
				t.Fatal(err)
			}
			out := gcm.Seal(nil, iv, []byte("Hello World!"), eff)
			ct, tag := out[:len(out)-16], out[len(out)-16:]
			if got := base64.StdEncoding.EncodeToString(ct); got != v.Ciphertext {
				t.Errorf("ciphertext = %s, want %s", got, v.Ciphertext)
			}
			if got := base64.StdEncoding.EncodeToString(tag); got != v.Tag {
				t.Errorf("tag = %s, want %s", got, v.Tag)
			}
			cdiv := CDIV([]byte(v.AAD), []byte(v.Metadata), iv, ct, tag)
			if got := base64.StdEncoding.EncodeToString(cdiv); got != v.CDIV {
				t.Errorf("CDIV = %s, want %s", got, v.CDIV)
			}
		})
	}
}

func TestEffectiveAAD(t *testing.T) {
	tests := []struct {
		name      string
		aad, meta []byte
		want      []byte
	}{
		{"empty", nil, nil, []byte{0, 0, 0}},
		{"aad", []byte("X"), nil, []byte{0, 1, 'X', 0}},
		{"metadata", nil, []byte("X"), []byte{0, 0, 1, 'X'}},
		{"both", []byte("ab"), []byte("c"), []byte{0, 2, 'a', 'b', 1, 'c'}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := EffectiveAAD(tc.aad, tc.meta)
			if err != nil || !bytes.Equal(got, tc.want) {
				t.Fatalf("EffectiveAAD = %x, %v; want %x", got, err, tc.want)
			}
		})
	}
	if _, err := EffectiveAAD(make([]byte, 70000), nil); !errors.Is(err, ErrAADTooLong) {
		t.Fatalf("long AAD: %v", err)
	}
}

func TestStatusTableComplete(t *testing.T) {
	for _, name := range ErrorNames() {
		if _, ok := statuses[name]; !ok {
			t.Errorf("%s has no status", name)
		}
	}
	if len(statuses) != len(ErrorNames()) {
		t.Errorf("status table has %d entries, ErrorNames %d", len(statuses), len(ErrorNames()))
	}
	want := map[string]int{"ValidationException": 400, "AuthenticationFailedException": 401,
		"AccessDeniedException": 403, "InvalidUriPathException": 404, "ThrottlingException": 429,
		"InternalException": 500, "UnsupportedOperationException": 501, "DependencyTimeoutException": 503}
	for n, s := range want {
		if Status(n) != s {
			t.Errorf("Status(%s) = %d, want %d", n, Status(n), s)
		}
	}
}

func TestSanitizeMessage(t *testing.T) {
	got := SanitizeMessage("a\nb\x7fé" + strings.Repeat("x", 600))
	if len(got) != 511 || !strings.HasPrefix(got, "a?b???") {
		t.Fatalf("SanitizeMessage = %q (%d)", got[:10], len(got))
	}
}

func TestBlobJSON(t *testing.T) {
	tests := []struct {
		in      string
		want    []byte
		wantErr bool
	}{
		{`"SGVsbG8gV29ybGQh"`, []byte("Hello World!"), false},
		{`""`, []byte{}, false},
		{`null`, nil, false},
		{`"SGVsbG8"`, nil, true},            // missing padding
		{`"SGVsbG8_"`, nil, true},           // URL-safe alphabet
		{`"SGVs\nbG8gV29ybGQh"`, nil, true}, // line break
		{`"SGVsbG9="`, nil, true},           // non-zero trailing bits
		{`12`, nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			var b Blob
			err := json.Unmarshal([]byte(tc.in), &b)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v", err)
			}
			if !tc.wantErr && (!bytes.Equal(b, tc.want) || (b == nil) != (tc.want == nil)) {
				t.Fatalf("got %q (nil %v), want %q", b, b == nil, tc.want)
			}
		})
	}
	out, _ := json.Marshal(EncryptResponse{Ciphertext: Blob("Hello World!"), InitializationVector: Blob{}, AuthenticationTag: nil})
	if string(out) != `{"ciphertext":"SGVsbG8gV29ybGQh","initializationVector":"","authenticationTag":""}` {
		t.Fatalf("marshal = %s", out)
	}
}
