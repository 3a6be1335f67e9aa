//go:build !linux

package pairpool

// lowerThreadPriority does nothing where thread priorities are not
// per-thread; workers still get Ps of their own (see the package doc).
func lowerThreadPriority() {}
