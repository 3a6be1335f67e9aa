// Package multinode holds the multi-node fault harness and acceptance tests
// of MULTINODE.md §5 and §8: several real kmsd processes on one PostgreSQL
// database (a private server this package starts, since the tests restart
// it), each behind a TCP fault proxy to the database, driven with
// aws-sdk-go-v2 while nodes are killed with SIGKILL, frozen with SIGSTOP,
// cut from the database and PostgreSQL is restarted in immediate mode.
//
// The short versions run in CI; KMSD_MULTINODE_FULL=1 runs the durations
// and counts of MULTINODE §8. KMSD_MULTINODE_SEED=n replays a fault
// schedule. A test known to fail until a fix lands may be gated with
// pendingFix (KMSD_MULTINODE_PENDING=1); none is now.
package multinode

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"net/http"
	neturl "net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/smithy-go"
	"github.com/jackc/pgx/v5"

	"github.com/kmsd/kmsd/e2e/e2etest"
)

var kmsdBin, kmsctlBin, proxyBin string

func TestMain(m *testing.M) {
	e2etest.Main(m, map[string]*string{"kmsd": &kmsdBin, "kmsctl": &kmsctlBin, "xks-proxy": &proxyBin})
}

const region = "us-east-1"

// full reports whether the full-length acceptance runs were asked for.
func full() bool { return os.Getenv("KMSD_MULTINODE_FULL") == "1" }

// pendingFix runs the rest of a test only with KMSD_MULTINODE_PENDING=1:
// for tests that fail on main until the multi-node caches land. The skip
// message says so; it is not a pass. No test needs it now (A2, the last,
// decides); kept for the next known failure.
//
//lint:ignore U1000 kept for tests known to fail until a fix lands
func pendingFix(t *testing.T, why string) {
	t.Helper()
	if os.Getenv("KMSD_MULTINODE_PENDING") != "1" {
		t.Skipf("PENDING (known to fail until %s); run with KMSD_MULTINODE_PENDING=1", why)
	}
}

// seed is the fault schedule's seed: KMSD_MULTINODE_SEED or a random one,
// logged so that a failure can be replayed.
func seed(t *testing.T) uint64 {
	t.Helper()
	var s uint64
	if v := os.Getenv("KMSD_MULTINODE_SEED"); v != "" {
		var err error
		if s, err = strconv.ParseUint(v, 10, 64); err != nil {
			t.Fatalf("KMSD_MULTINODE_SEED=%q: %v", v, err)
		}
	} else {
		s = mrand.Uint64() % 1_000_000_000
	}
	t.Logf("fault schedule seed %d (replay with KMSD_MULTINODE_SEED=%d)", s, s)
	return s
}

// artifactDir is where a failing test leaves what explains it:
// KMSD_TEST_ARTIFACTS, or the system's temporary directory.
func artifactDir() string {
	if d := os.Getenv("KMSD_TEST_ARTIFACTS"); d != "" {
		return d
	}
	return os.TempDir()
}

// script is scripts/postgres.sh of this repository.
func script() string {
	wd, _ := os.Getwd()
	return filepath.Join(wd, "..", "..", "scripts", "postgres.sh")
}

// pgServer is a private PostgreSQL server of one test.
type pgServer struct {
	dir  string
	base *neturl.URL // the superuser's URL, database postgres
}

// startPG starts a PostgreSQL server for t alone (scripts/postgres.sh) and
// stops it when t ends.
func startPG(t *testing.T) *pgServer {
	t.Helper()
	// Not t.TempDir: the server's user (kmsdtest when run as root) must
	// reach the directory.
	dir, err := os.MkdirTemp("", "kmsd-multinode-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if out, err := exec.Command(script(), "stop", dir, "immediate").CombinedOutput(); err != nil {
			t.Errorf("stop PostgreSQL: %v\n%s", err, out)
		}
		os.RemoveAll(dir)
	})
	out, err := exec.Command(script(), "start", dir, e2etest.FreePort(t)).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("scripts/postgres.sh start: %v\n%s", err, ee.Stderr)
		}
		t.Fatal(err)
	}
	u, err := neturl.Parse(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatal(err)
	}
	return &pgServer{dir: dir, base: u}
}

