//go:build race

package scale

// raceEnabled: the test process is race-instrumented, which makes the
// in-process generator (SQLite is Go code here) several times slower.
const raceEnabled = true
