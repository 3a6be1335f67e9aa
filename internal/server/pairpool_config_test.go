package server

import (
	"testing"

	"github.com/kmsd/kmsd/internal/kms"
)

// TestConfigPairPool checks --pair-pool-size: the default, 0 to turn the
// pool off, and refusals.
func TestConfigPairPool(t *testing.T) {
	for _, tc := range []struct {
		name, size string
		want       int
		wantErr    bool
	}{
		{"default", "", kms.DefaultPairPoolSize, false},
		{"off", "0", 0, false},
		{"larger", "16", 16, false},
		{"negative", "-1", 0, true},
		{"not a number", "four", 0, true},
		{"too large", "100000", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{DataDir: t.TempDir(), PairPoolSize: tc.size}
			err := cfg.Validate()
			if (err != nil) != tc.wantErr {
				t.Fatalf("Validate: %v, want error %v", err, tc.wantErr)
			}
			if err == nil && cfg.PairPool != tc.want {
				t.Fatalf("PairPool %d, want %d", cfg.PairPool, tc.want)
			}
		})
	}
}
