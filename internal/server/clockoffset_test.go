package server

import (
	"strings"
	"testing"
	"time"
)

// TestClockOffsetNeedsFaultInjection: --fault-clock-offset is a test
// hook, refused unless fault injection is on.
func TestClockOffsetNeedsFaultInjection(t *testing.T) {
	for _, tc := range []struct {
		name, faults string
		offset       time.Duration
		wantErr      bool
	}{
		{"no offset", "", 0, false},
		{"offset without fault injection", "", 8784 * time.Hour, true},
		{"offset with fault injection", "1", 8784 * time.Hour, false},
		{"negative offset with fault injection", "1", -time.Hour, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("KMSD_FAULT_INJECTION", tc.faults)
			cfg := Config{DataDir: t.TempDir(), ClockOffset: tc.offset}
			err := cfg.Validate()
			if (err != nil) != tc.wantErr {
				t.Fatalf("Validate: %v, want error %v", err, tc.wantErr)
			}
			if err != nil && !strings.Contains(err.Error(), "--fault-injection") {
				t.Errorf("Validate: %v; want it to name --fault-injection", err)
			}
		})
	}
}
