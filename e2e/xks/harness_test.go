// Package xks holds the end-to-end tests of external key stores: the real
// kmsd binary (started with --xks-ca-bundle and --xks-vpc-endpoint-services)
// talking HTTPS to the real xks-proxy (development CA from `xks-proxy
// dev-cert`, keys in a software key file or a SoftHSM2 token), driven by
// the aws CLI v2, boto3 and aws-sdk-go-v2. Proxies that misbehave in ways xks-proxy never does (an
// answer that is not JSON, a slow answer, a dropped connection) are HTTPS
// servers of the test itself (servers_test.go).
package xks

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/kmsd/kmsd/e2e/e2etest"
)

const (
	awsCLI = "/usr/bin/aws" // Debian's aws CLI v2
	region = "us-east-1"
	akid   = "AKIDAAAAAAAAAAAAAAAAAAAA"
	secret = "PleaseReplaceThisWithSomeSecretOfLength43To64"
	pass   = "e2e key file passphrase"
)

var kmsdBin, proxyBin, kmsctlBin, encloadBin string

func TestMain(m *testing.M) {
	e2etest.Main(m, map[string]*string{"kmsd": &kmsdBin, "xks-proxy": &proxyBin, "kmsctl": &kmsctlBin,
		"e2e/e2etest/encload": &encloadBin})
}

