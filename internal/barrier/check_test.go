package barrier

import (
	"bytes"
	"errors"
	"testing"
)

func TestCheckValue(t *testing.T) {
	b, err := New(testKey())
	if err != nil {
		t.Fatal(err)
	}
	other, err := New(bytes.Repeat([]byte{7}, KeySize))
	if err != nil {
		t.Fatal(err)
	}
	check, err := b.SealCheck()
	if err != nil {
		t.Fatalf("SealCheck: %v", err)
	}
	if bytes.Contains(check, testKey()) {
		t.Fatalf("the check value holds the root key")
	}
	wrongPlaintext, err := b.Seal(CheckRecord, []byte("something else"))
	if err != nil {
		t.Fatal(err)
	}
	tampered := bytes.Clone(check)
	tampered[len(tampered)-1] ^= 1
	tests := []struct {
		name   string
		b      *Barrier
		sealed []byte
		ok     bool
	}{
		{"same key", b, check, true},
		{"other key", other, check, false},
		{"tampered", b, tampered, false},
		{"other plaintext", b, wrongPlaintext, false},
		{"empty", b, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.b.VerifyCheck(tt.sealed)
			if tt.ok {
				if err != nil {
					t.Fatalf("VerifyCheck: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrWrongKey) {
				t.Fatalf("VerifyCheck = %v, want ErrWrongKey", err)
			}
		})
	}
}
