package kmsctl_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmsd/kmsd/e2e/e2etest"
)

// hsmConnectDelay is how long kmsd keeps a custom key store CONNECTING
// or DISCONNECTING (KMSD_KEYSTORE_CONNECT_DELAY): long enough that a wait
// started right after connect-custom-key-store sees CONNECTING first.
const hsmConnectDelay = 3 * time.Second

// softHSMModule is the PKCS#11 module kmsd's clusters are made of.
const softHSMModule = "/usr/lib/softhsm/libsofthsm2.so"

// hsmKMSD is a kmsd with CloudHSM clusters (SoftHSM2), and the clients'
// environment for it.
type hsmKMSD struct {
	t        *testing.T
	endpoint string
	dataDir  string
	env      []string
}

// startHSMKMSD starts kmsd (as startKMSD, plus the HSM delays of
// e2e/keystore shortened) and writes its administrator's credentials as
// profile "kmsd" for both clients.
func startHSMKMSD(t *testing.T) *hsmKMSD {
	t.Helper()
	for _, p := range []string{softHSMModule} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s is missing; run scripts/test.sh (Debian package softhsm2)", p)
		}
	}
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Fatal("openssl is missing; run scripts/test.sh (Debian package openssl)")
	}
	p := e2etest.StartKMSD(t, e2etest.KMSDConfig{Bin: kmsdBin, Env: append(os.Environ(),
		"KMSD_HSM_CREATE_DELAY=100ms", "KMSD_HSM_INITIALIZE_DELAY=100ms", "KMSD_HSM_DELETE_DELAY=100ms",
		"KMSD_KEYSTORE_CONNECT_DELAY="+hsmConnectDelay.String())})
	k := &hsmKMSD{t: t, endpoint: p.Endpoint, dataDir: p.DataDir}
	home := t.TempDir()
	creds, err := os.ReadFile(filepath.Join(k.dataDir, "credentials"))
	if err != nil {
		t.Fatalf("kmsd wrote no credentials file: %v", err)
	}
	os.WriteFile(filepath.Join(home, "credentials"), creds, 0o600)
	os.WriteFile(filepath.Join(home, "config"), []byte("[profile kmsd]\n"), 0o600)
	k.env = clientEnv(home, "AWS_DEFAULT_REGION=us-east-1", "AWS_PROFILE=kmsd")
	return k
}

// run runs bin (awsBin or a kmsctl) against kmsd, output piped.
func (k *hsmKMSD) run(bin string, args ...string) result {
	return runBin(k.t.Context(), bin, k.env, append([]string{"--endpoint-url", k.endpoint}, args...)...)
}

// must runs bin with --output json, requires success and decodes stdout.
func (k *hsmKMSD) must(bin string, args ...string) map[string]any {
	k.t.Helper()
	r := k.run(bin, append([]string{"--output", "json"}, args...)...)
	if r.code != 0 {
		k.t.Fatalf("%s %s: exit %d\n%s", filepath.Base(bin), strings.Join(args, " "), r.code, r.stderr)
	}
	var v map[string]any
	if strings.TrimSpace(r.stdout) != "" {
		if err := json.Unmarshal([]byte(r.stdout), &v); err != nil {
			k.t.Fatalf("%s %s: %v\n%s", filepath.Base(bin), strings.Join(args, " "), err, r.stdout)
		}
	}
	return v
}

