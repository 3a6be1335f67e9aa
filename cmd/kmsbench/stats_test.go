package main

import (
	"os"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	us := func(v ...int) []time.Duration {
		d := make([]time.Duration, len(v))
		for i, x := range v {
			d[i] = time.Duration(x) * time.Microsecond
		}
		return d
	}
	hundred := make([]int, 100)
	for i := range hundred {
		hundred[i] = i + 1
	}
	tests := []struct {
		name    string
		samples []time.Duration
		q       float64
		want    time.Duration
	}{
		{"empty", nil, 50, 0},
		{"one sample p50", us(7), 50, 7 * time.Microsecond},
		{"one sample p99", us(7), 99, 7 * time.Microsecond},
		{"two samples p50", us(1, 2), 50, 1 * time.Microsecond},
		{"two samples p51", us(1, 2), 51, 2 * time.Microsecond},
		{"odd count median", us(1, 2, 3, 4, 5), 50, 3 * time.Microsecond},
		{"even count median", us(1, 2, 3, 4), 50, 2 * time.Microsecond},
		{"1..100 p50", us(hundred...), 50, 50 * time.Microsecond},
		{"1..100 p99", us(hundred...), 99, 99 * time.Microsecond},
		{"1..100 p100", us(hundred...), 100, 100 * time.Microsecond},
		{"unsorted input sorted first", sortDurations(us(5, 1, 4, 2, 3)), 99, 5 * time.Microsecond},
		{"p99 of ten is the max", us(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 99, 10 * time.Microsecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := percentile(tt.samples, tt.q); got != tt.want {
				t.Errorf("percentile(%v, %v) = %v, want %v", tt.samples, tt.q, got, tt.want)
			}
		})
	}
}

func TestParseProcStat(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    procTimes
		wantErr bool
	}{
		{
			name: "plain",
			in:   "4242 (kmsd) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 75 0 0 20 0 8 0 12345 1234567 890 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n",
			want: procTimes{utime: 250, stime: 75},
		},
		{
			name: "command with spaces and parentheses",
			in:   "17 (my (odd) cmd) R 1 17 17 0 -1 0 0 0 0 0 9 3 0 0 20 0 1 0 1 1 1\n",
			want: procTimes{utime: 9, stime: 3},
		},
		{
			name: "zero times",
			in:   "1 (init) S 0 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 1 1 1",
			want: procTimes{},
		},
		{name: "no command name", in: "1 init S 0 1 1 0 -1 0 0 0 0 0 9 3", wantErr: true},
		{name: "truncated", in: "1 (init) S 0 1 1 0 -1 0 0 0 0 0 9", wantErr: true},
		{name: "not a number", in: "1 (init) S 0 1 1 0 -1 0 0 0 0 0 x 3", wantErr: true},
		{name: "empty", in: "", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseProcStat([]byte(tt.in))
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseProcStat: err = %v, wantErr %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("parseProcStat = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestReadProcTimesSelf(t *testing.T) {
	// Only that a real /proc file parses: the values are the machine's.
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skipf("no /proc here: %v", err)
	}
	if _, err := readProcTimes(os.Getpid()); err != nil {
		t.Fatal(err)
	}
}

func TestParseSystemBusy(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    uint64
		wantErr bool
	}{
		{
			name: "ten fields",
			in:   "cpu  40813 7 12532 100647 863 1 521 46 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n",
			want: 40813 + 7 + 12532 + 1 + 521 + 46,
		},
		{name: "old kernel, eight fields", in: "cpu 10 0 5 100 3 1 1 2\n", want: 10 + 5 + 1 + 1 + 2},
		{name: "per-cpu line first", in: "cpu0 1 2 3 4 5 6 7 8\n", wantErr: true},
		{name: "too short", in: "cpu 1 2 3\n", wantErr: true},
		{name: "not a number", in: "cpu 1 2 x 4 5 6 7 8\n", wantErr: true},
		{name: "empty", in: "", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseSystemBusy([]byte(tt.in))
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseSystemBusy: err = %v, wantErr %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("parseSystemBusy = %d, want %d", got, tt.want)
			}
		})
	}
}

func TestSetServerCPU(t *testing.T) {
	tests := []struct {
		name          string
		requests      int64
		before, after procTimes
		wantCPU       float64 // µs a request, user+system
		wantSys       float64 // µs a request, system
		wantPct       float64
	}{
		{
			// 4 s, 100 ticks a second: 300 + 60 ticks = 3.6 s of CPU.
			name: "user and system", requests: 100000,
			before: procTimes{utime: 1000, stime: 200}, after: procTimes{utime: 1300, stime: 260},
			wantCPU: 36, wantSys: 6, wantPct: 90,
		},
		{
			name: "no system time", requests: 50000,
			before: procTimes{utime: 10, stime: 5}, after: procTimes{utime: 410, stime: 5},
			wantCPU: 80, wantSys: 0, wantPct: 100,
		},
		{
			// No request: the per-request figures stay unknown.
			name: "no requests", requests: 0,
			before: procTimes{}, after: procTimes{utime: 40, stime: 40},
			wantCPU: -1, wantSys: -1, wantPct: 20,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := result{Requests: tt.requests, ServerCPUus: -1, ServerSysUs: -1}
			r.setServerCPU(tt.before, tt.after, 100, 4*time.Second)
			if r.ServerCPUus != tt.wantCPU || r.ServerSysUs != tt.wantSys || r.ServerCPUPct != tt.wantPct {
				t.Errorf("server CPU %v µs/req, of it system %v, %v%%; want %v, %v, %v%%",
					r.ServerCPUus, r.ServerSysUs, r.ServerCPUPct, tt.wantCPU, tt.wantSys, tt.wantPct)
			}
			if want := tt.after.total() - tt.before.total(); r.ServerTicks != want {
				t.Errorf("ServerTicks = %d, want %d", r.ServerTicks, want)
			}
		})
	}
}
