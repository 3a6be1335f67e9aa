//go:build !cgo

package hsm

// Available reports whether this build can use PKCS#11: not without cgo.
const Available = false

// openTokens fails: PKCS#11 needs cgo.
func openTokens(module string) (tokens, error) {
	return nil, ErrUnavailable
}
