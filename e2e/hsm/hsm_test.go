// Package hsm holds the end-to-end tests of kmsd's HSM clusters: the real
// kmsd binary with SoftHSM2 tokens, driven by the aws CLI v2 (cloudhsmv2),
// kmsctl's cloudhsm-cli commands, openssl (the customer's CA) and OpenSC's
// pkcs11-tool (proof at the PKCS#11 level).
package hsm

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmsd/kmsd/e2e/e2etest"
	"github.com/kmsd/kmsd/internal/xks/keyman/pkcs11/pkcs11test"
)

const (
	awsCLI = "/usr/bin/aws" // Debian's aws CLI v2 (the `aws` on PATH may be pip's v1)
	module = "/usr/lib/softhsm/libsofthsm2.so"
	region = "us-east-1"
)

var kmsdBin, kmsctlBin string

func TestMain(m *testing.M) {
	e2etest.Main(m, map[string]*string{"kmsd": &kmsdBin, "kmsctl": &kmsctlBin})
}

// requireTools fails (never skips) when a tool the tests need is missing:
// scripts/test.sh installs them.
func requireTools(t *testing.T) {
	t.Helper()
	for _, p := range []string{awsCLI, module} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s is missing; run scripts/test.sh (Debian packages awscli, softhsm2)", p)
		}
	}
	for _, tool := range []string{"openssl", "pkcs11-tool", "softhsm2-util"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing; run scripts/test.sh (Debian packages openssl, opensc, softhsm2)", tool)
		}
	}
}

type kmsd struct {
	dataDir, endpoint, creds string
	env                      []string // for aws, kmsctl
	proc                     *e2etest.KMSD
}

// start runs kmsd (auth verify: real SigV4 checks) with short HSM delays.
func start(t *testing.T, bin string) *kmsd {
	t.Helper()
	return startWith(t, bin, nil)
}

// startWith is start with more environment variables and flags for kmsd.
func startWith(t *testing.T, bin string, env []string, args ...string) *kmsd {
	t.Helper()
	p := e2etest.StartKMSD(t, e2etest.KMSDConfig{Bin: bin, Args: args, Env: append(append(os.Environ(),
		"KMSD_HSM_CREATE_DELAY=200ms", "KMSD_HSM_INITIALIZE_DELAY=200ms", "KMSD_HSM_DELETE_DELAY=200ms"), env...)})
	return &kmsd{dataDir: p.DataDir, endpoint: p.Endpoint, creds: p.Creds, env: p.CLIEnv(region), proc: p}
}

// run runs a command and returns its stdout, stderr and exit code.
func run(t *testing.T, env []string, name string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%s %v: %v", name, args, err)
	}
	return out.String(), errb.String(), code
}

