package multinode

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/kmsd/kmsd/e2e/e2etest"
	"github.com/kmsd/kmsd/internal/controller"
)

// TestA8SweepsExactlyOnce (MULTINODE §8 A8): keys due for automatic
// rotation on three nodes, the controller killed (kill -9) once in the
// middle of the sweep that rotates them: the next controller finishes the
// sweep, every key is rotated exactly once — 0 doubles, 0 misses — within
// 2 sweep intervals of the new controller taking over, and sweeps after
// that rotate nothing more.
//
// The keys are made with yearly rotation; the nodes are then restarted
// with --fault-injection --fault-clock-offset 8784h (366 days), which makes
// every key due at once. KMSD_MULTINODE_A8_KEYS sets the number of keys
// (default 1,000, MULTINODE's figure).
func TestA8SweepsExactlyOnce(t *testing.T) {
	keys := 1000
	if v := os.Getenv("KMSD_MULTINODE_A8_KEYS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 10 {
			t.Fatalf("KMSD_MULTINODE_A8_KEYS=%q: want a number of at least 10", v)
		}
		keys = n
	}
	const (
		// A lease renewal times out after a third of the TTL: 4s leaves
		// room on a loaded machine (2s saw a controller step down
		// mid-sweep), and the new controller takes over within about it.
		ttl   = 4 * time.Second
		every = 6 * time.Second // --sweep-interval
	)
	pg := startPG(t)
	c := newCluster(t, pg, clusterOpts{nodes: 3, extra: []string{"--lease-ttl", ttl.String(), "--sweep-interval", every.String()}})
	url := pg.URL(c.db, pg.Addr())
	ctx := t.Context()

	// The keys, made and given yearly rotation through all three nodes.
	start := time.Now()
	ids := make([]string, keys)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		cl := c.client(c.nodes[w%len(c.nodes)])
		wg.Go(func() {
			for i := w; i < keys; i += 8 {
				out, err := cl.CreateKey(ctx, &kms.CreateKeyInput{})
				if err != nil {
					errs <- fmt.Errorf("CreateKey: %w", err)
					return
				}
				id := aws.ToString(out.KeyMetadata.KeyId)
				if _, err := cl.EnableKeyRotation(ctx, &kms.EnableKeyRotationInput{KeyId: &id}); err != nil {
					errs <- fmt.Errorf("EnableKeyRotation %s: %w", id, err)
					return
				}
				ids[i] = id
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("%d keys made with yearly rotation in %v", keys, time.Since(start).Round(time.Millisecond))
	if n := rotated(t, pg, c.db); n != 0 {
		t.Fatalf("%d keys rotated before they were due", n)
	}

	// A year and a day later, as far as the keys' clock goes.
	for _, n := range c.nodes {
		n.Stop(t)
	}
	metrics := map[string]string{} // node id -> its /metrics address
	for _, n := range c.nodes {
		metrics[n.id] = e2etest.FreeAddr(t)
		n.args = append(n.args, "--metrics-listen", metrics[n.id])
		n.env = append(n.env, "KMSD_FAULT_INJECTION=1", "KMSD_FAULT_CLOCK_OFFSET=8784h")
		n.Start(t)
	}
	for _, n := range c.nodes {
		n.WaitHealthy(t, 60*time.Second)
	}

	// The controller is killed once it has rotated a tenth of the keys.
	var victim *node
	var epoch int64
	for deadline := time.Now().Add(30 * time.Second); victim == nil; time.Sleep(50 * time.Millisecond) {
		if s := status(t, url); s.Current != nil {
			victim, epoch = c.byID(t, s.Current.Node), s.Current.Epoch
		} else if time.Now().After(deadline) {
			t.Fatal("no controller within 30s of the restart")
		}
	}
	for deadline := time.Now().Add(60 * time.Second); rotated(t, pg, c.db) < keys/10; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d keys rotated 60s after the restart, want %d", rotated(t, pg, c.db), keys/10)
		}
	}
	victim.Kill()
	atKill := rotated(t, pg, c.db)
	t.Logf("controller %s (epoch %d) killed with %d of %d keys rotated", victim.id, epoch, atKill, keys)
	if atKill >= keys {
		t.Fatalf("the sweep finished (%d keys) before the kill: no mid-sweep kill to test; use more keys", atKill)
	}
	killed := time.Now()

	// Another node takes over and finishes the sweep.
	var took time.Time
	var next string
	for deadline := time.Now().Add(30 * time.Second); took.IsZero(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no new controller within 30s of the kill")
		}
		if s := status(t, url); s.Current != nil && s.Current.Node != victim.id {
			took, next = time.Now(), s.Current.Node
		}
	}
	t.Logf("%s took over %v after the kill", next, took.Sub(killed).Round(time.Millisecond))
	var done time.Time
	for deadline := took.Add(2 * every); done.IsZero(); time.Sleep(50 * time.Millisecond) {
		// The count is read before the clock, so that a count short of
		// keys is one read before the deadline.
		n := rotated(t, pg, c.db)
		if n >= keys {
			done = time.Now()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d keys rotated 2 sweep intervals (%v) after %s took over", n, keys, 2*every, next)
		}
	}
	t.Logf("all %d keys rotated %v after the takeover (bound 2 sweep intervals, %v)", keys, done.Sub(took).Round(time.Millisecond), 2*every)

	// The new controller starts two more sweep rounds, so at least one
	// whole round runs after the last rotation and finds nothing due.
	runs := func() float64 { return e2etest.Scrape(t, "http://"+metrics[next]+"/metrics", "kmsd_sweep_runs_total") }
	for r0, deadline := runs(), time.Now().Add(4*every); runs() < r0+2; time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s started %v sweep rounds in %v after the last rotation, want 2", next, runs()-r0, 4*every)
		}
	}
	var doubles, misses int
	cl := c.client(c.byID(t, next))
	for _, id := range ids {
		out, err := cl.ListKeyRotations(ctx, &kms.ListKeyRotationsInput{KeyId: aws.String(id)})
		if err != nil {
			t.Fatalf("ListKeyRotations %s: %v", id, err)
		}
		auto := 0
		for _, r := range out.Rotations {
			if r.RotationType == "AUTOMATIC" {
				auto++
			}
		}
		switch {
		case auto == 0:
			misses++
		case auto > 1 || len(out.Rotations) != auto:
			doubles++
			if doubles <= 5 {
				t.Errorf("key %s: %d rotations (%d automatic), want exactly 1", id, len(out.Rotations), auto)
			}
		}
	}
	t.Logf("ListKeyRotations of %d keys: %d rotated exactly once, %d doubles, %d misses", keys, keys-doubles-misses, doubles, misses)
	if doubles != 0 || misses != 0 {
		t.Errorf("%d keys rotated more than once and %d not at all, want 0 and 0", doubles, misses)
	}
	for _, n := range c.nodes {
		if n.Died() != 0 {
			t.Errorf("%s exited on its own", n.id)
		}
	}
}

// rotated counts the key records of database db with an automatic
// rotation (read directly, to see the sweep's progress).
func rotated(t *testing.T, pg *pgServer, db string) int {
	t.Helper()
	var n int
	if err := pgScan(t, pg, db, `SELECT count(*)::int FROM kv WHERE key LIKE 'key/%' AND strpos(convert_from(value, 'UTF8'), '"type":"AUTOMATIC"') > 0`, &n); err != nil {
		t.Fatal(err)
	}
	return n
}

// status is `kmsd status --output json` of the database at url.
func status(t *testing.T, url string) *controller.Status {
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
	return &s
}

// byID is the node of the cluster with id.
func (c *cluster) byID(t *testing.T, id string) *node {
	t.Helper()
	for _, n := range c.nodes {
		if n.id == id {
			return n
		}
	}
	t.Fatalf("no node %q", id)
	return nil
}
