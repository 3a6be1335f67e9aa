package multinode

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/jackc/pgx/v5"

	"github.com/kmsd/kmsd/e2e/e2etest"
)

// a7Failpoints are the points of the controller's connect where A7
// freezes it (KMSD_FAILPOINT=<name>:stop): with the rotation's intent
// recorded and the PIN not changed yet, and with the PIN changed but its
// outcome not recorded.
var a7Failpoints = []string{
	"keystore-connect-after-intent",
	"keystore-connect-after-setpin",
}

// TestA7FencingUnderPause is MULTINODE.md §8 A7: three nodes over one
// PostgreSQL, a CloudHSM key store over a cluster declared on every node
// over one SoftHSM2 token directory. The controller (node-0) freezes
// itself (SIGSTOP) in the middle of the store's connect, with the
// password rotation's intent recorded — before C_SetPIN, and after it —
// and stays frozen longer than 2 × the lease TTL; another node takes the
// controller lease and finishes the connect. After SIGCONT, and the
// resumed process running for 2 × TTL more:
//
//   - 0 writes accepted from the old epoch: a trigger on the key-value
//     table records every committed write with the writing node
//     (application_name), and the resumed node committed none but its
//     own node records; the store's record is byte for byte what the new
//     controller wrote; kmsd_fenced_writes_refused_total counts the
//     refusals it met;
//   - 0 PIN changes by the resumed process: its
//     kmsd_keystore_password_rotations_total is what it was when it froze
//     (0, or 1 after C_SetPIN) and its log has no rotation after SIGCONT;
//     the password the new controller recorded still logs in on both
//     tokens (a real C_Login by pkcs11-tool);
//   - the password is recovered: the store is CONNECTED on every node,
//     nothing pending, and every node, the resumed one too, serves the
//     store's keys.
//
// CI uses a 3 s lease TTL and a 7 s pause; KMSD_MULTINODE_FULL=1 the
// default 15 s TTL and a 40 s pause.
func TestA7FencingUnderPause(t *testing.T) {
	requireHSMTools(t)
	pg := startPG(t)
	ttl, pause := 3*time.Second, 7*time.Second
	if full() {
		ttl, pause = 15*time.Second, 40*time.Second
	}
	for _, fp := range a7Failpoints {
		t.Run(fp, func(t *testing.T) { a7Run(t, pg, fp, ttl, pause) })
	}
}

// traceWrites installs, on database db, a trigger recording every row
// written to the key-value table with the application_name of the
// session that wrote it (kmsd nodes' sessions carry their node id): a
// trace of the committed writes, the aborted ones leaving nothing.
func traceWrites(t *testing.T, pg *pgServer, db string) {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), pg.URL(db, pg.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(t.Context(), `
CREATE TABLE a7_writes (
	id  bigserial PRIMARY KEY,
	at  timestamptz NOT NULL DEFAULT clock_timestamp(),
	app text NOT NULL,
	op  text NOT NULL,
	key text NOT NULL
);
CREATE FUNCTION a7_trace() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO a7_writes (app, op, key) VALUES (current_setting('application_name'), TG_OP,
		CASE WHEN TG_OP = 'DELETE' THEN OLD.key ELSE NEW.key END);
	RETURN NULL;
END $$;
CREATE TRIGGER a7_trace AFTER INSERT OR UPDATE OR DELETE ON kv FOR EACH ROW EXECUTE FUNCTION a7_trace();`); err != nil {
		t.Fatalf("write trace: %v", err)
	}
}

// tracedWrite is one committed write of the trace.
type tracedWrite struct {
	id      int64
	at      time.Time
	op, key string
}