// aws runs the aws CLI v2's cloudhsmv2 and decodes its JSON output.
func (k *kmsd) aws(t *testing.T, args ...string) map[string]any {
	t.Helper()
	args = append([]string{"--endpoint-url", k.endpoint, "--output", "json", "cloudhsmv2"}, args...)
	out, errs, code := run(t, k.env, awsCLI, args...)
	if code != 0 {
		t.Fatalf("aws %s: exit %d\n%s", strings.Join(args, " "), code, errs)
	}
	var v map[string]any
	if strings.TrimSpace(out) == "" {
		return v
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("aws %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return v
}

// awsFails runs the aws CLI and checks it fails with exception code.
func (k *kmsd) awsFails(t *testing.T, code string, args ...string) {
	t.Helper()
	args = append([]string{"--endpoint-url", k.endpoint, "--output", "json", "cloudhsmv2"}, args...)
	_, errs, rc := run(t, k.env, awsCLI, args...)
	if rc == 0 || !strings.Contains(errs, "("+code+")") {
		t.Fatalf("aws %s: exit %d, stderr %q; want %s", strings.Join(args, " "), rc, errs, code)
	}
}

// cli runs a kmsctl cloudhsm-cli command; it returns the data member and
// the error_code.
func (k *kmsd) cli(t *testing.T, args ...string) (any, int) {
	t.Helper()
	args = append([]string{"--endpoint-url", k.endpoint, "cloudhsm-cli"}, args...)
	out, errs, _ := run(t, k.env, kmsctlBin, args...)
	var v struct {
		ErrorCode int `json:"error_code"`
		Data      any `json:"data"`
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("kmsctl %s: %v\nstdout %s\nstderr %s", strings.Join(args, " "), err, out, errs)
	}
	return v.Data, v.ErrorCode
}

func (k *kmsd) cliOK(t *testing.T, args ...string) any {
	t.Helper()
	d, code := k.cli(t, args...)
	if code != 0 {
		t.Fatalf("kmsctl cloudhsm-cli %s: %v", strings.Join(args, " "), d)
	}
	return d
}

func (k *kmsd) cliFails(t *testing.T, want string, args ...string) {
	t.Helper()
	d, code := k.cli(t, args...)
	if s, _ := d.(string); code == 0 || !strings.HasPrefix(s, want) {
		t.Fatalf("kmsctl cloudhsm-cli %s = %d %v; want %s", strings.Join(args, " "), code, d, want)
	}
}

// p11 runs pkcs11-tool against kmsd's SoftHSM2 tokens.
func (k *kmsd) p11(t *testing.T, args ...string) (string, int) {
	t.Helper()
	env := append(os.Environ(), "SOFTHSM2_CONF="+filepath.Join(k.dataDir, "hsm", "softhsm2.conf"))
	out, errs, code := run(t, env, "pkcs11-tool", append([]string{"--module", module}, args...)...)
	return out + errs, code
}

func cluster(t *testing.T, k *kmsd, id string) map[string]any {
	t.Helper()
	out := k.aws(t, "describe-clusters", "--filters", "clusterIds="+id)
	cs := list(out["Clusters"])
	if len(cs) != 1 {
		t.Fatalf("describe-clusters clusterIds=%s: %d clusters", id, len(cs))
	}
	return cs[0].(map[string]any)
}

// waitCluster polls until the cluster is in state and no HSM is in
// progress.
func waitCluster(t *testing.T, k *kmsd, id, state string) map[string]any {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		c := cluster(t, k, id)
		ready := c["State"] == state
		hs, _ := c["Hsms"].([]any)
		for _, h := range hs {
			if s := h.(map[string]any)["State"]; s != "ACTIVE" {
				ready = false
			}
		}
		if ready {
			return c
		}
	}
	t.Fatalf("cluster %s never reached %s: %v", id, state, cluster(t, k, id))
	return nil
}

func hsmIDs(c map[string]any) []string {
	var ids []string
	hs, _ := c["Hsms"].([]any)
	for _, h := range hs {
		ids = append(ids, h.(map[string]any)["HsmId"].(string))
	}
	return ids
}

func write(t *testing.T, path, content string) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// ca makes a self-signed CA with openssl in dir and returns its files.
func ca(t *testing.T, dir, name string) (crt, key string) {
	t.Helper()
	c := e2etest.NewCA(t, dir, name)
	return c.Crt, c.Key
}

// sign signs csr (dir/cluster.csr) and returns the certificate's file.
func sign(t *testing.T, dir, csr, caCrt, caKey string) string {
	t.Helper()
	crt, err := e2etest.CA{Crt: caCrt, Key: caKey}.Sign(csr)
	if err != nil {
		t.Fatal(err)
	}
	return crt
}

// TestClusterLifecycle runs the CloudHSM v2 API and CLI over kmsd's HSMs
// on each PKCS#11 implementation under test (KMSD_TEST_PKCS11).
func TestClusterLifecycle(t *testing.T) {
	requireTools(t)
	for _, impl := range pkcs11test.Modules() {
		t.Run(impl, func(t *testing.T) { testClusterLifecycle(t, impl) })
	}
}

func testClusterLifecycle(t *testing.T, impl string) {
	m := newHSMModule(t, impl, lifecyclePool)
	k := startWith(t, kmsdBin, m.env)
	dir := t.TempDir()

	// CreateCluster: CREATE_IN_PROGRESS, then UNINITIALIZED with a CSR.
	out := k.aws(t, "create-cluster", "--hsm-type", "hsm2m.medium", "--subnet-ids", "subnet-0a1b2c3d4e5f60001", "subnet-0a1b2c3d4e5f60002",
		"--tag-list", "Key=env,Value=test")
	c := out["Cluster"].(map[string]any)
	id := c["ClusterId"].(string)
	if c["State"] != "CREATE_IN_PROGRESS" {
		t.Fatalf("create-cluster state %v", c["State"])
	}
	other := k.aws(t, "create-cluster", "--hsm-type", "hsm1.medium", "--subnet-ids", "subnet-0a1b2c3d4e5f60003")["Cluster"].(map[string]any)["ClusterId"].(string)
	c = waitCluster(t, k, id, "UNINITIALIZED")
	waitCluster(t, k, other, "UNINITIALIZED")
	if m := c["SubnetMapping"].(map[string]any); m["us-east-1a"] != "subnet-0a1b2c3d4e5f60001" || m["us-east-1b"] != "subnet-0a1b2c3d4e5f60002" {
		t.Fatalf("SubnetMapping %v", m)
	}

	// The API's filters, validation and tags do not depend on the
	// module: they run once, on SoftHSM2, to keep the openCryptoki re-run
	// short.
	apiOnly := impl == pkcs11test.SoftHSM2
	if apiOnly {
		t.Run("DescribeClusters filters and pagination", func(t *testing.T) {
			all := list(k.aws(t, "describe-clusters", "--page-size", "1")["Clusters"])
			if len(all) != 2 {
				t.Fatalf("paginated describe-clusters: %d clusters, want 2", len(all))
			}
			page := k.aws(t, "describe-clusters", "--max-results", "1")
			if len(list(page["Clusters"])) != 1 || page["NextToken"] == nil {
				t.Fatalf("--max-results 1: %v", page)
			}
			if got := list(k.aws(t, "describe-clusters", "--filters", `{"states":["UNINITIALIZED"],"clusterIds":["`+id+`"]}`)["Clusters"]); len(got) != 1 {
				t.Fatalf("states+clusterIds filter: %d", len(got))
			}
			if got := list(k.aws(t, "describe-clusters", "--filters", "states=ACTIVE")["Clusters"]); len(got) != 0 {
				t.Fatalf("states=ACTIVE: %d", len(got))
			}
			vpc := c["VpcId"].(string)
			if got := list(k.aws(t, "describe-clusters", "--filters", "vpcIds="+vpc)["Clusters"]); len(got) != 2 {
				t.Fatalf("vpcIds filter: %d", len(got))
			}
		})
	}

	// Two HSMs in the two zones: each a SoftHSM2 token.
	h1 := k.aws(t, "create-hsm", "--cluster-id", id, "--availability-zone", "us-east-1a")["Hsm"].(map[string]any)
	if h1["State"] != "CREATE_IN_PROGRESS" || h1["SubnetId"] != "subnet-0a1b2c3d4e5f60001" {
		t.Fatalf("create-hsm: %v", h1)
	}
	k.aws(t, "create-hsm", "--cluster-id", id, "--availability-zone", "us-east-1b", "--ip-address", "10.0.1.20")
	c = waitCluster(t, k, id, "UNINITIALIZED")
	hsms := hsmIDs(c)
	slots, _ := m.p11(t, k, "--list-token-slots")
	for _, h := range hsms {
		if !strings.Contains(slots, h) {
			t.Fatalf("no token %s in:\n%s", h, slots)
		}
	}

	// InitializeCluster with the CSR signed by our own CA.
	csr := write(t, filepath.Join(dir, "cluster.csr"), c["Certificates"].(map[string]any)["ClusterCsr"].(string))
	caCrt, caKey := ca(t, dir, "customerCA")
	signed := sign(t, dir, csr, caCrt, caKey)
	otherCrt, _ := ca(t, dir, "otherCA")
	before := cluster(t, k, id)
	k.awsFails(t, "CloudHsmInvalidRequestException", "initialize-cluster", "--cluster-id", id, "--signed-cert", "file://"+signed, "--trust-anchor", "file://"+otherCrt)
	k.awsFails(t, "CloudHsmInvalidRequestException", "initialize-cluster", "--cluster-id", id, "--signed-cert", "file://"+otherCrt, "--trust-anchor", "file://"+otherCrt)
	if after := cluster(t, k, id); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("a failed initialize-cluster changed the cluster:\n%v\n%v", before, after)
	}
	init := k.aws(t, "initialize-cluster", "--cluster-id", id, "--signed-cert", "file://"+signed, "--trust-anchor", "file://"+caCrt)
	if init["State"] != "INITIALIZE_IN_PROGRESS" {
		t.Fatalf("initialize-cluster: %v", init)
	}
	c = waitCluster(t, k, id, "INITIALIZED")
	if c["Certificates"].(map[string]any)["ClusterCertificate"] == nil {
		t.Fatal("no ClusterCertificate after initialization")
	}

	// The CloudHSM CLI side.
	k.cliFails(t, "ClusterNotActiveException", "user", "create", "--cluster-id", id, "--username", "kmsuser", "--role", "crypto-user", "--password", "kmsPswd1")
	k.cliOK(t, "cluster", "activate", "--cluster-id", id, "--password", "adminPswd1")
	waitCluster(t, k, id, "ACTIVE")
	k.cliOK(t, "user", "create", "--cluster-id", id, "--username", "kmsuser", "--role", "crypto-user", "--password", "kmsPswd1")
	// The admin password is the SO PIN of every HSM (derived from it on a
	// token taking shorter PINs): an SO login (to set the user PIN to what
	// it is) succeeds with it only.
	for _, h := range hsms {
		for pin, ok := range map[string]bool{m.pin("adminPswd1"): true, "wrongPswd": false} {
			o, code := m.p11(t, k, "--token-label", h, "--login", "--login-type", "so", "--so-pin", pin, "--init-pin", "--new-pin", "kmsPswd1")
			if (code == 0) != ok {
				t.Fatalf("SO login on %s with %s: %s", h, pin, o)
			}
		}
	}
	k.cliFails(t, "UserAlreadyExistsException", "user", "create", "--cluster-id", id, "--username", "kmsuser", "--role", "crypto-user", "--password", "kmsPswd1")
	userLogin := func(h, pin string) bool {
		_, code := m.p11(t, k, "--token-label", h, "--login", "--pin", pin, "--list-objects")
		return code == 0
	}
	for _, h := range hsms {
		if !userLogin(h, "kmsPswd1") || userLogin(h, "wrongPswd") {
			t.Fatalf("kmsuser's PIN on %s is not kmsPswd1", h)
		}
	}

	// Keys: need the login; generated on every HSM; not extractable.
	k.cliFails(t, "UserNotLoggedInException", "key", "list", "--cluster-id", id)
	k.cliOK(t, "login", "--cluster-id", id, "--username", "kmsuser", "--role", "crypto-user", "--password", "kmsPswd1")
	k.cliOK(t, "key", "generate-symmetric", "aes", "--cluster-id", id, "--label", "key-one", "--key-length-bytes", "32")
	keyOn := func(h string) string {
		o, code := m.p11(t, k, "--token-label", h, "--login", "--pin", "kmsPswd1", "--list-objects", "--type", "secrkey")
		if code != 0 {
			t.Fatalf("list objects on %s: %s", h, o)
		}
		return o
	}
	for _, h := range hsms {
		o := keyOn(h)
		if !strings.Contains(o, "key-one") {
			t.Fatalf("key-one missing on %s:\n%s", h, o)
		}
		if strings.Contains(strings.ReplaceAll(o, "never extractable", ""), "extractable") {
			t.Fatalf("key-one is extractable on %s:\n%s", h, o)
		}
		if o, code := m.p11(t, k, "--token-label", h, "--login", "--pin", "kmsPswd1", "--read-object", "--type", "secrkey", "--label", "key-one"); code == 0 {
			t.Fatalf("read the value of key-one from %s:\n%s", h, o)
		}
	}
	// A new HSM receives the existing key.
	k.aws(t, "create-hsm", "--cluster-id", id, "--availability-zone", "us-east-1a")
	c = waitCluster(t, k, id, "ACTIVE")
	hsms = hsmIDs(c)
	if len(hsms) != 3 || !strings.Contains(keyOn(hsms[2]), "key-one") {
		t.Fatalf("the new HSM %v lacks key-one", hsms)
	}
	keys := k.cliOK(t, "key", "list", "--cluster-id", id).(map[string]any)["Keys"].([]any)
	if len(keys) != 1 || len(keys[0].(map[string]any)["Hsms"].([]any)) != 3 {
		t.Fatalf("key list: %v", keys)
	}
	k.cliOK(t, "logout", "--cluster-id", id, "--username", "kmsuser", "--role", "crypto-user")

	// Failed logins lock kmsuser out until the admin resets it: after five
	// as on CloudHSM (kmsd's count), or on a token that locks its user PIN
	// sooner by itself, after the token's count (openCryptoki: three;
	// README, PKCS#11 modules).
	for i := 0; i < m.lockAfter(); i++ {
		k.cliFails(t, "InvalidCredentialsException", "login", "--cluster-id", id, "--username", "kmsuser", "--role", "crypto-user", "--password", "badPswd1")
	}
	k.cliFails(t, "UserLockedOutException", "login", "--cluster-id", id, "--username", "kmsuser", "--role", "crypto-user", "--password", "kmsPswd1")
	k.cliOK(t, "user", "change-password", "--cluster-id", id, "--username", "kmsuser", "--role", "crypto-user", "--password", "kmsPswd2")
	for _, h := range hsms {
		if !userLogin(h, "kmsPswd2") || userLogin(h, "kmsPswd1") {
			t.Fatalf("the token PIN of %s did not change", h)
		}
	}
	k.cliOK(t, "login", "--cluster-id", id, "--username", "kmsuser", "--role", "crypto-user", "--password", "kmsPswd2")
	k.cliOK(t, "key", "delete", "--cluster-id", id, "--filter", "attr.label=key-one")
	if keys := k.cliOK(t, "key", "list", "--cluster-id", id).(map[string]any)["Keys"].([]any); len(keys) != 0 {
		t.Fatalf("keys after delete: %v", keys)
	}
	k.cliOK(t, "logout", "--cluster-id", id)
	k.cliOK(t, "user", "delete", "--cluster-id", id, "--username", "kmsuser", "--role", "crypto-user")

	if apiOnly {
		t.Run("errors change nothing", func(t *testing.T) {
			before := k.aws(t, "describe-clusters")
			missing := "cluster-aaaaaaaaaaa"
			for _, tc := range []struct {
				code string
				args []string
			}{
				{"CloudHsmInvalidRequestException", []string{"describe-clusters", "--filters", "color=blue"}},
				{"CloudHsmInvalidRequestException", []string{"describe-clusters", "--filters", "states=HAPPY"}},
				{"CloudHsmInvalidRequestException", []string{"describe-clusters", "--next-token", "garbage"}},
				{"CloudHsmResourceNotFoundException", []string{"create-hsm", "--cluster-id", missing, "--availability-zone", "us-east-1a"}},
				{"CloudHsmInvalidRequestException", []string{"create-hsm", "--cluster-id", id, "--availability-zone", "us-east-1c"}},
				{"CloudHsmInvalidRequestException", []string{"create-hsm", "--cluster-id", id, "--availability-zone", "us-east-1a", "--ip-address", "10.0.1.20"}},
				{"CloudHsmInvalidRequestException", []string{"create-hsm", "--cluster-id", id, "--availability-zone", "us-east-1b", "--ip-address", "10.0.1.20"}},
				{"CloudHsmResourceNotFoundException", []string{"delete-hsm", "--cluster-id", id, "--hsm-id", "hsm-aaaaaaaaaaa"}},
				{"CloudHsmInvalidRequestException", []string{"delete-hsm", "--cluster-id", id}},
				{"CloudHsmInvalidRequestException", []string{"delete-cluster", "--cluster-id", id}},
				{"CloudHsmResourceNotFoundException", []string{"delete-cluster", "--cluster-id", missing}},
				{"CloudHsmInvalidRequestException", []string{"initialize-cluster", "--cluster-id", id, "--signed-cert", "file://" + signed, "--trust-anchor", "file://" + caCrt}},
				{"CloudHsmResourceNotFoundException", []string{"initialize-cluster", "--cluster-id", missing, "--signed-cert", "x", "--trust-anchor", "y"}},
				{"CloudHsmInvalidRequestException", []string{"create-cluster", "--hsm-type", "hsm9.huge", "--subnet-ids", "subnet-0a1b2c3d4e5f60001"}},
				{"CloudHsmInvalidRequestException", []string{"create-cluster", "--hsm-type", "hsm1.medium", "--subnet-ids", "subnet-0a1b2c3d4e5f60001", "subnet-0a1b2c3d4e5f60001"}},
				{"CloudHsmResourceNotFoundException", []string{"create-cluster", "--hsm-type", "hsm1.medium", "--subnet-ids", "subnet-0a1b2c3d4e5f60001", "--source-backup-id", "backup-aaaaaaaaaaa"}},
				{"ValidationException", []string{"create-cluster", "--hsm-type", "hsm1.medium", "--subnet-ids", "not-a-subnet"}},
				{"CloudHsmTagException", []string{"tag-resource", "--resource-id", id, "--tag-list", "Key=aws:x,Value=y"}},
				{"CloudHsmResourceNotFoundException", []string{"tag-resource", "--resource-id", missing, "--tag-list", "Key=a,Value=b"}},
				{"CloudHsmResourceNotFoundException", []string{"list-tags", "--resource-id", "backup-aaaaaaaaaaa"}},
				{"CloudHsmResourceNotFoundException", []string{"untag-resource", "--resource-id", missing, "--tag-key-list", "a"}},
			} {
				k.awsFails(t, tc.code, tc.args...)
			}
			if after := k.aws(t, "describe-clusters"); fmt.Sprint(after) != fmt.Sprint(before) {
				t.Fatalf("failed requests changed the clusters:\n%v\n%v", before, after)
			}
		})
	}

	if apiOnly {
		t.Run("tags", func(t *testing.T) {
			k.aws(t, "tag-resource", "--resource-id", id, "--tag-list", "Key=team,Value=crypto", "Key=env,Value=prod")
			tags := list(k.aws(t, "list-tags", "--resource-id", id)["TagList"])
			if fmt.Sprint(tags) != "[map[Key:env Value:prod] map[Key:team Value:crypto]]" {
				t.Fatalf("list-tags: %v", tags)
			}
			page := k.aws(t, "list-tags", "--resource-id", id, "--max-results", "1")
			if len(list(page["TagList"])) != 1 || page["NextToken"] == nil {
				t.Fatalf("list-tags --max-results 1: %v", page)
			}
			k.aws(t, "untag-resource", "--resource-id", id, "--tag-key-list", "env")
			if tags := list(k.aws(t, "list-tags", "--resource-id", id)["TagList"]); len(tags) != 1 {
				t.Fatalf("after untag: %v", tags)
			}
		})
	}

	// DeleteHsm removes the HSMs; then the cluster can go.
	for i, h := range hsms {
		args := []string{"delete-hsm", "--cluster-id", id, "--hsm-id", h}
		if i == 1 {
			args = []string{"delete-hsm", "--cluster-id", id, "--eni-ip", "10.0.1.20"}
		}
		if got := k.aws(t, args...)["HsmId"]; got != h {
			t.Fatalf("delete-hsm returned %v, want %s", got, h)
		}
	}
	for deadline := time.Now().Add(20 * time.Second); len(hsmIDs(cluster(t, k, id))) > 0; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("HSMs not deleted")
		}
	}
	// On SoftHSM2 the tokens are gone; an openCryptoki slot's token is
	// left initialised (kmsd erases no token it did not create a slot
	// for; scripts/opencryptoki.sh wipe-token returns it to the pool).
	slots, _ = m.p11(t, k, "--list-token-slots")
	for _, h := range hsms {
		if strings.Contains(slots, h) != (impl == pkcs11test.OpenCryptoki) {
			t.Fatalf("token %s after delete-hsm on %s:\n%s", h, impl, slots)
		}
	}
	if st := k.aws(t, "delete-cluster", "--cluster-id", id)["Cluster"].(map[string]any)["State"]; st != "DELETE_IN_PROGRESS" {
		t.Fatalf("delete-cluster state %v", st)
	}
	waitCluster(t, k, id, "DELETED")
}

// TestNoCgo builds kmsd without cgo: it runs, and reports PKCS#11 as
// unavailable when asked for a cluster.
func TestNoCgo(t *testing.T) {
	requireTools(t)
	bin := filepath.Join(filepath.Dir(kmsdBin), "kmsd-nocgo")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/kmsd/kmsd/cmd/kmsd")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("CGO_ENABLED=0 go build: %v\n%s", err, out)
	}
	k := start(t, bin)
	args := []string{"--endpoint-url", k.endpoint, "cloudhsmv2", "create-cluster", "--hsm-type", "hsm1.medium", "--subnet-ids", "subnet-0a1b2c3d4e5f60001"}
	_, errs, code := run(t, k.env, awsCLI, args...)
	if code == 0 || !strings.Contains(errs, "(CloudHsmServiceException)") || !strings.Contains(errs, "PKCS#11 is unavailable") {
		t.Fatalf("create-cluster without cgo: exit %d, %s", code, errs)
	}
}

// list reads a JSON list member; kmsd, like the generated shapes, leaves
// empty lists out.
func list(v any) []any {
	l, _ := v.([]any)
	return l
}
