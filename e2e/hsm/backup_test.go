package hsm

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmsd/kmsd/e2e/e2etest"
	"github.com/kmsd/kmsd/internal/xks/keyman/pkcs11/pkcs11test"
)

// backupEnv makes backups start 100ms after a change and custom key
// stores connect quickly.
var backupEnv = []string{"KMSD_HSM_BACKUP_DELAY=100ms", "KMSD_KEYSTORE_CONNECT_DELAY=100ms"}

// restart starts kmsd again over k's data directory with env.
func (k *kmsd) restart(t *testing.T, env ...string) *kmsd {
	t.Helper()
	p := e2etest.StartKMSD(t, e2etest.KMSDConfig{Bin: kmsdBin, DataDir: k.dataDir, Env: append(append(os.Environ(),
		"KMSD_HSM_CREATE_DELAY=200ms", "KMSD_HSM_INITIALIZE_DELAY=200ms", "KMSD_HSM_DELETE_DELAY=200ms"), env...)})
	return &kmsd{dataDir: p.DataDir, endpoint: p.Endpoint, creds: p.Creds, env: p.CLIEnv(region), proc: p}
}

// newActiveCluster makes an ACTIVE cluster with HSMs in two zones and
// kmsuser (password kmsPswd1), initialized with a CA of its own in a
// directory under dir; it returns the cluster id and the CA certificate.
func newActiveCluster(t *testing.T, k *kmsd, dir, name string) (id, caCrt string) {
	t.Helper()
	return k.activeCluster(t, k.aws, dir, name)
}

// activeCluster is newActiveCluster with the CloudHSM v2 calls made by
// cloudhsmv2 (k.aws, or k.fast for a cluster that only sets the scene).
func (k *kmsd) activeCluster(t *testing.T, cloudhsmv2 func(*testing.T, ...string) map[string]any, dir, name string) (id, caCrt string) {
	t.Helper()
	dir = filepath.Join(dir, name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	id = cloudhsmv2(t, "create-cluster", "--hsm-type", "hsm2m.medium", "--subnet-ids", "subnet-0a1b2c3d4e5f60001",
		"subnet-0a1b2c3d4e5f60002")["Cluster"].(map[string]any)["ClusterId"].(string)
	k.waitState(t, id, "UNINITIALIZED")
	cloudhsmv2(t, "create-hsm", "--cluster-id", id, "--availability-zone", "us-east-1a")
	cloudhsmv2(t, "create-hsm", "--cluster-id", id, "--availability-zone", "us-east-1b")
	c := k.waitState(t, id, "UNINITIALIZED")
	csr := write(t, filepath.Join(dir, "cluster.csr"), c["Certificates"].(map[string]any)["ClusterCsr"].(string))
	caCrt, caKey := ca(t, dir, "customerCA")
	cloudhsmv2(t, "initialize-cluster", "--cluster-id", id, "--signed-cert", "file://"+sign(t, dir, csr, caCrt, caKey), "--trust-anchor", "file://"+caCrt)
	k.waitState(t, id, "INITIALIZED")
	k.cliOK(t, "cluster", "activate", "--cluster-id", id, "--password", "adminPswd1")
	k.cliOK(t, "user", "create", "--cluster-id", id, "--username", "kmsuser", "--role", "crypto-user", "--password", "kmsPswd1")
	k.waitState(t, id, "ACTIVE")
	return id, caCrt
}

// ctl runs kmsctl (which takes the aws CLI's arguments) and decodes its
// JSON output: the polling loops use it, as the aws CLI takes over a
// second to start on a busy machine; what is asserted goes through aws.
func (k *kmsd) ctl(t *testing.T, args ...string) map[string]any {
	t.Helper()
	args = append([]string{"--endpoint-url", k.endpoint, "--output", "json"}, args...)
	out, errs, code := run(t, k.env, kmsctlBin, args...)
	if code != 0 {
		t.Fatalf("kmsctl %s: exit %d\n%s", strings.Join(args, " "), code, errs)
	}
	var v map[string]any
	if strings.TrimSpace(out) != "" {
		if err := json.Unmarshal([]byte(out), &v); err != nil {
			t.Fatalf("kmsctl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	return v
}

// fast runs kmsctl cloudhsmv2 with the arguments of aws cloudhsmv2.
func (k *kmsd) fast(t *testing.T, args ...string) map[string]any {
	t.Helper()
	return k.ctl(t, append([]string{"cloudhsmv2"}, args...)...)
}

// backups lists the backups describe-backups gives for filters (JSON),
// through the aws CLI, or kmsctl when fast.
func (k *kmsd) backups(t *testing.T, fast bool, filters string) []map[string]any {
	t.Helper()
	args := []string{"describe-backups"}
	if filters != "" {
		args = append(args, "--filters", filters)
	}
	var v map[string]any
	if fast {
		v = k.ctl(t, append([]string{"cloudhsmv2"}, args...)...)
	} else {
		v = k.aws(t, args...)
	}
	var out []map[string]any
	for _, b := range list(v["Backups"]) {
		out = append(out, b.(map[string]any))
	}
	return out
}

// waitState polls (kmsctl) until cluster id is in state with no HSM in
// progress, and returns it.
func (k *kmsd) waitState(t *testing.T, id, state string) map[string]any {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		cs := list(k.ctl(t, "cloudhsmv2", "describe-clusters", "--filters", "clusterIds="+id)["Clusters"])
		if len(cs) == 1 && cs[0].(map[string]any)["State"] == state && !strings.Contains(fmt.Sprint(cs[0].(map[string]any)["Hsms"]), "_IN_PROGRESS") {
			return cs[0].(map[string]any)
		}
	}
	t.Fatalf("cluster %s never reached %s: %v", id, state, cluster(t, k, id))
	return nil
}

// storeIs polls (kmsctl) until custom key store id leaves CONNECTING and
// DISCONNECTING, then checks its state and code through the aws CLI.
func (k *kmsd) storeIs(t *testing.T, id, state, code string) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		ss := list(k.ctl(t, "kms", "describe-custom-key-stores", "--custom-key-store-id", id)["CustomKeyStores"])
		if cs := ss[0].(map[string]any)["ConnectionState"]; cs != "CONNECTING" && cs != "DISCONNECTING" {
			break
		}
	}
	k.waitStore(t, id, state, code)
}

// waitBackup waits until cluster id has a READY backup created after
// since and none in progress, and returns the newest.
func (k *kmsd) waitBackup(t *testing.T, id string, since time.Time) map[string]any {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		bs := k.backups(t, true, `{"clusterIds":["`+id+`"]}`)
		if len(bs) > 0 && bs[0]["BackupState"] == "READY" && created(bs[0]).After(since) {
			return bs[0]
		}
	}
	t.Fatalf("cluster %s: no READY backup after %v: %v", id, since, k.backups(t, true, ""))
	return nil
}

