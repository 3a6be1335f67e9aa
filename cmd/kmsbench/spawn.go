package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// pinSelf makes the generator run on cpu alone. Affinity set from inside Go
// would bind only the calling thread, not the runtime's others, so instead
// kmsbench execs itself under `taskset -c cpu` (the runtime then also sizes
// GOMAXPROCS to 1). It returns nil, having done nothing, when already
// pinned there; on success it does not return.
func pinSelf(cpu int) error {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return fmt.Errorf("pin: %w", err)
	}
	if set.Count() == 1 && set.IsSet(cpu) {
		return nil
	}
	if os.Getenv("KMSBENCH_PINNED") != "" {
		return fmt.Errorf("pin: still not on CPU %d alone after taskset", cpu)
	}
	taskset, err := exec.LookPath("taskset")
	if err != nil {
		return fmt.Errorf("pin: %w (install util-linux, or run with -pin=false)", err)
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("pin: %w", err)
	}
	argv := append([]string{"taskset", "-c", strconv.Itoa(cpu), self}, os.Args[1:]...)
	return syscall.Exec(taskset, argv, append(os.Environ(), "KMSBENCH_PINNED=1"))
}

// server is a kmsd that kmsbench started.
type server struct {
	cmd      *exec.Cmd
	dataDir  string
	endpoint string
	creds    credentials
	exited   chan struct{}
	waitErr  error
}

// spawn starts the kmsd binary at path on a free loopback port with a new
// data directory, in --auth verify mode, pinned to cpu when cpu >= 0, and
// waits until it answers /healthz and has written its administrator's
// credentials. The pid of the process is kmsd's own: taskset execs it.
func spawn(ctx context.Context, path string, cpu int, logLevel string, extra ...string) (*server, error) {
	path, err := exec.LookPath(path)
	if err != nil {
		return nil, fmt.Errorf("kmsd binary: %w (build one: go build -o /tmp/kmsd ./cmd/kmsd, then -spawn /tmp/kmsd)", err)
	}
	if path, err = filepath.Abs(path); err != nil {
		return nil, err
	}
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "kmsbench-")
	if err != nil {
		return nil, err
	}
	args := []string{path, "--listen", addr, "--data-dir", dir, "--auth", "verify", "--log-level", logLevel}
	args = append(args, extra...)
	if cpu >= 0 {
		taskset, err := exec.LookPath("taskset")
		if err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("pin kmsd: %w (or run with -pin=false)", err)
		}
		args = append([]string{taskset, "-c", strconv.Itoa(cpu)}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = kmsdEnv(os.Environ())
	cmd.Stdout = io.Discard // the banner; kmsbench reads the credentials file instead
	cmd.Stderr = os.Stderr
	// If kmsbench dies without stopping it (SIGPIPE on a closed stdout,
	// SIGKILL), the kernel sends kmsd SIGTERM. taskset's exec keeps it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	s := &server{cmd: cmd, dataDir: dir, endpoint: "http://" + addr, exited: make(chan struct{})}
	go func() { s.waitErr = cmd.Wait(); close(s.exited) }()
	if err := s.waitReady(ctx, 30*time.Second); err != nil {
		s.stop()
		return nil, err
	}
	return s, nil
}

// kmsdEnv drops KMSD_* variables from env: flags already set what matters,
// and an inherited KMSD_ADMIN_ACCESS_KEY_ID or KMSD_ROOT_KEY would change
// how kmsd bootstraps.
func kmsdEnv(env []string) []string {
	var out []string
	for _, kv := range env {
		if !strings.HasPrefix(kv, "KMSD_") && !strings.HasPrefix(kv, "KMSBENCH_") {
			out = append(out, kv)
		}
	}
	return out
}

func (s *server) pid() int { return s.cmd.Process.Pid }

func (s *server) waitReady(ctx context.Context, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	c := &http.Client{Timeout: time.Second, Transport: &http.Transport{Proxy: nil}}
	for {
		select {
		case <-s.exited:
			return fmt.Errorf("kmsd exited during start-up: %v", s.waitErr)
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		resp, err := c.Get(s.endpoint + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				creds, err := readCredentials(filepath.Join(s.dataDir, "credentials"), "kmsd")
				if err == nil {
					s.creds = creds
					return nil
				}
				if time.Now().After(deadline) {
					return err
				}
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("kmsd not ready at %s after %v: %v", s.endpoint, limit, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop ends kmsd by its pid (SIGTERM, then SIGKILL after 10 s) and removes
// its data directory.
func (s *server) stop() {
	select {
	case <-s.exited:
	default:
		s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.exited:
		case <-time.After(10 * time.Second):
			s.cmd.Process.Kill()
			<-s.exited
		}
	}
	os.RemoveAll(s.dataDir)
}

// freePort returns a loopback address with a port the kernel just handed
// out and that nothing listens on now.
func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// readCredentials reads the access key of profile from a shared-credentials
// (INI) file.
func readCredentials(file, profile string) (credentials, error) {
	f, err := os.Open(file)
	if err != nil {
		return credentials{}, err
	}
	defer f.Close()
	return parseCredentials(f, profile, file)
}

func parseCredentials(r io.Reader, profile, name string) (credentials, error) {
	var c credentials
	section := ""
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case line[0] == '[' && line[len(line)-1] == ']':
			section = strings.TrimSpace(line[1 : len(line)-1])
		case section == profile:
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				continue
			}
			switch strings.TrimSpace(k) {
			case "aws_access_key_id":
				c.accessKeyID = strings.TrimSpace(v)
			case "aws_secret_access_key":
				c.secret = strings.TrimSpace(v)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return c, err
	}
	if c.accessKeyID == "" || c.secret == "" {
		return c, fmt.Errorf("%s: no aws_access_key_id and aws_secret_access_key in profile [%s]", name, profile)
	}
	return c, nil
}
