package load

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/smithy-go"

	"github.com/kmsd/kmsd/e2e/e2etest"
	"github.com/kmsd/kmsd/internal/storage/postgres/pgtest"
)

// The XKS proxy's credential and key file passphrase (test values).
const (
	xksAKID   = "AKIDAAAAAAAAAAAAAAAAAAAA"
	xksSecret = "PleaseReplaceThisWithSomeSecretOfLength43To64"
	xksPass   = "e2e key file passphrase"
)

// startXKS makes a development CA and certificate and a key file with the
// key k1, and starts xks-proxy on them with extra arguments; it returns
// the proxy and the CA bundle kmsd must trust.
func startXKS(t *testing.T, extra ...string) (*e2etest.Proxy, string) {
	t.Helper()
	dir := t.TempDir()
	pki, keys, sf := filepath.Join(dir, "pki"), filepath.Join(dir, "keys.json"), filepath.Join(dir, "secret")
	run := func(args ...string) {
		cmd := exec.Command(proxyBin, args...)
		cmd.Env = append(env(), "XKS_PROXY_KEYS_PASSPHRASE="+xksPass)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("xks-proxy %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("dev-cert", "--hostname", "localhost,127.0.0.1", "--out-dir", pki)
	run("keys", "create", "--keys-file", keys, "--id", "k1", "--kdf-iterations", "2000")
	if err := os.WriteFile(sf, []byte(xksSecret), 0o600); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"--access-key-id", xksAKID, "--secret-access-key-file", sf, "--keys-file", keys,
		"--tls-cert", filepath.Join(pki, "cert.pem"), "--tls-key", filepath.Join(pki, "key.pem")}, extra...)
	p := e2etest.StartProxy(t, proxyBin, []string{"XKS_PROXY_KEYS_PASSPHRASE=" + xksPass}, args...)
	return p, filepath.Join(pki, "ca.pem")
}

// quotaRun is what one kmsbench run per node measured, summed.
type quotaRun struct {
	offered, accepted float64 // requests a second, all nodes
	acceptedN         float64 // requests the quota let through
	throttled         int64
	proxyFailed       int64 // let through, then failed by the proxy
	other             int64 // any other failure
	perNode           []string
}

func sumQuota(rs []benchResult) quotaRun {
	var q quotaRun
	for i, r := range rs {
		thr, inv := r.ErrorTypes["ThrottlingException"], r.ErrorTypes["KMSInvalidStateException"]
		ok := r.Requests - thr
		q.offered += float64(r.Requests) / r.Seconds
		q.accepted += float64(ok) / r.Seconds
		q.acceptedN += float64(ok)
		q.throttled += thr
		q.proxyFailed += inv
		q.other += r.Errors - thr - inv
		q.perNode = append(q.perNode, fmt.Sprintf("node-%d: %d sent in %.1fs (%.0f/s), %d accepted (%.0f/s), %d throttled; errors %v",
			i, r.Requests, r.Seconds, float64(r.Requests)/r.Seconds, ok, float64(ok)/r.Seconds, thr, r.ErrorTypes))
	}
	return q
}

