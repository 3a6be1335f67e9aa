package pairpool

import "syscall"

// lowerThreadPriority gives the calling OS thread the lowest CPU priority
// (nice 19). On Linux the nice value belongs to the thread, not the
// process, so the rest of kmsd keeps its priority. Failure is harmless:
// the worker then competes at normal priority, as it did before.
func lowerThreadPriority() {
	_ = syscall.Setpriority(syscall.PRIO_PROCESS, syscall.Gettid(), 19)
}
