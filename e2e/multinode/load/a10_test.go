package load

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/kmsd/kmsd/e2e/e2etest"
)

// TestA10Throughput is MULTINODE.md §8 A10 as a measurement, not a CI
// assertion: it runs only with KMSD_A10=1. On one private PostgreSQL server
// (scripts/postgres.sh) it starts a cluster of one node and one of three
// (each on a new database of the same server), both running all along,
// and drives them in turn with one kmsbench process at the same client
// concurrency (KMSD_A10_CONC, default 24, spread evenly over the nodes):
// CreateKey, then Encrypt (KMSD_A10_DURATION each, default 10s, after a 1 s
// warm-up), for KMSD_A10_ROUNDS rounds (default 1; the cluster that goes
// first alternates), so that the shared machine's slow minutes fall on
// both clusters alike rather than deciding the ratio. For every window it
// prints the aggregate ops/s and latency, and per operation: PostgreSQL
// transactions that wrote (transaction ids used), commits
// (pg_stat_database xact_commit, read-only ones included) and rollbacks,
// WAL bytes (pg_current_wal_lsn), PostgreSQL CPU (every server process,
// exited backends included, from /proc) and kmsd CPU (every node's
// /proc/PID/stat). The nodes' background work (heartbeats, change-feed
// polls), of both clusters idle, is measured for 3 s before the first
// window and subtracted from each. Then, over all rounds, the
// 3-node/1-node ratios (requests over seconds; and each round's) and a
// projection of the PostgreSQL cores 3,000 CreateKey/s need, with
// MULTINODE's budgets marked met or not. KMSD_A10_NODE_ARGS gives the
// nodes more flags, space-separated (e.g. "--cache-notify=off", to
// measure what change notices cost); KMSD_A10_DB_CONNS=N shares N
// PostgreSQL connections among the nodes of each cluster (--db-max-conns
// N/nodes, rounded up), so that one node and three offer the database the
// same concurrency rather than 16 and 48 connections;
// KMSD_A10_SHARED_GOMAXPROCS=N runs each node of the three-node cluster
// with GOMAXPROCS=N (nodes sharing the machine's cores, each told its
// share; the one node keeps all of them); KMSD_A10_BIN runs
// another kmsd binary than the one the test built (a build of another
// tree). The machine is shared: numbers are noisy, and CPU figures
// include whatever contention the run met.
func TestA10Throughput(t *testing.T) {
	if os.Getenv("KMSD_A10") != "1" {
		t.Skip("a measurement, not a CI check: run with KMSD_A10=1")
	}
	conc := envInt(t, "KMSD_A10_CONC", 24)
	dur := 10 * time.Second
	if v := os.Getenv("KMSD_A10_DURATION"); v != "" {
		var err error
		if dur, err = time.ParseDuration(v); err != nil {
			t.Fatalf("KMSD_A10_DURATION=%q: %v", v, err)
		}
	}
	if bin := os.Getenv("KMSD_A10_BIN"); bin != "" {
		kmsdBin = bin // startNodes' binary; this test runs alone (KMSD_A10)
	}
	type row struct {
		round, nodes int
		op           string
		r            benchResult
		c            cost // per operation
		ops          int64
	}
	pg := startPrivatePG(t)
	rounds := envInt(t, "KMSD_A10_ROUNDS", 1)
	type cluster struct {
		n            int
		db           string
		eps          string
		akid, secret string
	}
	var clusters []cluster
	var pids []int // of every node of both clusters
	for _, n := range []int{1, 3} {
		db := pg.newDB(t)
		args := strings.Fields(os.Getenv("KMSD_A10_NODE_ARGS"))
		if total := envInt(t, "KMSD_A10_DB_CONNS", 0); total > 0 {
			args = append(args, "--db-max-conns", fmt.Sprint((total+n-1)/n))
		}
		var extra []string
		if n > 1 {
			if v := os.Getenv("KMSD_A10_SHARED_GOMAXPROCS"); v != "" {
				extra = append(extra, "GOMAXPROCS="+v)
			}
		}
		nodes := startNodesEnv(t, pg.url(db), n, extra, args...)
		c := cluster{n: n, db: db}
		c.akid, c.secret = creds(t, nodes[0].Creds)
		var eps []string
		for _, k := range nodes {
			eps = append(eps, k.Endpoint)
			pids = append(pids, k.Cmd.Process.Pid)
		}
		c.eps = strings.Join(eps, ",")
		clusters = append(clusters, c)
	}
	// Both clusters run all along, and their windows alternate, so that
	// the machine's slow minutes fall on both alike; the idle one's
	// background (heartbeats, change-feed polls), measured here with the
	// other's, is subtracted from every window.
	time.Sleep(2 * time.Second) // every node has heartbeaten and polled
	idle0 := pg.sample(t, clusters[0].db, pids)
	time.Sleep(3 * time.Second)
	idle := pg.sample(t, clusters[0].db, pids).sub(idle0)
	var rows []row
	for round := range rounds {
		for _, op := range []string{"createkey", "encrypt"} {
			order := clusters
			if round%2 == 1 {
				order = []cluster{clusters[1], clusters[0]}
			}
			for _, c := range order {
				s0 := pg.sample(t, c.db, pids)
				rs, err := bench(t.Context(), t, c.akid, c.secret, c.eps, "-ops", op, "-c", fmt.Sprint(conc),
					"-warmup", "1s", "-duration", dur.String())
				if err != nil {
					t.Fatal(err)
				}
				// PostgreSQL reports a backend's commits up to 10 s after
				// it goes idle (PGSTAT_IDLE_INTERVAL).
				time.Sleep(11 * time.Second)
				d := pg.sample(t, c.db, pids).sub(s0)
				r := rs[0]
				ops := r.Requests + r.WarmupRequests
				if op == "createkey" {
					ops++ // kmsbench's setup made one key
				}
				rows = append(rows, row{round, c.n, r.Op, r, d.minus(idle.scale(d.wall.Seconds() / idle.wall.Seconds())).per(ops), ops})
				if r.Errors > 0 {
					t.Errorf("%d node(s) %s: %d errors: %v", c.n, r.Op, r.Errors, r.ErrorTypes)
				}
			}
		}
	}

	var b strings.Builder
	fmt.Fprintf(&b, "A10 on %s, %d client connections (kmsbench), %d round(s) of %s windows after a 1 s warm-up, the clusters alternating; shared machine, load average %s\n",
		hostCPUs(), conc, rounds, dur, loadavg())
	header := func() {
		fmt.Fprintf(&b, "%-5s %-5s %-9s %8s %8s %8s %9s %9s %9s %10s %11s %11s\n", "round", "nodes", "op", "ops/s", "p50 ms", "p99 ms",
			"write tx", "commits", "rollbacks", "WAL B", "PG CPU µs", "kmsd CPU µs")
	}
	line := func(round string, x row) {
		fmt.Fprintf(&b, "%-5s %-5d %-9s %8.0f %8.2f %8.2f %9.3f %9.3f %9.3f %10.0f %11.0f %11.0f\n", round, x.nodes, x.op, x.r.OpsPerSec,
			x.r.P50us/1000, x.r.P99us/1000, x.c.xids, x.c.commits, x.c.rollbacks, x.c.wal, x.c.pgCPU, x.c.kmsdCPU)
	}
	header()
	for _, x := range rows {
		line(fmt.Sprint(x.round+1), x)
	}
	// total is the windows of op on nodes taken together: requests over
	// seconds, costs weighted by each window's operations.
	total := func(nodes int, op string) row {
		var t row
		var secs float64
		var reqs int64
		for _, x := range rows {
			if x.nodes != nodes || x.op != op {
				continue
			}
			t.nodes, t.op = nodes, op
			reqs += x.r.Requests
			secs += x.r.Seconds
			w := float64(x.ops)
			t.c.xids += x.c.xids * w
			t.c.commits += x.c.commits * w
			t.c.rollbacks += x.c.rollbacks * w
			t.c.wal += x.c.wal * w
			t.c.pgCPU += x.c.pgCPU * w
			t.c.kmsdCPU += x.c.kmsdCPU * w
			t.ops += x.ops
		}
		if t.ops == 0 {
			return t
		}
		t.r.OpsPerSec = float64(reqs) / secs
		t.c = t.c.scale(1 / float64(t.ops))
		return t
	}
	if rounds > 1 {
		b.WriteString("all rounds (latencies: see the rounds):\n")
		header()
		for _, n := range []int{1, 3} {
			for _, op := range []string{"CreateKey", "Encrypt"} {
				line("all", total(n, op))
			}
		}
	}
	b.WriteString("(per operation: transactions that wrote, commits incl. read-only, WAL bytes, CPU; nodes' idle background subtracted)\n")
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "NOT met"
	}
	for _, op := range []string{"CreateKey", "Encrypt"} {
		one, three := total(1, op), total(3, op)
		ratio := three.r.OpsPerSec / one.r.OpsPerSec
		var each []string
		for round := range rounds {
			var o, th float64
			for _, x := range rows {
				if x.round == round && x.op == op {
					if x.nodes == 1 {
						o = x.r.OpsPerSec
					} else {
						th = x.r.OpsPerSec
					}
				}
			}
			each = append(each, fmt.Sprintf("%.2f", th/o))
		}
		fmt.Fprintf(&b, "%s: 3 nodes / 1 node = %.0f / %.0f ops/s = %.2f× (A10a wants >= 0.8: %s); each round: %s\n", op,
			three.r.OpsPerSec, one.r.OpsPerSec, ratio, verdict(ratio >= 0.8), strings.Join(each, " "))
	}
	for _, n := range []int{1, 3} {
		ck := total(n, "CreateKey")
		fmt.Fprintf(&b, "CreateKey on %d node(s): %.3f writing transactions and %.3f commits per op (A10b wants 1: %s), %.0f WAL bytes per op (<= 8 KiB: %s); "+
			"3k CreateKey/s needs %.1f PostgreSQL cores (%.0f µs of PostgreSQL CPU each) and %.1f kmsd cores\n",
			n, ck.c.xids, ck.c.commits, verdict(ck.c.xids <= 1.05), ck.c.wal, verdict(ck.c.wal <= 8192),
			3000*ck.c.pgCPU/1e6, ck.c.pgCPU, 3000*ck.c.kmsdCPU/1e6)
	}
	t.Log("\n" + b.String())
	if f := os.Getenv("KMSD_A10_OUT"); f != "" {
		if err := os.WriteFile(f, []byte(b.String()), 0o644); err != nil {
			t.Error(err)
		}
	}
}