// TestA11StoreQuota is MULTINODE.md §8 A11: three nodes share one external
// key store's request quota (--custom-key-store-rps); the two started after
// the first each held their quota until the running nodes counted them
// (checkJoinHeld). With more offered to
// every node than its share, in open loop (one kmsbench process per node,
// Encrypt on a key of the store), the nodes together accept the quota —
// within [0.9, 1.05] × quota after a 3 s warm-up — and answer
// ThrottlingException for the rest, nothing else. Then the same with
// skewed demand (4/3 of the quota to node 0, a fifteenth to each other):
// shares follow demand, so together they still accept the quota, and the
// small nodes lose almost nothing. Then one node is killed (kill -9):
// within the node lease's TTL the two others take half the quota each and,
// offered the dead node's load too (as a load balancer would send it),
// together accept the whole quota again.
//
// CI: quota 300 req/s, 200 req/s offered to each node for 3 s + 10 s;
// 400/20/20 for 6 s + 10 s; 2 × 300 for 4 s + 6 s after the kill.
// KMSD_MULTINODE_FULL=1: quota 1,800, 1,000 req/s to each node for 3 s +
// 17 s (MULTINODE's 20 s), accepted within [1,620, 1,890]; 2,400/120/120;
// then 2 × 1,500 for 4 s + 10 s. The warm-up must outlast a full bucket
// (one second of the node's share) drained by the excess offered — 100
// tokens at 100/s in CI, 900 at 600/s after the kill in the full run — and
// the skewed one also the shares' move (a few heartbeats). The offered
// rate is checked too: a machine that cannot deliver it fails the test
// rather than passing it for the wrong reason.
func TestA11StoreQuota(t *testing.T) {
	quota, perNode := 300, 200
	warm, dur, dur2 := 3*time.Second, 10*time.Second, 6*time.Second
	if full() {
		quota, perNode = 1800, 1000
		dur, dur2 = 17*time.Second, 10*time.Second
	}
	const ttl = 5 * time.Second // node leases: a dead node's share returns within about this
	p, ca := startXKS(t)
	url := pgtest.URL(t)
	nodes := startNodes(t, url, 3, "--xks-ca-bundle", ca, "--custom-key-store-rps", fmt.Sprint(quota),
		"--lease-ttl", ttl.String(), "--xks-health-interval", "0")
	share3 := fmt.Sprintf(`msg="custom key store quota shared" nodes=3 rps=%v`, float64(quota)/3)
	for _, k := range nodes {
		waitLog(t, k, 0, share3, 2*ttl)
	}
	checkJoinHeld(t, nodes)
	file, key := xksStoreKey(t, p, nodes)
	akid, secret := creds(t, file)

	// check checks one run. Requests the quota let through count as
	// accepted even when the proxy then failed them: on an overloaded
	// machine a proxy call can pass XKS's 250 ms budget (kmsd answers
	// KMSInvalidStateException, as AWS does for a proxy timeout). Such
	// failures are logged with kmsd's cause and may be at most 5% of them
	// (CI runs on two shared cores saw up to 1.2%); more means the machine
	// is too loaded for the numbers to mean anything.
	check := func(what string, rs []benchResult, offered float64) {
		t.Helper()
		q := sumQuota(rs)
		for _, l := range q.perNode {
			t.Logf("%s: %s", what, l)
		}
		t.Logf("%s: offered %.0f req/s, accepted %.0f req/s = %.3f × the quota of %d; %d ThrottlingException, %d failed by the proxy",
			what, q.offered, q.accepted, q.accepted/float64(quota), quota, q.throttled, q.proxyFailed)
		if q.proxyFailed > 0 {
			for i, k := range nodes {
				n := 0
				for _, l := range strings.Split(k.Log(), "\n") {
					if strings.Contains(l, "XKS proxy call failed") && n < 3 {
						t.Logf("node-%d: %s", i, l)
						n++
					}
				}
			}
		}
		if q.other != 0 {
			t.Errorf("%s: %d errors other than ThrottlingException and KMSInvalidStateException", what, q.other)
		}
		if float64(q.proxyFailed) > 0.05*q.acceptedN {
			t.Errorf("%s: %d of %.0f accepted requests failed by the proxy, want at most 5%%", what, q.proxyFailed, q.acceptedN)
		}
		if q.offered < 0.9*offered {
			t.Errorf("%s: the generators sent %.0f req/s, not the %.0f asked for: this machine cannot offer the load", what, q.offered, offered)
		}
		if q.accepted < 0.9*float64(quota) || q.accepted > 1.05*float64(quota) {
			t.Errorf("%s: accepted %.0f req/s, want [%.0f, %.0f] (0.9 to 1.05 × the quota)", what, q.accepted, 0.9*float64(quota), 1.05*float64(quota))
		}
		if q.throttled == 0 {
			t.Errorf("%s: nothing throttled with %.0f req/s offered against a quota of %d", what, q.offered, quota)
		}
	}
	// args offers rates[i] to node i.
	args := func(warm, dur time.Duration, rates ...int) func(i int) []string {
		return func(i int) []string {
			// Enough workers for the rate at 16 ms a request: an open
			// loop that runs out of workers queues in kmsbench and
			// offers less.
			return []string{"-ops", "encrypt", "-key-id", key, "-rate", fmt.Sprint(rates[i]), "-c", fmt.Sprint(max(32, rates[i]/16)),
				"-warmup", warm.String(), "-duration", dur.String()}
		}
	}
	var eps []string
	for _, k := range nodes {
		eps = append(eps, k.Endpoint)
	}
	check("3 nodes", benchAll(t, akid, secret, eps, args(warm, dur, perNode, perNode, perNode)), float64(3*perNode))

	// Skewed: node 0 is asked 4/3 of the quota, the others a fifteenth
	// each. Shares follow demand (smoothed over heartbeats, a fifth of the
	// TTL apart), so node 0 may take most of the quota; with equal shares
	// the nodes would accept less than half of it.
	big, small := 4*quota/3, quota/15
	// The last run left every bucket empty; kmsbench's setup makes one
	// Encrypt, which must not be throttled.
	time.Sleep(time.Second)
	rs := benchAll(t, akid, secret, eps, args(6*time.Second, dur, big, small, small))
	check("3 nodes, skewed", rs, float64(big+2*small))
	for i, r := range rs[1:] {
		if ok := r.Requests - r.Errors; float64(ok) < 0.9*float64(r.Requests) {
			t.Errorf("node-%d, asked %d req/s: %d of %d accepted, want at least 90%% (its demand's share)", i+1, small, ok, r.Requests)
		}
	}

	// kill -9 of node 2: its lease expires, the others see two live nodes
	// and take half each.
	from := []int{len(nodes[0].Log()), len(nodes[1].Log())}
	killed := time.Now()
	nodes[2].Kill()
	share2 := fmt.Sprintf(`msg="custom key store quota shared" nodes=2 rps=%v`, float64(quota)/2)
	var took time.Duration
	for i, k := range nodes[:2] {
		at := waitLog(t, k, from[i], share2, 3*ttl)
		took = max(took, at.Sub(killed))
	}
	t.Logf("after kill -9 of node-2, both others took half the quota within %s (lease TTL %s)", took.Round(10*time.Millisecond), ttl)
	// Measured 4.6–6.1 s; the slack is for a loaded machine.
	if bound := ttl + 2*ttl/5 + 3*time.Second; took > bound {
		t.Errorf("the dead node's share came back after %s, want within %s (TTL + two heartbeats + 3 s)", took, bound)
	}
	check("2 nodes after the kill", benchAll(t, akid, secret, eps[:2], args(4*time.Second, dur2, 3*perNode/2, 3*perNode/2)), float64(3*perNode))
}

