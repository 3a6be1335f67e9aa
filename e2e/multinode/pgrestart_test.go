package multinode

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/jackc/pgx/v5"
)

// TestA9PostgresRestart (MULTINODE §8 A9): three nodes under write load
// (UpdateKeyDescription on each), PostgreSQL restarted with
// `pg_ctl restart -m immediate`: every node accepts a write again within
// 5 s of PostgreSQL accepting connections, the database's sessions
// (pg_stat_activity for kmsd's database, sampled every 50 ms) never exceed
// 3 × db-max-conns + 3, and no kmsd process exits. One restart in CI,
// three with KMSD_MULTINODE_FULL=1.
func TestA9PostgresRestart(t *testing.T) {
	const maxConns = 4
	restarts := 1
	if full() {
		restarts = 3
	}
	pg := startPG(t)
	c := newCluster(t, pg, clusterOpts{nodes: 3, dbMaxConns: maxConns})
	key, err := c.client(c.nodes[0]).CreateKey(t.Context(), &kms.CreateKeyInput{})
	if err != nil {
		t.Fatal(err)
	}
	keyID := key.KeyMetadata.KeyId

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var wg sync.WaitGroup

	// Sessions on kmsd's database, sampled from the postgres database.
	var mu sync.Mutex
	maxSessions := 0
	wg.Go(func() {
		for ctx.Err() == nil {
			sctx, scancel := context.WithTimeout(ctx, time.Second)
			if conn, err := pgx.Connect(sctx, pg.URL("postgres", pg.Addr())); err == nil {
				var n int
				if conn.QueryRow(sctx, `SELECT count(*)::int FROM pg_stat_activity WHERE datname = $1`, c.db).Scan(&n) == nil {
					mu.Lock()
					maxSessions = max(maxSessions, n)
					mu.Unlock()
				}
				conn.Close(context.Background())
			}
			scancel()
			time.Sleep(50 * time.Millisecond)
		}
	})

	// maxConns+2 writers per node, enough to fill its pool (a reconnect
	// storm would show); acks[i] holds the call and return times of node
	// i's acknowledged writes.
	type ack struct{ call, ret time.Time }
	acks := make([][]ack, len(c.nodes))
	for i, n := range c.nodes {
		cl := c.client(n)
		for range maxConns + 2 {
			wg.Go(func() {
				for j := 0; ctx.Err() == nil; j++ {
					call := time.Now()
					octx, ocancel := context.WithTimeout(ctx, 2*time.Second)
					_, err := cl.UpdateKeyDescription(octx, &kms.UpdateKeyDescriptionInput{KeyId: keyID, Description: aws.String(fmt.Sprint(n.id, "-", j))})
					ocancel()
					if err == nil {
						mu.Lock()
						acks[i] = append(acks[i], ack{call, time.Now()})
						mu.Unlock()
					} else {
						time.Sleep(20 * time.Millisecond)
					}
				}
			})
		}
	}

	for r := range restarts {
		time.Sleep(3 * time.Second)
		t.Logf("restart %d: pg_ctl restart -m immediate", r+1)
		begin := time.Now()
		pg.RestartImmediate(t) // returns once PostgreSQL accepts connections
		accepting := time.Now()
		t.Logf("PostgreSQL down and accepting again in %s", accepting.Sub(begin).Round(time.Millisecond))
		time.Sleep(7 * time.Second)
		mu.Lock()
		for i, n := range c.nodes {
			var first time.Time
			for _, a := range acks[i] {
				if a.call.After(begin) && (first.IsZero() || a.ret.Before(first)) {
					first = a.ret
				}
			}
			switch {
			case first.IsZero():
				t.Errorf("restart %d: %s accepted no write in the 7 s after PostgreSQL accepted connections", r+1, n.id)
			case first.Sub(accepting) > 5*time.Second:
				t.Errorf("restart %d: %s accepted a write again %s after PostgreSQL did, want ≤ 5s", r+1, n.id, first.Sub(accepting).Round(time.Millisecond))
			default:
				t.Logf("restart %d: %s wrote again %s after PostgreSQL accepted connections", r+1, n.id, max(0, first.Sub(accepting)).Round(time.Millisecond))
			}
		}
		mu.Unlock()
	}
	cancel()
	wg.Wait()
	if limit := 3*maxConns + 3; maxSessions > limit {
		t.Errorf("pg_stat_activity reached %d sessions on kmsd's database, want ≤ 3 × db-max-conns + 3 = %d", maxSessions, limit)
	} else {
		t.Logf("pg_stat_activity: at most %d sessions on kmsd's database (limit %d)", maxSessions, limit)
	}
	for _, n := range c.nodes {
		if n.Died() != 0 || !n.Alive() {
			t.Errorf("%s exited (%d times on its own)", n.id, n.Died())
		}
	}
}