func envInt(t *testing.T, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("%s=%q: want a positive number", name, v)
	}
	return n
}

func hostCPUs() string {
	b, _ := exec.Command("nproc").Output()
	return strings.TrimSpace(string(b)) + " CPUs"
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// privatePG is a PostgreSQL server of one test (scripts/postgres.sh), so
// that its CPU and WAL are the test's alone.
type privatePG struct {
	dir  string
	base *url.URL // the superuser's URL, database postgres
	// cpu is the server's CPU so far, in seconds (e2etest.PostgresCPU).
	cpu func() float64
}

func startPrivatePG(t *testing.T) *privatePG {
	t.Helper()
	wd, _ := os.Getwd()
	script := filepath.Join(wd, "..", "..", "..", "scripts", "postgres.sh")
	// Not t.TempDir: the server's user (kmsdtest when run as root) must
	// reach the directory.
	dir, err := os.MkdirTemp("", "kmsd-a10-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if out, err := exec.Command(script, "stop", dir, "immediate").CombinedOutput(); err != nil {
			t.Errorf("stop PostgreSQL: %v\n%s", err, out)
		}
		os.RemoveAll(dir)
	})
	out, err := exec.Command(script, "start", dir, e2etest.FreePort(t)).Output()
	if err != nil {
		t.Fatalf("scripts/postgres.sh start: %v", err)
	}
	u, err := url.Parse(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatal(err)
	}
	p := &privatePG{dir: dir, base: u}
	if p.cpu, err = e2etest.PostgresCPU(t.Context(), p.url("postgres")); err != nil {
		t.Fatal(err)
	}
	return p
}

