// Package xks holds the end-to-end tests of external key stores: the real
// kmsd binary (started with --xks-ca-bundle and --xks-vpc-endpoint-services)
// talking HTTPS to the real xks-proxy (development CA from `xks-proxy
// dev-cert`, a software key file), driven by the aws CLI v2 and
// aws-sdk-go-v2.
package xks

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/kms"
)

const (
	awsCLI = "/usr/bin/aws" // Debian's aws CLI v2
	region = "us-east-1"
	akid   = "AKIDAAAAAAAAAAAAAAAAAAAA"
	secret = "PleaseReplaceThisWithSomeSecretOfLength43To64"
	pass   = "e2e key file passphrase"
)

var kmsdBin, proxyBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kmsd-e2e-xks-")
	if err != nil {
		panic(err)
	}
	kmsdBin, proxyBin = filepath.Join(dir, "kmsd"), filepath.Join(dir, "xks-proxy")
	for bin, pkg := range map[string]string{kmsdBin: "github.com/kmsd/kmsd/cmd/kmsd", proxyBin: "github.com/kmsd/kmsd/cmd/xks-proxy"} {
		cmd := exec.Command("go", "build", "-o", bin, pkg)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "e2e/xks: build:", err)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
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
type proxy struct {
	cmd  *exec.Cmd
	addr string
	log  *syncBuf
	done chan struct{}
}

func (p *proxy) port() string { _, port, _ := net.SplitHostPort(p.addr); return port }

// startProxy serves keys (a key file) with certificate dir/cert.pem, the
// test credential, at /kms/xks/v1; it is stopped (by pid) when the test ends.
func startProxy(t *testing.T, pki, keys string) *proxy {
	t.Helper()
	dir := t.TempDir()
	sf := filepath.Join(dir, "secret")
	if err := os.WriteFile(sf, []byte(secret), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &proxy{addr: freeAddr(t), log: &syncBuf{}, done: make(chan struct{})}
	p.cmd = exec.Command(proxyBin, "serve", "--listen", p.addr, "--access-key-id", akid, "--secret-access-key-file", sf,
		"--keys-file", keys, "--tls-cert", filepath.Join(pki, "cert.pem"), "--tls-key", filepath.Join(pki, "key.pem"))
	p.cmd.Env = append(os.Environ(), "XKS_PROXY_KEYS_PASSPHRASE="+pass)
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("xks-proxy %s log:\n%s", p.addr, p.log)
		}
	})
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		select {
		case <-p.done:
			t.Fatalf("xks-proxy exited early:\n%s", p.log)
		default:
		}
		if c, err := net.DialTimeout("tcp", p.addr, 100*time.Millisecond); err == nil {
			c.Close()
			if strings.Contains(p.log.String(), "xks-proxy serving") {
				return p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("xks-proxy did not start:\n%s", p.log)
		}
	}
}

func (p *proxy) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	syscall.Kill(p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// kmsd is a running kmsd.
type kmsd struct {
	t                        *testing.T
	dataDir, endpoint, creds string
	env                      []string
	log                      string
}

func startKMSD(t *testing.T, args ...string) *kmsd {
	t.Helper()
	tmp := t.TempDir()
	k := &kmsd{t: t, dataDir: filepath.Join(tmp, "data"), log: filepath.Join(tmp, "kmsd.log")}
	addr := freeAddr(t)
	k.endpoint = "http://" + addr
	logf, err := os.Create(k.log)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(kmsdBin, append([]string{"serve", "--listen", addr, "--data-dir", k.dataDir, "--log-level", "debug"}, args...)...)
	cmd.Env = append(os.Environ(), "KMSD_KEYSTORE_CONNECT_DELAY=100ms")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	t.Cleanup(func() {
		once.Do(func() {
			cmd.Process.Signal(os.Interrupt)
			cmd.Wait()
			logf.Close()
			if t.Failed() {
				b, _ := os.ReadFile(k.log)
				t.Logf("kmsd log:\n%s", b)
			}
		})
	})
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if resp, err := http.Get(k.endpoint + "/healthz"); err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("kmsd did not become healthy")
		}
	}
	k.creds = filepath.Join(k.dataDir, "credentials")
	k.env = append(os.Environ(), "AWS_SHARED_CREDENTIALS_FILE="+k.creds, "AWS_CONFIG_FILE=/dev/null", "AWS_PROFILE=kmsd",
		"AWS_DEFAULT_REGION="+region, "AWS_PAGER=", "AWS_ACCESS_KEY_ID=", "AWS_SECRET_ACCESS_KEY=", "AWS_SESSION_TOKEN=")
	return k
}

// sdk is an aws-sdk-go-v2 client of k from the kmsd profile, no retries.
func (k *kmsd) sdk() *kms.Client {
	k.t.Helper()
	cfg, err := config.LoadDefaultConfig(context.Background(),
		config.WithSharedCredentialsFiles([]string{k.creds}),
		config.WithSharedConfigFiles([]string{filepath.Join(k.t.TempDir(), "no-config")}),
		config.WithSharedConfigProfile("kmsd"), config.WithRegion(region),
		config.WithRetryer(func() aws.Retryer { return aws.NopRetryer{} }))
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
