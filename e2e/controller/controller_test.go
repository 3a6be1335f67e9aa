// Package controller tests several kmsd nodes on one PostgreSQL database
// (internal/storage/postgres/pgtest): one controller elected by a fenced
// lease runs the background duties; when it is killed (kill -9) or paused
// (SIGSTOP) past its lease, another node takes over with a higher epoch,
// and a due duty (imported key material expiry) is done exactly once.
// State is read with `kmsd status --output json` and the nodes' metrics.
package controller

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/kmsd/kmsd/e2e/e2etest"
	"github.com/kmsd/kmsd/internal/controller"
	"github.com/kmsd/kmsd/internal/storage/postgres/pgtest"
)

var kmsdBin string

func TestMain(m *testing.M) {
	code := e2etest.Run(m, map[string]*string{"kmsd": &kmsdBin})
	if err := pgtest.Stop(); err != nil {
		code = 1
	}
	os.Exit(code)
}

const (
	region = "us-east-1"
	akid   = "AKIAE2EMULTINODE0001"
	secret = "e2eMultinodeAdminSecretKey/0123456789abc"
)

// ttl is the lease TTL the nodes run with: short (2s), to keep the test
// short, unless KMSD_TEST_LEASE_TTL says otherwise (15s, the default of
// kmsd, for MULTINODE.md A5's 20 s bound); takeover is bounded by about
// ttl plus a retry.
var ttl = func() time.Duration {
	if v := os.Getenv("KMSD_TEST_LEASE_TTL"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < time.Second {
			panic("KMSD_TEST_LEASE_TTL: want a duration of at least 1s")
		}
		return d
	}
	return 2 * time.Second
}()

// cluster is kmsd nodes sharing one database.
type cluster struct {
	t     *testing.T
	url   string
	env   []string
	nodes map[string]*node
}

type node struct {
	id      string
	k       *e2etest.KMSD
	metrics string // host:port of /metrics
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

func newCluster(t *testing.T, ids ...string) *cluster {
	k := make([]byte, 32)
	rand.Read(k)
	url := pgtest.URL(t)
	c := &cluster{t: t, url: url, nodes: map[string]*node{},
		env: env("KMSD_ROOT_KEY="+base64.StdEncoding.EncodeToString(k), "KMSD_DATABASE_URL="+url,
			"KMSD_ADMIN_ACCESS_KEY_ID="+akid, "KMSD_ADMIN_SECRET_ACCESS_KEY="+secret)}
	for _, id := range ids {
		m := e2etest.FreeAddr(t)
		c.nodes[id] = &node{id: id, metrics: m, k: e2etest.StartKMSD(t, e2etest.KMSDConfig{Bin: kmsdBin, Env: c.env,
			Args: []string{"--node-id", id, "--lease-ttl", ttl.String(), "--sweep-interval", "500ms", "--metrics-listen", m}})}
	}
	return c
}

// status runs `kmsd status --output json` on the cluster's database.
func (c *cluster) status() *controller.Status {
	c.t.Helper()
	cmd := exec.Command(kmsdBin, "status", "--output", "json")
	cmd.Env = env("KMSD_DATABASE_URL=" + c.url)
	out, err := cmd.Output()
	if err != nil {
		c.t.Fatalf("kmsd status: %v %s", err, stderr(err))
	}
	var s controller.Status
	if err := json.Unmarshal(out, &s); err != nil {
		c.t.Fatalf("kmsd status output %q: %v", out, err)
	}
	return &s
}

func stderr(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		return string(ee.Stderr)
	}
	return ""
}

// metric reads one sample of the node's /metrics (the first line whose
// name and labels start with name); ok is false when it is absent.
func (n *node) metric(t *testing.T, name string) (float64, bool) {
	t.Helper()
	resp, err := http.Get("http://" + n.metrics + "/metrics")
	if err != nil {
		t.Fatalf("%s metrics: %v", n.id, err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, name) && !strings.HasPrefix(line, "#") {
			f := strings.Fields(line)
			v, err := strconv.ParseFloat(f[len(f)-1], 64)
			if err != nil {
				t.Fatalf("%s metric %q: %v", n.id, line, err)
			}
			return v, true
		}
	}
	return 0, false
}

