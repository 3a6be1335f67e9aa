// Package e2etest holds what the end-to-end test packages share: a free
// loopback address, a log buffer safe for a process's output, and a
// running `xks-proxy serve` that the test stops (by its pid) when it ends.
package e2etest

import (
	"bytes"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// FreeAddr is a loopback address ("127.0.0.1:port") nothing listens on,
// on a port outside the kernel's ephemeral range
// (net.ipv4.ip_local_port_range). A port the kernel handed out for
// "127.0.0.1:0" is one it may hand out next as the local port of an
// outgoing connection, which then holds it when the process the test
// starts — or restarts on the same address — binds it (seen as a
// "address already in use" of a restarted node on a busy machine).
//
// The port is free when FreeAddr checks it, but nothing holds it until
// the process the test starts binds it. So FreeAddr also reserves it for
// the life of the test process: it never hands out a port twice, and it
// holds a lock on the port's byte of a lock file that every test process
// shares (reservePort), so that test binaries running side by side (go
// test runs packages in parallel) do not pick the same port either — as
// two did once, one node failing with "bind: address already in use".
func FreeAddr(t testing.TB) string {
	t.Helper()
	lo, hi := freePortRange()
	for range 1000 {
		port := lo + mrand.IntN(hi-lo+1)
		if !reservePort(port) {
			continue
		}
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		if l, err := net.Listen("tcp", addr); err == nil {
			l.Close()
			return addr
		}
		// In use by a process outside the tests; kept reserved, so that
		// it is not tried again.
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// FreePort is the port of a FreeAddr, for a server that a script starts
// (scripts/postgres.sh): reserved like the nodes' ports, so that no other
// test's node picks it before the server binds it.
func FreePort(t testing.TB) string {
	t.Helper()
	_, port, err := net.SplitHostPort(FreeAddr(t))
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// ports holds the ports FreeAddr reserved in this process and the lock
// file that reserves them across processes.
var ports struct {
	sync.Mutex
	held map[int]bool
	lock *os.File // nil: none could be opened or locked; reservations are then this process's only
}

// portLockFile is the file whose byte n every test process locks to
// reserve port n (POSIX record locks: the kernel drops them when the
// process exits, however it exits).
var portLockFile = filepath.Join(os.TempDir(), "kmsd-e2e-ports.lock")

// reservePort reserves port for this process, reporting false when this
// or another test process already has.
func reservePort(port int) bool {
	ports.Lock()
	defer ports.Unlock()
	if ports.held[port] {
		return false
	}
	if ports.held == nil {
		ports.held = map[int]bool{}
		// The file stays open for the life of the process: closing any
		// descriptor of it would drop all of the process's locks on it.
		if f, err := os.OpenFile(portLockFile, os.O_RDWR|os.O_CREATE, 0o666); err == nil {
			ports.lock = f
		}
	}
	if ports.lock != nil {
		lk := syscall.Flock_t{Type: syscall.F_WRLCK, Whence: 0, Start: int64(port), Len: 1}
		switch err := syscall.FcntlFlock(ports.lock.Fd(), syscall.F_SETLK, &lk); {
		case err == syscall.EAGAIN || err == syscall.EACCES:
			return false // another test process holds it
		case err != nil:
			// A file system without record locks: go on without them.
			ports.lock.Close()
			ports.lock = nil
		}
	}
	ports.held[port] = true
	return true
}

// freePortRange is where FreeAddr picks ports: below the ephemeral range
// (from 20000), or above it when it starts too low.
func freePortRange() (lo, hi int) {
	elo, ehi := 32768, 60999 // Linux's default
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		var a, z int
		if n, _ := fmt.Sscan(string(b), &a, &z); n == 2 && a > 0 && z >= a {
			elo, ehi = a, z
		}
	}
	if elo > 21000 {
		return 20000, elo - 1
	}
	if ehi < 64000 {
		return ehi + 1, 65535
	}
	return 1024, 65535
}

// Log collects a process's output for the test to read while it runs. It
// keeps the first 8 MB, enough for every functional test, so that
// benchmark runs do not hold a whole access log in memory.
type Log struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *Log) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.b.Len() < 8<<20 {
		l.b.Write(p)
	}
	return len(p), nil
}

func (l *Log) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Proxy is a running `xks-proxy serve`.
type Proxy struct {
	Addr string // 127.0.0.1:port
	Cmd  *exec.Cmd
	Log  *Log // stdout and stderr
	done chan struct{}
}

// StartProxy runs `bin serve --listen <free loopback address> args…` with
// env added to the environment, waits until it serves, and stops it when
// the test ends, showing its log if the test failed.
func StartProxy(t testing.TB, bin string, env []string, args ...string) *Proxy {
	t.Helper()
	return StartProxyAt(t, bin, FreeAddr(t), env, args...)
}

// StartProxyAt is StartProxy listening on addr, e.g. the address of a
// proxy the test stopped, to restart it where its clients know it.
func StartProxyAt(t testing.TB, bin, addr string, env []string, args ...string) *Proxy {
	t.Helper()
	p := &Proxy{Addr: addr, Log: &Log{}, done: make(chan struct{})}
	p.Cmd = exec.Command(bin, append([]string{"serve", "--listen", p.Addr}, args...)...)
	p.Cmd.Env = append(os.Environ(), env...)
	p.Cmd.Stdout, p.Cmd.Stderr = p.Log, p.Log
	if err := p.Cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.Cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.Stop()
		if t.Failed() {
			t.Logf("xks-proxy %s log:\n%s", p.Addr, p.Log)
		}
	})
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		select {
		case <-p.done:
			t.Fatalf("xks-proxy exited early:\n%s", p.Log)
		default:
		}
		if c, err := net.DialTimeout("tcp", p.Addr, 100*time.Millisecond); err == nil {
			c.Close()
			if strings.Contains(p.Log.String(), "xks-proxy serving") {
				return p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("xks-proxy did not start:\n%s", p.Log)
		}
	}
}

