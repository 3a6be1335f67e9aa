//go:build !unix

package keyfile

// lock is a no-op where advisory file locks are unavailable; concurrent key
// administration is then the operator's responsibility.
func lock(string) (func(), error) { return func() {}, nil }
