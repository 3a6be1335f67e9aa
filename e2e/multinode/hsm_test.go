package multinode

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kmsd/kmsd/e2e/e2etest"
)

// TestHSMClusterAcrossNodes: kmsd's own HSM clusters with three nodes on
// one database and one shared SoftHSM2 token directory (--hsm-token-dir).
// A cluster made through one node is the same on every node; its
// asynchronous steps are finished by the controller, also when the node
// that was finishing one is killed in the middle of it — here node A, the
// controller, dies by SIGKILL (a test failpoint) right after it made an
// HSM's token and before it recorded the HSM ACTIVE: the next controller
// finds that token, reuses it, and the HSM reaches ACTIVE. A CloudHSM key
// store over the cluster is made and connected through B, a key made
// through C, and the key encrypts and decrypts through every node.
func TestHSMClusterAcrossNodes(t *testing.T) {
	if _, err := os.Stat("/usr/lib/softhsm/libsofthsm2.so"); err != nil {
		t.Fatal("SoftHSM2 is not installed; scripts/test.sh installs it")
	}
	start := time.Now()
	pg := startPG(t)
	tokdir := t.TempDir()
	c := newCluster(t, pg, clusterOpts{nodes: 3,
		extra: []string{"--hsm-token-dir", tokdir, "--lease-ttl", "2s"},
		env: func(i int) []string {
			e := []string{"KMSD_HSM_CREATE_DELAY=300ms", "KMSD_HSM_INITIALIZE_DELAY=300ms", "KMSD_HSM_DELETE_DELAY=300ms",
				"KMSD_KEYSTORE_CONNECT_DELAY=100ms"}
			if i == 0 {
				e = append(e, "KMSD_FAILPOINT=hsm.after-init-token")
			}
			return e
		}})
	a, b, cn := c.nodes[0], c.nodes[1], c.nodes[2]
	// Node A started alone first: it is the controller.
	waitController(t, c, a.id)

	ctlEnv := append(env(), "AWS_ACCESS_KEY_ID="+c.creds.AccessKeyID, "AWS_SECRET_ACCESS_KEY="+c.creds.SecretAccessKey,
		"AWS_DEFAULT_REGION="+region, "HOME="+t.TempDir())
	ctl := func(n *node, args ...string) map[string]any {
		t.Helper()
		out, err := e2etest.Kmsctl(kmsctlBin, n.endpoint, ctlEnv, args...)
		if err != nil {
			t.Fatalf("through %s: %v", n.id, err)
		}
		return out
	}
	describe := func(n *node, id string) map[string]any {
		t.Helper()
		cs := ctl(n, "cloudhsmv2", "describe-clusters", "--filters", "clusterIds="+id)["Clusters"].([]any)
		if len(cs) != 1 {
			t.Fatalf("describe-clusters %s through %s: %v", id, n.id, cs)
		}
		return cs[0].(map[string]any)
	}
	waitCl := func(n *node, id, state string, timeout time.Duration) map[string]any {
		t.Helper()
		var cl map[string]any
		for deadline := time.Now().Add(timeout); ; time.Sleep(100 * time.Millisecond) {
			cl = describe(n, id)
			if cl["State"] == state && !strings.Contains(fmt.Sprint(cl["Hsms"]), "_IN_PROGRESS") {
				return cl
			}
			if time.Now().After(deadline) {
				t.Fatalf("cluster %s never reached %s with no HSM in progress (through %s): %v", id, state, n.id, cl)
			}
		}
	}

	// The cluster, made through A; its CREATE_IN_PROGRESS is finished by
	// A, the controller.
	id := ctl(a, "cloudhsmv2", "create-cluster", "--hsm-type", "hsm2m.medium", "--subnet-ids",
		"subnet-0a1b2c3d4e5f60001", "subnet-0a1b2c3d4e5f60002")["Cluster"].(map[string]any)["ClusterId"].(string)
	cl := waitCl(b, id, "UNINITIALIZED", 20*time.Second)
	var zones []string
	for az := range cl["SubnetMapping"].(map[string]any) {
		zones = append(zones, az)
	}
	slices.Sort(zones)

	// CreateHsm through A: A, the controller, makes the token and dies
	// before recording the HSM ACTIVE.
	killedAt := time.Now()
	h1 := ctl(a, "cloudhsmv2", "create-hsm", "--cluster-id", id, "--availability-zone", zones[0])["Hsm"].(map[string]any)["HsmId"].(string)
	for deadline := time.Now().Add(20 * time.Second); a.Alive(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("node A did not reach the failpoint after its token was made")
		}
	}
	if !strings.Contains(a.tail(), "failpoint reached") {
		t.Fatalf("node A died, but not at the failpoint:\n%s", a.tail())
	}
	if got := tokenLabels(t, tokdir); !reflect.DeepEqual(got, []string{h1}) {
		t.Fatalf("tokens after A died: %v, want the one A made, %s", got, h1)
	}
	if s := hsmState(describe(b, id), h1); s != "CREATE_IN_PROGRESS" {
		t.Fatalf("HSM %s is %s after A died, want CREATE_IN_PROGRESS (A died before recording it)", h1, s)
	}
	cl = waitCl(b, id, "UNINITIALIZED", 30*time.Second)
	if s := hsmState(cl, h1); s != "ACTIVE" {
		t.Fatalf("HSM %s is %s, want ACTIVE: %v", h1, s, cl)
	}
	t.Logf("HSM %s ACTIVE %.1fs after the controller was killed making it (--lease-ttl 2s)", h1, time.Since(killedAt).Seconds())
	if got := tokenLabels(t, tokdir); !reflect.DeepEqual(got, []string{h1}) {
		t.Fatalf("tokens: %v, want only %s: the new controller made a second token instead of reusing A's", got, h1)
	}
	// A comes back, without the failpoint.
	a.env = slices.DeleteFunc(a.env, func(kv string) bool { return strings.HasPrefix(kv, "KMSD_FAILPOINT=") })
	a.Start(t)
	a.WaitHealthy(t, 30*time.Second)

	// The second HSM through C, the initialization through B, the
	// activation and the crypto user (CloudHSM CLI) through A.
	h2 := ctl(cn, "cloudhsmv2", "create-hsm", "--cluster-id", id, "--availability-zone", zones[1])["Hsm"].(map[string]any)["HsmId"].(string)
	cl = waitCl(a, id, "UNINITIALIZED", 20*time.Second)
	dir := t.TempDir()
	ca := e2etest.NewCA(t, dir, "hsmmn")
	csr := filepath.Join(dir, id+".csr")
	if err := os.WriteFile(csr, []byte(cl["Certificates"].(map[string]any)["ClusterCsr"].(string)), 0o600); err != nil {
		t.Fatal(err)
	}
	crt, err := ca.Sign(csr)
	if err != nil {
		t.Fatal(err)
	}
	ctl(b, "cloudhsmv2", "initialize-cluster", "--cluster-id", id, "--signed-cert", "file://"+crt, "--trust-anchor", "file://"+ca.Crt)
	waitCl(cn, id, "INITIALIZED", 20*time.Second)
	ctl(a, "cloudhsm-cli", "cluster", "activate", "--cluster-id", id, "--password", "adminPswd1")
	ctl(a, "cloudhsm-cli", "user", "create", "--cluster-id", id, "--username", "kmsuser", "--role", "crypto-user", "--password", "kmsPswd1")
	waitCl(b, id, "ACTIVE", 20*time.Second)
	if got := tokenLabels(t, tokdir); !reflect.DeepEqual(got, sorted(h1, h2)) {
		t.Fatalf("tokens: %v, want %s and %s", got, h1, h2)
	}

	// DescribeClusters is the same on every node.
	want := describe(a, id)
	for _, n := range []*node{b, cn} {
		if got := describe(n, id); !reflect.DeepEqual(got, want) {
			t.Fatalf("describe-clusters through %s differs from A's:\n%s\n%s", n.id, js(got), js(want))
		}
	}

	// A CloudHSM key store over it, made and connected through B.
	store := ctl(b, "kms", "create-custom-key-store", "--custom-key-store-name", "hsmmn", "--cloud-hsm-cluster-id", id,
		"--trust-anchor-certificate", "file://"+ca.Crt, "--key-store-password", "kmsPswd1")["CustomKeyStoreId"].(string)
	ctl(b, "kms", "connect-custom-key-store", "--custom-key-store-id", store)
	for _, n := range c.nodes {
		// Key stores are cached per node, following the change feed: a
		// node may not know a store made a moment ago through another.
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			out, err := e2etest.Kmsctl(kmsctlBin, n.endpoint, ctlEnv, "kms", "describe-custom-key-stores", "--custom-key-store-id", store)
			var st any
			if err == nil {
				st = out["CustomKeyStores"].([]any)[0].(map[string]any)["ConnectionState"]
				if st == "CONNECTED" {
					break
				}
			}
			if st == "FAILED" || time.Now().After(deadline) {
				t.Fatalf("key store %s through %s: %v %v", store, n.id, out, err)
			}
		}
	}

	// Until every node logs in to a store connected through another one
	// (the key store connection work of MULTINODE §4.7, not this test's
	// subject), A and C log in as they start: a store CONNECTED at start is
	// logged in again with its current password.
	for _, n := range []*node{a, cn} {
		n.Stop(t)
		n.Start(t)
		n.WaitHealthy(t, 30*time.Second)
	}

	// A key made through C; encrypt through each node, decrypt each
	// ciphertext through every node.
	// (A restarted node logs in to the store in the background: until
	// then its HSM operations answer KMSInvalidStateException.)
	var key string
	for deadline := time.Now().Add(20 * time.Second); key == ""; time.Sleep(100 * time.Millisecond) {
		out, err := e2etest.Kmsctl(kmsctlBin, cn.endpoint, ctlEnv, "kms", "create-key", "--origin", "AWS_CLOUDHSM", "--custom-key-store-id", store)
		switch {
		case err == nil:
			key = out["KeyMetadata"].(map[string]any)["KeyId"].(string)
		case !strings.Contains(err.Error(), "KMSInvalidStateException") || time.Now().After(deadline):
			t.Fatalf("create-key through %s: %v", cn.id, err)
		}
	}
	for _, n := range []*node{a, cn} { // A too has logged in
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			_, err := e2etest.Kmsctl(kmsctlBin, n.endpoint, ctlEnv, "kms", "generate-random", "--number-of-bytes", "8", "--custom-key-store-id", store)
			if err == nil {
				break
			}
			if !strings.Contains(err.Error(), "KMSInvalidStateException") && !strings.Contains(err.Error(), "CustomKeyStoreInvalidState") || time.Now().After(deadline) {
				t.Fatalf("generate-random through %s: %v", n.id, err)
			}
		}
	}
	for _, en := range c.nodes {
		msg := "sealed through " + en.id
		pt := filepath.Join(dir, "pt-"+en.id)
		if err := os.WriteFile(pt, []byte(msg), 0o600); err != nil {
			t.Fatal(err)
		}
		ct := ctl(en, "kms", "encrypt", "--key-id", key, "--plaintext", "fileb://"+pt)["CiphertextBlob"].(string)
		raw, err := base64.StdEncoding.DecodeString(ct)
		if err != nil {
			t.Fatal(err)
		}
		ctf := filepath.Join(dir, "ct-"+en.id)
		if err := os.WriteFile(ctf, raw, 0o600); err != nil {
			t.Fatal(err)
		}
		for _, dn := range c.nodes {
			got := ctl(dn, "kms", "decrypt", "--ciphertext-blob", "fileb://"+ctf)["Plaintext"].(string)
			if got != base64.StdEncoding.EncodeToString([]byte(msg)) {
				t.Fatalf("encrypted through %s, decrypted through %s: %q", en.id, dn.id, got)
			}
		}
	}
	t.Logf("whole test %.1fs", time.Since(start).Seconds())
}

