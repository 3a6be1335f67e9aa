// Package keystore holds the end-to-end tests of CloudHSM key stores: the
// real kmsd binary with SoftHSM2 clusters, driven by the aws CLI v2 (kms and
// cloudhsmv2), kmsctl's cloudhsm-cli commands, openssl (the customer's CA)
// and pkcs11-tool (proof that kmsuser's password really changed).
package keystore

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

// requireTools fails (never skips) when a tool is missing: scripts/test.sh
// installs them.
func requireTools(t *testing.T) {
	t.Helper()
	for _, p := range []string{awsCLI, module} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s is missing; run scripts/test.sh (Debian packages awscli, softhsm2)", p)
		}
	}
	for _, tool := range []string{"openssl", "pkcs11-tool"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing; run scripts/test.sh (Debian packages openssl, opensc)", tool)
		}
	}
}

type kmsd struct {
	t                        *testing.T
	dataDir, endpoint, creds string
	env                      []string
	stop                     func()
	proc                     *os.Process
	extraEnv                 []string // kmsd's environment beyond the defaults (later values win)
}

func start(t *testing.T) *kmsd {
	t.Helper()
	return startAt(t, filepath.Join(t.TempDir(), "data"))
}

// restart stops kmsd and starts it again on the same data directory.
func (k *kmsd) restart() {
	k.t.Helper()
	k.stop()
	*k = *startAt(k.t, k.dataDir, k.extraEnv...)
}

func startAt(t *testing.T, dataDir string, extraEnv ...string) *kmsd {
	t.Helper()
	env := append(os.Environ(), "KMSD_HSM_CREATE_DELAY=100ms", "KMSD_HSM_INITIALIZE_DELAY=100ms", "KMSD_HSM_DELETE_DELAY=100ms",
		"KMSD_KEYSTORE_CONNECT_DELAY=300ms")
	p := e2etest.StartKMSD(t, e2etest.KMSDConfig{Bin: kmsdBin, DataDir: dataDir, Env: append(env, extraEnv...)})
	return &kmsd{t: t, dataDir: p.DataDir, endpoint: p.Endpoint, creds: p.Creds, env: p.CLIEnv(region),
		stop: p.Stop, proc: p.Cmd.Process, extraEnv: extraEnv}
}

func run(t *testing.T, env []string, name string, args ...string) (string, string, int) {
	t.Helper()
	return runStdin(t, env, "", name, args...)
}

