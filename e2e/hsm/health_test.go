package hsm

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmsd/kmsd/e2e/e2etest"
)

// kmsTry runs an aws kms command as k's user and returns the decoded
// output, or the CLI's stderr when it fails.
func (k *kmsd) kmsTry(t *testing.T, args ...string) (map[string]any, string) {
	t.Helper()
	args = append([]string{"--endpoint-url", k.endpoint, "--output", "json", "kms"}, args...)
	out, errs, code := run(t, k.env, awsCLI, args...)
	if code != 0 {
		return nil, errs
	}
	var v map[string]any
	if strings.TrimSpace(out) != "" {
		if err := json.Unmarshal([]byte(out), &v); err != nil {
			t.Fatalf("aws %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	return v, ""
}

// tokenDirOf is the directory of kmsd's SoftHSM2 token label.
func (k *kmsd) tokenDirOf(t *testing.T, label string) string {
	t.Helper()
	return softHSM{dir: filepath.Join(k.dataDir, "hsm", "tokens")}.tokenDir(t, label)
}

// states is a cluster's state followed by its HSMs' states.
func states(c map[string]any) string {
	s := fmt.Sprint(c["State"])
	for _, h := range list(c["Hsms"]) {
		s += " " + fmt.Sprint(h.(map[string]any)["State"])
	}
	return s
}

// scrape returns kmsd's Prometheus metrics lines that start with prefix.
func scrape(t *testing.T, addr, prefix string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestHealthFollowsHSMs takes every token of a CloudHSM key store's cluster
// away behind kmsd's back and brings them back, with the real kmsd, the
// real aws CLI v2 and SoftHSM2: within three probe intervals DescribeClusters
// shows the HSMs and the cluster DEGRADED (and so do the metrics); the
// store stays CONNECTED, as in AWS, and its key's operations answer
// KMSInvalidStateException; once the tokens are back the cluster is ACTIVE
// again within three intervals and Encrypt and Decrypt work without a
// restart or a reconnect. A kmsd restarted during such an outage keeps the
// store CONNECTED, and it logs in by itself once the tokens are back.
func TestHealthFollowsHSMs(t *testing.T) {
	requireTools(t)
	const every = time.Second
	metrics := e2etest.FreeAddr(t)
	k := startWith(t, kmsdBin, []string{"KMSD_KEYSTORE_CONNECT_DELAY=100ms"},
		"--hsm-probe-interval", every.String(), "--metrics-listen", metrics)
	dir := t.TempDir()

	// An ACTIVE cluster with two HSMs in two zones and kmsuser.
	id := k.aws(t, "create-cluster", "--hsm-type", "hsm2m.medium", "--subnet-ids", "subnet-0a1b2c3d4e5f60001",
		"subnet-0a1b2c3d4e5f60002")["Cluster"].(map[string]any)["ClusterId"].(string)
	waitCluster(t, k, id, "UNINITIALIZED")
	k.aws(t, "create-hsm", "--cluster-id", id, "--availability-zone", "us-east-1a")
	k.aws(t, "create-hsm", "--cluster-id", id, "--availability-zone", "us-east-1b")
	c := waitCluster(t, k, id, "UNINITIALIZED")
	hsms := hsmIDs(c)
	csr := write(t, filepath.Join(dir, "cluster.csr"), c["Certificates"].(map[string]any)["ClusterCsr"].(string))
	caCrt, caKey := ca(t, dir, "customerCA")
	k.aws(t, "initialize-cluster", "--cluster-id", id, "--signed-cert", "file://"+sign(t, dir, csr, caCrt, caKey), "--trust-anchor", "file://"+caCrt)
	waitCluster(t, k, id, "INITIALIZED")
	k.cliOK(t, "cluster", "activate", "--cluster-id", id, "--password", "adminPswd1")
	k.cliOK(t, "user", "create", "--cluster-id", id, "--username", "kmsuser", "--role", "crypto-user", "--password", "kmsPswd1")
	waitCluster(t, k, id, "ACTIVE")

	// A connected store and a key in it.
	store := k.kms(t, "create-custom-key-store", "--custom-key-store-name", "health", "--cloud-hsm-cluster-id", id,
		"--trust-anchor-certificate", "file://"+caCrt, "--key-store-password", "kmsPswd1")["CustomKeyStoreId"].(string)
	k.kms(t, "connect-custom-key-store", "--custom-key-store-id", store)
	storeState := func() string {
		t.Helper()
		ss := list(k.kms(t, "describe-custom-key-stores", "--custom-key-store-id", store)["CustomKeyStores"])
		return fmt.Sprint(ss[0].(map[string]any)["ConnectionState"])
	}
	for deadline := time.Now().Add(20 * time.Second); storeState() != "CONNECTED"; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("store %s: %s, want CONNECTED", store, storeState())
		}
	}
	key := k.kms(t, "create-key", "--origin", "AWS_CLOUDHSM", "--custom-key-store-id", store)["KeyMetadata"].(map[string]any)["KeyId"].(string)
	pt := write(t, filepath.Join(dir, "pt"), "health follows the HSMs")
	encrypt := func() (map[string]any, string) {
		return k.kmsTry(t, "encrypt", "--key-id", key, "--plaintext", "fileb://"+pt)
	}
	ct, errs := encrypt()
	if errs != "" {
		t.Fatal(errs)
	}
	ctFile := filepath.Join(dir, "ct")
	if err := os.WriteFile(ctFile, []byte(ct["CiphertextBlob"].(string)), 0o600); err != nil {
		t.Fatal(err)
	}
	decrypt := func() (map[string]any, string) {
		return k.kmsTry(t, "decrypt", "--ciphertext-blob", "fileb://"+decodeB64(t, dir, ctFile))
	}
	if _, errs := decrypt(); errs != "" {
		t.Fatal(errs)
	}

	// waitMetric polls kmsd's metrics (cheap, unlike a CLI run) until the
	// cluster's state is want, and returns how long that took from since;
	// DescribeClusters through the CLI is checked after.
	waitMetric := func(want string, since time.Time) time.Duration {
		t.Helper()
		line := `kmsd_hsm_cluster_state{account="111122223333",cluster_id="` + id + `",region="us-east-1",state="` + want + `"} 1`
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if strings.Contains(scrape(t, metrics, "kmsd_hsm_cluster_state"), line) {
				return time.Since(since)
			}
			if time.Now().After(deadline) {
				t.Fatalf("cluster %s never %s:\n%s", id, want, k.proc.Log())
			}
		}
	}
	const bound = 3 * every

	// Every token goes.
	away := t.TempDir()
	var dirs []string
	for i, h := range hsms {
		d := k.tokenDirOf(t, h)
		dirs = append(dirs, d)
		if err := os.Rename(d, filepath.Join(away, fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	took := waitMetric("DEGRADED", time.Now())
	t.Logf("DEGRADED %v after the tokens went (probe interval %v)", took, every)
	if took > bound {
		t.Errorf("DEGRADED %v after the tokens went; want within %v", took, bound)
	}
	c = cluster(t, k, id)
	if got := states(c); got != "DEGRADED DEGRADED DEGRADED" {
		t.Fatalf("describe-clusters: %s", got)
	}
	for _, h := range list(c["Hsms"]) {
		if msg := fmt.Sprint(h.(map[string]any)["StateMessage"]); !strings.Contains(msg, "cannot be reached") {
			t.Errorf("HSM StateMessage %q", msg)
		}
	}
	if got := list(k.aws(t, "describe-clusters", "--filters", "states=DEGRADED")["Clusters"]); len(got) != 1 {
		t.Errorf("states=DEGRADED filter: %d clusters", len(got))
	}
	m := scrape(t, metrics, "kmsd_hsm_")
	for _, want := range []string{
		`kmsd_hsm_cluster_state{account="111122223333",cluster_id="` + id + `",region="us-east-1",state="DEGRADED"} 1`,
		`kmsd_hsm_state{account="111122223333",cluster_id="` + id + `",hsm_id="` + hsms[0] + `",region="us-east-1",state="DEGRADED"} 1`,
		`kmsd_hsm_state{account="111122223333",cluster_id="` + id + `",hsm_id="` + hsms[1] + `",region="us-east-1",state="ACTIVE"} 0`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s:\n%s", want, m)
		}
	}
	// The store stays CONNECTED; the key's operations fail, as AWS's do,
	// with KMSInvalidStateException, and its KeyState stays Enabled.
	if s := storeState(); s != "CONNECTED" {
		t.Errorf("store with its cluster DEGRADED: %s, want CONNECTED", s)
	}
	for name, op := range map[string]func() (map[string]any, string){"encrypt": encrypt, "decrypt": decrypt} {
		if _, errs := op(); !strings.Contains(errs, "(KMSInvalidStateException)") || !strings.Contains(errs, "cannot communicate with the CloudHSM cluster") {
			t.Errorf("%s with every token away: %q, want KMSInvalidStateException", name, errs)
		}
	}
	if st := k.kms(t, "describe-key", "--key-id", key)["KeyMetadata"].(map[string]any)["KeyState"]; st != "Enabled" {
		t.Errorf("KeyState %v, want Enabled", st)
	}
	// The other operations' documented answers (spec §5.9, §5.11, §9.1):
	// GenerateDataKey as Encrypt; GenerateRandom in the store
	// CustomKeyStoreInvalidStateException; CreateKey in the store, which
	// needs two ACTIVE HSMs, CloudHsmClusterInvalidConfigurationException.
	for _, c := range []struct {
		want string
		args []string
	}{
		{"KMSInvalidStateException", []string{"generate-data-key", "--key-id", key, "--key-spec", "AES_256"}},
		{"CustomKeyStoreInvalidStateException", []string{"generate-random", "--number-of-bytes", "16", "--custom-key-store-id", store}},
		{"CloudHsmClusterInvalidConfigurationException", []string{"create-key", "--origin", "AWS_CLOUDHSM", "--custom-key-store-id", store}},
	} {
		if _, errs := k.kmsTry(t, c.args...); !strings.Contains(errs, "("+c.want+")") {
			t.Errorf("%s with every token away: %q, want %s", c.args[0], errs, c.want)
		}
	}

	// The tokens come back: ACTIVE within three intervals, and the key
	// works again with no restart and no reconnect.
	for i, d := range dirs {
		if err := os.Rename(filepath.Join(away, fmt.Sprint(i)), d); err != nil {
			t.Fatal(err)
		}
	}
	took = waitMetric("ACTIVE", time.Now())
	t.Logf("ACTIVE %v after the tokens came back", took)
	if took > bound {
		t.Errorf("ACTIVE %v after the tokens came back; want within %v", took, bound)
	}
	if got := states(cluster(t, k, id)); got != "ACTIVE ACTIVE ACTIVE" {
		t.Fatalf("describe-clusters: %s", got)
	}
	if _, errs := encrypt(); errs != "" {
		t.Fatalf("encrypt after the tokens came back: %s", errs)
	}
	if _, errs := k.kmsTry(t, "generate-random", "--number-of-bytes", "16", "--custom-key-store-id", store); errs != "" {
		t.Fatalf("generate-random in the store after the tokens came back: %s", errs)
	}
	if out, errs := decrypt(); errs != "" || out["KeyId"] == nil {
		t.Fatalf("decrypt after the tokens came back: %v %s", out, errs)
	}
	if s := storeState(); s != "CONNECTED" {
		t.Errorf("store after the tokens came back: %s", s)
	}

	// Through a restart: the tokens go again and kmsd is restarted while
	// they are away. The store, CONNECTED when kmsd stopped, cannot log in
	// and still stays CONNECTED (an outage of the HSMs never fails a store
	// in AWS); once the tokens are back it logs in by itself and its key
	// works, with no disconnect and connect.
	for i, d := range dirs {
		if err := os.Rename(d, filepath.Join(away, fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	waitMetric("DEGRADED", time.Now())
	k.proc.Stop()
	metrics = e2etest.FreeAddr(t)
	p := e2etest.StartKMSD(t, e2etest.KMSDConfig{Bin: kmsdBin, DataDir: k.dataDir, Env: append(os.Environ(),
		"KMSD_HSM_CREATE_DELAY=200ms", "KMSD_HSM_INITIALIZE_DELAY=200ms", "KMSD_HSM_DELETE_DELAY=200ms", "KMSD_KEYSTORE_CONNECT_DELAY=100ms"),
		Args: []string{"--hsm-probe-interval", every.String(), "--metrics-listen", metrics}})
	*k = kmsd{dataDir: p.DataDir, endpoint: p.Endpoint, creds: p.Creds, env: p.CLIEnv(region), proc: p}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		st := storeState()
		if st == "CONNECTED" && strings.Contains(k.proc.Log(), "backing cannot be reached") {
			break
		}
		if st != "CONNECTING" && st != "CONNECTED" || time.Now().After(deadline) {
			t.Fatalf("store resumed while its HSMs are away: %s\n%s", st, k.proc.Log())
		}
	}
	if _, errs := encrypt(); !strings.Contains(errs, "(KMSInvalidStateException)") {
		t.Errorf("encrypt after the restart with the tokens away: %q, want KMSInvalidStateException", errs)
	}
	for i, d := range dirs {
		if err := os.Rename(filepath.Join(away, fmt.Sprint(i)), d); err != nil {
			t.Fatal(err)
		}
	}
	back := time.Now()
	waitMetric("ACTIVE", back)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if _, errs := encrypt(); errs == "" {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("the resumed store's key never worked again: %s\n%s", errs, k.proc.Log())
		}
	}
	t.Logf("the resumed store's key encrypts %v after the tokens came back", time.Since(back))
	if out, errs := decrypt(); errs != "" || out["KeyId"] == nil {
		t.Fatalf("decrypt after the restart: %v %s", out, errs)
	}
	if s := storeState(); s != "CONNECTED" {
		t.Errorf("store after the restart: %s", s)
	}
}

// decodeB64 writes the binary form of the base64 file f and returns its
// path, for fileb:// arguments.
func decodeB64(t *testing.T, dir, f string) string {
	t.Helper()
	b, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, filepath.Base(f)+".bin")
	if err := os.WriteFile(out, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	return out
}
