// Package load puts load on several kmsd nodes sharing one PostgreSQL
// database (MULTINODE.md §5.3, §8): A11, the request quota of a custom
// key store shared by the nodes (TestA11StoreQuota, in CI; and
// TestA11JoinUnderLoad, a node joining busy ones, issue #16), and A10, the
// throughput of one node against three and what each operation costs
// PostgreSQL (TestA10Throughput, a measurement run only with KMSD_A10=1).
//
// Load comes from cmd/kmsbench, built without the race detector whatever
// this test's build, so that the client's cost does not count as kmsd's;
// kmsd, xks-proxy and kmsbench are real processes the tests start on free
// loopback ports and stop by pid. On a 2-core machine shared with other
// tests, CI runs A11 at a sixth of AWS's rates (a 300 req/s quota, 200
// req/s offered to each of three nodes) and asserts accepted/quota within
// [0.9, 1.05]; KMSD_MULTINODE_FULL=1 runs MULTINODE's numbers (1,800 req/s,
// 1,000 offered to each node, [1,620, 1,890] accepted).
package load

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/kmsd/kmsd/e2e/e2etest"
	"github.com/kmsd/kmsd/internal/storage/postgres/pgtest"
)

var kmsdBin, proxyBin, benchBin string

func TestMain(m *testing.M) {
	code := e2etest.Run(m, map[string]*string{"kmsd": &kmsdBin, "xks-proxy": &proxyBin, "kmsbench": &benchBin})
	if err := pgtest.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		code = 1
	}
	os.Exit(code)
}

const region = "us-east-1"

// full reports whether MULTINODE's full-size runs were asked for.
func full() bool { return os.Getenv("KMSD_MULTINODE_FULL") == "1" }

// rootKey is the root key every node of a test shares (base64 of 32 bytes).
const rootKey = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="

// env is kmsd's environment: the host's without AWS_/KMSD_/PG settings,
// plus extra.
func env(extra ...string) []string { return e2etest.CleanEnv(extra...) }

// startNodes starts n nodes on the database at url, one after another
// (the first makes the administrator; the others load it), with args.
func startNodes(t *testing.T, url string, n int, args ...string) []*e2etest.KMSD {
	return startNodesEnv(t, url, n, nil, args...)
}

// startNodesEnv is startNodes with more environment for the nodes.
func startNodesEnv(t *testing.T, url string, n int, extra []string, args ...string) []*e2etest.KMSD {
	t.Helper()
	var nodes []*e2etest.KMSD
	for i := range n {
		a := append([]string{"--node-id", fmt.Sprint("node-", i), "--log-level", "info"}, args...)
		nodes = append(nodes, e2etest.StartKMSD(t, e2etest.KMSDConfig{Bin: kmsdBin,
			Env: env(append([]string{"KMSD_ROOT_KEY=" + rootKey, "KMSD_DATABASE_URL=" + url}, extra...)...), Args: a}))
	}
	return nodes
}

// creds reads the administrator's access key from the credentials file
// the first node wrote.
func creds(t *testing.T, file string) (akid, secret string) {
	t.Helper()
	b, err := os.ReadFile(file)
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
		t.Fatalf("no access key in %s", file)
	}
	return akid, secret
}

// client is an aws-sdk-go-v2 client of node k with the credentials in
// file; no retries, so every answer is seen.
func client(t *testing.T, file string, k *e2etest.KMSD) *kms.Client {
	return e2etest.KMSClient(t, file, region, k.Endpoint)
}

// awsCLI runs the aws CLI v2 against endpoint with the credentials in
// file, which must succeed, and returns its JSON output decoded.
func awsCLI(t *testing.T, file, endpoint string, args ...string) map[string]any {
	return e2etest.AWSKMS(t, file, region, endpoint, args...)
}

// waitLog waits until k's log, from byte offset from on, holds s, and
// returns when it saw it.
func waitLog(t *testing.T, k *e2etest.KMSD, from int, s string, timeout time.Duration) time.Time {
	t.Helper()
	for deadline := time.Now().Add(timeout); ; time.Sleep(20 * time.Millisecond) {
		if l := k.Log(); len(l) > from && strings.Contains(l[from:], s) {
			return time.Now()
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no %q in the log after %s", k.Endpoint, s, timeout)
		}
	}
}

// benchResult is the part of kmsbench's -json report the tests read.
type benchResult struct {
	Op             string           `json:"op"`
	Concurrency    int              `json:"concurrency"`
	Seconds        float64          `json:"seconds"`
	Requests       int64            `json:"requests"`
	Errors         int64            `json:"errors"`
	ErrorTypes     map[string]int64 `json:"error_types"`
	WarmupRequests int64            `json:"warmup_requests"`
	OpsPerSec      float64          `json:"ops_per_sec"`
	P50us          float64          `json:"p50_us"`
	P99us          float64          `json:"p99_us"`
}

// bench runs kmsbench against endpoints (comma-separated) with the
// administrator's key and args, and returns its results. It is not pinned
// to a CPU (several run at once on a shared machine).
func bench(ctx context.Context, t *testing.T, akid, secret, endpoints string, args ...string) ([]benchResult, error) {
	out := filepath.Join(t.TempDir(), "bench.json")
	cmd := exec.CommandContext(ctx, benchBin, append([]string{"-endpoint", endpoints, "-pin=false", "-json", out, "-errors", "0"}, args...)...)
	cmd.Env = append(env(), "AWS_ACCESS_KEY_ID="+akid, "AWS_SECRET_ACCESS_KEY="+secret)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("kmsbench %s: %v\n%s%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	b, err := os.ReadFile(out)
	if err != nil {
		return nil, err
	}
	var rep struct{ Results []benchResult }
	if err := json.Unmarshal(b, &rep); err != nil {
		return nil, err
	}
	if s := strings.TrimSpace(stderr.String()); s != "" {
		t.Logf("kmsbench %s stderr:\n%s", endpoints, s)
	}
	return rep.Results, nil
}

// benchAll runs one kmsbench per endpoint at once, endpoint i with
// args(i), and returns the first result of each, in order.
func benchAll(t *testing.T, akid, secret string, endpoints []string, args func(i int) []string) []benchResult {
	t.Helper()
	rs := make([]benchResult, len(endpoints))
	errs := make([]error, len(endpoints))
	var wg sync.WaitGroup
	for i, ep := range endpoints {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := bench(t.Context(), t, akid, secret, ep, args(i)...)
			if err == nil && len(r) == 0 {
				err = errors.New("kmsbench reported no result")
			}
			if err == nil {
				rs[i] = r[0]
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	return rs
}
