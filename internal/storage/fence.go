package storage

import (
	"sync/atomic"
	"time"
)

// Fence is a driver's state for WriteFencer: the lease its writes are
// fenced by and the expiry, on the database's clock, of the last holding
// of it the handle acquired or renewed. Both drivers keep one.
type Fence struct {
	name    atomic.Pointer[string]
	until   atomic.Pointer[time.Time] // nil: the lease not held yet, writes unfenced
	refused func()                    // set before name (Set)
}

// Set names the lease and the callback of WriteFencer.FenceWrites; call it
// once, before the lease is first taken.
func (f *Fence) Set(name string, refused func()) {
	f.refused = refused
	f.name.Store(&name)
}

// Held records that the handle acquired or renewed lease name until
// expires; another lease is ignored. The expiry moves forward only.
func (f *Fence) Held(name string, expires time.Time) {
	if n := f.name.Load(); n == nil || *n != name {
		return
	}
	for {
		cur := f.until.Load()
		if cur != nil && !expires.After(*cur) || f.until.CompareAndSwap(cur, &expires) {
			return
		}
	}
}

// Until is the expiry writes are fenced by; ok is false while the lease
// has not been held yet (writes unfenced).
func (f *Fence) Until() (until time.Time, ok bool) {
	if u := f.until.Load(); u != nil {
		return *u, true
	}
	return time.Time{}, false
}

// Refused tells the FenceWrites callback, if any, of a write the fence
// refused.
func (f *Fence) Refused() {
	if f.refused != nil {
		f.refused()
	}
}

// Name is the lease's name ("" before Set).
func (f *Fence) Name() string {
	if n := f.name.Load(); n != nil {
		return *n
	}
	return ""
}
