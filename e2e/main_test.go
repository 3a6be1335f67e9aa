// Package e2e holds kmsd's end-to-end tests: they build the real kmsd
// binary, start it on loopback with a fresh data directory, and drive it
// with the clients users have — aws-sdk-go-v2, the aws CLI v2 and boto3 —
// and with raw HTTP where the protocol itself is under test.
package e2e

import (
	"bufio"
	"bytes"
	"context"
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
)

// kmsdBin is the kmsd binary TestMain builds, race-enabled when the tests
// are, so that data races in the server under load fail the tests too.
var kmsdBin string

// Fixed facts of every test server.
const (
	account = "111122223333"
	region  = "us-east-1"
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "kmsd-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	kmsdBin = filepath.Join(dir, "kmsd")
	args := []string{"build", "-o", kmsdBin}
	if raceEnabled {
		args = append(args, "-race")
	}
	args = append(args, "github.com/kmsd/kmsd/cmd/kmsd")
	cmd := exec.Command("go", args...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: building kmsd:", err)
		return 1
	}
	return m.Run()
}

// server is one kmsd process on loopback, with its own data directory. It
// can be stopped, killed and started again on the same data directory and
// port.
type server struct {
	t        *testing.T
	DataDir  string
	Addr     string // 127.0.0.1:port
	Endpoint string // http://127.0.0.1:port
	args     []string
	env      []string
	logPath  string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
}

// serverOpt adjusts how a server is started.
type serverOpt func(*server)

// withArgs adds flags to `kmsd serve`.
func withArgs(args ...string) serverOpt {
	return func(s *server) { s.args = append(s.args, args...) }
}

// withEnv adds environment variables (KEY=value) to kmsd's environment.
func withEnv(kv ...string) serverOpt {
	return func(s *server) { s.env = append(s.env, kv...) }
}

// startServer starts kmsd on a free port with a fresh data directory (a
// directory kmsd creates itself) and waits until /healthz answers. The
// server is stopped (SIGTERM, then SIGKILL) when the test ends; if the
// test failed its log is printed.
func startServer(t *testing.T, opts ...serverOpt) *server {
	t.Helper()
	tmp := t.TempDir()
	s := &server{
		t:       t,
		DataDir: filepath.Join(tmp, "data"),
		Addr:    freeAddr(t),
		logPath: filepath.Join(tmp, "kmsd.log"),
	}
	s.Endpoint = "http://" + s.Addr
	for _, o := range opts {
		o(s)
	}
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			b, _ := os.ReadFile(s.logPath)
			t.Logf("kmsd output:\n%s", b)
		}
	})
	s.Start()
	return s
}

