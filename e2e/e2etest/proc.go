package e2etest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
)

// ProcStat is what ReadProcStat reads of /proc/PID/stat (proc(5)): the
// parent, and the CPU times in clock ticks (ClockTicks a second) of the
// process and of the children it has reaped.
type ProcStat struct {
	PPID                         int
	Utime, Stime, Cutime, Cstime uint64
}

// ReadProcStat reads /proc/pid/stat; the zero ProcStat when it cannot
// (the process is gone).
func ReadProcStat(pid int) ProcStat {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ProcStat{}
	}
	// Fields are counted after the command name, which may hold spaces.
	end := bytes.LastIndexByte(b, ')')
	if end < 0 {
		return ProcStat{}
	}
	f := strings.Fields(string(b[end+1:]))
	if len(f) < 15 {
		return ProcStat{}
	}
	num := func(i int) uint64 { v, _ := strconv.ParseUint(f[i-3], 10, 64); return v }
	return ProcStat{PPID: int(num(4)), Utime: num(14), Stime: num(15), Cutime: num(16), Cstime: num(17)}
}

var clkTck = sync.OnceValue(func() float64 {
	if b, err := exec.Command("getconf", "CLK_TCK").Output(); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && n > 0 {
			return float64(n)
		}
	}
	return 100
})

// ClockTicks is the unit of /proc/PID/stat's times, a second's ticks
// (USER_HZ: getconf CLK_TCK, 100 if it cannot say).
func ClockTicks() float64 { return clkTck() }

// PostgresCPU finds the PostgreSQL server that url names, which must run
// on this machine (a test's server, scripts/postgres.sh), and returns a
// function giving the CPU seconds the server has used so far: its
// postmaster's own, that of the children the postmaster reaped (exited
// backends), and every live child's (backends, WAL writer, checkpointer,
// autovacuum). Differences of two calls are the server's CPU between
// them, whatever database or connection did the work.
func PostgresCPU(ctx context.Context, url string) (func() float64, error) {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return nil, err
	}
	defer conn.Close(ctx)
	var backend int
	if err := conn.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&backend); err != nil {
		return nil, err
	}
	postmaster := ReadProcStat(backend).PPID
	if postmaster <= 1 {
		return nil, fmt.Errorf("no postmaster above backend %d: is the server on this machine?", backend)
	}
	return func() float64 {
		pm := ReadProcStat(postmaster)
		ticks := pm.Utime + pm.Stime + pm.Cutime + pm.Cstime
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			pid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			if st := ReadProcStat(pid); st.PPID == postmaster {
				ticks += st.Utime + st.Stime
			}
		}
		return float64(ticks) / ClockTicks()
	}, nil
}
