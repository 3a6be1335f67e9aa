package multinode

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/kmsd/kmsd/e2e/e2etest"
	"github.com/kmsd/kmsd/internal/barrier"
)

// softhsmModule is Debian's SoftHSM2 PKCS#11 module.
const softhsmModule = "/usr/lib/softhsm/libsofthsm2.so"

// a6Failpoints are the points of the controller's connect and disconnect
// where A6 kills it (kmsd's KMSD_FAILPOINT, with fault injection on).
var a6Failpoints = []string{
	"keystore-connect-before-intent",
	"keystore-connect-after-intent",
	"keystore-connect-after-setpin",
	"keystore-connect-after-record",
	"keystore-disconnect-acks",
}

func requireHSMTools(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(softhsmModule); err != nil {
		t.Fatalf("%s is missing; run scripts/test.sh (Debian package softhsm2)", softhsmModule)
	}
	for _, tool := range []string{"openssl", "pkcs11-tool", "softhsm2-util"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing; run scripts/test.sh (Debian packages openssl, opensc, softhsm2)", tool)
		}
	}
}

// sharedTokens is a SoftHSM2 token directory every node of a test uses
// (one softhsm2.conf): the HSMs of a declared cluster.
type sharedTokens struct{ conf string }

func newSharedTokens(t *testing.T, so, pin string, labels ...string) sharedTokens {
	t.Helper()
	dir := t.TempDir()
	tok := filepath.Join(dir, "tokens")
	if err := os.Mkdir(tok, 0o700); err != nil {
		t.Fatal(err)
	}
	s := sharedTokens{conf: filepath.Join(dir, "softhsm2.conf")}
	if err := os.WriteFile(s.conf, []byte("directories.tokendir = "+tok+"\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, l := range labels {
		if out, err := s.cmd("softhsm2-util", "--init-token", "--free", "--label", l, "--so-pin", so, "--pin", pin).CombinedOutput(); err != nil {
			t.Fatalf("softhsm2-util --init-token %s: %v\n%s", l, err, out)
		}
	}
	return s
}

func (s sharedTokens) cmd(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+s.conf)
	return cmd
}

// loginWorks reports whether pin logs in as the user of token label (a
// real C_Login, by pkcs11-tool). It tries three times: pkcs11-tool reading
// the token files while a kmsd node rewrites them can fail for that alone
// (seen once); each failure is logged.
func (s sharedTokens) loginWorks(t *testing.T, label, pin string) bool {
	for i := range 3 {
		out, err := s.cmd("pkcs11-tool", "--module", softhsmModule, "--token-label", label, "--login", "--pin", pin, "--list-objects").CombinedOutput()
		if err == nil {
			return true
		}
		t.Logf("pkcs11-tool login on %s, try %d: %v\n%s", label, i+1, err, out)
		time.Sleep(300 * time.Millisecond)
	}
	return false
}

// storedPassword opens kmsuser's password as the database holds it for
// store id (sealed under the cluster's root key), and reports whether
// rotations are still pending on the record.
func (c *cluster) storedPassword(t *testing.T, id string) (pw string, pending int) {
	t.Helper()
	var raw []byte
	if err := pgScan(t, c.pg, c.db, "SELECT value FROM kv WHERE key = 'keystore/"+id+"'", &raw); err != nil {
		t.Fatalf("read store record: %v", err)
	}
	var rec struct {
		Password []byte   `json:"password"`
		Pending  [][]byte `json:"pending"`
		Next     []byte   `json:"next"`
	}
	if err := json.Unmarshal(raw, &rec); err != nil {
		t.Fatal(err)
	}
	key, err := base64.StdEncoding.DecodeString(c.root)
	if err != nil {
		t.Fatal(err)
	}
	b, err := barrier.New(key)
	if err != nil {
		t.Fatal(err)
	}
	p, err := b.Open("keystore/"+id+"/password", rec.Password)
	if err != nil {
		t.Fatalf("open the stored password: %v", err)
	}
	n := len(rec.Pending)
	if len(rec.Next) > 0 {
		n++
	}
	return string(p), n
}

