package multinode

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kmsd/kmsd/e2e/e2etest"
)

// TestHSMBackupAfterNodeLoss: the backup a change of a cluster's users
// calls for is the controller's. Node B, not the controller, changes
// kmsuser's password and is killed (SIGKILL) right after answering; the
// change's transaction marked the backup due in the cluster's record, and
// A, the controller, takes the backup once KMSD_HSM_BACKUP_DELAY (3 s) has
// passed — well within the minute CloudHSM promises — and clears the mark.
// (Before, B's own timer took it, and died with B: the change waited for
// the next daily backup.)
func TestHSMBackupAfterNodeLoss(t *testing.T) {
	if _, err := os.Stat("/usr/lib/softhsm/libsofthsm2.so"); err != nil {
		t.Fatal("SoftHSM2 is not installed; scripts/test.sh installs it")
	}
	const delay = 3 * time.Second
	pg := startPG(t)
	tokdir := t.TempDir()
	c := newCluster(t, pg, clusterOpts{nodes: 2,
		extra: []string{"--hsm-token-dir", tokdir, "--lease-ttl", "2s"},
		env: func(int) []string {
			return []string{"KMSD_HSM_CREATE_DELAY=300ms", "KMSD_HSM_INITIALIZE_DELAY=300ms", "KMSD_HSM_DELETE_DELAY=300ms",
				"KMSD_HSM_BACKUP_DELAY=" + delay.String()}
		}})
	a, b := c.nodes[0], c.nodes[1]
	waitController(t, c, a.id) // node A started alone first

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
	// hsmCLI runs a cloudhsm-cli command, which prints its errors on
	// standard output.
	hsmCLI := func(n *node, args ...string) {
		t.Helper()
		cmd := exec.Command(kmsctlBin, append([]string{"--endpoint-url", n.endpoint, "cloudhsm-cli"}, args...)...)
		cmd.Env = ctlEnv
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("cloudhsm-cli %s through %s: %v\n%s", strings.Join(args, " "), n.id, err, out)
		}
	}
	waitCl := func(id, state string) map[string]any {
		t.Helper()
		var cl map[string]any
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			cs := ctl(b, "cloudhsmv2", "describe-clusters", "--filters", "clusterIds="+id)["Clusters"].([]any)
			cl = cs[0].(map[string]any)
			if cl["State"] == state && !strings.Contains(fmt.Sprint(cl["Hsms"]), "_IN_PROGRESS") {
				return cl
			}
			if time.Now().After(deadline) {
				t.Fatalf("cluster %s never reached %s: %v", id, state, cl)
			}
		}
	}

	// An ACTIVE cluster with kmsuser, every call through B. A, the
	// controller, makes the HSM's token in the shared token directory
	// after B's SoftHSM2 listed its tokens (C_Initialize): B's activation
	// and user creation (the SO's calls) find it by re-initialising the
	// library (issue #16: they answered HsmUnreachableException "no token
	// labelled", and this test did them through A).
	id := ctl(b, "cloudhsmv2", "create-cluster", "--hsm-type", "hsm2m.medium", "--subnet-ids",
		"subnet-0a1b2c3d4e5f60001")["Cluster"].(map[string]any)["ClusterId"].(string)
	cl := waitCl(id, "UNINITIALIZED")
	var zone string
	for az := range cl["SubnetMapping"].(map[string]any) {
		zone = az
	}
	ctl(b, "cloudhsmv2", "create-hsm", "--cluster-id", id, "--availability-zone", zone)
	cl = waitCl(id, "UNINITIALIZED")
	dir := t.TempDir()
	ca := e2etest.NewCA(t, dir, "hsmbk")
	csr := filepath.Join(dir, id+".csr")
	if err := os.WriteFile(csr, []byte(cl["Certificates"].(map[string]any)["ClusterCsr"].(string)), 0o600); err != nil {
		t.Fatal(err)
	}
	crt, err := ca.Sign(csr)
	if err != nil {
		t.Fatal(err)
	}
	ctl(b, "cloudhsmv2", "initialize-cluster", "--cluster-id", id, "--signed-cert", "file://"+crt, "--trust-anchor", "file://"+ca.Crt)
	waitCl(id, "INITIALIZED")
	hsmCLI(b, "cluster", "activate", "--cluster-id", id, "--password", "adminPswd1")
	hsmCLI(b, "user", "create", "--cluster-id", id, "--username", "kmsuser", "--role", "crypto-user", "--password", "kmsPswd1")
	waitCl(id, "ACTIVE")

	// mark is the cluster record's backup mark as the database has it
	// ("" when none).
	mark := func() string {
		t.Helper()
		var due string
		if err := pgScan(t, c.pg, c.db, `SELECT coalesce(convert_from(value, 'UTF8')::json->>'backupDue', '') FROM kv WHERE key = 'hsm/cluster/`+id+`'`, &due); err != nil {
			t.Fatal(err)
		}
		return due
	}
	// backups lists the cluster's backups through n: READY ids, and
	// whether one is in progress.
	backups := func(n *node) (ready []string, busy bool) {
		t.Helper()
		for _, bk := range ctl(n, "cloudhsmv2", "describe-backups", "--filters", "clusterIds="+id)["Backups"].([]any) {
			bk := bk.(map[string]any)
			switch bk["BackupState"] {
			case "READY":
				ready = append(ready, bk["BackupId"].(string))
			case "CREATE_IN_PROGRESS":
				busy = true
			}
		}
		return ready, busy
	}
	// The backups of the cluster's making, taken by A: settled, no mark.
	var before []string
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		ready, busy := backups(b)
		if len(ready) > 0 && !busy && mark() == "" {
			before = ready
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the backups of the cluster's making never settled: READY %v, in progress %v, mark %q", ready, busy, mark())
		}
	}

	// B changes kmsuser's password and dies at once.
	changed := time.Now()
	hsmCLI(b, "user", "change-password", "--cluster-id", id, "--username", "kmsuser", "--role", "crypto-user", "--password", "kmsPswd2")
	b.Kill()
	if mark() == "" {
		t.Fatal("the password change through B left no backup mark in the cluster's record")
	}

	// A, the controller, takes the backup.
	var took time.Duration
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		ready, busy := backups(a)
		fresh := slices.DeleteFunc(slices.Clone(ready), func(id string) bool { return slices.Contains(before, id) })
		if len(fresh) > 0 && !busy && mark() == "" {
			took = time.Since(changed)
			t.Logf("backup %v READY and the mark cleared %.1fs after the change through B (KMSD_HSM_BACKUP_DELAY %v; B killed right after)",
				fresh, took.Seconds(), delay)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no backup of the change through B (killed) within a minute: READY %v (before: %v), in progress %v, mark %q\nA's log:\n%s",
				ready, before, busy, mark(), a.tail())
		}
	}
	if took < delay-500*time.Millisecond {
		t.Fatalf("the backup came %v after the change, before KMSD_HSM_BACKUP_DELAY %v (debounce lost)", took, delay)
	}
}
