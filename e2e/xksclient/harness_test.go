// Package xksclient_test holds end-to-end tests of internal/xks/xksclient, the KMS side of
// the XKS Proxy API: the client drives the real xks-proxy binary over HTTPS on
// loopback (development CA from `xks-proxy dev-cert`, a software key file, a SoftHSM2
// token), and small in-test TLS servers for the misbehaviours a conforming proxy
// cannot produce. Every failure is caused for real and checked through the mapping
// helpers KMS uses.
package xksclient_test

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/kmsd/kmsd/e2e/e2etest"
)

var binPath string

func TestMain(m *testing.M) { e2etest.Main(m, map[string]*string{"xks-proxy": &binPath}) }

const (
	akid   = "AKIDAAAAAAAAAAAAAAAAAAAA"
	secret = "PleaseReplaceThisWithSomeSecretOfLength43To64"
	pass   = "e2e key file passphrase"
)

// run runs the binary to completion.
func run(t *testing.T, env []string, args ...string) {
	t.Helper()
	cmd := exec.Command(binPath, args...)
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("xks-proxy %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// proxy is a running `xks-proxy serve`.
type proxy = e2etest.Proxy

// start runs `xks-proxy serve --listen <free loopback port> args…`, waits until it
// serves, and stops it (by its pid) when the test ends.
func start(t *testing.T, env []string, args ...string) *proxy {
	t.Helper()
	return e2etest.StartProxy(t, binPath, env, args...)
}

// pki writes a development PKI for hosts with the binary's dev-cert command and
// returns its directory (ca.pem, cert.pem, key.pem, and client.pem / client-key.pem
// when clientCN is set).
func pki(t *testing.T, dir, hosts, clientCN string) string {
	t.Helper()
	args := []string{"dev-cert", "--hostname", hosts, "--out-dir", dir}
	if clientCN != "" {
		args = append(args, "--client-cn", clientCN)
	}
	run(t, nil, args...)
	return dir
}

func read(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func write(t *testing.T, path, content string) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