// TestA6KeyStoreConnectVsNodeLoss is MULTINODE.md §8 A6: three nodes over
// one PostgreSQL, a CloudHSM key store over a cluster declared on every
// node over one SoftHSM2 token directory. The controller (node-0, started
// first) is made to exit (KMSD_FAILPOINT) before the rotation's intent is
// recorded, after it, after C_SetPIN, after the CONNECTED record, and
// while a disconnect waits for the nodes' logouts. Each time the store
// ends CONNECTED (DISCONNECTED for the disconnect) on every node within
// 30 s of the exit — another node took the controller lease and finished
// the work — and every node answers DescribeCustomKeyStores alike within
// 1 s of the first; the password the database holds logs in on both
// tokens (a real C_Login); no USER_LOCKED_OUT anywhere; and every node,
// the restarted one included, serves the store's keys. CI runs each
// failpoint once, KMSD_MULTINODE_FULL=1 four times (20 runs).
func TestA6KeyStoreConnectVsNodeLoss(t *testing.T) {
	requireHSMTools(t)
	pg := startPG(t)
	runs := 1
	if full() {
		runs = 4
	}
	for _, fp := range a6Failpoints {
		for r := range runs {
			t.Run(fmt.Sprintf("%s/%d", fp, r+1), func(t *testing.T) { a6Run(t, pg, fp) })
		}
	}
}

// a6ClusterID is the declared cluster of the key store tests.
const a6ClusterID = "cluster-aaaaaaaaaaa"

