package cache

import (
	"context"
	"encoding/json"
	"os/exec"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/jackc/pgx/v5"

	"github.com/kmsd/kmsd/e2e/e2etest"
	"github.com/kmsd/kmsd/internal/controller"
	"github.com/kmsd/kmsd/internal/storage/postgres/pgtest"
)

// TestHorizonStall is MULTINODE.md A14: a writing transaction held open
// for 20 s in another session holds the change feed's horizon back (no
// change committed after it began can be proved applied), so node B's
// caches stop getting fresher. During the stall:
//   - a key disabled through A one second in, while B still trusts its
//     cache, is refused by B within --cache-max-staleness + 1 s: past the
//     bound B reads the database (read-through) instead of its cache;
//   - B keeps serving keys that are still enabled (it reads through; it
//     does not fail closed while the database answers);
//   - a key disabled through A later in the stall is refused by B at once;
//   - kmsd_cache_horizon_lag_seconds on B reaches 15 s, and kmsd status
//     shows B's lag too.
//
// Once the transaction ends, B's lag falls back to about the poll
// interval.
func TestHorizonStall(t *testing.T) {
	const (
		stall     = 20 * time.Second
		staleness = 5 * time.Second
	)
	url := pgtest.URL(t)
	metrics := e2etest.FreeAddr(t)
	nodes := cluster(t, url, 2, func(i int) []string {
		a := []string{"--node-id", []string{"a", "b"}[i], "--cache-max-staleness", staleness.String(), "--lease-ttl", "2s"}
		if i == 1 {
			a = append(a, "--metrics-listen", metrics)
		}
		return a
	})
	ca, cb := client(t, nodes[0].Creds, nodes[0]), client(t, nodes[0].Creds, nodes[1])
	ctx := t.Context()
	var ids []string
	for range 3 {
		out, err := ca.CreateKey(ctx, &kms.CreateKeyInput{})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, aws.ToString(out.KeyMetadata.KeyId))
	}
	// Into B's cache, once B's feed has passed the keys' creation (which
	// would evict them): B then serves them from memory until its cache
	// is too stale to trust.
	time.Sleep(time.Second)
	for _, id := range ids {
		if err := encrypt(ctx, cb, id); err != nil {
			t.Fatalf("Encrypt on B before the stall: %v", err)
		}
	}
	early, late, live := ids[0], ids[1], ids[2]
	lag := func() float64 {
		return e2etest.Scrape(t, "http://"+metrics+"/metrics", "kmsd_cache_horizon_lag_seconds")
	}
	if l := lag(); l > 2 {
		t.Fatalf("B's cache lag before the stall: %.1fs", l)
	}

	// The stall: another session's transaction with an xid, left open.
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, `CREATE TABLE a14_stall (x int)`); err != nil {
		t.Fatal(err)
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, `INSERT INTO a14_stall VALUES (1)`); err != nil {
		t.Fatal(err)
	}
	var xid *string
	if err := tx.QueryRow(ctx, `SELECT pg_current_xact_id_if_assigned()::text`).Scan(&xid); err != nil || xid == nil {
		t.Fatalf("the stalling transaction has no xid (%v)", err)
	}
	began := time.Now()
	t.Logf("writing transaction %s open", *xid)

	// refusedAfter disables id through A and encrypts with it through B
	// until B refuses; it returns how long after the acknowledgement B's
	// last successful Encrypt started (0: refused at once).
	refusedAfter := func(id string) time.Duration {
		t.Helper()
		if _, err := ca.DisableKey(ctx, &kms.DisableKeyInput{KeyId: &id}); err != nil {
			t.Fatal(err)
		}
		acked := time.Now()
		var lastOK time.Time
		for time.Since(acked) < 15*time.Second {
			start := time.Now()
			err := encrypt(ctx, cb, id)
			if err == nil {
				lastOK = start
				time.Sleep(20 * time.Millisecond)
				continue
			}
			switch code(err) {
			case "DisabledException":
				return max(0, lastOK.Sub(acked))
			case "DependencyTimeoutException":
				// A read-through that did not answer within its 1s
				// bound (a loaded machine): refused, not served.
				t.Logf("Encrypt on B during the stall: %v", err)
				continue
			}
			t.Fatalf("Encrypt on B of a disabled key during the stall: %v, want DisabledException", err)
		}
		t.Fatalf("B still encrypts with key %s 15s after DisableKey on A", id)
		return 0
	}

	// serves encrypts with id through B, up to three times: a
	// read-through may exceed its 1s bound on a loaded machine
	// (DependencyTimeoutException) without B failing closed.
	serves := func(id string) error {
		var err error
		for range 3 {
			if err = encrypt(ctx, cb, id); err == nil || code(err) != "DependencyTimeoutException" {
				return err
			}
			t.Logf("Encrypt on B during the stall: %v", err)
		}
		return err
	}

	time.Sleep(time.Until(began.Add(time.Second)))
	at, l0 := time.Since(began), lag()
	d := refusedAfter(early)
	t.Logf("DisableKey on A %.1fs into the stall (B's lag %.1fs) -> last successful Encrypt on B started %v after the ack (bound %v)",
		at.Seconds(), l0, d.Round(time.Millisecond), staleness+time.Second)
	if d > staleness+time.Second {
		t.Errorf("B honoured a DisableKey made during the stall after %v, want within --cache-max-staleness + 1s = %v", d, staleness+time.Second)
	}
	if err := serves(live); err != nil {
		t.Errorf("Encrypt on B of an enabled key during the stall (lag %.1fs): %v; want it served by reading the database", lag(), err)
	}

	time.Sleep(time.Until(began.Add(10 * time.Second)))
	if d := refusedAfter(late); d > time.Second {
		t.Errorf("B, past its staleness bound, honoured a DisableKey after %v, want at once (read-through)", d)
	}

	time.Sleep(time.Until(began.Add(stall - 3*time.Second)))
	l := lag()
	t.Logf("B's kmsd_cache_horizon_lag_seconds %.1fs into the stall: %.1f", time.Since(began).Seconds(), l)
	if l < 15 {
		t.Errorf("kmsd_cache_horizon_lag_seconds on B = %.1f %.0fs into a stall, want >= 15", l, time.Since(began).Seconds())
	}
	if st := status(t, url); st["b"] == nil || *st["b"] < 14 {
		t.Errorf("kmsd status: B's cache lag %v %.0fs into the stall, want >= 14s (published at B's last heartbeat)", st["b"], time.Since(began).Seconds())
	}
	if err := serves(live); err != nil {
		t.Errorf("Encrypt on B of an enabled key late in the stall: %v", err)
	}

	time.Sleep(time.Until(began.Add(stall)))
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	ended := time.Now()
	for {
		l := lag()
		if l < 1 {
			t.Logf("B's lag %.2fs, %v after the transaction ended", l, time.Since(ended).Round(time.Millisecond))
			break
		}
		if time.Since(ended) > 5*time.Second {
			t.Fatalf("B's lag still %.1fs 5s after the stalling transaction ended", l)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if st := status(t, url); st["b"] != nil && *st["b"] < 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("kmsd status: B's cache lag %v 5s after the stall ended, want < 2s", status(t, url)["b"])
		}
	}
	for _, id := range []string{early, late} {
		if err := encrypt(ctx, cb, id); code(err) != "DisabledException" {
			t.Errorf("Encrypt on B of key disabled during the stall, after it: %v, want DisabledException", err)
		}
	}
	if err := encrypt(ctx, cb, live); err != nil {
		t.Errorf("Encrypt on B of an enabled key after the stall: %v", err)
	}
}

// status runs kmsd status --output json on the database at url and
// returns each node's published cache lag in seconds (nil: not known).
func status(t *testing.T, url string) map[string]*float64 {
	t.Helper()
	cmd := exec.Command(kmsdBin, "status", "--output", "json")
	cmd.Env = env("KMSD_DATABASE_URL=" + url)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kmsd status: %v", err)
	}
	var s controller.Status
	if err := json.Unmarshal(out, &s); err != nil {
		t.Fatalf("kmsd status output %q: %v", out, err)
	}
	lags := map[string]*float64{}
	for _, n := range s.Nodes {
		lags[n.ID] = n.CacheLagSeconds
	}
	return lags
}