// created is a backup's CreateTimestamp, which the aws CLI prints in ISO
// 8601 and kmsctl (as the wire has it) in epoch seconds.
func created(b map[string]any) time.Time {
	switch v := b["CreateTimestamp"].(type) {
	case float64:
		return time.UnixMilli(int64(v * 1000))
	case string:
		t, _ := time.Parse(time.RFC3339Nano, v)
		return t
	}
	return time.Time{}
}

// TestBackupRepairPath is the AWS repair path for CLUSTER_NOT_FOUND with
// the real aws CLI v2: a key store's cluster deleted while the store is
// disconnected is restored from its backup; the store, pointed at the
// restored (related) cluster, connects and decrypts the old ciphertext,
// while an unrelated cluster is refused. Then the backup operations.
//
// On openCryptoki (KMSD_TEST_PKCS11) the six HSMs (the original cluster's
// two, whose tokens DeleteHsm leaves initialised, the restored cluster's
// and the unrelated one's) come from pool slots 4 to 9.
func TestBackupRepairPath(t *testing.T) {
	requireTools(t)
	for _, impl := range pkcs11test.Modules() {
		t.Run(impl, func(t *testing.T) { testBackupRepairPath(t, impl) })
	}
}

func testBackupRepairPath(t *testing.T, impl string) {
	m := newHSMModule(t, impl, backupPool)
	k := startWith(t, kmsdBin, append(backupEnv, m.env...))
	dir := t.TempDir()
	id, caCrt := newActiveCluster(t, k, dir, "orig")

	// The first backup was taken at initialization.
	if bs := k.backups(t, false, `{"clusterIds":["`+id+`"]}`); len(bs) == 0 {
		t.Fatal("no backup after initialization")
	}
	c := cluster(t, k, id)
	if p := c["BackupRetentionPolicy"].(map[string]any); p["Type"] != "DAYS" || p["Value"] != "90" {
		t.Fatalf("BackupRetentionPolicy %v", p)
	}
	k.aws(t, "modify-cluster", "--cluster-id", id, "--backup-retention-policy", "Type=DAYS,Value=30")
	if p := cluster(t, k, id)["BackupRetentionPolicy"].(map[string]any); p["Value"] != "30" {
		t.Fatalf("BackupRetentionPolicy after modify-cluster: %v", p)
	}
	k.awsFails(t, "CloudHsmInvalidRequestException", "modify-cluster", "--cluster-id", id, "--backup-retention-policy", "Type=DAYS,Value=3")

	// A connected store, a key in it, a ciphertext.
	store := k.kms(t, "create-custom-key-store", "--custom-key-store-name", "repair", "--cloud-hsm-cluster-id", id,
		"--trust-anchor-certificate", "file://"+caCrt, "--key-store-password", "kmsPswd1")["CustomKeyStoreId"].(string)
	k.kms(t, "connect-custom-key-store", "--custom-key-store-id", store)
	k.storeIs(t, store, "CONNECTED", "")
	since := time.Now()
	key := k.kms(t, "create-key", "--origin", "AWS_CLOUDHSM", "--custom-key-store-id", store)["KeyMetadata"].(map[string]any)["KeyId"].(string)
	pt := write(t, filepath.Join(dir, "pt"), "restored from a backup")
	ct := k.kms(t, "encrypt", "--key-id", key, "--plaintext", "fileb://"+pt)["CiphertextBlob"].(string)
	ctFile := write(t, filepath.Join(dir, "ct"), ct)
	backup := k.waitBackup(t, id, since) // the change of keys was backed up
	backupID := backup["BackupId"].(string)

	// Disconnect, delete the HSMs and the cluster: CLUSTER_NOT_FOUND.
	k.kms(t, "disconnect-custom-key-store", "--custom-key-store-id", store)
	k.storeIs(t, store, "DISCONNECTED", "")
	for _, h := range hsmIDs(cluster(t, k, id)) {
		k.aws(t, "delete-hsm", "--cluster-id", id, "--hsm-id", h)
	}
	waitNoHSMs(t, k, id)
	k.aws(t, "delete-cluster", "--cluster-id", id)
	k.waitState(t, id, "DELETED")
	k.kms(t, "connect-custom-key-store", "--custom-key-store-id", store)
	k.storeIs(t, store, "FAILED", "CLUSTER_NOT_FOUND")
	k.kms(t, "disconnect-custom-key-store", "--custom-key-store-id", store)
	k.storeIs(t, store, "DISCONNECTED", "")

	// The deleted cluster's backups are still there; restore the newest.
	bs := k.backups(t, false, `{"clusterIds":["`+id+`"],"states":["READY"]}`)
	if len(bs) == 0 || bs[0]["BackupId"] != backupID {
		t.Fatalf("describe-backups of the deleted cluster: %v; want %s first", bs, backupID)
	}
	restored := k.aws(t, "create-cluster", "--hsm-type", "hsm2m.medium", "--source-backup-id", backupID,
		"--subnet-ids", "subnet-0a1b2c3d4e5f60003", "subnet-0a1b2c3d4e5f60004")["Cluster"].(map[string]any)["ClusterId"].(string)
	rc := k.waitState(t, restored, "ACTIVE")
	if rc["SourceBackupId"] != backupID {
		t.Fatalf("restored cluster's SourceBackupId %v, want %s", rc["SourceBackupId"], backupID)
	}
	k.aws(t, "create-hsm", "--cluster-id", restored, "--availability-zone", "us-east-1a")
	k.aws(t, "create-hsm", "--cluster-id", restored, "--availability-zone", "us-east-1b")
	k.waitState(t, restored, "ACTIVE")

	// An unrelated cluster is refused; the restored one is accepted.
	other, _ := k.activeCluster(t, k.fast, dir, "other")
	if _, errs := k.kmsTry(t, "update-custom-key-store", "--custom-key-store-id", store, "--cloud-hsm-cluster-id", other); !strings.Contains(errs, "(CloudHsmClusterNotRelatedException)") {
		t.Fatalf("update to an unrelated cluster: %q, want CloudHsmClusterNotRelatedException", errs)
	}
	k.kms(t, "update-custom-key-store", "--custom-key-store-id", store, "--cloud-hsm-cluster-id", restored)
	k.kms(t, "connect-custom-key-store", "--custom-key-store-id", store)
	k.storeIs(t, store, "CONNECTED", "")
	out := k.kms(t, "decrypt", "--ciphertext-blob", "fileb://"+decodeB64(t, dir, ctFile))
	if got := decodeB64(t, dir, write(t, filepath.Join(dir, "out"), out["Plaintext"].(string))); read(t, got) != "restored from a backup" {
		t.Fatalf("decrypt through the restored cluster: %q", read(t, got))
	}

	// The backup operations, through the CLI. They do not depend on the
	// module: they run once, on SoftHSM2, to keep the openCryptoki re-run
	// short.
	if impl != pkcs11test.SoftHSM2 {
		return
	}
	del := k.aws(t, "delete-backup", "--backup-id", backupID)["Backup"].(map[string]any)
	if del["BackupState"] != "PENDING_DELETION" || del["DeleteTimestamp"] == nil {
		t.Fatalf("delete-backup: %v", del)
	}
	k.awsFails(t, "CloudHsmInvalidRequestException", "create-cluster", "--hsm-type", "hsm2m.medium", "--source-backup-id", backupID,
		"--subnet-ids", "subnet-0a1b2c3d4e5f60003")
	if b := k.aws(t, "restore-backup", "--backup-id", backupID)["Backup"].(map[string]any); b["BackupState"] != "READY" {
		t.Fatalf("restore-backup: %v", b)
	}
	if b := k.aws(t, "modify-backup-attributes", "--backup-id", backupID, "--never-expires")["Backup"].(map[string]any); b["NeverExpires"] != true {
		t.Fatalf("modify-backup-attributes: %v", b)
	}
	if bs := k.backups(t, false, `{"neverExpires":["true"]}`); len(bs) != 1 || bs[0]["BackupId"] != backupID {
		t.Fatalf("neverExpires filter: %v", bs)
	}
	dst := k.aws(t, "copy-backup-to-region", "--backup-id", backupID, "--destination-region", "eu-west-3")["DestinationBackup"].(map[string]any)
	if dst["SourceBackup"] != backupID || dst["SourceCluster"] != id || dst["SourceRegion"] != region {
		t.Fatalf("copy-backup-to-region: %v", dst)
	}
	paris := &kmsd{dataDir: k.dataDir, endpoint: k.endpoint, creds: k.creds, env: k.proc.CLIEnv("eu-west-3"), proc: k.proc}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		bs := paris.backups(t, true, `{"sourceBackupIds":["`+backupID+`"]}`)
		if len(bs) == 1 && bs[0]["BackupState"] == "READY" && bs[0]["SourceRegion"] == region {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("copied backup in eu-west-3: %v", bs)
		}
	}
	// Paging through the CLI's paginator and by hand.
	all := k.backups(t, false, "")
	page := k.aws(t, "describe-backups", "--max-items", "1")
	if len(list(page["Backups"])) != 1 || (len(all) > 1 && page["NextToken"] == nil) {
		t.Fatalf("describe-backups --max-items 1: %v", page)
	}
	asc := list(k.aws(t, "describe-backups", "--sort-ascending")["Backups"])
	if len(asc) != len(all) || fmt.Sprint(asc[0].(map[string]any)["BackupId"]) != fmt.Sprint(all[len(all)-1]["BackupId"]) {
		t.Fatalf("--sort-ascending is not the reverse of the default order")
	}
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestBackupCrash kills kmsd (SIGKILL) while a backup is being taken and
// while a cluster is being restored: after a restart the backup is
// complete or absent, never left CREATE_IN_PROGRESS, and the restored
// cluster is whole — its HSMs receive the backed-up users and keys.
//
// On openCryptoki (KMSD_TEST_PKCS11) its three HSMs come from pool slots
// 4 to 9.
func TestBackupCrash(t *testing.T) {
	requireTools(t)
	for _, impl := range pkcs11test.Modules() {
		t.Run(impl, func(t *testing.T) { testBackupCrash(t, impl) })
	}
}