// declaredCluster makes two SoftHSM2 tokens, labels, in a token directory
// of their own (SO PIN adminPswd1, user PIN pin) and a declarations file
// (--hsm-config) of cluster a6ClusterID over them, whose crypto user's
// password is the environment variable A6_KMSUSER_PIN; it returns the
// tokens, the file and the trust anchor's certificate file.
func declaredCluster(t *testing.T, pin string, labels []string) (sharedTokens, string, string) {
	t.Helper()
	const so = "adminPswd1"
	toks := newSharedTokens(t, so, pin, labels...)
	dir := t.TempDir()
	anchor := e2etest.NewCA(t, dir, "customerCA")
	soFile := filepath.Join(dir, "so.pin")
	if err := os.WriteFile(soFile, []byte(so+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "hsm.toml")
	if err := os.WriteFile(cfg, []byte(`
[[cluster]]
id = "`+a6ClusterID+`"
module = "`+softhsmModule+`"
so_pin = "file:`+soFile+`"
crypto_user_pin = "env:A6_KMSUSER_PIN"
trust_anchor = "`+anchor.Crt+`"

[[cluster.hsm]]
token = "`+labels[0]+`"
availability_zone = "us-east-1a"

[[cluster.hsm]]
token = "`+labels[1]+`"
availability_zone = "us-east-1b"
`), 0o600); err != nil {
		t.Fatal(err)
	}
	return toks, cfg, anchor.Crt
}

func a6Run(t *testing.T, pg *pgServer, fp string) {
	ctx := t.Context()
	const pin = "kmsPswd1"
	labels := []string{"a6-a", "a6-b"}
	toks, cfg, anchor := declaredCluster(t, pin, labels)
	c := newCluster(t, pg, clusterOpts{nodes: 3, extra: []string{"--hsm-config", cfg, "--lease-ttl", "3s"},
		env: func(i int) []string {
			e := []string{"SOFTHSM2_CONF=" + toks.conf, "A6_KMSUSER_PIN=" + pin, "KMSD_KEYSTORE_CONNECT_DELAY=100ms", "KMSD_FAULT_INJECTION=1"}
			if i == 0 {
				e = append(e, "KMSD_FAILPOINT="+fp)
			}
			return e
		}})
	n0, n1, n2 := c.nodes[0], c.nodes[1], c.nodes[2]
	for deadline := time.Now().Add(10 * time.Second); c.controllerHolder(t) != n0.id; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("node-0, started first, is not the controller")
		}
	}
	anchorPEM, err := os.ReadFile(anchor)
	if err != nil {
		t.Fatal(err)
	}
	st, err := c.client(n1).CreateCustomKeyStore(ctx, &kms.CreateCustomKeyStoreInput{CustomKeyStoreName: aws.String("a6"),
		CloudHsmClusterId: aws.String(a6ClusterID), TrustAnchorCertificate: aws.String(string(anchorPEM)), KeyStorePassword: aws.String(pin)})
	if err != nil {
		t.Fatal(err)
	}
	id := aws.ToString(st.CustomKeyStoreId)
	connect := func(n *node) {
		t.Helper()
		if _, err := c.client(n).ConnectCustomKeyStore(ctx, &kms.ConnectCustomKeyStoreInput{CustomKeyStoreId: aws.String(id)}); err != nil {
			t.Fatalf("ConnectCustomKeyStore through %s: %v", n.id, err)
		}
	}
	want := types.ConnectionStateTypeConnected
	if fp == "keystore-disconnect-acks" {
		connect(n1)
		c.waitAllNodes(ctx, id, types.ConnectionStateTypeConnected, 30*time.Second)
		if _, err := c.client(n1).DisconnectCustomKeyStore(ctx, &kms.DisconnectCustomKeyStoreInput{CustomKeyStoreId: aws.String(id)}); err != nil {
			t.Fatal(err)
		}
		want = types.ConnectionStateTypeDisconnected
	} else {
		connect(n1)
	}

	// The controller exits at the failpoint.
	n0.mu.Lock()
	exited := n0.exited
	n0.mu.Unlock()
	select {
	case <-exited:
	case <-time.After(30 * time.Second):
		t.Fatalf("node-0 did not reach failpoint %s", fp)
	}
	killed := time.Now()
	if !strings.Contains(n0.tail(), "failpoint "+fp) {
		t.Fatalf("node-0 exited, but not at failpoint %s:\n%s", fp, n0.tail())
	}
	seen := c.waitAllNodes(ctx, id, want, 30*time.Second)
	var last time.Time
	for _, s := range seen {
		if s.After(last) {
			last = s
		}
	}
	t.Logf("%s: node-0 exited; store %s on every live node %v later (first to last node %v); controller now %s",
		fp, want, last.Sub(killed).Round(time.Millisecond), spread(seen).Round(time.Millisecond), c.controllerHolder(t))
	if d := last.Sub(killed); d > 30*time.Second {
		t.Errorf("store %s %v after the controller's exit, want within 30s", want, d)
	}
	if d := spread(seen); d > time.Second {
		t.Errorf("nodes saw %s %v apart, want within 1s", want, d)
	}

	// node-0 starts again, without the failpoint.
	n0.env = slicesWithout(n0.env, "KMSD_FAILPOINT="+fp)
	n0.Start(t)
	n0.WaitHealthy(t, 60*time.Second)
	if want == types.ConnectionStateTypeDisconnected {
		again := time.Now()
		connect(n2) // the password survived: the next connect logs in and rotates
		c.waitAllNodes(ctx, id, types.ConnectionStateTypeConnected, 30*time.Second)
		t.Logf("%s: connected again through node-2 in %v", fp, time.Since(again).Round(time.Millisecond))
	}

	// The password the database holds logs in on every token.
	pw, pending := c.storedPassword(t, id)
	if pending != 0 {
		t.Errorf("%d rotations still pending on a CONNECTED store", pending)
	}
	if pw == pin {
		t.Errorf("kmsuser's password was never rotated")
	}
	for _, l := range labels {
		if !toks.loginWorks(t, l, pw) {
			t.Errorf("the stored password does not log in on token %s", l)
		}
	}

	// Every node, the restarted one too, is logged in to the store's
	// cluster (GenerateRandom from its HSMs) and serves its keys: a key
	// made through node-2 decrypts on every node.
	for _, n := range c.nodes {
		var err error
		for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			var out *kms.GenerateRandomOutput
			if out, err = c.client(n).GenerateRandom(ctx, &kms.GenerateRandomInput{NumberOfBytes: aws.Int32(16), CustomKeyStoreId: aws.String(id)}); err == nil && len(out.Plaintext) == 16 {
				break
			}
			if time.Now().After(deadline) {
				break
			}
		}
		if err != nil {
			t.Errorf("GenerateRandom from the store on %s: %v", n.id, err)
		}
	}
	c.storeKeyServedEverywhere(ctx, t, id, n2, "a6")
}

// slicesWithout returns s without the elements equal to x.
func slicesWithout(s []string, x string) []string {
	var out []string
	for _, v := range s {
		if v != x {
			out = append(out, v)
		}
	}
	return out
}

