package multinode

import (
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/kmsd/kmsd/internal/release"
)

// waitingOlder is the new node's warning while one or both of the two old
// nodes still hold a live node lease.
var waitingOlder = regexp.MustCompile(`waiting for (2 older nodes to stop: node-[01] \([^)]*\), node-[01] \(|1 older nodes to stop: node-[01] \()`)

// TestVersionGatedUpgrade (issue #16, MULTINODE §7.3 min_node_version):
// two nodes of data format level N serve; a node of level N+1 (the
// test-only KMSD_FAULT_DATA_LEVEL) joins; both old nodes shut down on
// their own within a heartbeat or two, exit 1 and say why; the new node
// answers nothing before they stopped (released their node leases), then
// leads and serves what they made; a node of level N started
// afterwards refuses to start, names both levels, and writes nothing to
// the database. --lease-ttl 3s: a heartbeat every 600ms.
func TestVersionGatedUpgrade(t *testing.T) {
	const ttl = 3 * time.Second
	heartbeat := ttl / 5
	n := release.DataLevel
	pg := startPG(t)
	c := newCluster(t, pg, clusterOpts{nodes: 4, unstarted: 2, extra: []string{"--lease-ttl", ttl.String()},
		env: func(i int) []string {
			level := n
			if i == 2 {
				level = n + 1 // the upgraded node
			}
			return []string{"KMSD_FAULT_INJECTION=1", fmt.Sprintf("KMSD_FAULT_DATA_LEVEL=%d", level)}
		}})
	old, newer, late := c.nodes[:2], c.nodes[2], c.nodes[3]
	url := pg.URL(c.db, pg.Addr())
	ctx := t.Context()

	// Level N serving: a key made on one old node is used on the other.
	k, err := c.client(old[0]).CreateKey(ctx, &kms.CreateKeyInput{Description: aws.String("before the upgrade")})
	if err != nil {
		t.Fatal(err)
	}
	ct, err := c.client(old[1]).Encrypt(ctx, &kms.EncryptInput{KeyId: k.KeyMetadata.KeyId, Plaintext: []byte("kept")})
	if err != nil {
		t.Fatal(err)
	}
	if s := status(t, url); s.MinDataLevel != n || s.Current == nil {
		t.Fatalf("status before the upgrade: level %d, controller %+v; want %d and one", s.MinDataLevel, s.Current, n)
	}

	newer.Start(t)
	joined := time.Now()
	newer.WaitHealthy(t, 30*time.Second)
	t.Logf("%s answers %.2fs after it was started", newer.id, time.Since(joined).Seconds())
	// The new node answers only once the old ones are gone (their node
	// leases released, after their in-flight requests).
	for _, ns := range status(t, url).Nodes {
		if ns.ID != newer.id && ns.Live {
			t.Errorf("%s answers %.1fs after its start while old node %s holds its node lease",
				newer.id, time.Since(joined).Seconds(), ns.ID)
		}
	}
	// It says which old nodes it waits for: both, or one when the other
	// (at its own heartbeat) read the raised level and stopped in the
	// moment between this node's raise and its first look at the node
	// leases (CI saw node-0 stop 44 ms after the raise). If both did, it
	// had nothing to wait for, which the check above still covers.
	switch log := newer.tail(); {
	case waitingOlder.MatchString(log):
		if !strings.Contains(log, "every older node has stopped: this node serves") {
			t.Errorf("%s's log says it waits for old nodes but not that they stopped:\n%s", newer.id, log)
		}
	case strings.Contains(log, "waiting for"):
		t.Errorf("%s's log names the wrong old nodes:\n%s", newer.id, log)
	default:
		t.Logf("both old nodes stopped before %s looked for them: nothing to wait for", newer.id)
	}
	for _, o := range old {
		code, ok := o.Exited(time.Until(joined.Add(2*heartbeat + 10*time.Second)))
		if !ok {
			t.Fatalf("%s still runs %.1fs after a level-%d node joined", o.id, time.Since(joined).Seconds(), n+1)
		}
		t.Logf("%s exited %d, %.2fs after the new node was started", o.id, code, time.Since(joined).Seconds())
		if code != 1 {
			t.Errorf("%s exit code %d, want 1 (a supervisor must notice)", o.id, code)
		}
		if log := o.tail(); !strings.Contains(log, "newer kmsd") || !strings.Contains(log, fmt.Sprintf("data format level %d", n+1)) {
			t.Errorf("%s's log does not say why it stopped:\n%s", o.id, log)
		}
	}
	// The new node leads and serves what the old ones made.
	for deadline := time.Now().Add(2 * ttl); ; time.Sleep(100 * time.Millisecond) {
		s := status(t, url)
		if s.Current != nil && s.Current.Node == newer.id {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("controller %+v, want %s", s.Current, newer.id)
		}
	}
	t.Logf("%s leads %.1fs after it was started", newer.id, time.Since(joined).Seconds())
	pt, err := c.client(newer).Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: ct.CiphertextBlob})
	if err != nil || string(pt.Plaintext) != "kept" {
		t.Fatalf("Decrypt on the new node: %v", err)
	}
	s := status(t, url)
	if s.MinDataLevel != n+1 {
		t.Errorf("status: data format level %d, want %d", s.MinDataLevel, n+1)
	}
	for _, ns := range s.Nodes {
		want := n
		if ns.ID == newer.id {
			want = n + 1
		}
		if ns.DataLevel != want || ns.Version == "" {
			t.Errorf("status: node %s level %d version %q; want level %d and a version", ns.ID, ns.DataLevel, ns.Version, want)
		}
		if ns.ID != newer.id && (!ns.Stopped || ns.Live) {
			t.Errorf("status: old node %s stopped %v, live %v; want stopped", ns.ID, ns.Stopped, ns.Live)
		}
	}

	// A level-N node started now refuses and writes nothing. The new node
	// is frozen meanwhile, so that any row written is the late node's.
	newer.Pause()
	counts := func() string {
		var kv, changes, leases, migrations int
		if err := pgScan(t, pg, c.db, `SELECT (SELECT count(*) FROM kv)::int, (SELECT count(*) FROM kv_changes)::int,
	(SELECT count(*) FROM kmsd_leases)::int, (SELECT count(*) FROM kmsd_schema_migrations)::int`, &kv, &changes, &leases, &migrations); err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("kv %d, kv_changes %d, leases %d, migrations %d", kv, changes, leases, migrations)
	}
	before := counts()
	late.Start(t)
	code, ok := late.Exited(20 * time.Second)
	if !ok {
		t.Fatalf("%s (level %d) still runs on a level-%d database", late.id, n, n+1)
	}
	if code != 1 {
		t.Errorf("%s exit code %d, want 1", late.id, code)
	}
	if after := counts(); after != before {
		t.Errorf("database %s -> %s: the refused node wrote", before, after)
	}
	log := late.tail()
	for _, w := range []string{fmt.Sprintf("data format level %d", n+1), fmt.Sprintf("writes level %d", n), "Upgrade this node"} {
		if !strings.Contains(log, w) {
			t.Errorf("%s's refusal lacks %q:\n%s", late.id, w, log)
		}
	}
	if _, err := os.Stat(late.dir + "/node-id"); err == nil {
		t.Errorf("%s made a node id before refusing", late.id)
	}
	newer.Resume()
	if _, err := c.client(newer).Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: ct.CiphertextBlob}); err != nil {
		t.Errorf("Decrypt on the new node after the refusal: %v", err)
	}
}