// hsmCLI runs a kmsctl cloudhsm-cli command and requires error_code 0.
func (k *hsmKMSD) hsmCLI(args ...string) {
	k.t.Helper()
	r := k.run(kmsctlBin, append([]string{"cloudhsm-cli"}, args...)...)
	var v struct {
		ErrorCode int `json:"error_code"`
		Data      any `json:"data"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil || v.ErrorCode != 0 {
		k.t.Fatalf("kmsctl cloudhsm-cli %s: %v rc %d\nstdout %s\nstderr %s", strings.Join(args, " "), err, r.code, r.stdout, r.stderr)
	}
}

// state is the store's ConnectionState and ConnectionErrorCode, asked with
// kmsctl (a Go binary: fast enough to see CONNECTING).
func (k *hsmKMSD) state(id string) (string, string) {
	k.t.Helper()
	v := k.must(kmsctlBin, "kms", "describe-custom-key-stores", "--custom-key-store-id", id)
	ss, _ := v["CustomKeyStores"].([]any)
	if len(ss) != 1 {
		k.t.Fatalf("describe-custom-key-stores %s: %v", id, v)
	}
	s := ss[0].(map[string]any)
	st, _ := s["ConnectionState"].(string)
	code, _ := s["ConnectionErrorCode"].(string)
	return st, code
}

// settle polls until store id leaves CONNECTING/DISCONNECTING.
func (k *hsmKMSD) settle(id string) (string, string) {
	k.t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if st, code := k.state(id); st != "CONNECTING" && st != "DISCONNECTING" {
			return st, code
		}
	}
	k.t.Fatalf("store %s stays in a transient state", id)
	return "", ""
}

func (k *hsmKMSD) waitCluster(id, state string) map[string]any {
	k.t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		cs, _ := k.must(kmsctlBin, "cloudhsmv2", "describe-clusters", "--filters", "clusterIds="+id)["Clusters"].([]any)
		if len(cs) != 1 {
			k.t.Fatalf("describe-clusters %s: %d clusters", id, len(cs))
		}
		c := cs[0].(map[string]any)
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

// activeCluster makes an ACTIVE cluster with HSMs in two Availability
// Zones, initialized with a CSR signed by a fresh openssl CA, and user
// kmsuser (password pw); it returns the cluster id and the CA
// certificate (the trust anchor). Copied from e2e/keystore, with kmsctl
// as the client.
func (k *hsmKMSD) activeCluster(dir, pw string) (id, anchor string) {
	t := k.t
	t.Helper()
	c := k.must(kmsctlBin, "cloudhsmv2", "create-cluster", "--hsm-type", "hsm2m.medium", "--subnet-ids", "subnet-0a1b2c3d4e5f60001", "subnet-0a1b2c3d4e5f60002")
	id = c["Cluster"].(map[string]any)["ClusterId"].(string)
	k.waitCluster(id, "UNINITIALIZED")
	k.must(kmsctlBin, "cloudhsmv2", "create-hsm", "--cluster-id", id, "--availability-zone", "us-east-1a")
	c = k.waitCluster(id, "UNINITIALIZED")
	csr := filepath.Join(dir, "cluster.csr")
	if err := os.WriteFile(csr, []byte(c["Certificates"].(map[string]any)["ClusterCsr"].(string)), 0o600); err != nil {
		t.Fatal(err)
	}
	caCrt, caKey := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	signed := filepath.Join(dir, "cluster.crt")
	for _, args := range [][]string{
		{"req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", caKey, "-out", caCrt, "-days", "3", "-subj", "/CN=customerCA"},
		{"x509", "-req", "-days", "3", "-in", csr, "-CA", caCrt, "-CAkey", caKey, "-CAcreateserial", "-out", signed},
	} {
		if out, err := exec.Command("openssl", args...).CombinedOutput(); err != nil {
			t.Fatalf("openssl %v: %v\n%s", args, err, out)
		}
	}
	k.must(kmsctlBin, "cloudhsmv2", "initialize-cluster", "--cluster-id", id, "--signed-cert", "file://"+signed, "--trust-anchor", "file://"+caCrt)
	k.waitCluster(id, "INITIALIZED")
	k.hsmCLI("cluster", "activate", "--cluster-id", id, "--password", "adminPswd1")
	k.waitCluster(id, "ACTIVE")
	k.must(kmsctlBin, "cloudhsmv2", "create-hsm", "--cluster-id", id, "--availability-zone", "us-east-1b")
	k.waitCluster(id, "ACTIVE")
	k.hsmCLI("user", "create", "--cluster-id", id, "--username", "kmsuser", "--role", "crypto-user", "--password", pw)
	return id, caCrt
}

// runTTY runs bin as run does but with stderr a pseudo-terminal, and
// returns what was written to it (the pty's line discipline turns \n
// into \r\n).
func (k *hsmKMSD) runTTY(bin string, args ...string) (result, string) {
	k.t.Helper()
	ptm, err := os.OpenFile("/dev/ptmx", os.O_RDWR, 0)
	if err != nil {
		k.t.Fatal(err)
	}
	defer ptm.Close()
	if err := unix.IoctlSetPointerInt(int(ptm.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		k.t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(ptm.Fd()), unix.TIOCGPTN)
	if err != nil {
		k.t.Fatal(err)
	}
	pts, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		k.t.Fatal(err)
	}
	cmd := exec.CommandContext(k.t.Context(), bin, append([]string{"--endpoint-url", k.endpoint}, args...)...)
	cmd.Env = k.env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, pts
	var tty bytes.Buffer
	done := make(chan struct{})
	go func() { io.Copy(&tty, ptm); close(done) }()
	err = cmd.Run()
	pts.Close()
	// The master reads EIO once the last slave is closed and drained.
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		k.t.Fatal("pty not drained")
	}
	r := result{stdout: out.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		k.t.Fatal(err)
	}
	return r, tty.String()
}

// sameAs requires two runs to print the same bytes and exit alike; aws's
// stderr has its own name replaced by kmsctl's.
func sameAs(t *testing.T, name string, a, c result) {
	t.Helper()
	a.stderr = asKmsctl(a.stderr)
	if a.code != c.code || a.stdout != c.stdout || a.stderr != c.stderr {
		t.Errorf("%s\n  aws    rc=%d stdout=%q stderr=%q\n  kmsctl rc=%d stdout=%q stderr=%q", name, a.code, a.stdout, a.stderr, c.code, c.stdout, c.stderr)
	}
}

// TestWaitCustomKeyStore drives `kmsctl kms wait custom-key-store-connected`
// and `custom-key-store-disconnected` against a real kmsd with a SoftHSM2
// cluster: connect/disconnect print what the aws CLI v2 prints, a wait
// returns exactly when the state is reached (and silently when piped), a
// store that goes FAILED ends the wait with 255 and its
// ConnectionErrorCode, and describe-custom-key-stores prints the aws CLI's
// bytes in every state and format.
func TestWaitCustomKeyStore(t *testing.T) {
	requireOracle(t)
	begin := time.Now()
	k := startHSMKMSD(t)
	dir := t.TempDir()
	cluster, anchor := k.activeCluster(dir, "kmsPswd1")
	id := k.must(kmsctlBin, "kms", "create-custom-key-store", "--custom-key-store-name", "ks-wait", "--cloud-hsm-cluster-id", cluster,
		"--trust-anchor-certificate", "file://"+anchor, "--key-store-password", "kmsPswd1")["CustomKeyStoreId"].(string)
	t.Logf("cluster %s and store %s ready after %v", cluster, id, time.Since(begin).Round(time.Millisecond))

	// describe-custom-key-stores, byte for byte, in every format; the
	// trust anchor is a multi-line PEM, a test of text and table cells.
	describe := func(when string) {
		t.Helper()
		var wg sync.WaitGroup
		cases := [][]string{
			{"--output", "json"},
			{"--output", "text"},
			{"--output", "table"},
			{"--output", "text", "--custom-key-store-name", "ks-wait"},
			{"--output", "table", "--custom-key-store-id", id},
			{"--output", "text", "--query", "CustomKeyStores[].[CustomKeyStoreId,ConnectionState,ConnectionErrorCode]"},
			{"--output", "json", "--query", "CustomKeyStores[?ConnectionState!='CONNECTED'].{id:CustomKeyStoreId,s:ConnectionState,e:ConnectionErrorCode}"},
			{"--output", "table", "--query", "CustomKeyStores[0].[CustomKeyStoreName,CloudHsmClusterId,ConnectionState]"},
		}
		res := make([][2]result, len(cases))
		for i, c := range cases {
			wg.Add(1)
			go func() {
				defer wg.Done()
				args := append([]string{"kms", "describe-custom-key-stores"}, c...)
				res[i] = [2]result{k.run(awsBin, args...), k.run(kmsctlOracle, args...)}
			}()
		}
		wg.Wait()
		for i, c := range cases {
			if res[i][0].code != 0 {
				t.Errorf("%s: aws %v: rc %d %s", when, c, res[i][0].code, res[i][0].stderr)
			}
			sameAs(t, when+": describe-custom-key-stores "+strings.Join(c, " "), res[i][0], res[i][1])
		}
	}
	describe("DISCONNECTED")

	// (1)+(2) kmsctl connects (silently, like aws), and the wait, piped,
	// returns 0 only once the store is CONNECTED, printing nothing.
	t0 := time.Now()
	conn := k.run(kmsctlBin, "kms", "connect-custom-key-store", "--custom-key-store-id", id)
	if conn.code != 0 || conn.stdout != "" || conn.stderr != "" {
		t.Fatalf("kmsctl connect-custom-key-store: rc %d stdout %q stderr %q", conn.code, conn.stdout, conn.stderr)
	}
	if st, _ := k.state(id); st != "CONNECTING" {
		t.Fatalf("right after connect (%v): %s, want CONNECTING (KMSD_KEYSTORE_CONNECT_DELAY %v)", time.Since(t0), st, hsmConnectDelay)
	}
	w := k.run(kmsctlBin, "kms", "wait", "custom-key-store-connected", "--custom-key-store-id", id)
	took := time.Since(t0)
	if w.code != 0 || w.stdout != "" || w.stderr != "" {
		t.Fatalf("wait custom-key-store-connected: rc %d stdout %q stderr %q", w.code, w.stdout, w.stderr)
	}
	if st, code := k.state(id); st != "CONNECTED" || code != "" {
		t.Fatalf("right after wait custom-key-store-connected returned (%v after connect): %s %q", took, st, code)
	}
	if took < hsmConnectDelay {
		t.Fatalf("wait returned %v after connect, before the store could connect (%v)", took, hsmConnectDelay)
	}
	t.Logf("wait custom-key-store-connected returned %v after connect", took.Round(time.Millisecond))
	describe("CONNECTED")
	// Already in the state: at once, and the --custom-key-store-id=ID form.
	t1 := time.Now()
	if w := k.run(kmsctlBin, "kms", "wait", "custom-key-store-connected", "--custom-key-store-id="+id); w.code != 0 || w.stdout != "" || w.stderr != "" {
		t.Errorf("wait custom-key-store-connected --custom-key-store-id=ID on a CONNECTED store: rc %d stdout %q stderr %q", w.code, w.stdout, w.stderr)
	} else if d := time.Since(t1); d > 4*time.Second {
		t.Errorf("wait on a store already CONNECTED took %v", d)
	}

	// (3) kmsctl disconnects silently; the wait returns once DISCONNECTED.
	disc := k.run(kmsctlBin, "kms", "disconnect-custom-key-store", "--custom-key-store-id", id)
	if disc.code != 0 || disc.stdout != "" || disc.stderr != "" {
		t.Fatalf("kmsctl disconnect-custom-key-store: rc %d stdout %q stderr %q", disc.code, disc.stdout, disc.stderr)
	}
	t0 = time.Now()
	if st, _ := k.state(id); st != "DISCONNECTING" {
		t.Errorf("right after disconnect: %s, want DISCONNECTING", st)
	}
	w = k.run(kmsctlBin, "kms", "wait", "custom-key-store-disconnected", "--custom-key-store-id", id)
	if w.code != 0 || w.stdout != "" || w.stderr != "" {
		t.Fatalf("wait custom-key-store-disconnected: rc %d stdout %q stderr %q", w.code, w.stdout, w.stderr)
	}
	if st, code := k.state(id); st != "DISCONNECTED" || code != "" {
		t.Fatalf("right after wait custom-key-store-disconnected returned (%v): %s %q", time.Since(t0), st, code)
	}

	// (1) The aws CLI on the same store in the same states prints the same
	// bytes with the same exit code as kmsctl did.
	sameAs(t, "connect-custom-key-store", k.run(awsBin, "kms", "connect-custom-key-store", "--custom-key-store-id", id), conn)
	// On a terminal (stderr a pty, stdout piped) the wait shows its
	// progress on stderr (CONNECTING first unless the slow aws CLI took
	// longer than the connect delay), and still nothing on stdout.
	if w, progress := k.runTTY(kmsctlBin, "kms", "wait", "custom-key-store-connected", "--custom-key-store-id", id); w.code != 0 || w.stdout != "" ||
		!regexp.MustCompile(`^(\r\x1b\[K`+id+`: CONNECTING \(\d+s\))*\r\x1b\[K`+id+`: CONNECTED \(\d+s\)\r\n$`).MatchString(progress) {
		t.Errorf("wait custom-key-store-connected, stderr a terminal: rc %d stdout %q stderr %q", w.code, w.stdout, progress)
	} else {
		t.Logf("progress on a terminal: %q", progress)
	}
	if st, _ := k.state(id); st != "CONNECTED" {
		t.Fatalf("after aws connect and wait: %s", st)
	}
	// Both, twice, on a CONNECTED store (a no-op): still the same.
	sameAs(t, "connect-custom-key-store (CONNECTED)",
		k.run(awsBin, "kms", "connect-custom-key-store", "--custom-key-store-id", id),
		k.run(kmsctlBin, "kms", "connect-custom-key-store", "--custom-key-store-id", id))
	sameAs(t, "disconnect-custom-key-store", k.run(awsBin, "kms", "disconnect-custom-key-store", "--custom-key-store-id", id), disc)
	if st, _ := k.settle(id); st != "DISCONNECTED" {
		t.Fatalf("after aws disconnect: %s", st)
	}
	// Already DISCONNECTED: the waiter returns at once.
	if w := k.run(kmsctlBin, "kms", "wait", "custom-key-store-disconnected", "--custom-key-store-id", id); w.code != 0 || w.stdout != "" || w.stderr != "" {
		t.Errorf("wait custom-key-store-disconnected on a DISCONNECTED store: rc %d stdout %q stderr %q", w.code, w.stdout, w.stderr)
	}
	// Errors of the operations themselves: same bytes.
	sameAs(t, "disconnect-custom-key-store (DISCONNECTED)",
		k.run(awsBin, "kms", "disconnect-custom-key-store", "--custom-key-store-id", id),
		k.run(kmsctlBin, "kms", "disconnect-custom-key-store", "--custom-key-store-id", id))
	sameAs(t, "connect-custom-key-store (no such store)",
		k.run(awsBin, "kms", "connect-custom-key-store", "--custom-key-store-id", "cks-1234567890abcdef0"),
		k.run(kmsctlBin, "kms", "connect-custom-key-store", "--custom-key-store-id", "cks-1234567890abcdef0"))

	// (4) FAILED: the wait ends with 255 and the ConnectionErrorCode.
	// live: the wait starts while the store is CONNECTING and sees it go
	// FAILED; otherwise it starts on a store already FAILED.
	failed := func(code string, live bool) {
		t.Helper()
		if r := k.run(kmsctlBin, "kms", "connect-custom-key-store", "--custom-key-store-id", id); r.code != 0 || r.stdout != "" || r.stderr != "" {
			t.Fatalf("kmsctl connect-custom-key-store: rc %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
		}
		if !live {
			k.settle(id)
		}
		t0 := time.Now()
		w := k.run(kmsctlBin, "kms", "wait", "custom-key-store-connected", "--custom-key-store-id", id)
		t.Logf("wait on a store going FAILED (%s): rc %d after %v, stderr %q", code, w.code, time.Since(t0).Round(time.Millisecond), w.stderr)
		if w.code != 255 || w.stdout != "" || !strings.Contains(w.stderr, "ConnectionState FAILED") || !strings.Contains(w.stderr, "ConnectionErrorCode "+code) {
			t.Errorf("wait custom-key-store-connected on a store going FAILED with %s: rc %d stdout %q stderr %q", code, w.code, w.stdout, w.stderr)
		}
		if st, got := k.state(id); st != "FAILED" || got != code {
			t.Errorf("after the wait: %s %q, want FAILED %s", st, got, code)
		}
		if live {
			describe("FAILED " + code)
		}
		// A second wait on the FAILED store fails at once, alike.
		if w2 := k.run(kmsctlBin, "kms", "wait", "custom-key-store-connected", "--custom-key-store-id", id); w2.code != w.code || w2.stderr != w.stderr {
			t.Errorf("second wait on a FAILED store: rc %d stderr %q, want rc %d stderr %q", w2.code, w2.stderr, w.code, w.stderr)
		}
		if r := k.run(kmsctlBin, "kms", "disconnect-custom-key-store", "--custom-key-store-id", id); r.code != 0 {
			t.Fatalf("disconnect a FAILED store: rc %d %s", r.code, r.stderr)
		}
		k.settle(id)
		if w := k.run(kmsctlBin, "kms", "wait", "custom-key-store-disconnected", "--custom-key-store-id", id); w.code != 0 || w.stdout != "" || w.stderr != "" {
			t.Fatalf("wait custom-key-store-disconnected after FAILED: rc %d stdout %q stderr %q", w.code, w.stdout, w.stderr)
		}
	}
	// INVALID_CREDENTIALS: kmsuser's password (which kmsd rotated at
	// connect) changed behind kmsd's back.
	k.hsmCLI("user", "change-password", "--cluster-id", cluster, "--username", "kmsuser", "--role", "crypto-user", "--password", "kmsPswd2")
	failed("INVALID_CREDENTIALS", false)
	// USER_LOGGED_IN: kmsd is told the new password, but kmsuser is
	// logged in with the CLI.
	k.must(kmsctlBin, "kms", "update-custom-key-store", "--custom-key-store-id", id, "--key-store-password", "kmsPswd2")
	k.hsmCLI("login", "--cluster-id", cluster, "--username", "kmsuser", "--role", "crypto-user", "--password", "kmsPswd2")
	failed("USER_LOGGED_IN", true)
	k.hsmCLI("logout", "--cluster-id", cluster, "--username", "kmsuser", "--role", "crypto-user")

	// Usage errors of the waiter itself (no aws counterpart: KMS has no
	// waiters in the aws CLI): rc 252, the usage on stderr as aws prints
	// it for its own usage errors.
	for _, args := range [][]string{
		{"kms", "wait"},
		{"kms", "wait", "key-enabled", "--custom-key-store-id", id},
		{"kms", "wait", "custom-key-store-connected"},
		{"kms", "wait", "custom-key-store-connected", "--custom-key-store-id", id, "--bogus"},
	} {
		if r := k.run(kmsctlBin, args...); r.code != 252 || r.stdout != "" || !strings.Contains(r.stderr, "usage: kmsctl [options]") {
			t.Errorf("kmsctl %s: rc %d stdout %q stderr %q", strings.Join(args, " "), r.code, r.stdout, r.stderr)
		}
	}
	t.Logf("total %v", time.Since(begin).Round(time.Millisecond))
}