// TestDeclaredClusterOnNodesStartedTogether: three nodes started at the
// same moment on an empty database, each declaring the same cluster from
// the same --hsm-config, all start (no race over the cluster's record);
// a CloudHSM key store over it, connected through one node, is CONNECTED
// and logged in on all three.
func TestDeclaredClusterOnNodesStartedTogether(t *testing.T) {
	requireHSMTools(t)
	ctx := t.Context()
	const pin = "kmsPswd1"
	toks, cfg, anchor := declaredCluster(t, pin, []string{"tog-a", "tog-b"})
	pg := startPG(t)
	c := newCluster(t, pg, clusterOpts{nodes: 3, together: true, extra: []string{"--hsm-config", cfg},
		env: func(int) []string {
			return []string{"SOFTHSM2_CONF=" + toks.conf, "A6_KMSUSER_PIN=" + pin, "KMSD_KEYSTORE_CONNECT_DELAY=100ms"}
		}})
	anchorPEM, err := os.ReadFile(anchor)
	if err != nil {
		t.Fatal(err)
	}
	st, err := c.client(c.nodes[2]).CreateCustomKeyStore(ctx, &kms.CreateCustomKeyStoreInput{CustomKeyStoreName: aws.String("together"),
		CloudHsmClusterId: aws.String(a6ClusterID), TrustAnchorCertificate: aws.String(string(anchorPEM)), KeyStorePassword: aws.String(pin)})
	if err != nil {
		t.Fatal(err)
	}
	id := aws.ToString(st.CustomKeyStoreId)
	if _, err := c.client(c.nodes[1]).ConnectCustomKeyStore(ctx, &kms.ConnectCustomKeyStoreInput{CustomKeyStoreId: aws.String(id)}); err != nil {
		t.Fatal(err)
	}
	c.waitAllNodes(ctx, id, types.ConnectionStateTypeConnected, 30*time.Second)
	for _, n := range c.nodes {
		var err error
		for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			if _, err = c.client(n).GenerateRandom(ctx, &kms.GenerateRandomInput{NumberOfBytes: aws.Int32(8), CustomKeyStoreId: aws.String(id)}); err == nil || time.Now().After(deadline) {
				break
			}
		}
		if err != nil {
			t.Errorf("GenerateRandom from the store on %s: %v", n.id, err)
		}
	}
	pw, _ := c.storedPassword(t, id)
	for _, l := range []string{"tog-a", "tog-b"} {
		if !toks.loginWorks(t, l, pw) {
			t.Errorf("the stored password does not log in on token %s", l)
		}
	}
}

// storeKeyServedEverywhere creates a key in CloudHSM store id through
// node via, encrypts with it there and checks that every node decrypts it
// within 15 s, and that no node's log shows USER_LOCKED_OUT (A6, A7).
func (c *cluster) storeKeyServedEverywhere(ctx context.Context, t *testing.T, id string, via *node, plaintext string) {
	t.Helper()
	key, err := c.client(via).CreateKey(ctx, &kms.CreateKeyInput{Origin: types.OriginTypeAwsCloudhsm, CustomKeyStoreId: aws.String(id)})
	if err != nil {
		t.Fatalf("CreateKey in the store through %s: %v", via.id, err)
	}
	enc, err := c.client(via).Encrypt(ctx, &kms.EncryptInput{KeyId: key.KeyMetadata.KeyId, Plaintext: []byte(plaintext)})
	if err != nil {
		t.Fatalf("Encrypt through %s: %v", via.id, err)
	}
	for _, n := range c.nodes {
		var err error
		for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			var dec *kms.DecryptOutput
			if dec, err = c.client(n).Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: enc.CiphertextBlob}); err == nil {
				if !bytes.Equal(dec.Plaintext, []byte(plaintext)) {
					t.Fatalf("Decrypt on %s: wrong plaintext", n.id)
				}
				break
			}
			if time.Now().After(deadline) {
				break
			}
		}
		if err != nil {
			t.Errorf("Decrypt on %s: %v", n.id, err)
		}
	}
	for _, n := range c.nodes {
		if b, _ := os.ReadFile(n.log); bytes.Contains(b, []byte("USER_LOCKED_OUT")) {
			t.Errorf("%s's log shows USER_LOCKED_OUT", n.id)
		}
	}
}
