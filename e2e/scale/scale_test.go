package scale

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"net"
	"net/http"
	neturl "net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/jackc/pgx/v5"

	"github.com/kmsd/kmsd/e2e/e2etest"
	"github.com/kmsd/kmsd/internal/barrier"
	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/storage"
	"github.com/kmsd/kmsd/internal/storage/postgres"
	"github.com/kmsd/kmsd/internal/storage/postgres/pgtest"
	"github.com/kmsd/kmsd/internal/storage/sqlite"
)

var kmsdBin string

func TestMain(m *testing.M) {
	code := e2etest.Run(m, map[string]*string{"kmsd": &kmsdBin})
	if err := pgtest.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		code = 1
	}
	os.Exit(code)
}

const (
	account = "111122223333"
	region  = "us-east-1"
	// smallKeys is the store the large one is compared with.
	smallKeys = 1000
	// conc is the number of concurrent clients of the random-key load.
	conc = 16
)

// scaleKeys is the size of the large store: KMSD_SCALE_KEYS (the issue's
// 1000000 for the full run), else 20,000 for CI.
func scaleKeys(t *testing.T) (n int, full bool) {
	s := os.Getenv("KMSD_SCALE_KEYS")
	if s == "" {
		if raceEnabled {
			return 10000, false // generating under -race is ~15× slower
		}
		return 20000, false
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < smallKeys {
		t.Fatalf("KMSD_SCALE_KEYS=%q: want a number of keys >= %d", s, smallKeys)
	}
	return n, true
}

// driver is one storage driver: how kmsd is started on it and how the
// test opens the same store.
type driver struct {
	name string
	// fresh returns kmsd's environment and extra flags for a new, empty
	// store in dataDir, and opens that store with kmsd's root key.
	fresh func(t *testing.T, dataDir string) (env, args []string, open func() (storage.Store, *barrier.Barrier))
}

var sqliteDriver = driver{name: "sqlite", fresh: func(t *testing.T, dataDir string) ([]string, []string, func() (storage.Store, *barrier.Barrier)) {
	return env(), nil, func() (storage.Store, *barrier.Barrier) {
		st, err := sqlite.Open(context.Background(), filepath.Join(dataDir, "kmsd.db"))
		if err != nil {
			t.Fatal(err)
		}
		key, err := barrier.LoadRootKey(filepath.Join(dataDir, "root.key"))
		if err != nil {
			t.Fatal(err)
		}
		b, err := barrier.New(key)
		if err != nil {
			t.Fatal(err)
		}
		return st, b
	}
}}

var postgresDriver = driver{name: "postgres", fresh: func(t *testing.T, dataDir string) ([]string, []string, func() (storage.Store, *barrier.Barrier)) {
	return postgresStore(t, pgtest.URL(t), newRootKey(t))
}}

// newRootKey is a new random root key.
func newRootKey(t *testing.T) []byte {
	raw := make([]byte, barrier.KeySize)
	if _, err := rand.Read(raw); err != nil {
		t.Fatal(err)
	}
	return raw
}

// postgresStore is kmsd's environment and flags for the empty database at
// url with the root key raw (in KMSD_ROOT_KEY), and how the test opens it.
func postgresStore(t *testing.T, url string, raw []byte) ([]string, []string, func() (storage.Store, *barrier.Barrier)) {
	root := base64.StdEncoding.EncodeToString(raw)
	return env("KMSD_ROOT_KEY=" + root), []string{"--database-url", url}, func() (storage.Store, *barrier.Barrier) {
		st, err := postgres.Open(context.Background(), url, postgres.Options{})
		if err != nil {
			t.Fatal(err)
		}
		b, err := barrier.New(raw)
		if err != nil {
			t.Fatal(err)
		}
		return st, b
	}
}

// keptDatabase creates (again, if it exists) the database of the store of
// n keys kept in dir on the server of KMSD_TEST_DATABASE_URL, and returns
// its URL. Unlike pgtest.URL's, it outlives the test: KMSD_SCALE_DIR keeps
// a PostgreSQL store in it. Its name, kmsd_scale_N_H, carries a hash H of
// dir, so that stores kept in two directories never share a database.
func keptDatabase(t *testing.T, dir string, n int) string {
	base := os.Getenv(pgtest.EnvURL)
	u, err := neturl.Parse(base)
	if err != nil {
		t.Fatalf("%s does not parse as a URL: %v", pgtest.EnvURL, err)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256([]byte(abs))
	name := fmt.Sprintf("kmsd_scale_%d_%x", n, h[:4])
	conn, err := pgx.Connect(t.Context(), base)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(t.Context())
	for _, q := range []string{"DROP DATABASE IF EXISTS " + name + " WITH (FORCE)", "CREATE DATABASE " + name} {
		if _, err := conn.Exec(t.Context(), q); err != nil {
			t.Fatal(err)
		}
	}
	u.Path = "/" + name
	return u.String()
}

// env is kmsd's environment: the host's without AWS_/KMSD_/PG settings,
// plus extra.
func env(extra ...string) []string {
	var e []string
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "AWS_") || strings.HasPrefix(k, "KMSD_") || strings.HasPrefix(k, "PG") {
			continue
		}
		e = append(e, kv)
	}
	return append(e, extra...)
}