// TestPausedOldNodeMidRequest (issue #16, rolling upgrade: what fencing
// every write by the node lease closes): a node of level N freezes
// (SIGSTOP, at the catalog-update-key failpoint) inside DisableKey's
// transaction, after the key's record is written and before COMMIT; a
// node of level N+1 starts, waits for the frozen node's lease to expire
// and serves; then the old node is thawed. Its DisableKey fails
// (KMSInternalException: PostgreSQL refused the COMMIT, the node lease
// having expired, or ended the session idle in its transaction), the key
// stays enabled, and the old node stops (exit 1). Before the fence the
// old node committed the write once thawed, after the newer node had
// begun to serve. --lease-ttl 3s.
func TestPausedOldNodeMidRequest(t *testing.T) {
	const ttl = 3 * time.Second
	n := release.DataLevel
	pg := startPG(t)
	c := newCluster(t, pg, clusterOpts{nodes: 2, unstarted: 1, extra: []string{"--lease-ttl", ttl.String()},
		env: func(i int) []string {
			e := []string{"KMSD_FAULT_INJECTION=1", fmt.Sprintf("KMSD_FAULT_DATA_LEVEL=%d", n+i)}
			if i == 0 {
				e = append(e, "KMSD_FAILPOINT=catalog-update-key:stop")
			}
			return e
		}})
	old, newer := c.nodes[0], c.nodes[1]
	ctx := t.Context()
	k, err := c.client(old).CreateKey(ctx, &kms.CreateKeyInput{Description: aws.String("disabled by a frozen node")})
	if err != nil {
		t.Fatal(err)
	}
	id := k.KeyMetadata.KeyId
	disabled := make(chan error, 1)
	go func() {
		_, err := c.client(old).DisableKey(ctx, &kms.DisableKeyInput{KeyId: id})
		disabled <- err
	}()
	for deadline := time.Now().Add(10 * time.Second); !old.Stopped(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s did not freeze at catalog-update-key within 10 s:\n%s", old.id, old.tail())
		}
	}
	frozen := time.Now()

	newer.Start(t)
	newer.WaitHealthy(t, 30*time.Second)
	t.Logf("%s serves %.2fs after %s froze", newer.id, time.Since(frozen).Seconds(), old.id)
	enabled := func(when string) {
		t.Helper()
		d, err := c.client(newer).DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: id})
		if err != nil {
			t.Fatalf("DescribeKey on %s %s: %v", newer.id, when, err)
		}
		if !d.KeyMetadata.Enabled || d.KeyMetadata.KeyState != "Enabled" {
			t.Errorf("key %s %s: enabled %v, state %s; want the frozen node's DisableKey not committed",
				when, *id, d.KeyMetadata.Enabled, d.KeyMetadata.KeyState)
		}
	}
	enabled("while the old node is frozen")

	old.Resume()
	thawed := time.Now()
	select {
	case err := <-disabled:
		if code := errCode(err); code != "KMSInternalException" {
			t.Errorf("the thawed node's DisableKey: %v (code %q), want KMSInternalException", err, code)
		}
		t.Logf("the thawed node's DisableKey failed %.2fs after SIGCONT: %v", time.Since(thawed).Seconds(), err)
	case <-time.After(30 * time.Second):
		t.Fatalf("the thawed node's DisableKey has no answer 30 s after SIGCONT")
	}
	enabled("after the old node was thawed")
	if code, ok := old.Exited(20 * time.Second); !ok || code != 1 {
		t.Errorf("%s: exited %v, code %d; want exit 1 (a newer kmsd joined)", old.id, ok, code)
	}
	if log := old.tail(); !strings.Contains(log, "fenced") && !strings.Contains(log, "idle-in-transaction") {
		t.Errorf("%s's log does not say why its write was refused:\n%s", old.id, log)
	}
}