// checkJoinHeld checks that each node that joined running nodes — its
// first "quota shared" line counts more than one node — held its quota
// until they counted it (issue #16): its log says so first. A node that
// started alone held nothing. It logs how long each joiner held, by the
// log's timestamps.
func checkJoinHeld(t *testing.T, nodes []*e2etest.KMSD) {
	t.Helper()
	const held, shared = `msg="custom key store quota held until every other node counts this one"`, `msg="custom key store quota shared"`
	for i, k := range nodes {
		l := k.Log()
		h, s := strings.Index(l, held), strings.Index(l, shared)
		if s < 0 {
			t.Errorf("node-%d: no %s in its log", i, shared)
			continue
		}
		alone := strings.HasPrefix(l[s+len(shared):], " nodes=1 ")
		switch {
		case alone && h >= 0:
			t.Errorf("node-%d started alone but held its quota: %s", i, logLine(l, h))
		case !alone && (h < 0 || h > s):
			t.Errorf("node-%d joined running nodes but took its share without holding first: %s", i, logLine(l, s))
		case !alone:
			t.Logf("node-%d joined running nodes and held its quota for %s", i, logTime(l, s).Sub(logTime(l, h)).Round(time.Millisecond))
		}
	}
}

// logLine is the line of log l at byte i.
func logLine(l string, i int) string {
	start := strings.LastIndexByte(l[:i], '\n') + 1
	end := strings.IndexByte(l[i:], '\n')
	if end < 0 {
		return l[start:]
	}
	return l[start : i+end]
}

// logTime is the time= of the line of log l at byte i (zero if it has
// none).
func logTime(l string, i int) time.Time {
	f := strings.Fields(logLine(l, i))
	for _, x := range f {
		if v, ok := strings.CutPrefix(x, "time="); ok {
			at, _ := time.Parse(time.RFC3339Nano, v)
			return at
		}
	}
	return time.Time{}
}

