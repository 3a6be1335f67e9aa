package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"
)

// percentile returns the q-th percentile (0 < q <= 100) of sorted by the
// nearest-rank method: the smallest sample with at least q% of the samples
// at or below it. It returns 0 for no samples.
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(q/100*float64(len(sorted)) + 0.9999999)
	rank = max(1, min(rank, len(sorted)))
	return sorted[rank-1]
}

// sortDurations sorts d in place and returns it.
func sortDurations(d []time.Duration) []time.Duration {
	slices.Sort(d)
	return d
}

// procTimes is the CPU a process has used, in clock ticks, from
// /proc/PID/stat: user and system time summed over all of its threads,
// living and exited (children not included).
type procTimes struct {
	utime, stime uint64
}

func (p procTimes) total() uint64 { return p.utime + p.stime }

// parseProcStat reads utime and stime (fields 14 and 15, see proc(5)) from
// the contents of /proc/PID/stat. The second field, the command name in
// parentheses, may itself hold spaces and parentheses, so the fields are
// counted from the last ')'.
func parseProcStat(b []byte) (procTimes, error) {
	end := bytes.LastIndexByte(b, ')')
	if end < 0 {
		return procTimes{}, errors.New("proc stat: no command name")
	}
	// After ")": field 3 (state) is the first.
	f := strings.Fields(string(b[end+1:]))
	const first, utime, stime = 3, 14, 15
	if len(f) < stime-first+1 {
		return procTimes{}, fmt.Errorf("proc stat: %d fields after the command name, want at least %d", len(f), stime-first+1)
	}
	u, err := strconv.ParseUint(f[utime-first], 10, 64)
	if err != nil {
		return procTimes{}, fmt.Errorf("proc stat: utime: %w", err)
	}
	s, err := strconv.ParseUint(f[stime-first], 10, 64)
	if err != nil {
		return procTimes{}, fmt.Errorf("proc stat: stime: %w", err)
	}
	return procTimes{utime: u, stime: s}, nil
}

// readProcTimes reads the CPU times of process pid.
func readProcTimes(pid int) (procTimes, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procTimes{}, err
	}
	return parseProcStat(b)
}

// clockTicks returns the kernel's USER_HZ, the unit of /proc/PID/stat
// times, as `getconf CLK_TCK` reports it; 100, its value on every Linux
// architecture Go supports, if getconf is missing.
func clockTicks() int {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(out))); err == nil && n > 0 {
			return n
		}
	}
	return 100
}

// parseSystemBusy returns the CPU time all CPUs spent busy (everything but
// idle and iowait), in clock ticks, from the first line of /proc/stat:
// "cpu  user nice system idle iowait irq softirq steal guest guest_nice".
// Guest time is already counted in user, so it is not added again.
func parseSystemBusy(b []byte) (uint64, error) {
	line, _, _ := bytes.Cut(b, []byte{'\n'})
	f := strings.Fields(string(line))
	if len(f) < 8 || f[0] != "cpu" {
		return 0, errors.New("/proc/stat: no cpu line")
	}
	var busy uint64
	for i, name := range []string{"user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"} {
		v, err := strconv.ParseUint(f[i+1], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat: %s: %w", name, err)
		}
		if name != "idle" && name != "iowait" {
			busy += v
		}
	}
	return busy, nil
}

// readSystemBusy reads parseSystemBusy's value from /proc/stat.
func readSystemBusy() (uint64, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	return parseSystemBusy(b)
}
