//go:build unix

package sigv4

import (
	"syscall"
	"testing"
	"time"
)

// reportCPU adds a cpu-ns/op metric: the process's user and system CPU time
// per operation. Unlike ns/op it does not grow when other processes share
// the machine's cores.
func reportCPU(b *testing.B) func() {
	start := cpuTime()
	return func() {
		b.ReportMetric(float64(cpuTime()-start)/float64(b.N), "cpu-ns/op")
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
