package storage

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestValidateKey(t *testing.T) {
	tests := []struct {
		name string
		key  string
		ok   bool
	}{
		{"ascii", "keys/1234", true},
		{"unicode", "aliases/é/\U0010FFFF", true},
		{"wildcards", "a%_\\'\"", true},
		{"longest", strings.Repeat("k", MaxKeyLen), true},
		{"empty", "", false},
		{"too long", strings.Repeat("k", MaxKeyLen+1), false},
		{"nul", "a\x00b", false},
		{"invalid utf-8", "a\xffb", false},
		{"lone continuation byte", "\x80", false},
		{"surrogate", "\xed\xa0\x80", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateKey(tt.key)
			if tt.ok && err != nil {
				t.Fatalf("ValidateKey: got %v, want nil", err)
			}
			if !tt.ok && !errors.Is(err, ErrInvalidKey) {
				t.Fatalf("ValidateKey: got %v, want ErrInvalidKey", err)
			}
		})
	}
}

func TestValidateRange(t *testing.T) {
	tests := []struct {
		name          string
		prefix, after string
		ok            bool
	}{
		{"both empty", "", "", true},
		{"prefix only", "keys/", "", true},
		{"after only", "", "keys/1", true},
		{"bad prefix", "a\x00", "", false},
		{"bad after", "", "\xff", false},
		{"long after", "", strings.Repeat("k", MaxKeyLen+1), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateRange(tt.prefix, tt.after)
			if tt.ok && err != nil {
				t.Fatalf("ValidateRange: got %v, want nil", err)
			}
			if !tt.ok && !errors.Is(err, ErrInvalidKey) {
				t.Fatalf("ValidateRange: got %v, want ErrInvalidKey", err)
			}
		})
	}
}

func TestPrefixEnd(t *testing.T) {
	tests := []struct {
		name   string
		prefix string
		end    string
		ok     bool
	}{
		{"empty", "", "", false},
		{"ascii", "keys/", "keys0", true},
		{"percent", "a%", "a&", true},
		{"underscore", "a_", "a`", true},
		{"last ascii", "a\x7f", "a\u0080", true},
		{"two-byte carry within rune", "a\u00bf", "a\u00c0", true},
		{"before surrogates", "a\ud7ff", "a\ue000", true},
		{"max rune carries", "a\U0010FFFF", "b", true},
		{"only max runes", "\U0010FFFF\U0010FFFF", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			end, ok := PrefixEnd(tt.prefix)
			if end != tt.end || ok != tt.ok {
				t.Fatalf("PrefixEnd(%q) = %q, %v; want %q, %v", tt.prefix, end, ok, tt.end, tt.ok)
			}
			if !utf8.ValidString(end) {
				t.Fatalf("PrefixEnd(%q) = %q, not valid UTF-8", tt.prefix, end)
			}
		})
	}
}

// FuzzPrefixEnd checks the promise of PrefixEnd: a valid UTF-8 string starts
// with prefix exactly when it lies in [prefix, end).
func FuzzPrefixEnd(f *testing.F) {
	seeds := [][2]string{
		{"keys/", "keys/1"}, {"keys/", "keys0"}, {"a\u00bf", "a\u00c0"},
		{"a\U0010FFFF", "a\U0010FFFF\U0010FFFF"}, {"a\U0010FFFF", "b"},
		{"a\ud7ff", "a\ue000"}, {"", "x"}, {"\U0010FFFF", "\U0010FFFF"},
	}
	for _, s := range seeds {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, prefix, s string) {
		if !utf8.ValidString(prefix) || !utf8.ValidString(s) {
			t.Skip()
		}
		end, ok := PrefixEnd(prefix)
		if ok && !utf8.ValidString(end) {
			t.Fatalf("PrefixEnd(%q) = %q, not valid UTF-8", prefix, end)
		}
		inRange := s >= prefix && (!ok || s < end)
		if inRange != strings.HasPrefix(s, prefix) {
			t.Fatalf("PrefixEnd(%q) = %q, %v: in range %v for %q, HasPrefix %v",
				prefix, end, ok, inRange, s, !inRange)
		}
	})
}