// store is a generated key store and how to start kmsd on it.
type store struct {
	n            int
	dataDir      string
	env, args    []string
	ids, sorted  []string // the generated key ids; sorted
	akid, secret string   // the administrator's access key
	gen          GenStats
	scan         time.Duration // one ScanKeys of the whole store, in the test process
	// pgCPU is the PostgreSQL server's CPU so far, in seconds
	// (e2etest.PostgresCPU); nil on SQLite. Only the measured store's
	// kmsd runs during a load, so the server's CPU then is that store's.
	pgCPU func() float64
}

// prepare makes a store of n keys: kmsd starts once on it empty (root key,
// administrator, schema), then the test writes the keys through the
// catalog while no kmsd runs.
//
// With KMSD_SCALE_DIR set, a store is kept in that directory (one
// subdirectory per driver and size, its key ids beside it) and used again
// by later runs instead of being generated anew: generating a million keys
// takes minutes, measuring them seconds. A kept store also holds what
// earlier runs wrote (last-use records of the keys they touched). A
// PostgreSQL store is kept only on a server that outlives the test
// (KMSD_TEST_DATABASE_URL), in a database of its own (keptDatabase); the directory
// then holds the root key and an args file of kmsd's flags for it.
func prepare(t *testing.T, d driver, n int, full bool) *store {
	t.Helper()
	s := &store{n: n, dataDir: filepath.Join(t.TempDir(), "data")}
	keep := os.Getenv("KMSD_SCALE_DIR")
	if keep != "" && d.name == postgresDriver.name && os.Getenv(pgtest.EnvURL) == "" {
		// The test's own server stops with the test: nothing to keep.
		t.Logf("postgres: KMSD_SCALE_DIR keeps a PostgreSQL store only on the server of %s", pgtest.EnvURL)
		keep = ""
	}
	if keep != "" {
		s.dataDir = filepath.Join(keep, fmt.Sprintf("%s-%d", d.name, n), "data")
		if b, err := os.ReadFile(filepath.Join(s.dataDir, "..", "ids")); err == nil {
			s.ids = strings.Fields(string(b))
			if len(s.ids) != n {
				t.Fatalf("%s holds %d key ids, want %d: remove it", s.dataDir, len(s.ids), n)
			}
			s.env = env()
			if d.name == postgresDriver.name {
				a, err := os.ReadFile(filepath.Join(s.dataDir, "..", "args"))
				if err != nil {
					t.Fatal(err)
				}
				s.args = strings.Fields(string(a))
				s.watchPostgres(t)
			}
			s.akid, s.secret = readProfile(t, filepath.Join(s.dataDir, "credentials"))
			s.sorted = slices.Sorted(slices.Values(s.ids))
			t.Logf("%s: using the %d keys kept in %s", d.name, n, s.dataDir)
			return s
		}
		if err := os.RemoveAll(filepath.Dir(s.dataDir)); err != nil {
			t.Fatal(err)
		}
	}
	var open func() (storage.Store, *barrier.Barrier)
	var keptRoot []byte // the root key of a PostgreSQL store being kept
	if keep != "" && d.name == postgresDriver.name {
		keptRoot = newRootKey(t)
		s.env, s.args, open = postgresStore(t, keptDatabase(t, filepath.Dir(s.dataDir), n), keptRoot)
	} else {
		s.env, s.args, open = d.fresh(t, s.dataDir)
	}
	if d.name == postgresDriver.name {
		s.watchPostgres(t)
	}
	k := e2etest.StartKMSD(t, e2etest.KMSDConfig{Bin: kmsdBin, DataDir: s.dataDir, Env: s.env, Args: s.args})
	k.Stop()
	s.akid, s.secret = readProfile(t, k.Creds)

	st, b := open()
	defer st.Close()
	ids, gs, err := Generate(context.Background(), catalog.New(st, b), account, region, n, 1000)
	if err != nil {
		t.Fatal(err)
	}
	s.ids, s.gen = ids, gs
	s.sorted = slices.Sorted(slices.Values(ids))
	if d.name == postgresDriver.name {
		// As a server that has run a while would have: the bulk load's
		// rows vacuumed and the planner's statistics made, rather than
		// autovacuum doing both during a measurement, in PostgreSQL's CPU.
		t0 := time.Now()
		conn, err := pgx.Connect(t.Context(), s.args[1])
		if err != nil {
			t.Fatal(err)
		}
		_, err = conn.Exec(t.Context(), "VACUUM (ANALYZE)")
		conn.Close(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("postgres: VACUUM (ANALYZE) after the load: %v", time.Since(t0).Round(time.Millisecond))
	}
	if keptRoot != nil {
		// How a later run (and scripts/scale-ab.sh, which passes a
		// store's args file to kmsd) starts kmsd on the kept database:
		// its URL, and the root key in a file beside it.
		root := filepath.Join(s.dataDir, "..", "root.key")
		if err := barrier.WriteRootKeyFile(root, keptRoot); err != nil {
			t.Fatal(err)
		}
		args := []string{s.args[0], s.args[1], "--root-key-file", root}
		if err := os.WriteFile(filepath.Join(s.dataDir, "..", "args"), []byte(strings.Join(args, " ")+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if keep != "" {
		// Written last: a run killed while generating leaves no ids, and
		// the next one generates again.
		if err := os.WriteFile(filepath.Join(s.dataDir, "..", "ids"), []byte(strings.Join(ids, "\n")), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%s: generated %d keys in %v (making records %v, writing %v in %d transactions)",
		d.name, n, gs.Total.Round(time.Millisecond), gs.Make.Round(time.Millisecond), gs.Write.Round(time.Millisecond), gs.Transactions)
	if !full {
		return s
	}
	// What kmsd's sweepers read once a round (every minute, and at start
	// beside the first requests): the due keys of the sweep index — and,
	// for comparison, every key record decoded, which a round read before
	// the index.
	t0, seen := time.Now(), 0
	if err := catalog.New(st, b).ScanKeys(context.Background(), func(*catalog.Key) error { seen++; return nil }); err != nil || seen != n {
		t.Fatalf("ScanKeys saw %d of %d keys: %v", seen, n, err)
	}
	s.scan = time.Since(t0)
	t.Logf("%s: one scan of all %d keys (what a sweep round read before the sweep index): %v", d.name, n, s.scan.Round(time.Millisecond))
	t0, seen = time.Now(), 0
	if err := catalog.New(st, b).DueKeys(context.Background(), time.Now(), func(*catalog.Key) error { seen++; return nil }); err != nil || seen != 0 {
		t.Fatalf("DueKeys found %d due keys among %d new ones: %v", seen, n, err)
	}
	t.Logf("%s: one sweep round's read of the due keys (sweep index, none due): %v", d.name, time.Since(t0).Round(time.Microsecond))
	// What DeleteCustomKeyStore's and CreateKey's (EXTERNAL_KEY_STORE)
	// checks read: the store index, where a scan of every key was before.
	cat := catalog.New(st, b)
	t0 = time.Now()
	has, err := cat.StoreHasKeys(context.Background(), "cks-0123456789abcdef0")
	if err != nil || has {
		t.Fatalf("StoreHasKeys of a store with no keys: %v, %v", has, err)
	}
	inUse, err := cat.XksKeyInUse(context.Background(), "cks-0123456789abcdef0", "ext")
	if err != nil || inUse {
		t.Fatalf("XksKeyInUse in a store with no keys: %v, %v", inUse, err)
	}
	t.Logf("%s: the custom key store checks (store index: StoreHasKeys and XksKeyInUse): %v", d.name, time.Since(t0).Round(time.Microsecond))
	return s
}

// watchPostgres sets s.pgCPU from the server of the store's database URL
// (its args: --database-url URL …), or logs why it cannot.
func (s *store) watchPostgres(t *testing.T) {
	var err error
	if s.pgCPU, err = e2etest.PostgresCPU(t.Context(), s.args[1]); err != nil {
		t.Logf("postgres: the server's CPU is not measured: %v", err)
	}
}

func readProfile(t *testing.T, path string) (akid, secret string) {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
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
	if akid == "" || secret == "" {
		t.Fatalf("no administrator key in %s", path)
	}
	return akid, secret
}

// node is kmsd running on a store, started by the test and stopped (by
// pid) when it ends.
type node struct {
	cmd      *exec.Cmd
	endpoint string
	done     chan struct{}
	client   *kms.Client
	pgCPU    func() float64 // the store's
}

func (n *node) stop() {
	select {
	case <-n.done:
		return
	default:
	}
	n.cmd.Process.Signal(os.Interrupt)
	select {
	case <-n.done:
	case <-time.After(15 * time.Second):
		n.cmd.Process.Kill()
		<-n.done
	}
}

// result is what one measurement of one store found.
type result struct {
	keys              int
	ready, firstOK    time.Duration // cold start: process start → /readyz 200, → first DescribeKey answered
	preloaded         time.Duration // with --cache-preload on (KMSD_SCALE_ARGS): process start → "cache preloaded"
	describe, encrypt load
	// One client at a time, measured with KMSD_SCALE_KEYS only: the
	// latency of a request on its own, where the loads above are at
	// conc and saturate kmsd's core.
	describe1, encrypt1 load
	list1, listDeep     time.Duration // median ListKeys latency: first page, a page deep in the list
	deepPage            int
	rssReady, rssAfter  int64 // VmRSS (bytes) once ready, and after the random-key loads
	distinct            int   // distinct keys the loads touched
}

type load struct {
	requests   int
	p50, p99   time.Duration
	cpuPerReq  time.Duration // server CPU (utime+stime) per request
	pgPerReq   time.Duration // PostgreSQL's CPU per request (0 on SQLite)
	throughput float64
}

// measure starts kmsd (the binary bin) on s and measures it; kmsd is
// stopped at the end.
func measure(t *testing.T, bin string, s *store, warmup, dur time.Duration) result {
	t.Helper()
	r := result{keys: s.n}
	addr := e2etest.FreeAddr(t)
	n := &node{endpoint: "http://" + addr, done: make(chan struct{}), pgCPU: s.pgCPU}
	logFile := filepath.Join(t.TempDir(), "kmsd.log")
	logf, err := os.Create(logFile)
	if err != nil {
		t.Fatal(err)
	}
	extra, preload := scaleArgs(t)
	logLevel := "warn"
	if preload {
		logLevel = "info" // for the "cache preloaded" line
	}
	args := append([]string{"serve", "--listen", addr, "--data-dir", s.dataDir, "--log-level", logLevel, "--audit-log", filepath.Join(t.TempDir(), "audit.log")}, s.args...)
	n.cmd = exec.Command(bin, append(args, extra...)...)
	n.cmd.Env = s.env
	n.cmd.Stdout, n.cmd.Stderr = logf, logf
	start := time.Now()
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { n.cmd.Wait(); logf.Close(); close(n.done) }()
	defer n.stop()
	defer func() {
		if t.Failed() {
			b, _ := os.ReadFile(logFile)
			t.Logf("kmsd log:\n%s", b)
		}
	}()
	hc := &http.Client{Timeout: 2 * time.Second}
	for deadline := start.Add(60 * time.Second); ; time.Sleep(2 * time.Millisecond) {
		if resp, err := hc.Get(n.endpoint + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		select {
		case <-n.done:
			b, _ := os.ReadFile(logFile)
			t.Fatalf("kmsd exited:\n%s", b)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("kmsd not ready after 60 s")
		}
	}
	r.ready = time.Since(start)
	hcl := awshttp.NewBuildableClient().WithTransportOptions(func(tr *http.Transport) {
		tr.MaxIdleConns, tr.MaxIdleConnsPerHost = 2*conc, 2*conc
	})
	n.client = kms.New(kms.Options{
		Region:       region,
		BaseEndpoint: aws.String(n.endpoint),
		Credentials:  credentials.NewStaticCredentialsProvider(s.akid, s.secret, ""),
		HTTPClient:   hcl,
		Retryer:      e2etest.ClosedConnRetryer(),
	})
	ctx := context.Background()
	for {
		_, err := n.client.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(s.ids[mrand.IntN(len(s.ids))])})
		if err == nil {
			break
		}
		if time.Since(start) > 60*time.Second {
			t.Fatalf("no DescribeKey answered within 60 s of start: %v", err)
		}
		time.Sleep(2 * time.Millisecond)
	}
	r.firstOK = time.Since(start)
	if preload {
		// Measured once the whole store is in the cache: a load that
		// overlapped the preload would measure both.
		for {
			if b, _ := os.ReadFile(logFile); bytes.Contains(b, []byte(`msg="cache preloaded"`)) {
				break
			}
			if time.Since(start) > 5*time.Minute {
				t.Fatal("no \"cache preloaded\" line within 5 minutes of start")
			}
			time.Sleep(50 * time.Millisecond)
		}
		r.preloaded = time.Since(start)
	}
	r.rssReady = rss(t, n.cmd.Process.Pid)

	touched := map[string]bool{}
	var mu sync.Mutex
	pick := func() string {
		id := s.ids[mrand.IntN(len(s.ids))]
		mu.Lock()
		touched[id] = true
		mu.Unlock()
		return id
	}
	// A warm-up, not measured, as kmsbench does: connections, the Go
	// runtime, and the sweepers' first round, which kmsd starts beside
	// the first requests (it reads the due keys only: see prepare).
	run(t, n, warmup, conc, func() error {
		_, err := n.client.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(pick())})
		return err
	})
	r.describe = run(t, n, dur, conc, func() error {
		_, err := n.client.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(pick())})
		return err
	})
	plaintext := []byte("scale benchmark plaintext, 48 bytes long ......")
	r.encrypt = run(t, n, dur, conc, func() error {
		_, err := n.client.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String(pick()), Plaintext: plaintext})
		return err
	})
	if _, full := scaleKeys(t); full {
		r.describe1 = run(t, n, dur, 1, func() error {
			_, err := n.client.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(pick())})
			return err
		})
		r.encrypt1 = run(t, n, dur, 1, func() error {
			_, err := n.client.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String(pick()), Plaintext: plaintext})
			return err
		})
	}
	r.distinct = len(touched)
	r.rssAfter = rss(t, n.cmd.Process.Pid)

	// ListKeys: the first page, and the page 10,000 pages in (or, on a
	// smaller store, the last full page), each checked against the ids.
	const limit = 100
	lc := kms.New(kms.Options{
		Region:       region,
		BaseEndpoint: aws.String(n.endpoint),
		Credentials:  credentials.NewStaticCredentialsProvider(s.akid, s.secret, ""),
		Retryer:      e2etest.ClosedConnRetryer(),
	})
	r.deepPage = min(10000, s.n/limit)
	marker := s.sorted[(r.deepPage-1)*limit-1]
	// list calls ListKeys once after marker and checks the page is want.
	list := func(marker *string, want []string) time.Duration {
		for try := 0; ; try++ {
			t0 := time.Now()
			out, err := lc.ListKeys(ctx, &kms.ListKeysInput{Limit: aws.Int32(limit), Marker: marker})
			d := time.Since(t0)
			if err == nil {
				if len(out.Keys) != len(want) || aws.ToString(out.Keys[0].KeyId) != want[0] || aws.ToString(out.Keys[len(want)-1].KeyId) != want[len(want)-1] {
					t.Fatalf("ListKeys after %v: %d keys from %s, want %d from %s", aws.ToString(marker), len(out.Keys), aws.ToString(out.Keys[0].KeyId), len(want), want[0])
				}
				return d
			}
			// The SDK now and then fails to read a 200 answer on a
			// connection it closed itself (see e2etest.ClosedConnRetryer):
			// such a call is sent again and not timed.
			if !errors.Is(err, net.ErrClosed) || try == 5 {
				t.Fatal(err)
			}
		}
	}
	// The two pages alternate, so that the machine's noise falls on both
	// alike; the first 5 of each warm up and are not kept.
	i := (r.deepPage - 1) * limit
	var first, deep []time.Duration
	for j := 0; j < 30; j++ {
		a, b := list(nil, s.sorted[:limit]), list(aws.String(marker), s.sorted[i:i+limit])
		if j >= 5 {
			first, deep = append(first, a), append(deep, b)
		}
	}
	r.list1, r.listDeep = percentile(first, 50), percentile(deep, 50)
	return r
}