// Port is the proxy's loopback port.
func (p *Proxy) Port() string { _, port, _ := net.SplitHostPort(p.Addr); return port }

// Done is closed when the proxy has exited.
func (p *Proxy) Done() <-chan struct{} { return p.done }

// Stop sends SIGTERM and waits for the proxy to exit (SIGKILL after 10 s).
func (p *Proxy) Stop() {
	select {
	case <-p.done:
		return
	default:
	}
	syscall.Kill(p.Cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.Cmd.Process.Kill()
		<-p.done
	}
}

// HUP sends SIGHUP, waits until the proxy has reloaded and reports
// whether it accepted what it re-read (a rejected configuration or TLS
// file is logged, and the running one kept).
func (p *Proxy) HUP(t testing.TB) bool {
	t.Helper()
	n := strings.Count(p.Log.String(), "reload done")
	syscall.Kill(p.Cmd.Process.Pid, syscall.SIGHUP)
	for deadline := time.Now().Add(10 * time.Second); strings.Count(p.Log.String(), "reload done") == n; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("xks-proxy did not reload after SIGHUP:\n%s", p.Log)
		}
	}
	s := p.Log.String()
	return !strings.Contains(s[strings.LastIndex(s, "SIGHUP"):], "rejected")
}

// Main builds the project's commands named in bins (cmd/<name>, or a
// test tool's directory such as e2e/e2etest/encload) into a temporary
// directory, without the race detector whatever the test's build, points
// each *bins[name] at its binary, runs the package's tests and exits with
// their status, removing the directory.
func Main(m *testing.M, bins map[string]*string) {
	os.Exit(Run(m, bins))
}

// Run is Main returning the exit status instead of exiting, for a TestMain
// with more to do after the tests.
func Run(m *testing.M, bins map[string]*string) int {
	dir, err := os.MkdirTemp("", "kmsd-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	for name, path := range bins {
		*path = filepath.Join(dir, filepath.Base(name))
		pkg := "github.com/kmsd/kmsd/cmd/" + name
		if strings.Contains(name, "/") { // a test tool, e.g. e2e/e2etest/encload
			pkg = "github.com/kmsd/kmsd/" + name
		}
		cmd := exec.Command("go", "build", "-o", *path, pkg)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: building cmd/%s: %v\n", name, err)
			os.RemoveAll(dir)
			return 1
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	return code
}
