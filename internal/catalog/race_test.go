//go:build race

package catalog

// raceEnabled: the test is race-instrumented, under which sync.Pool drops
// what it holds at random, and with it the JSON decoder's cache of short
// strings: TestCacheMemoryPerKey's object count is then not the product's.
const raceEnabled = true