// run sends op from c workers for dur and measures it.
func run(t *testing.T, n *node, dur time.Duration, c int, op func() error) load {
	t.Helper()
	pid := n.cmd.Process.Pid
	cpu0 := cpuSeconds(t, pid)
	var pg0 float64
	if n.pgCPU != nil {
		pg0 = n.pgCPU()
	}
	var mu sync.Mutex
	var lat []time.Duration
	var firstErr error
	var wg sync.WaitGroup
	start := time.Now()
	end := start.Add(dur)
	for range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			for time.Now().Before(end) {
				t0 := time.Now()
				err := op()
				mine = append(mine, time.Since(t0))
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu := cpuSeconds(t, pid) - cpu0
	var pg float64
	if n.pgCPU != nil {
		pg = n.pgCPU() - pg0
	}
	if firstErr != nil {
		t.Fatal(firstErr)
	}
	l := load{requests: len(lat), p50: percentile(lat, 50), p99: percentile(lat, 99), throughput: float64(len(lat)) / elapsed.Seconds()}
	if len(lat) > 0 {
		l.cpuPerReq = time.Duration(cpu * float64(time.Second) / float64(len(lat)))
		l.pgPerReq = time.Duration(pg * float64(time.Second) / float64(len(lat)))
	}
	return l
}

func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[max(i, 0)]
}

