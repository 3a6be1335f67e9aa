package postgres

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kmsd/kmsd/e2e/e2etest"
	"github.com/kmsd/kmsd/internal/storage/postgres/pgtest"
)

// nodesIAM declares a role every node knows from its configuration (each
// derives the same role id from the shared root key).
const nodesIAM = `
[[accounts]]
id = "111122223333"

  [[accounts.roles]]
  name = "worker"
  assume_role_policy = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"sts:AssumeRole"}]}'
  [accounts.roles.policies]
  random = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["kms:GenerateRandom","sts:GetCallerIdentity"],"Resource":"*"}]}'
`

// node is one kmsd of a multi-node deployment started by the test.
type node struct {
	dir, endpoint, audit, log string
	cmd                       *exec.Cmd
	done                      chan struct{}
}

// cli runs the aws CLI v2 against n with the given credentials and
// returns its exit code, stdout and stderr.
func (n *node) cli(t *testing.T, creds []string, args ...string) (int, []byte, string) {
	t.Helper()
	home := t.TempDir()
	cmd := exec.Command("/usr/bin/aws", append([]string{"--endpoint-url", n.endpoint, "--region", region, "--output", "json"}, args...)...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + home, "AWS_CONFIG_FILE=/dev/null",
		"AWS_SHARED_CREDENTIALS_FILE=/dev/null", "AWS_PAGER=", "AWS_MAX_ATTEMPTS=1"}, creds...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	return cmd.ProcessState.ExitCode(), out.Bytes(), errb.String()
}

func (n *node) ok(t *testing.T, creds []string, args ...string) map[string]any {
	t.Helper()
	code, out, errOut := n.cli(t, creds, args...)
	if code != 0 {
		t.Fatalf("%s: aws %s: exit %d: %s", n.endpoint, strings.Join(args, " "), code, errOut)
	}
	var m map[string]any
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatalf("aws %s: %q: %v", strings.Join(args, " "), out, err)
	}
	return m
}

// stop ends n (SIGINT, by pid) and waits; the audit log is flushed.
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