// leaders are the live nodes whose metrics say they are the controller.
func (c *cluster) leaders(t *testing.T, except ...string) []string {
	var out []string
	for id, n := range c.nodes {
		select {
		case <-n.k.Exited():
			continue
		default:
		}
		if contains(except, id) {
			continue
		}
		if v, _ := n.metric(t, `kmsd_controller_is_leader{node="`+id+`"}`); v == 1 {
			out = append(out, id)
		}
	}
	return out
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// waitController waits until exactly one node other than except (paused
// or dead) says it is the controller and status agrees; it returns the
// node and epoch.
func (c *cluster) waitController(within time.Duration, except ...string) (string, int64) {
	t := c.t
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		ls := c.leaders(t, except...)
		if len(ls) > 1 {
			t.Fatalf("%d nodes say they are the controller at once: %v", len(ls), ls)
		}
		if len(ls) == 1 {
			if s := c.status(); s.Current != nil && s.Current.Node == ls[0] {
				return s.Current.Node, s.Current.Epoch
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no single controller within %s (metrics say %v)", within, ls)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func client(t *testing.T, n *node) *kms.Client {
	return kms.New(kms.Options{Region: region, BaseEndpoint: aws.String(n.k.Endpoint), RetryMaxAttempts: 1,
		Credentials: credentials.NewStaticCredentialsProvider(akid, secret, "")})
}

// importExpiring makes an EXTERNAL key whose material expires in about
// in (at the whole second after, as ValidTo has seconds).
func importExpiring(t *testing.T, c *kms.Client, in time.Duration) string {
	ctx := t.Context()
	out, err := c.CreateKey(ctx, &kms.CreateKeyInput{Origin: types.OriginTypeExternal})
	if err != nil {
		t.Fatal(err)
	}
	id := aws.ToString(out.KeyMetadata.KeyId)
	p, err := c.GetParametersForImport(ctx, &kms.GetParametersForImportInput{KeyId: &id,
		WrappingAlgorithm: types.AlgorithmSpecRsaesOaepSha256, WrappingKeySpec: types.WrappingKeySpecRsa2048})
	if err != nil {
		t.Fatal(err)
	}
	pk, err := x509.ParsePKIXPublicKey(p.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	material := make([]byte, 32)
	rand.Read(material)
	wrapped, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, pk.(*rsa.PublicKey), material, nil)
	if err != nil {
		t.Fatal(err)
	}
	validTo := time.Now().Add(in).Truncate(time.Second).Add(time.Second)
	if _, err := c.ImportKeyMaterial(ctx, &kms.ImportKeyMaterialInput{KeyId: &id, ImportToken: p.ImportToken,
		EncryptedKeyMaterial: wrapped, ExpirationModel: types.ExpirationModelTypeKeyMaterialExpires, ValidTo: &validTo}); err != nil {
		t.Fatal(err)
	}
	return id
}

// waitState waits until the key's state is want.
func waitState(t *testing.T, c *kms.Client, id string, want types.KeyState, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		out, err := c.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: &id})
		cancel()
		if err == nil && out.KeyMetadata.KeyState == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("key %s not %s within %s: %v %v", id, want, within, out, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// expiries counts the DeleteExpiredKeyMaterial audit records for key id in
// every node's audit log, by node.
func (c *cluster) expiries(t *testing.T, id string) map[string]int {
	got := map[string]int{}
	for nid, n := range c.nodes {
		b, err := os.ReadFile(filepath.Join(n.k.DataDir, "audit.log"))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, `"eventName":"DeleteExpiredKeyMaterial"`) && strings.Contains(line, id) {
				got[nid]++
			}
		}
	}
	return got
}

var termLine = regexp.MustCompile(`time=(\S+) level=INFO msg="controller lease (acquired|given up)" node=(\S+) epoch=(\d+)`)

// term is one node's holding of the controller lease as its log tells it.
type term struct {
	node       string
	epoch      int64
	start, end time.Time
}

func (t term) String() string {
	return fmt.Sprintf("%s epoch %d %s–%s", t.node, t.epoch, t.start.Format("15:04:05.000"), t.end.Format("15:04:05.000"))
}

// terms reads the controller terms from every node's log; a term of a
// killed node ends at its kill.
func (c *cluster) terms(t *testing.T, killed map[string]time.Time) []term {
	var out []term
	for id, n := range c.nodes {
		open := map[int64]int{}
		for _, m := range termLine.FindAllStringSubmatch(n.k.Log(), -1) {
			at, err := time.Parse(time.RFC3339Nano, m[1])
			if err != nil {
				t.Fatal(err)
			}
			e, _ := strconv.ParseInt(m[4], 10, 64)
			if m[2] == "acquired" {
				open[e] = len(out)
				out = append(out, term{node: id, epoch: e, start: at})
			} else if i, ok := open[e]; ok {
				out[i].end = at
			}
		}
		for _, i := range open {
			if out[i].end.IsZero() {
				out[i].end = killed[id] // killed; or held still:
			}
			if out[i].end.IsZero() {
				out[i].end = time.Now()
			}
		}
	}
	return out
}

// TestControllerFailover: three nodes, one controller; kill -9 of it →
// another takes over within 20 s with a higher epoch, and the imported
// key material that comes due then is expired exactly once, by the new
// controller; SIGSTOP of the new controller past twice the TTL → the third
// takes over, and the paused one steps down when continued without taking
// the lease back.
func TestControllerFailover(t *testing.T) {
	c := newCluster(t, "n1", "n2", "n3")
	first, e1 := c.waitController(5*time.Second + 2*ttl)
	// A node takes its node lease at its first heartbeat, which may come
	// after the controller was elected (seen on a loaded machine).
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		s := c.status()
		live := 0
		for _, n := range s.Nodes {
			if n.Live {
				live++
			}
		}
		if live == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status: %d live nodes, want 3: %+v", live, s.Nodes)
		}
	}
	// Each node takes a third of each custom key store's quota.
	for id, n := range c.nodes {
		deadline := time.Now().Add(5 * time.Second)
		for !strings.Contains(n.k.Log(), `msg="custom key store quota shared" nodes=3 rps=600`) {
			if time.Now().After(deadline) {
				t.Fatalf("%s did not take a third of the custom key store quota", id)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	text, err := exec.Command(kmsdBin, "status", "--database-url", c.url).Output()
	if err != nil {
		t.Fatalf("kmsd status: %v %s", err, stderr(err))
	}
	if !strings.Contains(string(text), fmt.Sprintf("controller: %s (epoch %d)\n", first, e1)) {
		t.Errorf("kmsd status:\n%s", text)
	}
	var others []string
	for id := range c.nodes {
		if id != first {
			others = append(others, id)
		}
	}
	// Only the controller sweeps.
	time.Sleep(time.Second)
	for _, id := range others {
		if runs, ok := c.nodes[id].metric(t, "kmsd_sweep_runs_total"); !ok || runs != 0 {
			t.Errorf("%s is not the controller but swept %v times (metric present: %v)", id, runs, ok)
		}
	}
	if runs, _ := c.nodes[first].metric(t, "kmsd_sweep_runs_total"); runs < 1 {
		t.Errorf("controller %s swept %v times", first, runs)
	}
	kc := client(t, c.nodes[others[0]])

	// Due a few seconds after the kill: only a survivor can expire it.
	key1 := importExpiring(t, kc, 4*time.Second)
	killedAt := time.Now()
	c.nodes[first].k.Kill()
	killed := map[string]time.Time{first: killedAt}
	second, e2 := c.waitController(20*time.Second, first)
	took := time.Since(killedAt)
	t.Logf("kill -9 of controller %s (epoch %d): %s took over (epoch %d) in %s (lease TTL %s)", first, e1, second, e2, took.Round(time.Millisecond), ttl)
	if took > 20*time.Second {
		t.Errorf("takeover took %s, want <= 20s", took)
	}
	if e2 <= e1 {
		t.Errorf("epoch after takeover %d, want > %d", e2, e1)
	}
	waitState(t, kc, key1, types.KeyStatePendingImport, 20*time.Second)
	time.Sleep(time.Second) // a few more sweeps, which must find nothing to do
	if got := c.expiries(t, key1); len(got) != 1 || got[second] != 1 {
		t.Errorf("DeleteExpiredKeyMaterial records by node %v, want exactly one, by %s", got, second)
	}

	// SIGSTOP the controller past 2 × TTL: the third node takes over.
	third := others[0]
	if third == second {
		third = others[1]
	}
	p := c.nodes[second].k.Cmd.Process
	kc = client(t, c.nodes[third]) // second will be stopped
	key2 := importExpiring(t, kc, 3*time.Second)
	if err := p.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := true
	defer func() {
		if stopped {
			p.Signal(syscall.SIGCONT)
		}
	}()
	pausedAt := time.Now()
	got, e3 := c.waitController(10*time.Second+2*ttl, first, second)
	if got != third || e3 <= e2 {
		t.Errorf("after SIGSTOP of %s: controller %s epoch %d, want %s with epoch > %d", second, got, e3, third, e2)
	}
	waitState(t, kc, key2, types.KeyStatePendingImport, 20*time.Second)
	time.Sleep(time.Until(pausedAt.Add(2*ttl + time.Second)))
	p.Signal(syscall.SIGCONT)
	stopped = false
	// Continued: it finds its deadline passed (or its renewal refused),
	// steps down, and does not take the lease back.
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(c.nodes[second].k.Log(), fmt.Sprintf(`msg="controller lease given up" node=%s epoch=%d`, second, e2)) {
		if time.Now().After(deadline) {
			t.Fatalf("%s did not give up epoch %d within 5s of SIGCONT", second, e2)
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(2 * ttl)
	if now, e := c.waitController(5*time.Second+ttl, first); now != third || e != e3 {
		t.Errorf("after SIGCONT: controller %s epoch %d, want %s still at %d", now, e, third, e3)
	}
	if got := c.expiries(t, key2); len(got) != 1 || got[third] != 1 {
		t.Errorf("DeleteExpiredKeyMaterial records for the key due during the pause by node %v, want exactly one, by %s", got, third)
	}

	// The lease history: epochs strictly increasing, and no two terms
	// overlap in time, except the paused node's, which believed it held
	// the lease while stopped (its writes are fenced: internal/controller
	// TestFence) and must end no later than a TTL after SIGCONT.
	ts := c.terms(t, killed)
	for i, a := range ts {
		for _, b := range ts[i+1:] {
			if a.epoch == b.epoch {
				t.Errorf("epoch %d held twice: %v, %v", a.epoch, a, b)
			}
			if a.node == second && a.epoch == e2 || b.node == second && b.epoch == e2 {
				continue
			}
			if a.start.Before(b.end) && b.start.Before(a.end) {
				t.Errorf("terms overlap: %v and %v", a, b)
			}
		}
	}
	hist := c.status().Terms
	for i := 1; i < len(hist); i++ {
		if hist[i].Epoch <= hist[i-1].Epoch {
			t.Errorf("controller history epochs not increasing: %+v", hist)
		}
	}
	if len(hist) < 3 || hist[len(hist)-1].Node != third {
		t.Errorf("controller history %+v: want at least 3 terms, the last %s's", hist, third)
	}
	if v, ok := c.nodes[third].metric(t, `kmsd_db_pool_connections{state="max"}`); !ok || v <= 0 {
		t.Errorf("kmsd_db_pool_connections{state=max} = %v, %v", v, ok)
	}
	t.Logf("terms: %v", ts)
}
