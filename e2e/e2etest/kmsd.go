package e2etest

import (
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// KMSDConfig says how to start kmsd.
type KMSDConfig struct {
	Bin string // the kmsd binary
	// DataDir is the data directory: a fresh one when empty, or one a kmsd
	// used before (a restart).
	DataDir string
	// Env is kmsd's whole environment; os.Environ() when nil.
	Env []string
	// Args follow `serve --listen <free port> --data-dir D --log-level debug`.
	Args []string
}

// KMSD is a running `kmsd serve` on a free loopback port. It is stopped
// (SIGINT, by pid) when the test ends unless Stop or Kill came first, and
// its log is shown if the test failed.
type KMSD struct {
	Addr, Endpoint string // 127.0.0.1:port, http://127.0.0.1:port
	DataDir        string
	Creds          string // <data dir>/credentials, with the profile kmsd
	LogFile        string // kmsd's stdout and stderr
	Cmd            *exec.Cmd
	exited         chan struct{}
}

// StartKMSD starts kmsd and waits until /healthz answers 200.
func StartKMSD(t testing.TB, c KMSDConfig) *KMSD {
	t.Helper()
	tmp := t.TempDir()
	if c.DataDir == "" {
		c.DataDir = filepath.Join(tmp, "data")
	}
	k := &KMSD{Addr: FreeAddr(t), DataDir: c.DataDir, Creds: filepath.Join(c.DataDir, "credentials"),
		LogFile: filepath.Join(tmp, "kmsd.log"), exited: make(chan struct{})}
	k.Endpoint = "http://" + k.Addr
	logf, err := os.Create(k.LogFile)
	if err != nil {
		t.Fatal(err)
	}
	k.Cmd = exec.Command(c.Bin, append([]string{"serve", "--listen", k.Addr, "--data-dir", k.DataDir, "--log-level", "debug"}, c.Args...)...)
	k.Cmd.Env = c.Env
	if k.Cmd.Env == nil {
		k.Cmd.Env = os.Environ()
	}
	k.Cmd.Stdout, k.Cmd.Stderr = logf, logf
	if err := k.Cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { k.Cmd.Wait(); logf.Close(); close(k.exited) }()
	t.Cleanup(func() {
		k.Stop()
		if t.Failed() {
			t.Logf("kmsd log (%s):\n%s", k.Endpoint, k.Log())
		}
	})
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if resp, err := http.Get(k.Endpoint + "/healthz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return k
			}
		}
		select {
		case <-k.exited:
			t.Fatalf("kmsd exited early:\n%s", k.Log())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("kmsd did not become healthy:\n%s", k.Log())
		}
	}
}

// Log is what kmsd has written so far.
func (k *KMSD) Log() string {
	b, _ := os.ReadFile(k.LogFile)
	return string(b)
}

// Exited is closed once kmsd has exited and been waited for.
func (k *KMSD) Exited() <-chan struct{} { return k.exited }

// Stop asks kmsd to shut down (SIGINT) and waits; SIGKILL after 10 s. It
// does nothing once kmsd has exited.
func (k *KMSD) Stop() {
	select {
	case <-k.exited:
		return
	default:
	}
	k.Cmd.Process.Signal(os.Interrupt)
	select {
	case <-k.exited:
	case <-time.After(10 * time.Second):
		k.Cmd.Process.Kill()
		<-k.exited
	}
}

// Kill stops kmsd with SIGKILL, as a crash would, and waits for it.
func (k *KMSD) Kill() {
	select {
	case <-k.exited:
		return
	default:
	}
	k.Cmd.Process.Signal(syscall.SIGKILL)
	<-k.exited
}

// CLIEnv is an environment for the aws CLI, kmsctl or boto3 against k: the
// profile kmsd from k's credentials file, region, and nothing from the
// host's AWS configuration.
func (k *KMSD) CLIEnv(region string) []string {
	return append(os.Environ(), "AWS_SHARED_CREDENTIALS_FILE="+k.Creds, "AWS_CONFIG_FILE=/dev/null", "AWS_PROFILE=kmsd",
		"AWS_DEFAULT_REGION="+region, "AWS_PAGER=", "AWS_ACCESS_KEY_ID=", "AWS_SECRET_ACCESS_KEY=", "AWS_SESSION_TOKEN=")
}