// xksStoreKey makes an external key store on proxy p through the first of
// nodes, connects it, and makes a key in it that every node then encrypts
// with; it returns the administrator's credentials file and the key id.
func xksStoreKey(t *testing.T, p *e2etest.Proxy, nodes []*e2etest.KMSD) (file, key string) {
	t.Helper()
	file = nodes[0].Creds

	// The store, connected through node 0 and seen CONNECTED by all.
	req, _ := json.Marshal(map[string]any{
		"CustomKeyStoreName": "a11", "CustomKeyStoreType": "EXTERNAL_KEY_STORE", "XksProxyConnectivity": "PUBLIC_ENDPOINT",
		"XksProxyUriEndpoint": "https://localhost:" + p.Port(), "XksProxyUriPath": "/kms/xks/v1",
		"XksProxyAuthenticationCredential": map[string]string{"AccessKeyId": xksAKID, "RawSecretAccessKey": xksSecret},
	})
	id := awsCLI(t, file, nodes[0].Endpoint, "create-custom-key-store", "--cli-input-json", string(req))["CustomKeyStoreId"].(string)
	awsCLI(t, file, nodes[0].Endpoint, "connect-custom-key-store", "--custom-key-store-id", id)
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		st := awsCLI(t, file, nodes[0].Endpoint, "describe-custom-key-stores", "--custom-key-store-id", id)["CustomKeyStores"].([]any)[0].(map[string]any)
		if st["ConnectionState"] == "CONNECTED" {
			break
		}
		if s := st["ConnectionState"]; s != "CONNECTING" || time.Now().After(deadline) {
			t.Fatalf("store %s: %v", id, st)
		}
	}
	key = awsCLI(t, file, nodes[0].Endpoint, "create-key", "--origin", "EXTERNAL_KEY_STORE", "--custom-key-store-id", id,
		"--xks-key-id", "k1")["KeyMetadata"].(map[string]any)["KeyId"].(string)
	for i, k := range nodes {
		c := client(t, file, k)
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			_, err := c.Encrypt(t.Context(), &kms.EncryptInput{KeyId: aws.String(key), Plaintext: []byte("a11")})
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("node-%d: Encrypt with the store's key: %v", i, err)
			}
		}
	}

	return file, key
}

