//go:build cgo

package hsm

import (
	"strings"
	"testing"
)

func TestFitPIN(t *testing.T) {
	rotated := strings.Repeat("0123456789abcdef", 2) // a rotated kmsuser password
	cases := []struct {
		name, pin string
		max       uint
		same      bool
	}{
		{"fits", "kmsPswd1", 8, true},
		{"no limit", rotated, 0, true},
		{"SoftHSM2's 255", rotated, 255, true},
		{"openCryptoki's 8", rotated, 8, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := fitPIN(tc.pin, tc.max)
			if tc.same != (got == tc.pin) {
				t.Fatalf("fitPIN(%q, %d) = %q", tc.pin, tc.max, got)
			}
			if tc.max > 0 && uint(len(got)) > tc.max {
				t.Fatalf("fitPIN(%q, %d) = %q: too long", tc.pin, tc.max, got)
			}
			if again := fitPIN(tc.pin, tc.max); again != got {
				t.Fatal("fitPIN is not deterministic")
			}
		})
	}
	if fitPIN(rotated, 8) == fitPIN(rotated+"x", 8) {
		t.Fatal("two passwords met one PIN")
	}
}