// StartStandby makes a synchronous streaming standby of s
// (scripts/postgres.sh standby: pg_basebackup -R, synchronous_standby_names
// 'FIRST 1 (s1)' on s) on a free port, stopped when t ends.
func (s *pgServer) StartStandby(t *testing.T) *pgServer {
	t.Helper()
	dir, err := os.MkdirTemp("", "kmsd-multinode-standby-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		exec.Command(script(), "stop", dir, "immediate").Run()
		os.RemoveAll(dir)
	})
	out, err := exec.Command(script(), "standby", dir, s.dir, e2etest.FreePort(t)).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("scripts/postgres.sh standby: %v\n%s", err, ee.Stderr)
		}
		t.Fatal(err)
	}
	u, err := neturl.Parse(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatal(err)
	}
	return &pgServer{dir: dir, base: u}
}

// Promote promotes a standby to primary (pg_ctl promote).
func (s *pgServer) Promote(t *testing.T) { s.run(t, "promote") }

// Addr is the server's 127.0.0.1:port.
func (s *pgServer) Addr() string { return s.base.Host }

// run runs scripts/postgres.sh cmd on the server.
func (s *pgServer) run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(script(), append(args[:1:1], append([]string{s.dir}, args[1:]...)...)...).CombinedOutput(); err != nil {
		t.Fatalf("scripts/postgres.sh %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// RestartImmediate is `pg_ctl restart -m immediate` (a crash and
// recovery); it returns once the server accepts connections.
func (s *pgServer) RestartImmediate(t *testing.T) { s.run(t, "restart", "immediate") }

// StopImmediate stops the server as a crash would; Start brings it back on
// its port.
func (s *pgServer) StopImmediate(t *testing.T) { s.run(t, "stop", "immediate") }
func (s *pgServer) Start(t *testing.T) {
	port, err := os.ReadFile(filepath.Join(s.dir, "port"))
	if err != nil {
		t.Fatal(err)
	}
	s.run(t, "start", strings.TrimSpace(string(port)))
}

// NewDB creates an empty database and returns its name.
func (s *pgServer) NewDB(t *testing.T) string {
	t.Helper()
	b := make([]byte, 6)
	rand.Read(b)
	name := fmt.Sprintf("kmsd_mn_%x", b)
	conn, err := pgx.Connect(t.Context(), s.base.String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(t.Context(), "CREATE DATABASE "+name); err != nil {
		t.Fatal(err)
	}
	return name
}

// URL is the URL of database db, reached at addr (the server or a proxy).
func (s *pgServer) URL(db, addr string) string {
	u := *s.base
	u.Host, u.Path = addr, "/"+db
	return u.String()
}

// node is one kmsd process of a cluster, always on the same port, data
// directory and node id, reaching the database through its own fault
// proxy.
type node struct {
	i        int
	id       string
	dir, log string
	addr     string
	endpoint string
	proxy    *e2etest.FaultProxy
	args     []string
	env      []string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	starts int
	// died counts exits the test did not cause (kill or stop).
	died int
	// expect is set while the test is ending the process itself.
	expect bool
}

// cluster is N kmsd nodes on one database with one root key.
type cluster struct {
	t       *testing.T
	pg      *pgServer
	standby *pgServer
	db      string
	nodes   []*node
	creds   aws.Credentials // the bootstrap administrator
	root    string          // the root key, base64
}

type clusterOpts struct {
	nodes      int
	dbMaxConns int
	extra      []string // more kmsd flags
	// together starts every node at the same moment on the empty
	// database (else node 0 first, then the others).
	together bool
	// env, when set, gives node i more environment (KMSD_… settings).
	env func(i int) []string
	// standby, when set, is a synchronous standby of the server: the
	// nodes' URL names both (the primary through the node's proxy, the
	// standby directly) with target_session_attrs=read-write.
	standby *pgServer
	// nodeArgs, when set, gives more kmsd flags for node i.
	nodeArgs func(i int) []string
	// unstarted is how many of the last nodes are made but not started:
	// the test starts them (node.Start) when it wants.
	unstarted int
}

// env is kmsd's environment: the host's without AWS_/KMSD_/PG settings,
// plus extra.
func env(extra ...string) []string { return e2etest.CleanEnv(extra...) }

func newRootKey() string {
	k := make([]byte, 32)
	rand.Read(k)
	return base64.StdEncoding.EncodeToString(k)
}

// newCluster starts o.nodes kmsd nodes on a new database of pg and waits
// until every one serves.
func newCluster(t *testing.T, pg *pgServer, o clusterOpts) *cluster {
	t.Helper()
	c := &cluster{t: t, pg: pg, standby: o.standby, db: pg.NewDB(t)}
	root := newRootKey()
	c.root = root
	tmp := t.TempDir()
	if o.dbMaxConns == 0 {
		o.dbMaxConns = 4
	}
	for i := range o.nodes {
		n := &node{i: i, id: fmt.Sprint("node-", i), dir: filepath.Join(tmp, fmt.Sprint("node", i)),
			log: filepath.Join(tmp, fmt.Sprint("node", i, ".log")), addr: e2etest.FreeAddr(t)}
		n.endpoint = "http://" + n.addr
		n.proxy = e2etest.StartFaultProxy(t, pg.Addr())
		n.args = append([]string{"serve", "--listen", n.addr, "--data-dir", n.dir, "--node-id", n.id,
			"--db-max-conns", strconv.Itoa(o.dbMaxConns), "--db-min-conns", "1", "--db-connect-timeout", "2s"}, o.extra...)
		if o.nodeArgs != nil {
			n.args = append(n.args, o.nodeArgs(i)...)
		}
		url := pg.URL(c.db, n.proxy.Addr)
		if o.standby != nil {
			url = pg.URL(c.db, n.proxy.Addr+","+o.standby.Addr()) + "&target_session_attrs=read-write"
		}
		// The node's sessions carry its id (pg_stat_activity, and the
		// write trace of TestA7FencingUnderPause).
		url += "&application_name=" + n.id
		n.env = env("KMSD_ROOT_KEY="+root, "KMSD_DATABASE_URL="+url, "HOME="+tmp)
		if o.env != nil {
			n.env = append(n.env, o.env(i)...)
		}
		c.nodes = append(c.nodes, n)
		t.Cleanup(func() {
			n.Stop(t)
			if t.Failed() {
				b, _ := os.ReadFile(n.log)
				if len(b) > 6000 {
					b = b[len(b)-6000:]
				}
				t.Logf("%s log (end):\n%s", n.id, b)
				if all, err := os.ReadFile(n.log); err == nil {
					keep := filepath.Join(artifactDir(), fmt.Sprintf("%s-%s-%d.log", strings.ReplaceAll(t.Name(), "/", "_"), n.id, time.Now().Unix()))
					if os.WriteFile(keep, all, 0o600) == nil {
						t.Logf("%s's whole log: %s", n.id, keep)
					}
				}
			}
		})
	}
	started := c.nodes[:len(c.nodes)-o.unstarted]
	if o.together {
		for _, n := range started {
			n.Start(t)
		}
		for _, n := range started {
			n.WaitHealthy(t, 60*time.Second)
		}
	} else {
		started[0].Start(t)
		started[0].WaitHealthy(t, 60*time.Second)
		for _, n := range started[1:] {
			n.Start(t)
		}
		for _, n := range started[1:] {
			n.WaitHealthy(t, 60*time.Second)
		}
	}
	var found []int
	for _, n := range started {
		if akid, secret, ok := readProfile(filepath.Join(n.dir, "credentials")); ok {
			c.creds = aws.Credentials{AccessKeyID: akid, SecretAccessKey: secret}
			found = append(found, n.i)
		}
	}
	if len(found) != 1 {
		t.Fatalf("nodes %v wrote the administrator's profile, want exactly one", found)
	}
	return c
}

// readProfile reads the keys of a credentials file kmsd wrote.
func readProfile(path string) (akid, secret string, ok bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", "", false
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(line, "=")
		switch strings.TrimSpace(k) {
		case "aws_access_key_id":
			akid = strings.TrimSpace(v)
		case "aws_secret_access_key":
			secret = strings.TrimSpace(v)
		}
	}
	return akid, secret, akid != "" && secret != ""
}

// Start starts the node's process (again, after a kill or stop).
func (n *node) Start(t *testing.T) {
	t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	logf, err := os.OpenFile(n.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(logf, "==== start %d at %s\n", n.starts+1, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(kmsdBin, n.args...)
	cmd.Env = n.env
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatal(err)
	}
	n.cmd, n.exited, n.expect = cmd, make(chan struct{}), false
	n.starts++
	exited := n.exited
	go func() {
		cmd.Wait()
		logf.Close()
		n.mu.Lock()
		if !n.expect {
			n.died++
		}
		n.mu.Unlock()
		close(exited)
	}()
}

// Exited waits up to within for the node's process to exit on its own and
// returns its exit code; false if it still runs.
func (n *node) Exited(within time.Duration) (int, bool) {
	n.mu.Lock()
	cmd, ch := n.cmd, n.exited
	n.mu.Unlock()
	if ch == nil {
		return 0, false
	}
	select {
	case <-ch:
		return cmd.ProcessState.ExitCode(), true
	case <-time.After(within):
		return 0, false
	}
}

// Died is how many times the node's process exited without the test
// ending it.
func (n *node) Died() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.died
}

// Alive reports whether the node's process runs.
func (n *node) Alive() bool {
	n.mu.Lock()
	ch := n.exited
	n.mu.Unlock()
	if ch == nil {
		return false
	}
	select {
	case <-ch:
		return false
	default:
		return true
	}
}

// WaitHealthy waits until the node answers /healthz with 200.
func (n *node) WaitHealthy(t *testing.T, timeout time.Duration) {
	t.Helper()
	cl := &http.Client{Timeout: time.Second}
	for deadline := time.Now().Add(timeout); ; time.Sleep(20 * time.Millisecond) {
		if resp, err := cl.Get(n.endpoint + "/healthz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if !n.Alive() {
			t.Fatalf("%s exited:\n%s", n.id, n.tail())
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not healthy after %s:\n%s", n.id, timeout, n.tail())
		}
	}
}

func (n *node) tail() string {
	b, _ := os.ReadFile(n.log)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// signal sends sig to the node's process by its pid and, for an ending
// signal, waits for it to exit (SIGKILL after 15 s).
func (n *node) signal(sig syscall.Signal, ending bool) {
	n.mu.Lock()
	cmd, ch := n.cmd, n.exited
	if cmd == nil {
		n.mu.Unlock()
		return
	}
	select {
	case <-ch:
		n.mu.Unlock()
		return
	default:
	}
	if ending {
		n.expect = true
	}
	n.mu.Unlock()
	syscall.Kill(cmd.Process.Pid, sig)
	if !ending {
		return
	}
	select {
	case <-ch:
	case <-time.After(15 * time.Second):
		syscall.Kill(cmd.Process.Pid, syscall.SIGKILL)
		<-ch
	}
}

// Kill is kill -9 of the node.
func (n *node) Kill() { n.signal(syscall.SIGKILL, true) }

// Stopped reports whether the node's process is stopped (SIGSTOP, state
// T in /proc/<pid>/stat), as a KMSD_FAILPOINT=<name>:stop leaves it.
func (n *node) Stopped() bool {
	n.mu.Lock()
	cmd := n.cmd
	n.mu.Unlock()
	if cmd == nil || !n.Alive() {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", cmd.Process.Pid))
	if err != nil {
		return false
	}
	// pid (comm) state …: comm may hold spaces, so from the last ')'.
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+1:]))
	return len(f) > 0 && (f[0] == "T" || f[0] == "t")
}

// Pause and Resume freeze and thaw the node (SIGSTOP, SIGCONT).
func (n *node) Pause()  { n.signal(syscall.SIGSTOP, false) }
func (n *node) Resume() { n.signal(syscall.SIGCONT, false) }

// Stop ends the node cleanly (SIGINT), thawing it first.
func (n *node) Stop(t *testing.T) {
	n.Resume()
	n.signal(syscall.SIGINT, true)
}

// client is an aws-sdk-go-v2 KMS client of node n as the administrator:
// no retries (every failure is recorded as it happened) and a short
// timeout per attempt.
func (c *cluster) client(n *node) *kms.Client {
	return kms.New(kms.Options{
		Region:       region,
		BaseEndpoint: aws.String(n.endpoint),
		Credentials:  credentials.StaticCredentialsProvider{Value: c.creds},
		Retryer:      e2etest.ClosedConnRetryer(),
		HTTPClient:   &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16, DialContext: (&net.Dialer{Timeout: time.Second}).DialContext}},
	})
}

