package multinode

import (
	"fmt"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
)

// TestA12StartupRaces (MULTINODE §8 A12): three nodes started at the same
// moment on an empty database, several rounds: every node starts, the
// schema is migrated once to one version, exactly one node bootstraps the
// administrator (one credentials profile, one access key record), whose key every node
// accepts, and no node exits.
// 3 rounds in CI, 20 with KMSD_MULTINODE_FULL=1.
//
// A13 (a node with the wrong root key refuses to start and writes 0 rows)
// is e2e/postgres TestRootKeyRefused.
func TestA12StartupRaces(t *testing.T) {
	rounds := 3
	if full() {
		rounds = 20
	}
	pg := startPG(t)
	var wantVersion int
	for r := range rounds {
		t.Run(fmt.Sprint("round", r), func(t *testing.T) {
			c := newCluster(t, pg, clusterOpts{nodes: 3, together: true})
			var versions, maxVersion, distinct int
			row := []any{&versions, &distinct, &maxVersion}
			if err := pgScan(t, pg, c.db, `SELECT count(*)::int, count(DISTINCT version)::int, coalesce(max(version), 0)::int FROM kmsd_schema_migrations`, row...); err != nil {
				t.Fatal(err)
			}
			if versions != maxVersion || distinct != versions || maxVersion == 0 {
				t.Errorf("kmsd_schema_migrations: %d rows, %d distinct, max %d: want each version 1..max once", versions, distinct, maxVersion)
			}
			if wantVersion == 0 {
				wantVersion = maxVersion
			} else if maxVersion != wantVersion {
				t.Errorf("schema version %d, earlier rounds %d", maxVersion, wantVersion)
			}
			// newCluster checked one profile; the administrator works on
			// every node, and there is one access key.
			for _, n := range c.nodes {
				if _, err := c.client(n).GenerateRandom(t.Context(), &kms.GenerateRandomInput{NumberOfBytes: aws.Int32(8)}); err != nil {
					t.Errorf("%s refuses the administrator: %v", n.id, err)
				}
			}
			var admins int
			if err := pgScan(t, pg, c.db, `SELECT count(*)::int FROM kv WHERE key LIKE 'identity/accesskey/%'`, &admins); err != nil {
				t.Fatal(err)
			}
			if admins != 1 {
				t.Errorf("%d access key records in the database, want 1 (the administrator's)", admins)
			}
			for _, n := range c.nodes {
				if n.Died() != 0 {
					t.Errorf("%s exited on its own", n.id)
				}
			}
		})
	}
}
