package keys

import (
	"bytes"
	"testing"
)

const testKeyID = "1234abcd-12ab-34cd-56ef-1234567890ab"

func externalSample(md []byte) []byte {
	hdr := AppendExternalHeader(nil, testKeyID, 1)
	inner := bytes.Repeat([]byte{0xAB}, NonceSize+5+TagSize)
	return AppendExternal(hdr, &ExternalLayer{IV: bytes.Repeat([]byte{1}, 12), Metadata: md,
		Tag: bytes.Repeat([]byte{2}, TagSize), Ciphertext: inner})
}

func TestParseExternalBlob(t *testing.T) {
	for _, md := range [][]byte{nil, []byte("v7"), bytes.Repeat([]byte{9}, MaxXKSMetadata)} {
		raw := externalSample(md)
		b, err := ParseBlob(raw)
		if err != nil {
			t.Fatal(err)
		}
		if b.KeyID != testKeyID || b.KeyVersion != 1 || b.External == nil || b.Nonce != nil {
			t.Fatalf("parsed %+v", b)
		}
		x := b.External
		if len(x.IV) != 12 || !bytes.Equal(x.Metadata, md) || len(x.Tag) != TagSize || len(x.Ciphertext) != NonceSize+5+TagSize {
			t.Fatalf("layer %+v", x)
		}
		if !bytes.Equal(b.Header, AppendExternalHeader(nil, testKeyID, 1)) {
			t.Fatal("header")
		}
		if !bytes.Equal(AppendExternal(append([]byte{}, b.Header...), x), raw) {
			t.Fatal("round trip")
		}
		// Every truncation is malformed, never a panic.
		for i := range raw {
			if _, err := ParseBlob(raw[:i]); err == nil && i < len(raw)-5 {
				t.Fatalf("truncated to %d parsed", i)
			}
		}
	}
	bad := externalSample(nil)
	bad[3+len(testKeyID)+4] = 13 // IV length
	if _, err := ParseBlob(bad); err == nil {
		t.Fatal("IV of 13 bytes accepted")
	}
	// The v1 symmetric format is unchanged and still parses as before.
	v1 := append(AppendHeader(nil, testKeyID, 3), bytes.Repeat([]byte{7}, NonceSize+TagSize+1)...)
	b, err := ParseBlob(v1)
	if err != nil || b.External != nil || b.KeyVersion != 3 || len(b.Nonce) != NonceSize {
		t.Fatalf("v1: %+v %v", b, err)
	}
	if a, c := ExternalAAD(b.Header, map[string]string{"a": "bc"}), ExternalAAD(b.Header, map[string]string{"ab": "c"}); bytes.Equal(a, c) || len(a) > 8192 {
		t.Fatal("external AAD")
	}
}

func FuzzParseExternalBlob(f *testing.F) {
	f.Add(externalSample(nil))
	f.Add(externalSample([]byte("meta")))
	f.Add(append(AppendHeader(nil, testKeyID, 1), bytes.Repeat([]byte{7}, NonceSize+TagSize)...))
	f.Fuzz(func(t *testing.T, raw []byte) {
		b, err := ParseBlob(raw)
		if err != nil {
			return
		}
		if x := b.External; x != nil {
			if len(x.Tag) != TagSize || len(x.Metadata) > MaxXKSMetadata || (len(x.IV) != 12 && len(x.IV) != 16) {
				t.Fatalf("bad layer %+v", x)
			}
			if !bytes.Equal(AppendExternal(append([]byte{}, b.Header...), x), raw) {
				t.Fatal("external blob does not round-trip")
			}
		}
	})
}