// errCode is the AWS error code of err ("" when there is none: a
// transport error or timeout).
func errCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

// fault is one step of a fault schedule.
type fault struct {
	at   time.Duration
	what string // kill, pg-restart, blackhole, reset, pause
	node int
	dur  time.Duration // how long a node stays down / cut / frozen
}

func (f fault) String() string {
	switch f.what {
	case "pg-restart":
		return fmt.Sprintf("@%s pg_ctl restart -m immediate", f.at)
	case "pg-stop":
		return fmt.Sprintf("@%s pg_ctl stop -m immediate, start after %s", f.at, f.dur)
	case "promote":
		return fmt.Sprintf("@%s primary stopped (-m immediate), synchronous standby promoted", f.at)
	}
	return fmt.Sprintf("@%s %s node-%d for %s", f.at, f.what, f.node, f.dur)
}

// runFaults performs schedule (sorted by at) from start until ctx ends or
// the schedule does; each step is logged. Nodes killed are started again
// after their dur. It returns when the last step finished.
func (c *cluster) runFaults(ctx context.Context, start time.Time, schedule []fault) (done time.Time) {
	t := c.t
	defer func() { done = time.Now() }()
	for _, f := range schedule {
		select {
		case <-ctx.Done():
			t.Errorf("the run ended before fault %s", f)
			return
		case <-time.After(time.Until(start.Add(f.at))):
		}
		t.Logf("fault %s (t=%.1fs)", f, time.Since(start).Seconds())
		switch f.what {
		case "kill":
			n := c.nodes[f.node]
			n.Kill()
			time.Sleep(f.dur)
			n.Start(t)
			n.WaitHealthy(t, 60*time.Second)
		case "pause":
			n := c.nodes[f.node]
			n.Pause()
			time.Sleep(f.dur)
			n.Resume()
		case "blackhole":
			p := c.nodes[f.node].proxy
			p.Blackhole()
			time.Sleep(f.dur)
			p.Heal()
		case "reset":
			c.nodes[f.node].proxy.Reset()
		case "pg-restart":
			c.pg.RestartImmediate(t)
		case "pg-stop":
			c.pg.StopImmediate(t)
			time.Sleep(f.dur)
			c.pg.Start(t)
		case "promote":
			c.pg.StopImmediate(t)
			c.standby.Promote(t)
		default:
			t.Errorf("unknown fault %q", f.what)
		}
		t.Logf("fault %s done (t=%.1fs)", f.what, time.Since(start).Seconds())
	}
	return
}

// pgScan runs a one-row query on database db directly and scans it.
func pgScan(t *testing.T, pg *pgServer, db, sql string, dst ...any) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, pg.URL(db, pg.Addr()))
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	return conn.QueryRow(ctx, sql).Scan(dst...)
}

// waitQuotaShared waits until every node's log since its last start says
// it shares the custom key stores' quota: a node that joins others holds
// it — answers ThrottlingException for the stores' cryptography — until
// they all count it, about a heartbeat (issue #16).
func (c *cluster) waitQuotaShared(t *testing.T, timeout time.Duration) {
	t.Helper()
	for _, n := range c.nodes {
		for deadline := time.Now().Add(timeout); ; time.Sleep(50 * time.Millisecond) {
			b, _ := os.ReadFile(n.log)
			l := string(b)
			if i := strings.LastIndex(l, "==== start"); i >= 0 {
				l = l[i:]
			}
			if strings.Contains(l, "custom key store quota shared") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: its log does not say it shares the custom key store quota after %s:\n%s", n.id, timeout, n.tail())
			}
		}
	}
}
