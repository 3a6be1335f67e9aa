package keys

import (
	"bytes"
	"testing"
)

func TestParse(t *testing.T) {
	const id = "1234abcd-12ab-34cd-56ef-1234567890ab"
	tests := []struct {
		name string
		in   string
		want Ref
		err  bool
	}{
		{"key id", id, Ref{Kind: KindKeyID, ID: id}, false},
		{"key arn", "arn:aws:kms:us-east-2:111122223333:key/" + id, Ref{Kind: KindKeyARN, ID: id, Region: "us-east-2", Account: "111122223333"}, false},
		{"alias", "alias/Example", Ref{Kind: KindAlias, AliasName: "alias/Example"}, false},
		{"alias arn", "arn:aws:kms:us-east-2:111122223333:alias/Example", Ref{Kind: KindAliasARN, AliasName: "alias/Example", Region: "us-east-2", Account: "111122223333"}, false},
		{"junk", "foo", Ref{}, true},
		{"upper-case id", "1234ABCD-12AB-34CD-56EF-1234567890AB", Ref{}, true},
		{"arn of another service", "arn:aws:s3:us-east-2:111122223333:key/" + id, Ref{}, true},
		{"arn with bad account", "arn:aws:kms:us-east-2:1111:key/" + id, Ref{}, true},
		{"arn with bad key id", "arn:aws:kms:us-east-2:111122223333:key/nope", Ref{}, true},
		{"empty alias arn", "arn:aws:kms:us-east-2:111122223333:alias/", Ref{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.in)
			if (err != nil) != tt.err {
				t.Fatalf("Parse(%q) error = %v, want error %v", tt.in, err, tt.err)
			}
			if got != tt.want {
				t.Fatalf("Parse(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
		})
	}
}

func sampleBlob() []byte {
	b := AppendHeader(nil, "1234abcd-12ab-34cd-56ef-1234567890ab", 3)
	b = append(b, bytes.Repeat([]byte{7}, NonceSize)...)
	return append(b, bytes.Repeat([]byte{9}, 5+TagSize)...)
}

func TestParseBlob(t *testing.T) {
	b, err := ParseBlob(sampleBlob())
	if err != nil {
		t.Fatal(err)
	}
	if b.KeyID != "1234abcd-12ab-34cd-56ef-1234567890ab" || b.KeyVersion != 3 || len(b.Nonce) != NonceSize || len(b.Sealed) != 5+TagSize {
		t.Fatalf("ParseBlob = %+v", b)
	}
	for _, bad := range [][]byte{nil, {1}, {2, 1, 0}, sampleBlob()[:20], append([]byte{1, 1, 3}, "abc\x00\x00\x00\x01"...)} {
		if _, err := ParseBlob(bad); err == nil {
			t.Errorf("ParseBlob(%x) succeeded", bad)
		}
	}
}

// TestAADUnambiguous is the {"ab":"c"} / {"a":"bc"} case: contexts that
// concatenate to the same text must give different AAD.
func TestAADUnambiguous(t *testing.T) {
	hdr := AppendHeader(nil, "1234abcd-12ab-34cd-56ef-1234567890ab", 1)
	cases := []map[string]string{
		nil,
		{"ab": "c"},
		{"a": "bc"},
		{"a": "b", "c": ""},
		{"a": "bc", "": ""},
		{"abc": ""},
	}
	seen := map[string]int{}
	for i, c := range cases {
		aad := string(AppendAAD(nil, hdr, c))
		if j, ok := seen[aad]; ok {
			t.Fatalf("contexts %v and %v give the same AAD", cases[j], c)
		}
		seen[aad] = i
	}
	// Order of insertion does not matter.
	a := AppendAAD(nil, hdr, map[string]string{"x": "1", "y": "2", "z": "3"})
	b := AppendAAD(nil, hdr, map[string]string{"z": "3", "x": "1", "y": "2"})
	if !bytes.Equal(a, b) {
		t.Fatal("AAD depends on map order")
	}
}

func FuzzParseBlob(f *testing.F) {
	f.Add(sampleBlob())
	f.Add([]byte{})
	f.Add([]byte{1, 1, 36})
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := ParseBlob(data)
		if err != nil || b.External != nil { // external blobs: FuzzParseExternalBlob
			return
		}
		// A parsed blob re-serialises to the same header.
		if got := AppendHeader(nil, b.KeyID, b.KeyVersion); !bytes.Equal(got, b.Header) {
			t.Fatalf("header round trip: %x != %x", got, b.Header)
		}
		if len(b.Nonce) != NonceSize || len(b.Sealed) < TagSize {
			t.Fatalf("bad slices: %+v", b)
		}
	})
}

// TestIsKeyIDMatchesPatterns keeps the byte loop of IsKeyID in agreement
// with the regular expressions that state the rule.
func TestIsKeyIDMatchesPatterns(t *testing.T) {
	for _, s := range []string{
		"1234abcd-12ab-34cd-56ef-1234567890ab", "1234ABCD-12ab-34cd-56ef-1234567890ab",
		"1234abcd-12ab-34cd-56ef-1234567890a", "1234abcd-12ab-34cd-56ef-1234567890abc",
		"1234abcd012ab-34cd-56ef-1234567890ab", "mrk-1234567890abcdef1234567890abcdef",
		"mrk-1234567890abcdef1234567890abcdeg", "mrk-1234567890abcdef1234567890abcde", "", "g234abcd-12ab-34cd-56ef-1234567890ab",
	} {
		want := idPattern.MatchString(s) || mrkPattern.MatchString(s)
		if got := IsKeyID(s); got != want {
			t.Errorf("IsKeyID(%q) = %v, want %v", s, got, want)
		}
	}
}

func FuzzIsKeyID(f *testing.F) {
	f.Add("1234abcd-12ab-34cd-56ef-1234567890ab")
	f.Add("mrk-1234567890abcdef1234567890abcdef")
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := IsKeyID(s), idPattern.MatchString(s) || mrkPattern.MatchString(s); got != want {
			t.Fatalf("IsKeyID(%q) = %v, want %v", s, got, want)
		}
	})
}

// TestARNPartition checks that key and alias ARNs in the China Regions are
// in the aws-cn partition, and that Parse reads them back.
func TestARNPartition(t *testing.T) {
	const id = "1234abcd-12ab-34cd-56ef-1234567890ab"
	for _, tc := range []struct{ region, key, alias string }{
		{"us-east-1", "arn:aws:kms:us-east-1:111122223333:key/" + id, "arn:aws:kms:us-east-1:111122223333:alias/a"},
		{"cn-north-1", "arn:aws-cn:kms:cn-north-1:111122223333:key/" + id, "arn:aws-cn:kms:cn-north-1:111122223333:alias/a"},
		{"cn-northwest-1", "arn:aws-cn:kms:cn-northwest-1:111122223333:key/" + id, "arn:aws-cn:kms:cn-northwest-1:111122223333:alias/a"},
	} {
		t.Run(tc.region, func(t *testing.T) {
			if got := KeyARN(tc.region, "111122223333", id); got != tc.key {
				t.Errorf("KeyARN = %s, want %s", got, tc.key)
			}
			if got := AliasARN(tc.region, "111122223333", "alias/a"); got != tc.alias {
				t.Errorf("AliasARN = %s, want %s", got, tc.alias)
			}
			ref, err := Parse(tc.key)
			if err != nil || ref.Kind != KindKeyARN || ref.ID != id || ref.Region != tc.region {
				t.Errorf("Parse(%s) = %+v, %v", tc.key, ref, err)
			}
		})
	}
}