func testBackupCrash(t *testing.T, impl string) {
	m := newHSMModule(t, impl, backupPool)
	env := append(append([]string{}, backupEnv...), m.env...)
	k := startWith(t, kmsdBin, env)
	dir := t.TempDir()
	id, _ := k.activeCluster(t, k.fast, dir, "crash")
	before := time.Now()
	k.cliOK(t, "login", "--cluster-id", id, "--username", "kmsuser", "--role", "crypto-user", "--password", "kmsPswd1")
	k.cliOK(t, "key", "generate-symmetric", "aes", "--cluster-id", id, "--label", "crash-key", "--key-length-bytes", "32")
	k.cliOK(t, "logout", "--cluster-id", id, "--username", "kmsuser", "--role", "crypto-user")
	k.waitBackup(t, id, before)
	k.proc.Stop()

	// Backups now stay CREATE_IN_PROGRESS for 5s: kill kmsd in that time.
	slow := "KMSD_HSM_CREATE_DELAY=5s"
	k = k.restart(t, append(env, slow)...)
	changed := time.Now()
	k.cliOK(t, "user", "change-password", "--cluster-id", id, "--username", "kmsuser", "--role", "crypto-user", "--password", "kmsPswd2")
	var killed string
	for deadline := time.Now().Add(10 * time.Second); killed == ""; time.Sleep(50 * time.Millisecond) {
		for _, b := range k.backups(t, true, `{"states":["CREATE_IN_PROGRESS"]}`) {
			killed = b["BackupId"].(string)
		}
		if time.Now().After(deadline) {
			t.Fatal("no backup in progress after the password change")
		}
	}
	k.proc.Kill()
	k = k.restart(t, env...)
	for _, b := range k.backups(t, false, "") {
		if b["BackupId"] == killed {
			t.Fatalf("the backup killed in CREATE_IN_PROGRESS is still there: %v", b)
		}
	}
	// A fresh backup replaces it, holding the new password.
	b := k.waitBackup(t, id, changed)
	backupID := b["BackupId"].(string)
	k.proc.Stop()

	// Kill kmsd while the restored cluster is CREATE_IN_PROGRESS.
	k = k.restart(t, append(env, slow)...)
	restored := k.fast(t, "create-cluster", "--hsm-type", "hsm2m.medium", "--source-backup-id", backupID,
		"--subnet-ids", "subnet-0a1b2c3d4e5f60003", "subnet-0a1b2c3d4e5f60004")["Cluster"].(map[string]any)["ClusterId"].(string)
	if s := list(k.fast(t, "describe-clusters", "--filters", "clusterIds="+restored)["Clusters"])[0].(map[string]any)["State"]; s != "CREATE_IN_PROGRESS" {
		t.Fatalf("restored cluster %s before the kill", s)
	}
	k.proc.Kill()
	k = k.restart(t, env...)
	cs := list(k.aws(t, "describe-clusters", "--filters", "clusterIds="+restored)["Clusters"])
	if len(cs) == 0 {
		t.Logf("the cluster restored when kmsd was killed is not there") // also allowed
		return
	}
	rc := k.waitState(t, restored, "ACTIVE")
	if rc["SourceBackupId"] != backupID || rc["Certificates"].(map[string]any)["ClusterCertificate"] != cluster(t, k, id)["Certificates"].(map[string]any)["ClusterCertificate"] {
		t.Fatalf("restored cluster after the crash: %v", rc)
	}
	k.aws(t, "create-hsm", "--cluster-id", restored, "--availability-zone", "us-east-1a")
	k.waitState(t, restored, "ACTIVE")
	k.cliFails(t, "InvalidCredentialsException", "login", "--cluster-id", restored, "--username", "kmsuser", "--role", "crypto-user", "--password", "kmsPswd1")
	k.cliOK(t, "login", "--cluster-id", restored, "--username", "kmsuser", "--role", "crypto-user", "--password", "kmsPswd2")
	keys := k.cliOK(t, "key", "list", "--cluster-id", restored).(map[string]any)["Keys"].([]any)
	if len(keys) != 1 || !strings.Contains(fmt.Sprint(keys[0]), "crash-key") || len(keys[0].(map[string]any)["Hsms"].([]any)) != 1 {
		t.Fatalf("keys of the restored cluster: %v", keys)
	}
	t.Logf("backup %s killed in CREATE_IN_PROGRESS is gone; cluster %s killed in CREATE_IN_PROGRESS is whole", killed, restored)
}