// TestA11JoinUnderLoad: a node that joins two nodes busy with one external
// key store (issue #16) does not make the cluster accept more than the
// store's quota. Two nodes are offered 200 req/s each against a quota of
// 300 (kmsbench, open loop); 2 s in, a third node starts and is offered
// 200 req/s at once (the test's own client, no retries). The proxy counts
// what the nodes let through (xks_proxy_requests_total, scraped every
// 200 ms): over every window of at least 1 s from 2 s into the load on —
// past the buckets full at its start — the rate is at most 1.15 × the quota
// (each window timed so that a slow scrape cannot inflate it). The joiner
// answers ThrottlingException until the others count it (its log says it
// held), then accepts its share. This guards the aggregate end to end but
// cannot tell the fix from the old code on a busy store: there the joiner
// used to take only a tenth of its equal share early (1 + 0.1/3 of the
// quota; measured 1.113× with the hold disabled, 1.053× with it), and the
// whole quota only before its first heartbeat, which ends before its
// listener opens. internal/server's TestQuotaJoinNeverOvershoots is the
// exact check.
func TestA11JoinUnderLoad(t *testing.T) {
	const quota, perNode = 300, 200
	const ttl = 5 * time.Second
	metrics := e2etest.FreeAddr(t)
	p, ca := startXKS(t, "--metrics-listen", metrics)
	url := pgtest.URL(t)
	args := []string{"--xks-ca-bundle", ca, "--custom-key-store-rps", fmt.Sprint(quota), "--lease-ttl", ttl.String(), "--xks-health-interval", "0"}
	nodes := startNodes(t, url, 2, args...)
	for _, k := range nodes {
		waitLog(t, k, 0, `msg="custom key store quota shared" nodes=2`, 2*ttl)
	}
	file, key := xksStoreKey(t, p, nodes)
	akid, secret := creds(t, file)

	// The proxy's count of Encrypts answered OK, every 200 ms: read at
	// some instant between before and after (a scrape on a loaded machine
	// may take a while).
	type sample struct {
		before, after time.Time
		n             float64
	}
	var (
		mu      sync.Mutex
		samples []sample
	)
	scrape := func() (float64, error) {
		resp, err := http.Get("http://" + metrics + "/metrics")
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			return 0, err
		}
		var n float64
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "xks_proxy_requests_total{") && strings.Contains(strings.ToLower(l), `operation="encrypt"`) && strings.Contains(l, `outcome="OK"`) {
				v, err := strconv.ParseFloat(l[strings.LastIndexByte(l, ' ')+1:], 64)
				if err != nil {
					return 0, err
				}
				n += v
			}
		}
		return n, nil
	}
	ctx, stop := context.WithCancel(t.Context())
	defer stop()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for tick := time.NewTicker(200 * time.Millisecond); ctx.Err() == nil; <-tick.C {
			before := time.Now()
			if n, err := scrape(); err == nil {
				mu.Lock()
				samples = append(samples, sample{before, time.Now(), n})
				mu.Unlock()
			}
		}
	}()

	// The two nodes' load, in open loop for dur.
	start := time.Now()
	const dur = 10 * time.Second
	rs := make([]benchResult, 2)
	errs := make([]error, 2)
	var bwg sync.WaitGroup
	for i, k := range nodes {
		bwg.Add(1)
		go func() {
			defer bwg.Done()
			r, err := bench(ctx, t, akid, secret, k.Endpoint, "-ops", "encrypt", "-key-id", key, "-rate", fmt.Sprint(perNode),
				"-c", "32", "-warmup", "0s", "-duration", dur.String())
			if err == nil && len(r) == 0 {
				err = errors.New("kmsbench reported no result")
			}
			if err == nil {
				rs[i] = r[0]
			}
			errs[i] = err
		}()
	}

	// The joiner: started 2 s into the load, offered perNode req/s from
	// the moment it answers, until the others' load ends.
	time.Sleep(2 * time.Second)
	j := e2etest.StartKMSD(t, e2etest.KMSDConfig{Bin: kmsdBin, Env: env("KMSD_ROOT_KEY="+rootKey, "KMSD_DATABASE_URL="+url),
		Args: append([]string{"--node-id", "node-2", "--log-level", "info"}, args...)})
	c := client(t, file, j)
	var joinOK, joinThrottled, joinOther int64
	var jwg sync.WaitGroup
	var jmu sync.Mutex
	for at := time.Now(); at.Before(start.Add(dur)); at = at.Add(time.Second / perNode) {
		time.Sleep(time.Until(at))
		jwg.Add(1)
		go func() {
			defer jwg.Done()
			_, err := c.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String(key), Plaintext: []byte("join")})
			jmu.Lock()
			defer jmu.Unlock()
			var ae smithy.APIError
			switch {
			case err == nil:
				joinOK++
			case errors.As(err, &ae) && ae.ErrorCode() == "ThrottlingException":
				joinThrottled++
			default:
				joinOther++
				if joinOther <= 3 {
					t.Logf("node-2: Encrypt: %v", err)
				}
			}
		}()
	}
	jwg.Wait()
	bwg.Wait()
	time.Sleep(300 * time.Millisecond) // a last scrape
	stop()
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	nodes = append(nodes, j)
	for i, r := range rs {
		t.Logf("node-%d: %d sent in %.1fs, %d errors %v", i, r.Requests, r.Seconds, r.Errors, r.ErrorTypes)
	}
	t.Logf("node-2 (joined 2 s in): %d accepted, %d throttled, %d other errors", joinOK, joinThrottled, joinOther)
	checkJoinHeld(t, nodes)
	if joinOther > 0 {
		t.Errorf("node-2: %d errors other than ThrottlingException", joinOther)
	}
	if joinThrottled == 0 || joinOK == 0 {
		t.Errorf("node-2: %d accepted, %d throttled; want both (it holds, then takes its share)", joinOK, joinThrottled)
	}

	// Every window of at least 1 s between samples, from 2 s in. The
	// counts were read at most b.after-a.before apart: the rate over
	// that span is the least the nodes can have let through, so a
	// scrape delayed by the machine cannot make a window look faster
	// than it was.
	mu.Lock()
	defer mu.Unlock()
	var worst float64
	var worstAt time.Duration
	for i, a := range samples {
		if a.before.Before(start.Add(2 * time.Second)) {
			continue
		}
		for _, b := range samples[i+1:] {
			if b.before.Sub(a.after) >= time.Second {
				if r := (b.n - a.n) / b.after.Sub(a.before).Seconds(); r > worst {
					worst, worstAt = r, a.before.Sub(start)
				}
				break
			}
		}
	}
	t.Logf("the nodes together let through at most %.0f req/s over a window of 1 s (%.3f × the quota of %d), %s into the load; %d samples",
		worst, worst/quota, quota, worstAt.Round(100*time.Millisecond), len(samples))
	if worst > 1.15*quota {
		t.Errorf("the nodes let through %.0f req/s over a second from %s into the load, want at most %.0f (1.15 × the quota)", worst, worstAt, 1.15*quota)
	}
	if worst < 0.5*quota {
		t.Errorf("the nodes let through at most %.0f req/s over any second: the load did not reach the quota", worst)
	}
}