// writesBy returns the traced writes of node app after trace id since.
func writesBy(t *testing.T, pg *pgServer, db, app string, since int64) []tracedWrite {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), pg.URL(db, pg.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(t.Context(), `SELECT id, at, op, key FROM a7_writes WHERE app = $1 AND id > $2 ORDER BY id`, app, since)
	if err != nil {
		t.Fatal(err)
	}
	var out []tracedWrite
	for rows.Next() {
		var w tracedWrite
		if err := rows.Scan(&w.id, &w.at, &w.op, &w.key); err != nil {
			t.Fatal(err)
		}
		out = append(out, w)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// ownRecord reports whether key is one a node writes about itself
// outside the controller's duties, unfenced: its heartbeat record and its
// per-store login records.
func ownRecord(key, node string) bool {
	return key == "kmsd/node/"+node || strings.HasPrefix(key, "keystorenode/") && strings.HasSuffix(key, "/"+node)
}

func a7Run(t *testing.T, pg *pgServer, fp string, ttl, pause time.Duration) {
	ctx := t.Context()
	const pin = "kmsPswd1"
	labels := []string{"a7-a", "a7-b"}
	toks, cfg, anchor := declaredCluster(t, pin, labels)
	metrics := []string{e2etest.FreeAddr(t), e2etest.FreeAddr(t), e2etest.FreeAddr(t)}
	c := newCluster(t, pg, clusterOpts{nodes: 3, extra: []string{"--hsm-config", cfg, "--lease-ttl", ttl.String()},
		nodeArgs: func(i int) []string { return []string{"--metrics-listen", metrics[i]} },
		env: func(i int) []string {
			e := []string{"SOFTHSM2_CONF=" + toks.conf, "A6_KMSUSER_PIN=" + pin, "KMSD_KEYSTORE_CONNECT_DELAY=100ms", "KMSD_FAULT_INJECTION=1"}
			if i == 0 {
				e = append(e, "KMSD_FAILPOINT="+fp+":stop")
			}
			return e
		}})
	n0, n1, n2 := c.nodes[0], c.nodes[1], c.nodes[2]
	metric := func(i int, name string) float64 { return e2etest.Scrape(t, "http://"+metrics[i]+"/metrics", name) }
	for deadline := time.Now().Add(10 * time.Second); c.controllerHolder(t) != n0.id; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("node-0, started first, is not the controller")
		}
	}
	traceWrites(t, pg, c.db)
	anchorPEM, err := os.ReadFile(anchor)
	if err != nil {
		t.Fatal(err)
	}
	st, err := c.client(n1).CreateCustomKeyStore(ctx, &kms.CreateCustomKeyStoreInput{CustomKeyStoreName: aws.String("a7"),
		CloudHsmClusterId: aws.String(a6ClusterID), TrustAnchorCertificate: aws.String(string(anchorPEM)), KeyStorePassword: aws.String(pin)})
	if err != nil {
		t.Fatal(err)
	}
	id := aws.ToString(st.CustomKeyStoreId)
	if _, err := c.client(n1).ConnectCustomKeyStore(ctx, &kms.ConnectCustomKeyStoreInput{CustomKeyStoreId: aws.String(id)}); err != nil {
		t.Fatal(err)
	}

	// The controller freezes itself at the failpoint, the intent recorded.
	for deadline := time.Now().Add(30 * time.Second); !n0.Stopped(); time.Sleep(20 * time.Millisecond) {
		if !n0.Alive() || time.Now().After(deadline) {
			t.Fatalf("node-0 did not stop at failpoint %s:\n%s", fp, n0.tail())
		}
	}
	pausedAt := time.Now()
	if !strings.Contains(n0.tail(), `msg="failpoint reached: stopping" failpoint=`+fp) {
		t.Fatalf("node-0 stopped, but not at failpoint %s:\n%s", fp, n0.tail())
	}
	var oldEpoch int64
	if err := pgScan(t, pg, c.db, `SELECT epoch FROM kmsd_leases WHERE name = 'controller' AND holder = 'node-0'`, &oldEpoch); err != nil {
		t.Fatalf("node-0's controller lease: %v", err)
	}
	if _, pending := c.storedPassword(t, id); pending != 1 {
		t.Fatalf("%d rotations pending while node-0 is stopped at %s, want its intent (1)", pending, fp)
	}
	// A COMMIT node-0 sent before it stopped lands before this mark.
	time.Sleep(500 * time.Millisecond)
	var mark int64
	if err := pgScan(t, pg, c.db, `SELECT coalesce(max(id), 0) FROM a7_writes`, &mark); err != nil {
		t.Fatal(err)
	}

	// Another node takes the lease over and finishes the connect while
	// node-0 is frozen.
	var holder string
	var newEpoch int64
	connected := false
	for deadline := pausedAt.Add(max(pause, 30*time.Second)); ; time.Sleep(100 * time.Millisecond) {
		if !connected {
			pgScan(t, pg, c.db, `SELECT holder, epoch FROM kmsd_leases WHERE name = 'controller' AND expires_at > now()`, &holder, &newEpoch)
			e1, e2 := c.describeStore(ctx, n1, id), c.describeStore(ctx, n2, id)
			connected = holder != n0.id && newEpoch > oldEpoch && e1 != nil && e2 != nil &&
				e1.ConnectionState == types.ConnectionStateTypeConnected && e2.ConnectionState == types.ConnectionStateTypeConnected
			if connected {
				t.Logf("%s: node-0 stopped (epoch %d); %s took over (epoch %d) and the store is CONNECTED on node-1 and node-2 %v later",
					fp, oldEpoch, holder, newEpoch, time.Since(pausedAt).Round(time.Millisecond))
			}
		}
		if connected && time.Since(pausedAt) >= pause {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%v after node-0 stopped: controller %s epoch %d, store CONNECTED on node-1 and node-2: %v", time.Since(pausedAt).Round(time.Millisecond), holder, newEpoch, connected)
		}
	}
	pw, pending := c.storedPassword(t, id)
	if pending != 0 {
		t.Errorf("%d rotations still pending after %s connected the store", pending, holder)
	}
	if pw == pin {
		t.Errorf("kmsuser's password was never rotated")
	}
	var before []byte
	if err := pgScan(t, pg, c.db, "SELECT value FROM kv WHERE key = 'keystore/"+id+"'", &before); err != nil {
		t.Fatal(err)
	}
	holderIdx := map[string]int{n1.id: 1, n2.id: 2}[holder]
	newRotations := metric(holderIdx, "kmsd_keystore_password_rotations_total")

	// SIGCONT, after more than 2 × TTL frozen; the resumed process runs
	// on for 2 × TTL.
	logAt := int64(0)
	if fi, err := os.Stat(n0.log); err == nil {
		logAt = fi.Size()
	}
	frozen := time.Since(pausedAt)
	n0.Resume()
	resumedAt := time.Now()
	want := fmt.Sprintf(`msg="controller lease given up" node=node-0 epoch=%d`, oldEpoch)
	for deadline := resumedAt.Add(ttl + 5*time.Second); !strings.Contains(n0.tail(), want); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("node-0 did not give epoch %d up after SIGCONT:\n%s", oldEpoch, n0.tail())
		}
	}
	gaveUp := time.Since(resumedAt)
	time.Sleep(time.Until(resumedAt.Add(2 * ttl)))
	n0.WaitHealthy(t, 5*time.Second)
	t.Logf("%s: node-0 frozen %v (lease TTL %v); after SIGCONT it gave epoch %d up in %v",
		fp, frozen.Round(time.Millisecond), ttl, oldEpoch, gaveUp.Round(time.Millisecond))

	// 0 writes accepted from the old epoch.
	var after []tracedWrite
	own := map[string]int{}
	for _, w := range writesBy(t, pg, c.db, n0.id, mark) {
		if ownRecord(w.key, n0.id) {
			own[w.key]++
		} else {
			after = append(after, w)
		}
	}
	t.Logf("%s: node-0's committed writes after it stopped: %d to shared records, its own records %v", fp, len(after), own)
	// The trace names the writers: the new controller's CONNECTED record
	// is in it under its name.
	traced := false
	for _, w := range writesBy(t, pg, c.db, holder, mark) {
		traced = traced || w.key == "keystore/"+id
	}
	if !traced || own["kmsd/node/"+n0.id] == 0 {
		t.Errorf("the write trace does not show %s's write of the store's record (%v) or node-0's heartbeats after SIGCONT (%v)", holder, traced, own)
	}
	if len(after) > 0 {
		t.Errorf("node-0 committed %d writes to shared records after it stopped as controller of epoch %d: %+v", len(after), oldEpoch, after)
	}
	var now []byte
	if err := pgScan(t, pg, c.db, "SELECT value FROM kv WHERE key = 'keystore/"+id+"'", &now); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, now) {
		t.Errorf("the store's record changed after node-0 resumed:\nbefore %s\nafter  %s", before, now)
	}
	if h := c.controllerHolder(t); h != holder {
		t.Errorf("controller after node-0 resumed: %s, want %s still", h, holder)
	}
	refused := metric(0, `kmsd_fenced_writes_refused_total{node="node-0"}`)
	t.Logf("%s: node-0's fenced writes refused by the database: %v; its log after SIGCONT:\n%s", fp, refused, logSince(n0.log, logAt, "keystore", "controller", "failpoint"))

	// 0 PIN changes by the resumed process.
	wantRot := 0.0
	if fp == "keystore-connect-after-setpin" {
		wantRot = 1 // before it froze, at its own epoch
	}
	if got := metric(0, "kmsd_keystore_password_rotations_total"); got != wantRot {
		t.Errorf("node-0 rotated kmsuser's password %v times, want %v", got, wantRot)
	}
	resumedLog := logSince(n0.log, logAt, "")
	if strings.Contains(resumedLog, "kmsuser password rotated") {
		t.Errorf("node-0 rotated kmsuser's password after SIGCONT:\n%s", resumedLog)
	}
	if fp == "keystore-connect-after-intent" && !strings.Contains(resumedLog, "controller lease too close to its end to rotate a password") {
		// Resumed before C_SetPIN, it must find its lease gone and leave
		// the rotation alone.
		t.Errorf("node-0, resumed before C_SetPIN, did not say it left the rotation to the next term:\n%s", resumedLog)
	}
	if got := metric(holderIdx, "kmsd_keystore_password_rotations_total"); got != newRotations || got < 1 {
		t.Errorf("%s rotated %v times, %v when it had connected the store", holder, got, newRotations)
	}

	// The password the new controller recorded logs in, and is the one
	// still recorded.
	if pw2, pending := c.storedPassword(t, id); pw2 != pw || pending != 0 {
		t.Errorf("the stored password changed after node-0 resumed (pending %d)", pending)
	}
	for _, l := range labels {
		if !toks.loginWorks(t, l, pw) {
			t.Errorf("the stored password does not log in on token %s", l)
		}
	}

	// CONNECTED on every node, and every node, the resumed one too,
	// serves the store's keys.
	c.waitAllNodes(ctx, id, types.ConnectionStateTypeConnected, 10*time.Second)
	c.storeKeyServedEverywhere(ctx, t, id, n2, "a7")
}

// logSince is the lines of log file path from offset on that contain one
// of words (at most 40; all lines for the word "").
func logSince(path string, offset int64, words ...string) string {
	b, err := os.ReadFile(path)
	if err != nil || offset > int64(len(b)) {
		return ""
	}
	var out []string
	for _, l := range strings.Split(string(b[offset:]), "\n") {
		for _, w := range words {
			if strings.Contains(l, w) {
				out = append(out, l)
				break
			}
		}
	}
	if len(words) > 0 && words[0] != "" && len(out) > 40 {
		out = out[:40]
	}
	return strings.Join(out, "\n")
}
