//go:build !race

package e2e

// raceEnabled says the tests run with -race; the kmsd binary is then built
// with -race too.
const raceEnabled = false
