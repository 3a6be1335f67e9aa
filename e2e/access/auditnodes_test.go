package access

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/kmsd/kmsd/e2e/e2etest"
)

// node starts kmsd on dataDir ("" for a new one) with args.
func node(t *testing.T, dataDir string, args ...string) *kmsd {
	home := t.TempDir()
	p := e2etest.StartKMSD(t, e2etest.KMSDConfig{Bin: kmsdBin, DataDir: dataDir, Args: args,
		Env: []string{"PATH=" + os.Getenv("PATH"), "HOME=" + home}})
	return &kmsd{t: t, dataDir: p.DataDir, endpoint: p.Endpoint, logPath: p.LogFile, proc: p}
}

type auditLine struct {
	Time      string `json:"eventTime"`
	EventName string `json:"eventName"`
	Response  struct {
		KeyMetadata struct {
			KeyID string `json:"keyId"`
		} `json:"keyMetadata"`
	} `json:"responseElements"`
	Extra struct {
		Node string `json:"kmsdNode"`
		Seq  uint64 `json:"kmsdSeq"`
	} `json:"additionalEventData"`
}

func readAudit(t *testing.T, b []byte) []auditLine {
	t.Helper()
	var out []auditLine
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var r auditLine
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		out = append(out, r)
	}
	return out
}

// TestAuditAcrossNodes: two kmsd nodes, one given --node-id and one
// keeping the id it made on first start, write their node id and a
// gapless per-node sequence into every audit record, continued across a
// restart; the record of a CreateKey is in the log when the aws CLI has
// its answer, even if kmsd is killed (kill -9) right after; kmsctl audit
// search merges both nodes' logs — named one by one, as a comma list, as
// their directory and as a pattern — in order of time, node and sequence.
func TestAuditAcrossNodes(t *testing.T) {
	logs := t.TempDir()
	aLog, bLog := filepath.Join(logs, "a.log"), filepath.Join(logs, "b.log")
	a := node(t, "", "--node-id", "node-a", "--audit-log", aLog)
	b := node(t, "", "--audit-log", bLog)
	bID, err := os.ReadFile(filepath.Join(b.dataDir, "node-id"))
	if err != nil {
		t.Fatalf("kmsd without --node-id kept no node id: %v", err)
	}
	bNode := strings.TrimSpace(string(bID))

	adminA, adminB := adminProfile(t, a), adminProfile(t, b)
	a.ok(adminA, "kms", "create-key", "--description", "a1")
	b.ok(adminB, "kms", "create-key", "--description", "b1")
	a.ok(adminA, "kms", "list-keys")
	b.ok(adminB, "kms", "list-keys")
	last := str(a.ok(adminA, "kms", "create-key", "--description", "a2"), "KeyMetadata", "KeyId")
	// Killed the moment the answer is in: the record must already be
	// written (and fsynced, which only a power cut could tell apart).
	a.proc.Kill()
	got, _ := os.ReadFile(aLog)
	recs := readAudit(t, got)
	if r := recs[len(recs)-1]; r.EventName != "CreateKey" || r.Response.KeyMetadata.KeyID != last {
		t.Fatalf("after kill -9 right after CreateKey %s answered, the last record of node-a is %+v", last, r)
	}

	// Both nodes restart on their data: node-a with its flag, node b
	// with the id it kept.
	a = node(t, a.dataDir, "--node-id", "node-a", "--audit-log", aLog)
	a.ok(adminA, "kms", "create-key", "--description", "a3")
	a.stop()
	b.stop()
	b = node(t, b.dataDir, "--audit-log", bLog)
	b.ok(adminB, "kms", "create-key", "--description", "b2")
	b.stop()

	total := 0
	for _, c := range []struct {
		path, node string
	}{{aLog, "node-a"}, {bLog, bNode}} {
		got, _ := os.ReadFile(c.path)
		recs := readAudit(t, got)
		total += len(recs)
		for i, r := range recs {
			if r.Extra.Node != c.node || r.Extra.Seq != uint64(i+1) {
				t.Errorf("%s record %d (%s): kmsdNode %q kmsdSeq %d, want %q %d", filepath.Base(c.path), i, r.EventName, r.Extra.Node, r.Extra.Seq, c.node, i+1)
			}
		}
	}
	if total != 7 {
		t.Errorf("%d records in both logs, want 7", total)
	}

	for _, args := range [][]string{
		{"--audit-log", aLog, "--audit-log", bLog},
		{"--audit-log", aLog + "," + bLog},
		{"--audit-log", logs},
		{"--audit-log", filepath.Join(logs, "*.log")},
	} {
		out, err := exec.Command(kmsctlBin, append([]string{"audit", "search"}, args...)...).Output()
		if err != nil {
			t.Fatalf("kmsctl audit search %v: %v", args, err)
		}
		recs := readAudit(t, out)
		if len(recs) != total {
			t.Errorf("kmsctl audit search %v: %d records, want %d", args, len(recs), total)
		}
		if !sort.SliceIsSorted(recs, func(i, j int) bool {
			x, y := recs[i], recs[j]
			if x.Time != y.Time {
				return x.Time < y.Time
			}
			if x.Extra.Node != y.Extra.Node {
				return x.Extra.Node < y.Extra.Node
			}
			return x.Extra.Seq < y.Extra.Seq
		}) {
			t.Errorf("kmsctl audit search %v: records not in order of time, node, sequence:\n%s", args, out)
		}
	}
	out, err := exec.Command(kmsctlBin, "audit", "search", "--audit-log", logs, "--event-name", "CreateKey").Output()
	if err != nil {
		t.Fatal(err)
	}
	if n := len(readAudit(t, out)); n != 5 {
		t.Errorf("CreateKey records of both nodes: %d, want 5:\n%s", n, out)
	}
}