// cpuSeconds is the CPU (utime+stime) process pid has used, in seconds.
func cpuSeconds(t *testing.T, pid int) float64 {
	st := e2etest.ReadProcStat(pid)
	if st.PPID == 0 {
		t.Fatalf("no /proc/%d/stat: kmsd is gone", pid)
	}
	return float64(st.Utime+st.Stime) / e2etest.ClockTicks()
}

// rss is VmRSS of process pid, in bytes.
func rss(t *testing.T, pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	t.Fatalf("no VmRSS in /proc/%d/status", pid)
	return 0
}

func TestScaleSQLite(t *testing.T)   { testScale(t, sqliteDriver) }
func TestScalePostgres(t *testing.T) { testScale(t, postgresDriver) }

// testScale compares kmsd on a large store with kmsd on a 1,000-key store
// of driver d: DescribeKey and Encrypt on random keys at the same speed
// (the issue asks at most 1.2× slower; CI, on a shared machine, checks
// 5× of the median, see below), ListKeys as fast deep in the list as on its first
// page, and a cold start under 10 s.
func testScale(t *testing.T, d driver) {
	n, full := scaleKeys(t)
	dur := 1500 * time.Millisecond
	if full {
		dur = 8 * time.Second
	}
	// KMSD_SCALE_SECONDS measures each operation longer than the
	// default: long enough to take in what runs in the background at
	// intervals (the last-use journal's merge, every 4 million uses
	// journaled or 10 minutes, lastuse.MergeUses).
	if s := os.Getenv("KMSD_SCALE_SECONDS"); s != "" {
		sec, err := strconv.Atoi(s)
		if err != nil || sec < 1 {
			t.Fatalf("KMSD_SCALE_SECONDS=%q: want a number of seconds >= 1", s)
		}
		dur = time.Duration(sec) * time.Second
	}
	small := prepare(t, d, smallKeys, full)
	large := prepare(t, d, n, full)
	if base := os.Getenv("KMSD_SCALE_BASE_BIN"); base != "" {
		compare(t, d.name, n, small, large, dur, base)
		return
	}
	// Generous margins: the machine is shared and each measurement short.
	// On the large store most random keys are read for the first time:
	// Encrypt, which the small store answers from its cache, pays a
	// storage read (~21 µs of CPU on SQLite: two leaf pages, kv's and
	// kv_big's), a decode (~3 µs) and its share of the key's first
	// last-use record (journaled, then merged into buckets every 4 million
	// uses or 10 minutes;
	// the 8 s default may end before the first merge, KMSD_SCALE_SECONDS
	// measures longer); DescribeKey, a management read, reads the store
	// on both. README, "Measuring a large store", has the figures. The margin catches what
	// grows with the number of keys (a scan per request would be 20× and
	// more), not the 1.2×, which is reported, not asserted. A CI
	// run over a margin measures both stores once more (other tests share
	// the cores) and keeps the better; a real regression fails both.
	const random, paging = 5, 3
	ratio := func(a, b time.Duration) float64 { return float64(a) / float64(b) }
	var rs, rl result
	for attempt := 1; ; attempt++ {
		rs = measure(t, kmsdBin, small, time.Second, dur)
		rl = measure(t, kmsdBin, large, time.Second, dur)
		report(t, d.name, n, rs, rl)
		over := ratio(rl.describe.p50, rs.describe.p50) > random || ratio(rl.encrypt.p50, rs.encrypt.p50) > random ||
			ratio(rl.listDeep, rl.list1) > paging
		if !over || full || attempt == 2 {
			break
		}
		t.Logf("%s: a ratio is over its margin: measuring again", d.name)
	}
	if q := ratio(rl.describe.p50, rs.describe.p50); q > random {
		t.Errorf("DescribeKey p50 with %d keys is %.2f× that with %d", n, q, smallKeys)
	}
	if q := ratio(rl.encrypt.p50, rs.encrypt.p50); q > random {
		t.Errorf("Encrypt p50 with %d keys is %.2f× that with %d", n, q, smallKeys)
	}
	if q := ratio(rl.listDeep, rl.list1); q > paging {
		t.Errorf("ListKeys page %d takes %.2f× page 1", rl.deepPage, q)
	}
	if rl.firstOK > 10*time.Second {
		t.Errorf("cold start on %d keys took %v, want under 10 s", n, rl.firstOK)
	}
}