// runStdin is run with stdin as the command's standard input (not a
// terminal).
func runStdin(t *testing.T, env []string, stdin, name string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = env
	cmd.Stdin = strings.NewReader(stdin)
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

// aws runs the aws CLI v2 (service and operation in args) and decodes its
// JSON output.
func (k *kmsd) aws(args ...string) map[string]any {
	k.t.Helper()
	args = append([]string{"--endpoint-url", k.endpoint, "--output", "json"}, args...)
	out, errs, code := run(k.t, k.env, awsCLI, args...)
	if code != 0 {
		k.t.Fatalf("aws %s: exit %d\n%s", strings.Join(args, " "), code, errs)
	}
	var v map[string]any
	if strings.TrimSpace(out) == "" {
		return v
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		k.t.Fatalf("aws %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return v
}

// awsFails checks the aws CLI fails with exception code.
func (k *kmsd) awsFails(code string, args ...string) {
	k.t.Helper()
	args = append([]string{"--endpoint-url", k.endpoint, "--output", "json"}, args...)
	_, errs, rc := run(k.t, k.env, awsCLI, args...)
	if rc == 0 || !strings.Contains(errs, "("+code+")") {
		k.t.Fatalf("aws %s: exit %d, stderr %q; want %s", strings.Join(args, " "), rc, errs, code)
	}
}

// cli runs a kmsctl cloudhsm-cli command and checks its outcome.
func (k *kmsd) cli(ok bool, args ...string) {
	k.t.Helper()
	k.cliStdin(ok, "", args...)
}

// cliStdin is cli with stdin as kmsctl's standard input, which is where it
// reads a password that --password leaves out.
func (k *kmsd) cliStdin(ok bool, stdin string, args ...string) {
	k.t.Helper()
	args = append([]string{"--endpoint-url", k.endpoint, "cloudhsm-cli"}, args...)
	out, errs, _ := runStdin(k.t, k.env, stdin, kmsctlBin, args...)
	var v struct {
		ErrorCode int `json:"error_code"`
		Data      any `json:"data"`
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		k.t.Fatalf("kmsctl %s: %v\nstdout %s\nstderr %s", strings.Join(args, " "), err, out, errs)
	}
	if (v.ErrorCode == 0) != ok {
		k.t.Fatalf("kmsctl cloudhsm-cli %s: %d %v", strings.Join(args, " "), v.ErrorCode, v.Data)
	}
}

// userLogin reports whether kmsuser logs in to HSM token with pin, asked
// of the token itself through pkcs11-tool.
func (k *kmsd) userLogin(token, pin string) bool {
	env := append(os.Environ(), "SOFTHSM2_CONF="+filepath.Join(k.dataDir, "hsm", "softhsm2.conf"))
	_, _, code := run(k.t, env, "pkcs11-tool", "--module", module, "--token-label", token, "--login", "--pin", pin, "--list-objects")
	return code == 0
}

func (k *kmsd) cluster(id string) map[string]any {
	k.t.Helper()
	cs, _ := k.aws("cloudhsmv2", "describe-clusters", "--filters", "clusterIds="+id)["Clusters"].([]any)
	if len(cs) != 1 {
		k.t.Fatalf("describe-clusters %s: %d clusters", id, len(cs))
	}
	return cs[0].(map[string]any)
}

// waitCluster polls until the cluster is in state with every HSM ACTIVE.
func (k *kmsd) waitCluster(id, state string) map[string]any {
	k.t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		c := k.cluster(id)
		ready := c["State"] == state
		hs, _ := c["Hsms"].([]any)
		for _, h := range hs {
			if h.(map[string]any)["State"] != "ACTIVE" {
				ready = false
			}
		}
		if ready {
			return c
		}
	}
	k.t.Fatalf("cluster %s never reached %s", id, state)
	return nil
}

// ca makes a self-signed CA with openssl in dir.
func ca(t *testing.T, dir, name string) (crt, key string) {
	t.Helper()
	crt, key = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	if out, errs, code := run(t, os.Environ(), "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", crt,
		"-days", "3", "-subj", "/CN="+name); code != 0 {
		t.Fatalf("openssl req: %s %s", out, errs)
	}
	return crt, key
}

// activeCluster makes an ACTIVE cluster with one HSM in us-east-1a,
// initialized with a CSR signed by a fresh CA; it returns the cluster id
// and the CA certificate (the trust anchor).
func (k *kmsd) activeCluster(dir string) (id, anchor string) {
	t := k.t
	t.Helper()
	c := k.aws("cloudhsmv2", "create-cluster", "--hsm-type", "hsm2m.medium", "--subnet-ids", "subnet-0a1b2c3d4e5f60001", "subnet-0a1b2c3d4e5f60002")
	id = c["Cluster"].(map[string]any)["ClusterId"].(string)
	k.waitCluster(id, "UNINITIALIZED")
	k.aws("cloudhsmv2", "create-hsm", "--cluster-id", id, "--availability-zone", "us-east-1a")
	c = k.waitCluster(id, "UNINITIALIZED")
	csr := filepath.Join(dir, "cluster.csr")
	if err := os.WriteFile(csr, []byte(c["Certificates"].(map[string]any)["ClusterCsr"].(string)), 0o600); err != nil {
		t.Fatal(err)
	}
	caCrt, caKey := ca(t, dir, "customerCA")
	signed := filepath.Join(dir, "cluster.crt")
	if o, e, code := run(t, os.Environ(), "openssl", "x509", "-req", "-days", "3", "-in", csr, "-CA", caCrt, "-CAkey", caKey,
		"-CAcreateserial", "-out", signed); code != 0 {
		t.Fatalf("openssl x509 -req: %s %s", o, e)
	}
	k.aws("cloudhsmv2", "initialize-cluster", "--cluster-id", id, "--signed-cert", "file://"+signed, "--trust-anchor", "file://"+caCrt)
	k.waitCluster(id, "INITIALIZED")
	k.cli(true, "cluster", "activate", "--cluster-id", id, "--password", "adminPswd1")
	k.waitCluster(id, "ACTIVE")
	return id, caCrt
}

// store returns the DescribeCustomKeyStores entry of store id.
func (k *kmsd) store(id string) map[string]any {
	k.t.Helper()
	ss, _ := k.aws("kms", "describe-custom-key-stores", "--custom-key-store-id", id)["CustomKeyStores"].([]any)
	if len(ss) != 1 {
		k.t.Fatalf("describe-custom-key-stores %s: %d stores", id, len(ss))
	}
	return ss[0].(map[string]any)
}

// waitStore polls until store id leaves the transient states and checks
// it is then in state with error code ("" for none).
func (k *kmsd) waitStore(id, state, code string) map[string]any {
	k.t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		s := k.store(id)
		if cs := s["ConnectionState"]; cs == "CONNECTING" || cs == "DISCONNECTING" {
			continue
		}
		got, _ := s["ConnectionErrorCode"].(string)
		if s["ConnectionState"] != state || got != code {
			k.t.Fatalf("store %s: %v %q, want %s %q", id, s["ConnectionState"], got, state, code)
		}
		return s
	}
	k.t.Fatalf("store %s stays in a transient state", id)
	return nil
}

func TestCloudHSMKeyStore(t *testing.T) {
	requireTools(t)
	k := start(t)
	dir := t.TempDir()
	clusterID, anchor := k.activeCluster(dir)
	create := func(name, cluster, anchor, pw string) []string {
		return []string{"kms", "create-custom-key-store", "--custom-key-store-name", name, "--cloud-hsm-cluster-id", cluster,
			"--trust-anchor-certificate", "file://" + anchor, "--key-store-password", pw}
	}

	// Create: the cluster's checks, in the order of spec §5.1.
	k.awsFails("CloudHsmClusterNotFoundException", create("ks", "cluster-abcdefghijk", anchor, "kmsPswd1")...)
	uninit := k.aws("cloudhsmv2", "create-cluster", "--hsm-type", "hsm2m.medium", "--subnet-ids", "subnet-0a1b2c3d4e5f60003")["Cluster"].(map[string]any)["ClusterId"].(string)
	k.waitCluster(uninit, "UNINITIALIZED")
	k.awsFails("CloudHsmClusterNotActiveException", create("ks", uninit, anchor, "kmsPswd1")...)
	// One active HSM: not enough (two Availability Zones needed).
	k.awsFails("CloudHsmClusterInvalidConfigurationException", create("ks", clusterID, anchor, "kmsPswd1")...)
	k.aws("cloudhsmv2", "create-hsm", "--cluster-id", clusterID, "--availability-zone", "us-east-1b")
	c := k.waitCluster(clusterID, "ACTIVE")
	var tokens []string
	for _, h := range c["Hsms"].([]any) {
		tokens = append(tokens, h.(map[string]any)["HsmId"].(string))
	}
	if len(tokens) != 2 {
		t.Fatalf("HSMs %v", tokens)
	}
	k.cli(true, "user", "create", "--cluster-id", clusterID, "--username", "kmsuser", "--role", "crypto-user", "--password", "kmsPswd1")
	otherCA, _ := ca(t, dir, "otherCA")
	k.awsFails("IncorrectTrustAnchorException", create("ks", clusterID, otherCA, "kmsPswd1")...)
	k.awsFails("ValidationException", create("ks", clusterID, anchor, strings.Repeat("p", 33))...)

	id := k.aws(create("ks", clusterID, anchor, "kmsPswd1")...)["CustomKeyStoreId"].(string)
	if len(id) != 21 || !strings.HasPrefix(id, "cks-") {
		t.Fatalf("custom key store id %q", id)
	}
	if again := k.aws(create("ks", clusterID, anchor, "kmsPswd1")...)["CustomKeyStoreId"]; again != id {
		t.Fatalf("identical create: %v, want %s", again, id)
	}
	k.awsFails("CustomKeyStoreNameInUseException", create("ks", clusterID, anchor, "kmsPswd9")...)
	k.awsFails("CloudHsmClusterInUseException", create("ks2", clusterID, anchor, "kmsPswd1")...)

	s := k.store(id)
	for m, want := range map[string]any{"CustomKeyStoreName": "ks", "CustomKeyStoreType": "AWS_CLOUDHSM", "CloudHsmClusterId": clusterID,
		"ConnectionState": "DISCONNECTED"} {
		if s[m] != want {
			t.Fatalf("describe %s = %v, want %v (%v)", m, s[m], want, s)
		}
	}
	if s["CreationDate"] == nil || !strings.Contains(fmt.Sprint(s["TrustAnchorCertificate"]), "BEGIN CERTIFICATE") || s["ConnectionErrorCode"] != nil {
		t.Fatalf("describe: %v", s)
	}
	if ss := k.aws("kms", "describe-custom-key-stores", "--custom-key-store-name", "ks")["CustomKeyStores"].([]any); len(ss) != 1 {
		t.Fatalf("describe by name: %v", ss)
	}
	k.awsFails("CustomKeyStoreNotFoundException", "kms", "describe-custom-key-stores", "--custom-key-store-name", "nope")
	k.awsFails("CustomKeyStoreInvalidStateException", "kms", "disconnect-custom-key-store", "--custom-key-store-id", id)

	// USER_LOGGED_IN: someone is logged in as kmsuser with the CLI, the
	// password read from standard input rather than given as an argument
	// (where other users see it); a wrong one is refused.
	k.cliStdin(false, "wrongPw1\n", "login", "--cluster-id", clusterID, "--username", "kmsuser", "--role", "crypto-user")
	k.cliStdin(true, "kmsPswd1\n", "login", "--cluster-id", clusterID, "--username", "kmsuser", "--role", "crypto-user")
	k.aws("kms", "connect-custom-key-store", "--custom-key-store-id", id)
	k.waitStore(id, "FAILED", "USER_LOGGED_IN")
	k.awsFails("CustomKeyStoreInvalidStateException", "kms", "connect-custom-key-store", "--custom-key-store-id", id)
	k.cli(true, "logout", "--cluster-id", clusterID, "--username", "kmsuser", "--role", "crypto-user")
	k.aws("kms", "disconnect-custom-key-store", "--custom-key-store-id", id)
	k.waitStore(id, "DISCONNECTED", "")

	// Connect: CONNECTING, then CONNECTED, and kmsuser's password is no
	// longer the one the customer gave.
	k.aws("kms", "connect-custom-key-store", "--custom-key-store-id", id)
	if st := k.store(id)["ConnectionState"]; st != "CONNECTING" && st != "CONNECTED" {
		t.Fatalf("right after connect: %v", st)
	}
	k.waitStore(id, "CONNECTED", "")
	k.aws("kms", "connect-custom-key-store", "--custom-key-store-id", id) // no-op
	for _, tok := range tokens {
		if k.userLogin(tok, "kmsPswd1") {
			t.Fatalf("kmsuser still logs in to %s with the password given at create", tok)
		}
	}
	k.awsFails("CustomKeyStoreInvalidStateException", "kms", "update-custom-key-store", "--custom-key-store-id", id, "--key-store-password", "kmsPswd2")
	k.awsFails("CustomKeyStoreInvalidStateException", "kms", "delete-custom-key-store", "--custom-key-store-id", id)
	k.aws("kms", "update-custom-key-store", "--custom-key-store-id", id, "--new-custom-key-store-name", "ks-renamed")
	if n := k.store(id)["CustomKeyStoreName"]; n != "ks-renamed" {
		t.Fatalf("name after update: %v", n)
	}
	k.aws("kms", "disconnect-custom-key-store", "--custom-key-store-id", id)
	k.waitStore(id, "DISCONNECTED", "")

	// INVALID_CREDENTIALS: the admin changes kmsuser's password behind
	// kmsd's back; telling kmsd the new one mends it.
	k.cli(true, "user", "change-password", "--cluster-id", clusterID, "--username", "kmsuser", "--role", "crypto-user", "--password", "kmsPswd2")
	k.aws("kms", "connect-custom-key-store", "--custom-key-store-id", id)
	k.waitStore(id, "FAILED", "INVALID_CREDENTIALS")
	k.awsFails("CustomKeyStoreInvalidStateException", "kms", "update-custom-key-store", "--custom-key-store-id", id, "--key-store-password", "kmsPswd2")
	k.aws("kms", "disconnect-custom-key-store", "--custom-key-store-id", id)
	k.waitStore(id, "DISCONNECTED", "")
	k.aws("kms", "update-custom-key-store", "--custom-key-store-id", id, "--key-store-password", "kmsPswd2")

	// Delete: gone, and the cluster can back a new store.
	k.aws("kms", "delete-custom-key-store", "--custom-key-store-id", id)
	k.awsFails("CustomKeyStoreNotFoundException", "kms", "describe-custom-key-stores", "--custom-key-store-id", id)
	k.awsFails("CustomKeyStoreNotFoundException", "kms", "connect-custom-key-store", "--custom-key-store-id", id)
	if ss, _ := k.aws("kms", "describe-custom-key-stores")["CustomKeyStores"].([]any); len(ss) != 0 {
		t.Fatalf("stores after delete: %v", ss)
	}
	id = k.aws(create("ks", clusterID, anchor, "kmsPswd2")...)["CustomKeyStoreId"].(string)
	k.awsFails("CustomKeyStoreInvalidStateException", "kms", "create-key", "--origin", "AWS_CLOUDHSM", "--custom-key-store-id", id)
	k.aws("kms", "connect-custom-key-store", "--custom-key-store-id", id)
	k.waitStore(id, "CONNECTED", "")
	if k.userLogin(tokens[0], "kmsPswd2") {
		t.Fatal("kmsuser's password was not rotated at the second connect")
	}

	// A key in the store: its material is in the cluster, labelled with
	// its ARN, and the cryptography happens there.
	md := k.aws("kms", "create-key", "--origin", "AWS_CLOUDHSM", "--custom-key-store-id", id, "--description", "in the HSM")["KeyMetadata"].(map[string]any)
	for m, want := range map[string]any{"Origin": "AWS_CLOUDHSM", "CustomKeyStoreId": id, "CloudHsmClusterId": clusterID, "KeyState": "Enabled"} {
		if md[m] != want {
			t.Fatalf("create-key %s = %v, want %v", m, md[m], want)
		}
	}
	arn := md["Arn"].(string)
	ct := k.aws("kms", "encrypt", "--key-id", arn, "--plaintext", "aGVsbG8gSFNN", "--encryption-context", "a=b")["CiphertextBlob"].(string)
	if pt := k.aws("kms", "decrypt", "--ciphertext-blob", ct, "--encryption-context", "a=b")["Plaintext"]; pt != "aGVsbG8gSFNN" {
		t.Fatalf("decrypt: %v", pt)
	}
	k.awsFails("InvalidCiphertextException", "kms", "decrypt", "--ciphertext-blob", ct, "--encryption-context", "a=c")
	if n := len(k.aws("kms", "generate-random", "--number-of-bytes", "32", "--custom-key-store-id", id)["Plaintext"].(string)); n != 44 {
		t.Fatalf("generate-random in the store: %d base64 characters", n)
	}

	// Disconnected: the key is Unavailable and unusable, and blocks the
	// store's deletion even when scheduled for deletion.
	k.aws("kms", "disconnect-custom-key-store", "--custom-key-store-id", id)
	k.waitStore(id, "DISCONNECTED", "")
	if md := k.aws("kms", "describe-key", "--key-id", arn)["KeyMetadata"].(map[string]any); md["KeyState"] != "Unavailable" || md["Enabled"] != false {
		t.Fatalf("key of a disconnected store: %v %v", md["KeyState"], md["Enabled"])
	}
	k.awsFails("KMSInvalidStateException", "kms", "encrypt", "--key-id", arn, "--plaintext", "aGVsbG8=")
	k.awsFails("KMSInvalidStateException", "kms", "decrypt", "--ciphertext-blob", ct, "--encryption-context", "a=b")
	k.awsFails("CustomKeyStoreInvalidStateException", "kms", "generate-random", "--number-of-bytes", "8", "--custom-key-store-id", id)
	k.aws("kms", "disable-key", "--key-id", arn)
	k.aws("kms", "connect-custom-key-store", "--custom-key-store-id", id)
	k.waitStore(id, "CONNECTED", "")
	if md := k.aws("kms", "describe-key", "--key-id", arn)["KeyMetadata"].(map[string]any); md["KeyState"] != "Disabled" {
		t.Fatalf("key after reconnect: %v", md["KeyState"])
	}
	k.aws("kms", "enable-key", "--key-id", arn)
	// A CONNECTED store reconnects when kmsd starts again.
	k.restart()
	k.waitStore(id, "CONNECTED", "")
	if pt := k.aws("kms", "decrypt", "--ciphertext-blob", ct, "--encryption-context", "a=b")["Plaintext"]; pt != "aGVsbG8gSFNN" {
		t.Fatalf("decrypt after reconnect and restart: %v", pt)
	}
	k.aws("kms", "disconnect-custom-key-store", "--custom-key-store-id", id)
	k.waitStore(id, "DISCONNECTED", "")
	k.aws("kms", "schedule-key-deletion", "--key-id", arn, "--pending-window-in-days", "7")
	k.awsFails("CustomKeyStoreHasCMKsException", "kms", "delete-custom-key-store", "--custom-key-store-id", id)
}