// query runs a one-row query on database db and scans it.
func (p *privatePG) query(t *testing.T, db, sql string, dst ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, p.url(db))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if err := conn.QueryRow(ctx, sql).Scan(dst...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func (p *privatePG) url(db string) string {
	u := *p.base
	u.Path = "/" + db
	return u.String()
}

func (p *privatePG) newDB(t *testing.T) string {
	t.Helper()
	name := fmt.Sprintf("kmsd_a10_%d", time.Now().UnixNano())
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, p.url("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatal(err)
	}
	return name
}

// stats is a sample of counters; cost is a difference of two, or a
// difference per operation.
type stats struct {
	at                 time.Time
	xid                uint64 // next transaction id
	commits, rollbacks float64
	wal                float64 // bytes since 0/0
	pgCPU, kmsdCPU     float64 // seconds
}

type cost struct {
	wall                                          time.Duration
	xids, commits, rollbacks, wal, pgCPU, kmsdCPU float64 // per op: CPU in µs
}

// sample reads the counters: database db's commits, the server's WAL
// position and next transaction id, and the CPU of PostgreSQL and of the
// kmsd processes pids.
func (p *privatePG) sample(t *testing.T, db string, pids []int) stats {
	t.Helper()
	var s stats
	var xid string
	var commits, rollbacks int64
	p.query(t, db, `SELECT pg_snapshot_xmax(pg_current_snapshot())::text, pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8,
		xact_commit, xact_rollback FROM pg_stat_database WHERE datname = current_database()`, &xid, &s.wal, &commits, &rollbacks)
	s.xid, _ = strconv.ParseUint(xid, 10, 64)
	s.commits, s.rollbacks = float64(commits), float64(rollbacks)
	s.pgCPU = p.cpu()
	for _, pid := range pids {
		st := e2etest.ReadProcStat(pid)
		s.kmsdCPU += float64(st.Utime+st.Stime) / e2etest.ClockTicks()
	}
	s.at = time.Now()
	return s
}

// sub is s - o as a cost (totals, not per op).
func (s stats) sub(o stats) cost {
	return cost{wall: s.at.Sub(o.at), xids: float64(s.xid - o.xid), commits: s.commits - o.commits,
		rollbacks: s.rollbacks - o.rollbacks, wal: s.wal - o.wal, pgCPU: s.pgCPU - o.pgCPU, kmsdCPU: s.kmsdCPU - o.kmsdCPU}
}

// scale is c × f (background over a longer time).
func (c cost) scale(f float64) cost {
	return cost{c.wall, c.xids * f, c.commits * f, c.rollbacks * f, c.wal * f, c.pgCPU * f, c.kmsdCPU * f}
}

// minus is c - o, never below zero.
func (c cost) minus(o cost) cost {
	z := func(v float64) float64 { return max(0, v) }
	return cost{c.wall, z(c.xids - o.xids), z(c.commits - o.commits), z(c.rollbacks - o.rollbacks), z(c.wal - o.wal),
		z(c.pgCPU - o.pgCPU), z(c.kmsdCPU - o.kmsdCPU)}
}

// per is c per operation, CPU in µs.
func (c cost) per(ops int64) cost {
	n := float64(ops)
	return cost{c.wall, c.xids / n, c.commits / n, c.rollbacks / n, c.wal / n, c.pgCPU * 1e6 / n, c.kmsdCPU * 1e6 / n}
}
