// Package release says which kmsd this is: its version, and the data
// format level of what it writes to the database, which nodes sharing a
// database compare so that an older node does not write into a database a
// newer one has moved on (MULTINODE.md §7.3, min_node_version).
package release

import (
	"runtime/debug"
	"sync"
)

// DataLevel is the data format level of this kmsd: what it keeps in the
// database beside the records themselves. The rule: bump it by one in the
// change that makes writes keep something an older kmsd would not (an
// index entry, a field other nodes rely on, a record written in the same
// transaction as another), so that a node whose level is lower than the
// database's minimum refuses to start, and a running one stops once a
// newer node joins. A change older nodes can live with (a new optional
// field they ignore, a new record they never read) does not bump it.
//
// What each level added:
//
//	0  kmsd from before levels: writes no level, checks none.
//	1  every key write keeps, in its own transaction, the sweep index
//	   (sched/…) and the custom key store index (storekey/…, xkskey/…)
//	   that sweeps, DeleteCustomKeyStore and CreateKey in an external key
//	   store read instead of every key record.
//	2  a key record whose key policy is, byte for byte, the default key
//	   policy of its account is written without the policy member
//	   (internal/catalog, record.go); reading puts the default back. An
//	   older kmsd would read such a key as having no policy (allowing
//	   nothing) and, updating it, write an empty policy member, which
//	   level 2 reads as the default again. Records written inline by
//	   older levels are read unchanged.
//	3  keys' last uses are journaled in binary rows and merged into
//	   bucket records of many keys each (unfed/lastuseb/…; internal/catalog,
//	   lastusebucket.go) instead of JSON rows and a record per key. An
//	   older kmsd reads neither, so its GetKeyLastUsage would answer an
//	   older use or none, and its merge would drop the binary rows.
//	   Records and rows of level 2 are read, merged and deleted alike.
//	4  journal rows name the account and Region once for a group of uses
//	   (internal/catalog, lastuse.go: journalFormat) instead of with
//	   every use. A level-3 kmsd reads no such row, so its
//	   GetKeyLastUsage would miss the uses in them and its merge would
//	   drop them. Rows of level 3 are read, merged and rewritten alike.
const DataLevel = 4

// version is set at build time with
// -ldflags "-X github.com/kmsd/kmsd/internal/release.version=v1.2.3".
var version string

var buildVersion = sync.OnceValue(func() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "dev"
	}
	if v := info.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	rev, dirty := "", false
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return "dev"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if dirty {
		rev += "-dirty"
	}
	return "dev-" + rev
})

// Version is this kmsd's version: the one set at build time, the module
// version it was built at, or "dev-<commit>" for a build from a checkout
// ("dev" when not even the commit is known).
func Version() string {
	if version != "" {
		return version
	}
	return buildVersion()
}