// proxyRun runs an xks-proxy subcommand to completion.
func proxyRun(t *testing.T, args ...string) {
	t.Helper()
	cmd := exec.Command(proxyBin, args...)
	cmd.Env = append(os.Environ(), "XKS_PROXY_KEYS_PASSPHRASE="+pass)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("xks-proxy %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// proxy is a running `xks-proxy serve`.
type proxy = e2etest.Proxy

// startProxy serves keys (a key file) with certificate dir/cert.pem, the
// test credential, at /kms/xks/v1; it is stopped (by pid) when the test ends.
// extra are more `serve` flags (e.g. --allowed-source-cidrs).
func startProxy(t *testing.T, pki, keys string, extra ...string) *proxy {
	t.Helper()
	sf := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(sf, []byte(secret), 0o600); err != nil {
		t.Fatal(err)
	}
	return startProxyArgs(t, nil, append([]string{"--access-key-id", akid, "--secret-access-key-file", sf,
		"--keys-file", keys, "--tls-cert", filepath.Join(pki, "cert.pem"), "--tls-key", filepath.Join(pki, "key.pem")}, extra...)...)
}

// startProxyArgs runs `xks-proxy serve --listen <free port> args…` with env
// added (the key file passphrase is always set), e.g. with --config; it is
// stopped (by pid) when the test ends.
func startProxyArgs(t *testing.T, env []string, args ...string) *proxy {
	t.Helper()
	return e2etest.StartProxy(t, proxyBin, append([]string{"XKS_PROXY_KEYS_PASSPHRASE=" + pass}, env...), args...)
}

// kmsd is a running kmsd.
type kmsd struct {
	t                        *testing.T
	dataDir, endpoint, creds string
	env                      []string
	log                      string
	proc                     *e2etest.KMSD // shared by copies made for subtests
}

func startKMSD(t *testing.T, args ...string) *kmsd {
	t.Helper()
	return startKMSDAt(t, filepath.Join(t.TempDir(), "data"), args...)
}

// startKMSDAt starts kmsd on data directory dataDir (created when absent,
// or one a kmsd used before: a restart) with args. Each start has its own
// log file and listen port. It is stopped (SIGINT, by pid) when the test
// ends unless kill stopped it first.
func startKMSDAt(t *testing.T, dataDir string, args ...string) *kmsd {
	t.Helper()
	return startKMSDEnv(t, dataDir, nil, args...)
}

// startKMSDEnv is startKMSDAt with more environment variables.
func startKMSDEnv(t *testing.T, dataDir string, env []string, args ...string) *kmsd {
	t.Helper()
	p := e2etest.StartKMSD(t, e2etest.KMSDConfig{Bin: kmsdBin, DataDir: dataDir, Args: args,
		Env: append(append(os.Environ(), "KMSD_KEYSTORE_CONNECT_DELAY=100ms"), env...)})
	return &kmsd{t: t, dataDir: p.DataDir, endpoint: p.Endpoint, creds: p.Creds, env: p.CLIEnv(region), log: p.LogFile, proc: p}
}

// kill stops kmsd with SIGKILL (by pid), as a crash would, and waits for it.
func (k *kmsd) kill() { k.proc.Kill() }

// stop stops kmsd with SIGINT (by pid), as an operator would, and waits
// for it.
func (k *kmsd) stop() { k.proc.Stop() }

// kmsctl runs kmsctl against k and returns stdout, stderr and the exit code.
func (k *kmsd) kmsctl(args ...string) (string, string, int) {
	k.t.Helper()
	cmd := exec.Command(kmsctlBin, append([]string{"--endpoint-url", k.endpoint}, args...)...)
	cmd.Env = k.env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		k.t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

// sdk is an aws-sdk-go-v2 client of k from the kmsd profile, no retries.
func (k *kmsd) sdk() *kms.Client {
	k.t.Helper()
	cfg, err := config.LoadDefaultConfig(context.Background(),
		config.WithSharedCredentialsFiles([]string{k.creds}),
		config.WithSharedConfigFiles([]string{filepath.Join(k.t.TempDir(), "no-config")}),
		config.WithSharedConfigProfile("kmsd"), config.WithRegion(region),
		config.WithRetryer(e2etest.ClosedConnRetryer))
	if err != nil {
		k.t.Fatal(err)
	}
	return kms.NewFromConfig(cfg, func(o *kms.Options) { o.BaseEndpoint = aws.String(k.endpoint) })
}

// cli runs the aws CLI and returns stdout, stderr and the exit code.
func (k *kmsd) cli(args ...string) (string, string, int) {
	k.t.Helper()
	cmd := exec.Command(awsCLI, append([]string{"--endpoint-url", k.endpoint, "--output", "json"}, args...)...)
	cmd.Env = k.env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		k.t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

// aws runs the aws CLI, which must succeed, and decodes its JSON output.
func (k *kmsd) aws(args ...string) map[string]any {
	k.t.Helper()
	out, errs, code := k.cli(args...)
	if code != 0 {
		k.t.Fatalf("aws %s: exit %d\n%s", strings.Join(args, " "), code, errs)
	}
	var v map[string]any
	if strings.TrimSpace(out) != "" {
		if err := json.Unmarshal([]byte(out), &v); err != nil {
			k.t.Fatalf("aws %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	return v
}

// awsFails checks the aws CLI fails with exception code.
func (k *kmsd) awsFails(code string, args ...string) {
	k.t.Helper()
	_, errs, rc := k.cli(args...)
	if rc == 0 || !strings.Contains(errs, "("+code+")") {
		k.t.Fatalf("aws %s: exit %d, stderr %q; want %s", strings.Join(args, " "), rc, errs, code)
	}
}

// store describes custom key store id.
func (k *kmsd) store(id string) map[string]any {
	k.t.Helper()
	v := k.aws("kms", "describe-custom-key-stores", "--custom-key-store-id", id)
	return v["CustomKeyStores"].([]any)[0].(map[string]any)
}

// waitState polls store id until it leaves the transient states and
// returns the entry.
func (k *kmsd) waitState(id string) map[string]any {
	k.t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		e := k.store(id)
		if s := e["ConnectionState"]; s != "CONNECTING" && s != "DISCONNECTING" {
			return e
		}
		if time.Now().After(deadline) {
			k.t.Fatalf("store %s stays %v", id, e["ConnectionState"])
		}
	}
}

// createStore creates an external key store from a CreateCustomKeyStore
// request (--cli-input-json, so every XKS member passes as given).
func (k *kmsd) createStore(req map[string]any) (string, string, int) {
	k.t.Helper()
	b, _ := json.Marshal(req)
	out, errs, code := k.cli("kms", "create-custom-key-store", "--cli-input-json", string(b))
	if code != 0 {
		return "", errs, code
	}
	var v struct{ CustomKeyStoreId string }
	json.Unmarshal([]byte(out), &v)
	return v.CustomKeyStoreId, errs, 0
}

func storeReq(name, conn, endpoint, path, akid, secret string) map[string]any {
	r := map[string]any{
		"CustomKeyStoreName": name, "CustomKeyStoreType": "EXTERNAL_KEY_STORE", "XksProxyConnectivity": conn,
		"XksProxyUriEndpoint": endpoint, "XksProxyUriPath": path,
		"XksProxyAuthenticationCredential": map[string]string{"AccessKeyId": akid, "RawSecretAccessKey": secret},
	}
	return r
}

// cliRun is one aws CLI run of a batch.
type cliRun struct {
	args      []string
	out, errs string
	code      int
}

// cliBatch runs independent aws CLI calls, two at a time (each costs most
// of a second of Python start-up), and returns them in order.
func (k *kmsd) cliBatch(calls ...[]string) []cliRun {
	k.t.Helper()
	rs := make([]cliRun, len(calls))
	errs := make([]error, len(calls))
	sem := make(chan struct{}, 2)
	var wg sync.WaitGroup
	for i, args := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			cmd := exec.Command(awsCLI, append([]string{"--endpoint-url", k.endpoint, "--output", "json"}, args...)...)
			cmd.Env = k.env
			var out, errb bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &errb
			err := cmd.Run()
			rs[i] = cliRun{args: args, out: out.String(), errs: errb.String()}
			if ee, ok := err.(*exec.ExitError); ok {
				rs[i].code, err = ee.ExitCode(), nil
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			k.t.Fatalf("aws %s: %v", strings.Join(calls[i], " "), err)
		}
	}
	return rs
}

// ok checks the run succeeded and decodes its JSON output.
func (r cliRun) ok(t *testing.T) map[string]any {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("aws %s: exit %d\n%s", strings.Join(r.args, " "), r.code, r.errs)
	}
	v := map[string]any{}
	if strings.TrimSpace(r.out) != "" {
		if err := json.Unmarshal([]byte(r.out), &v); err != nil {
			t.Fatalf("aws %s: %v\n%s", strings.Join(r.args, " "), err, r.out)
		}
	}
	return v
}

// fails checks the run failed with exception code.
func (r cliRun) fails(t *testing.T, code string) {
	t.Helper()
	if r.code == 0 || !strings.Contains(r.errs, "("+code+")") {
		t.Fatalf("aws %s: exit %d, stdout %q, stderr %q; want %s", strings.Join(r.args, " "), r.code, r.out, r.errs, code)
	}
}

// createArgs is create-custom-key-store with request req, for cliBatch.
func createArgs(req map[string]any) []string {
	b, _ := json.Marshal(req)
	return []string{"kms", "create-custom-key-store", "--cli-input-json", string(b)}
}

// connectArgs is connect-custom-key-store of store id, for cliBatch.
func connectArgs(id string) []string {
	return []string{"kms", "connect-custom-key-store", "--custom-key-store-id", id}
}

// settle polls describe-custom-key-stores (every store at once) until none
// of ids is CONNECTING or DISCONNECTING, and returns their entries by id.
func (k *kmsd) settle(ids ...string) map[string]map[string]any {
	k.t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		v := k.aws("kms", "describe-custom-key-stores")
		all := map[string]map[string]any{}
		for _, e := range v["CustomKeyStores"].([]any) {
			e := e.(map[string]any)
			all[e["CustomKeyStoreId"].(string)] = e
		}
		out, busy := map[string]map[string]any{}, ""
		for _, id := range ids {
			e, ok := all[id]
			if !ok {
				k.t.Fatalf("store %s not described", id)
			}
			if s := e["ConnectionState"]; s == "CONNECTING" || s == "DISCONNECTING" {
				busy = id
			}
			out[id] = e
		}
		if busy == "" {
			return out
		}
		if time.Now().After(deadline) {
			k.t.Fatalf("store %s stays %v", busy, out[busy]["ConnectionState"])
		}
	}
}