// compare measures, on the same two stores, the kmsd this test built and
// the one at base (built from another tree, e.g. main before a change),
// KMSD_SCALE_ROUNDS times each (default 2), alternating which goes first
// so that the machine's drift falls on both; it logs every round and then
// each binary's ratios side by side. It asserts nothing: a timed
// comparison on a shared machine is reported, not judged.
func compare(t *testing.T, name string, n int, small, large *store, dur time.Duration, base string) {
	rounds := 2
	if s := os.Getenv("KMSD_SCALE_ROUNDS"); s != "" {
		var err error
		if rounds, err = strconv.Atoi(s); err != nil || rounds < 1 {
			t.Fatalf("KMSD_SCALE_ROUNDS=%q: want a number of rounds >= 1", s)
		}
	}
	bins := []struct{ label, path string }{{"base", base}, {"new", kmsdBin}}
	ratio := func(a, b time.Duration) float64 { return float64(a) / float64(b) }
	var lines []string
	for round := range rounds {
		for i := range bins {
			b := bins[(i+round)%2]
			rs := measure(t, b.path, small, time.Second, dur)
			rl := measure(t, b.path, large, time.Second, dur)
			report(t, name+" "+b.label, n, rs, rl)
			lines = append(lines, fmt.Sprintf("round %d %-4s: DescribeKey p50 %.2f CPU %.2f; Encrypt p50 %.2f CPU %.2f; ListKeys deep/first %.2f; cold start %v, RSS after %d MiB",
				round+1, b.label, ratio(rl.describe.p50, rs.describe.p50), ratio(rl.describe.cpuPerReq, rs.describe.cpuPerReq),
				ratio(rl.encrypt.p50, rs.encrypt.p50), ratio(rl.encrypt.cpuPerReq, rs.encrypt.cpuPerReq),
				ratio(rl.listDeep, rl.list1), rl.firstOK.Round(time.Millisecond), rl.rssAfter>>20))
		}
	}
	slices.Sort(lines)
	t.Logf("%s %d/%d keys, base %s vs new:\n%s", name, n, smallKeys, base, strings.Join(lines, "\n"))
}