// waitController waits until node id holds the controller lease.
func waitController(t *testing.T, c *cluster, id string) {
	t.Helper()
	var holder string
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		err := pgScan(t, c.pg, c.db, `SELECT holder FROM kmsd_leases WHERE name = 'controller' AND expires_at > now()`, &holder)
		if err == nil && holder == id {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("controller is %q (%v), want %s", holder, err, id)
		}
	}
}

// tokenLabels lists the labels of the SoftHSM2 tokens in dir, sorted.
func tokenLabels(t *testing.T, dir string) []string {
	t.Helper()
	conf := filepath.Join(t.TempDir(), "softhsm2.conf")
	if err := os.WriteFile(conf, []byte("directories.tokendir = "+dir+"\nobjectstore.backend = file\nlog.level = ERROR\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("softhsm2-util", "--show-slots")
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+conf)
	b, err := cmd.CombinedOutput()
	out := string(b)
	if err != nil {
		t.Fatalf("softhsm2-util --show-slots: %v: %s", err, out)
	}
	var labels []string
	for _, line := range strings.Split(out, "\n") {
		if l, ok := strings.CutPrefix(strings.TrimSpace(line), "Label:"); ok && strings.TrimSpace(l) != "" {
			labels = append(labels, strings.TrimSpace(l))
		}
	}
	slices.Sort(labels)
	return labels
}

func hsmState(cl map[string]any, hsmID string) string {
	for _, h := range cl["Hsms"].([]any) {
		if h := h.(map[string]any); h["HsmId"] == hsmID {
			return h["State"].(string)
		}
	}
	return "absent"
}

func sorted(s ...string) []string { slices.Sort(s); return s }

func js(v any) string { b, _ := json.MarshalIndent(v, "", " "); return string(b) }
