package keys

import (
	"bytes"
	"encoding/binary"
	"testing"
)

const lkARN = "arn:aws:kms:eu-west-2:111122223333:key/bc436485-5092-42b8-92a3-0aa8b93536dc"

func localKMSBlob(arn string, idx uint32, rest int) []byte {
	b := append([]byte{byte(len(arn))}, arn...)
	b = binary.LittleEndian.AppendUint32(b, idx)
	return append(b, bytes.Repeat([]byte{7}, rest)...)
}

func TestParseLocalKMSBlob(t *testing.T) {
	cases := []struct {
		name string
		blob []byte
		ok   bool
	}{
		{"first backing key", localKMSBlob(lkARN, 0, NonceSize+TagSize+5), true},
		{"second, empty plaintext", localKMSBlob(lkARN, 1, NonceSize+TagSize), true},
		{"too short", localKMSBlob(lkARN, 0, NonceSize+TagSize-1), false},
		{"not an ARN", localKMSBlob("xrn:aws:kms:eu-west-2:111122223333:key/bc436485-5092-42b8-92a3-0aa8b93536dc", 0, 40), false},
		{"alias ARN", localKMSBlob("arn:aws:kms:eu-west-2:111122223333:alias/bc436485-5092-42b8-92a3-0aa8b9", 0, 40), false},
		{"not a key id", localKMSBlob("arn:aws:kms:eu-west-2:111122223333:key/BC436485-5092-42b8-92a3-0aa8b93536dc", 0, 40), false},
		{"last index", localKMSBlob(lkARN, ^uint32(0), 40), false},
		{"kmsd blob", append(AppendHeader(nil, "bc436485-5092-42b8-92a3-0aa8b93536dc", 1), make([]byte, 40)...), false},
		{"empty", nil, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b, arn, err := ParseLocalKMSBlob(c.blob)
			if (err == nil) != c.ok {
				t.Fatalf("err %v, want ok %v", err, c.ok)
			}
			if !c.ok {
				return
			}
			if arn != lkARN || b.KeyID != "bc436485-5092-42b8-92a3-0aa8b93536dc" || !b.LocalKMS || b.Header != nil ||
				b.KeyVersion != binary.LittleEndian.Uint32(c.blob[1+len(lkARN):])+1 || len(b.Nonce) != NonceSize ||
				!bytes.Equal(b.Sealed, c.blob[1+len(lkARN)+4+NonceSize:]) {
				t.Fatalf("parsed %+v %q", b, arn)
			}
		})
	}
}

func TestLocalKMSAAD(t *testing.T) {
	if LocalKMSAAD(nil) != nil || LocalKMSAAD(map[string]string{}) != nil {
		t.Fatal("no context is no AAD")
	}
	if got := LocalKMSAAD(map[string]string{"b": "2", "a": "1", "c": ""}); string(got) != "a1b2c" {
		t.Fatalf("AAD %q", got)
	}
}

func FuzzParseLocalKMSBlob(f *testing.F) {
	f.Add(localKMSBlob(lkARN, 0, NonceSize+TagSize+5))
	f.Add(localKMSBlob(lkARN, 3, NonceSize+TagSize))
	f.Fuzz(func(t *testing.T, blob []byte) {
		b, _, err := ParseLocalKMSBlob(blob)
		if err != nil {
			return
		}
		if !IsKeyID(b.KeyID) || len(b.Nonce) != NonceSize || len(b.Sealed) < TagSize || b.KeyVersion == 0 {
			t.Fatalf("parsed %+v", b)
		}
	})
}