// report logs the measurements of the small store rs and the large rl.
func report(t *testing.T, name string, n int, rs, rl result) {
	t.Helper()
	for _, r := range []result{rs, rl} {
		t.Logf("%s %7d keys: ready %v, first DescribeKey %v; RSS ready %d MiB, after load %d MiB (%d distinct keys touched)",
			name, r.keys, r.ready.Round(time.Millisecond), r.firstOK.Round(time.Millisecond), r.rssReady>>20, r.rssAfter>>20, r.distinct)
		if r.preloaded > 0 {
			t.Logf("%s %7d keys: cache preloaded %v after start", name, r.keys, r.preloaded.Round(time.Millisecond))
		}
		for _, x := range []struct {
			op string
			c  int
			l  load
		}{{"DescribeKey", conc, r.describe}, {"Encrypt", conc, r.encrypt}, {"DescribeKey", 1, r.describe1}, {"Encrypt", 1, r.encrypt1}} {
			if x.l.requests == 0 {
				continue
			}
			pg := ""
			if x.l.pgPerReq > 0 {
				pg = fmt.Sprintf(", PostgreSQL CPU %v/req", x.l.pgPerReq.Round(time.Microsecond))
			}
			t.Logf("%s %7d keys: %-11s c=%d: %6d req, %7.0f/s, p50 %v, p99 %v, server CPU %v/req%s",
				name, r.keys, x.op, x.c, x.l.requests, x.l.throughput, x.l.p50.Round(time.Microsecond), x.l.p99.Round(time.Microsecond), x.l.cpuPerReq.Round(time.Microsecond), pg)
		}
		t.Logf("%s %7d keys: ListKeys page 1 %v, page %d %v (median of 25)", name, r.keys, r.list1.Round(time.Microsecond), r.deepPage, r.listDeep.Round(time.Microsecond))
	}
	ratio := func(a, b time.Duration) float64 { return float64(a) / float64(b) }
	t.Logf("%s ratios %d/%d keys: DescribeKey p50 %.2f p99 %.2f CPU %.2f; Encrypt p50 %.2f p99 %.2f CPU %.2f; ListKeys deep/first %.2f (small store %.2f)",
		name, n, smallKeys,
		ratio(rl.describe.p50, rs.describe.p50), ratio(rl.describe.p99, rs.describe.p99), ratio(rl.describe.cpuPerReq, rs.describe.cpuPerReq),
		ratio(rl.encrypt.p50, rs.encrypt.p50), ratio(rl.encrypt.p99, rs.encrypt.p99), ratio(rl.encrypt.cpuPerReq, rs.encrypt.cpuPerReq),
		ratio(rl.listDeep, rl.list1), ratio(rs.listDeep, rs.list1))
	if rl.encrypt.pgPerReq > 0 && rs.encrypt.pgPerReq > 0 {
		both := func(l load) time.Duration { return l.cpuPerReq + l.pgPerReq }
		t.Logf("%s ratios %d/%d keys, CPU of kmsd and PostgreSQL together: DescribeKey %.2f; Encrypt %.2f",
			name, n, smallKeys, ratio(both(rl.describe), both(rs.describe)), ratio(both(rl.encrypt), both(rs.encrypt)))
	}
	if rl.describe1.requests > 0 && rs.describe1.requests > 0 {
		t.Logf("%s ratios %d/%d keys, one client: DescribeKey p50 %.2f CPU %.2f; Encrypt p50 %.2f CPU %.2f",
			name, n, smallKeys,
			ratio(rl.describe1.p50, rs.describe1.p50), ratio(rl.describe1.cpuPerReq, rs.describe1.cpuPerReq),
			ratio(rl.encrypt1.p50, rs.encrypt1.p50), ratio(rl.encrypt1.cpuPerReq, rs.encrypt1.cpuPerReq))
	}
}

// scaleArgs is KMSD_SCALE_ARGS, more kmsd flags for the measured nodes
// (space-separated; e.g. "--cache-size 1100000 --cache-preload on", the
// million-key configuration of README's scale section), and whether they
// turn the cache preload on.
func scaleArgs(t *testing.T) (args []string, preload bool) {
	args = strings.Fields(os.Getenv("KMSD_SCALE_ARGS"))
	for i, a := range args {
		if a == "--cache-preload=on" || (a == "--cache-preload" && i+1 < len(args) && args[i+1] == "on") {
			preload = true
		}
	}
	return args, preload
}