// freeAddr returns a loopback address with a port nobody listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// Start starts kmsd (again) on s's data directory and address and waits
// for /healthz.
func (s *server) Start() {
	t := s.t
	t.Helper()
	s.mu.Lock()
	if s.cmd != nil {
		s.mu.Unlock()
		t.Fatalf("kmsd is already running")
	}
	logf, err := os.OpenFile(s.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		s.mu.Unlock()
		t.Fatalf("open log: %v", err)
	}
	fmt.Fprintf(logf, "==== start %s\n", time.Now().Format(time.RFC3339Nano))
	args := append([]string{"serve", "--listen", s.Addr, "--data-dir", s.DataDir, "--log-level", "debug"}, s.args...)
	cmd := exec.Command(kmsdBin, args...)
	cmd.Env = append(cleanEnv(), s.env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		s.mu.Unlock()
		t.Fatalf("start kmsd: %v", err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		logf.Close()
		close(done)
	}()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()
	s.waitHealthy(done)
}

// waitHealthy polls /healthz until it answers ok, failing the test if kmsd
// exits or takes more than 30 seconds.
func (s *server) waitHealthy(done <-chan struct{}) {
	t := s.t
	t.Helper()
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-done:
			s.detach()
			b, _ := os.ReadFile(s.logPath)
			t.Fatalf("kmsd exited before it was healthy:\n%s", b)
		default:
		}
		resp, err := client.Get(s.Endpoint + "/healthz")
		if err == nil {
			var body bytes.Buffer
			body.ReadFrom(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && strings.TrimSpace(body.String()) == "ok" {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("kmsd not healthy after 30s (last error: %v)", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop shuts kmsd down with SIGTERM and reports an error unless it exits
// with status 0 within 15 seconds (then it is killed). Stopping a stopped
// server does nothing.
func (s *server) Stop() {
	s.t.Helper()
	cmd, done := s.detach()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
		if code := cmd.ProcessState.ExitCode(); code != 0 {
			s.t.Errorf("kmsd exit status after SIGTERM: got %d, want 0", code)
		}
	case <-time.After(15 * time.Second):
		cmd.Process.Kill()
		<-done
		s.t.Errorf("kmsd did not exit within 15s of SIGTERM")
	}
	s.checkLog()
}

// Kill kills kmsd with SIGKILL and waits for it to be gone.
func (s *server) Kill() {
	s.t.Helper()
	cmd, done := s.detach()
	if cmd == nil {
		s.t.Fatalf("kill: kmsd is not running")
	}
	cmd.Process.Signal(syscall.SIGKILL)
	<-done
	s.checkLog()
}

// Restart stops kmsd gracefully and starts it again on the same data
// directory and port.
func (s *server) Restart() {
	s.t.Helper()
	s.Stop()
	s.Start()
}

func (s *server) detach() (*exec.Cmd, chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cmd, done := s.cmd, s.done
	s.cmd, s.done = nil, nil
	return cmd, done
}

// checkLog fails the test if the race-enabled server reported a data race.
func (s *server) checkLog() {
	s.t.Helper()
	b, err := os.ReadFile(s.logPath)
	if err != nil {
		s.t.Errorf("read kmsd log: %v", err)
		return
	}
	if bytes.Contains(b, []byte("WARNING: DATA RACE")) {
		s.t.Errorf("kmsd reported a data race (log follows at the end of the test)")
	}
}

// creds is the administrator's access key as kmsd wrote it into
// <data-dir>/credentials.
type creds struct {
	File            string
	AccessKeyID     string
	SecretAccessKey string
	Region          string
}

// Creds reads the credentials file kmsd wrote on first start and checks
// that it holds the profile "kmsd" with a key pair and a region.
func (s *server) Creds() creds {
	t := s.t
	t.Helper()
	c := creds{File: filepath.Join(s.DataDir, "credentials")}
	f, err := os.Open(c.File)
	if err != nil {
		t.Fatalf("credentials file: %v", err)
	}
	defer f.Close()
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]") {
			section = strings.TrimSpace(line[1 : len(line)-1])
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || section != "kmsd" {
			continue
		}
		switch strings.TrimSpace(k) {
		case "aws_access_key_id":
			c.AccessKeyID = strings.TrimSpace(v)
		case "aws_secret_access_key":
			c.SecretAccessKey = strings.TrimSpace(v)
		case "region":
			c.Region = strings.TrimSpace(v)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("read credentials file: %v", err)
	}
	if c.AccessKeyID == "" || c.SecretAccessKey == "" || c.Region == "" {
		t.Fatalf("credentials file %s: profile kmsd lacks aws_access_key_id, aws_secret_access_key or region: got %+v", c.File, c)
	}
	return c
}

// cleanEnv is this process's environment without anything that configures
// AWS clients or points Python at other packages, so that only what a test
// sets reaches kmsd, the aws CLI and boto3.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(k, "AWS_"), strings.HasPrefix(k, "KMSD_"), strings.HasPrefix(k, "BOTO_"),
			k == "PYTHONPATH", k == "PYTHONHOME", k == "PYTHONUSERBASE":
			continue
		}
		env = append(env, kv)
	}
	return append(env, "PYTHONNOUSERSITE=1")
}

// testContext is a context cancelled when the test ends, with a deadline
// well before the package's.
func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}