// TestNodesOnOneDatabase: three kmsd nodes, each with its own data
// directory, started at the same moment on one empty PostgreSQL database:
// all come up and agree on one administrator key, which only the node that
// made it writes as its profile; a role session assumed through one node
// is accepted by the others, which never saw it issued (sealed session
// token), and an altered token is refused; each node's audit log numbers
// its records, and kmsctl audit search merges the three.
func TestNodesOnOneDatabase(t *testing.T) {
	url := pgtest.URL(t)
	root := newRootKey(t)
	tmp := t.TempDir()
	iam := filepath.Join(tmp, "iam.toml")
	if err := os.WriteFile(iam, []byte(nodesIAM), 0o600); err != nil {
		t.Fatal(err)
	}
	var nodes []*node
	for i := 0; i < 3; i++ {
		n := &node{dir: filepath.Join(tmp, fmt.Sprint("node", i)), endpoint: "http://" + e2etest.FreeAddr(t),
			audit: filepath.Join(tmp, "audit", fmt.Sprint("node", i, ".log")), log: filepath.Join(tmp, fmt.Sprint("node", i, ".out")),
			done: make(chan struct{})}
		logf, err := os.Create(n.log)
		if err != nil {
			t.Fatal(err)
		}
		n.cmd = exec.Command(kmsdBin, "serve", "--listen", strings.TrimPrefix(n.endpoint, "http://"), "--data-dir", n.dir,
			"--node-id", fmt.Sprint("node-", i), "--audit-log", n.audit, "--iam-config", iam)
		n.cmd.Env = env("KMSD_ROOT_KEY="+root, "KMSD_DATABASE_URL="+url, "HOME="+tmp)
		n.cmd.Stdout, n.cmd.Stderr = logf, logf
		nodes = append(nodes, n)
	}
	var wg sync.WaitGroup
	for _, n := range nodes {
		if err := n.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() { defer wg.Done(); n.cmd.Wait(); close(n.done) }()
		t.Cleanup(n.stop)
	}
	t.Cleanup(wg.Wait)
	for i, n := range nodes {
		for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if resp, err := http.Get(n.endpoint + "/healthz"); err == nil {
				resp.Body.Close()
				break
			}
			select {
			case <-n.done:
				b, _ := os.ReadFile(n.log)
				t.Fatalf("node %d exited:\n%s", i, b)
			default:
			}
			if time.Now().After(deadline) {
				b, _ := os.ReadFile(n.log)
				t.Fatalf("node %d did not come up:\n%s", i, b)
			}
		}
	}

	// One administrator, in one profile.
	var admin []string
	for i, n := range nodes {
		b, err := os.ReadFile(filepath.Join(n.dir, "credentials"))
		if err != nil {
			continue
		}
		if admin != nil {
			t.Fatalf("node %d wrote a profile too", i)
		}
		for _, line := range strings.Split(string(b), "\n") {
			k, v, _ := strings.Cut(line, "=")
			switch strings.TrimSpace(k) {
			case "aws_access_key_id":
				admin = append(admin, "AWS_ACCESS_KEY_ID="+strings.TrimSpace(v))
			case "aws_secret_access_key":
				admin = append(admin, "AWS_SECRET_ACCESS_KEY="+strings.TrimSpace(v))
			}
		}
	}
	if len(admin) != 2 {
		t.Fatalf("no node wrote the administrator's profile")
	}
	adminKey := strings.TrimPrefix(admin[0], "AWS_ACCESS_KEY_ID=")
	for i, n := range nodes {
		keys, _ := n.ok(t, admin, "iam", "list-access-keys", "--user-name", "kmsd-admin")["AccessKeyMetadata"].([]any)
		if len(keys) != 1 || keys[0].(map[string]any)["AccessKeyId"] != adminKey {
			t.Fatalf("node %d lists the administrator's keys %v, want only %s", i, keys, adminKey)
		}
	}

	// A session from node 0, used on nodes 1 and 2.
	ar := nodes[0].ok(t, admin, "sts", "assume-role", "--role-arn", "arn:aws:iam::111122223333:role/worker", "--role-session-name", "roamer")
	cr := ar["Credentials"].(map[string]any)
	akid, secret, token := cr["AccessKeyId"].(string), cr["SecretAccessKey"].(string), cr["SessionToken"].(string)
	sess := []string{"AWS_ACCESS_KEY_ID=" + akid, "AWS_SECRET_ACCESS_KEY=" + secret, "AWS_SESSION_TOKEN=" + token}
	for i, n := range nodes[1:] {
		if arn := n.ok(t, sess, "sts", "get-caller-identity")["Arn"]; arn != "arn:aws:sts::111122223333:assumed-role/worker/roamer" {
			t.Errorf("node %d: the session is %v", i+1, arn)
		}
		n.ok(t, sess, "kms", "generate-random", "--number-of-bytes", "16")
	}
	mid := len(token) / 2
	c := "A"
	if token[mid] == 'A' {
		c = "B"
	}
	bad := []string{"AWS_ACCESS_KEY_ID=" + akid, "AWS_SECRET_ACCESS_KEY=" + secret, "AWS_SESSION_TOKEN=" + token[:mid] + c + token[mid+1:]}
	if code, _, errOut := nodes[2].cli(t, bad, "kms", "generate-random", "--number-of-bytes", "16"); code == 0 ||
		!strings.Contains(errOut, "(UnrecognizedClientException)") || !strings.Contains(errOut, "The security token included in the request is invalid.") {
		t.Errorf("node 2, altered token: exit %d %q", code, errOut)
	}

	for _, n := range nodes {
		n.stop()
	}
	out, err := exec.Command(kmsctlBin, "audit", "search", "--audit-log", filepath.Dir(nodes[0].audit)).Output()
	if err != nil {
		t.Fatalf("kmsctl audit search: %v", err)
	}
	type rec struct {
		Time  string `json:"eventTime"`
		Extra struct {
			Node string `json:"kmsdNode"`
			Seq  int    `json:"kmsdSeq"`
		} `json:"additionalEventData"`
	}
	var recs []rec
	seqs := map[string][]int{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var r rec
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		recs = append(recs, r)
		seqs[r.Extra.Node] = append(seqs[r.Extra.Node], r.Extra.Seq)
	}
	// 3 list-access-keys, assume-role, 2 × 2 session calls, the refused call.
	if len(recs) != 9 || len(seqs) != 3 {
		t.Errorf("merged audit: %d records from nodes %v, want 9 from 3:\n%s", len(recs), seqs, out)
	}
	for node, s := range seqs {
		sort.Ints(s)
		for i, q := range s {
			if q != i+1 {
				t.Errorf("node %s's sequence numbers %v have a gap", node, s)
				break
			}
		}
	}
	if !sort.SliceIsSorted(recs, func(i, j int) bool {
		if recs[i].Time != recs[j].Time {
			return recs[i].Time < recs[j].Time
		}
		if recs[i].Extra.Node != recs[j].Extra.Node {
			return recs[i].Extra.Node < recs[j].Extra.Node
		}
		return recs[i].Extra.Seq < recs[j].Extra.Seq
	}) {
		t.Errorf("merged audit not in order of time, node, sequence:\n%s", out)
	}
}
