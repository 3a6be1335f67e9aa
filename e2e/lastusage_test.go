package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// addLastUsageModel adds GetKeyLastUsage to the KMS model of the aws CLI
// of c: Debian's aws CLI 2.9.19 predates the operation (2025). The
// supplement (testdata/kms-model-lastusage.json) is the operation and the
// shapes it needs from botocore 1.43.11's KMS model, documentation
// stripped, laid over the model installKMSModel wrote.
func addLastUsageModel(t *testing.T, c *awsCLI) {
	t.Helper()
	path := filepath.Join(c.home, ".aws", "models", "kms", "2014-11-01", "service-2.json")
	var model, sup map[string]any
	for file, v := range map[string]*map[string]any{path: &model, filepath.Join("testdata", "kms-model-lastusage.json"): &sup} {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
	}
	for _, part := range []string{"operations", "shapes"} {
		have, ok := model[part].(map[string]any)
		if !ok {
			t.Fatalf("%s: no %s", path, part)
		}
		for name, def := range sup[part].(map[string]any) {
			if _, ok := have[name]; !ok {
				have[name] = def
			}
		}
	}
	b, err := json.Marshal(model)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// lastUsage is the answer of get-key-last-usage as the aws CLI prints it.
type lastUsage struct {
	KeyId        string
	KeyLastUsage struct {
		Operation, CloudTrailEventId, KmsRequestId string
		Timestamp                                  string
	}
	TrackingStartDate, KeyCreationDate string
}

// debugRequestID finds, in the --debug output of one aws CLI call, the
// x-amzn-RequestId kmsd answered with.
var debugRequestID = regexp.MustCompile(`(?i)'x-amzn-requestid': '([0-9a-f-]{36})'`)

// TestKeyLastUsage drives GetKeyLastUsage end to end: the aws CLI encrypts
// and asks for the key's last use, which names that Encrypt by the
// request id the CLI received (from its --debug output) and by the
// eventID of its audit record; kmsctl prints the same answer; the use
// survives a clean restart (the final flush) and a kill -9 after the
// one-second flush interval.
func TestKeyLastUsage(t *testing.T) {
	s := startServer(t)
	cli := newCLI(t, s)
	addLastUsageModel(t, cli)
	run := func(args ...string) (stdout, stderr string) {
		t.Helper()
		code, out, errOut := cli.run(args...)
		if code != 0 {
			t.Fatalf("aws kms %s: exit %d\n%s", strings.Join(args, " "), code, errOut)
		}
		return out, errOut
	}
	getUsage := func(keyID string) (lastUsage, string) {
		t.Helper()
		out, debug := run("get-key-last-usage", "--key-id", keyID, "--debug")
		var u lastUsage
		if err := json.Unmarshal([]byte(out), &u); err != nil {
			t.Fatalf("get-key-last-usage: %v\n%s", err, out)
		}
		return u, debug
	}
	encrypt := func(keyID string) string {
		t.Helper()
		_, debug := run("encrypt", "--key-id", keyID, "--plaintext", "aGVsbG8=", "--debug")
		m := debugRequestID.FindStringSubmatch(debug)
		if m == nil {
			t.Fatalf("no x-amzn-RequestId in the --debug output of encrypt")
		}
		return m[1]
	}

	out, _ := run("create-key")
	var created struct{ KeyMetadata struct{ KeyId, Arn string } }
	if err := json.Unmarshal([]byte(out), &created); err != nil {
		t.Fatal(err)
	}
	keyID, arn := created.KeyMetadata.KeyId, created.KeyMetadata.Arn

	u, debug := getUsage(keyID)
	if u.KeyLastUsage.Operation != "" || !strings.Contains(debug, `"KeyLastUsage":{}`) {
		t.Errorf("a new key: KeyLastUsage %+v, want {} on the wire", u.KeyLastUsage)
	}
	if u.KeyId != arn || u.TrackingStartDate == "" || u.TrackingStartDate != u.KeyCreationDate {
		t.Errorf("a new key: KeyId %s, TrackingStartDate %s, KeyCreationDate %s; want the ARN %s and the dates equal",
			u.KeyId, u.TrackingStartDate, u.KeyCreationDate, arn)
	}

	reqID := encrypt(keyID)
	used, debug := getUsage(keyID)
	if used.KeyLastUsage.Operation != "Encrypt" || used.KeyLastUsage.KmsRequestId != reqID || used.KeyLastUsage.CloudTrailEventId == "" {
		t.Fatalf("after encrypt (request %s): KeyLastUsage %+v", reqID, used.KeyLastUsage)
	}
	t.Logf("encrypt request %s; get-key-last-usage: %+v", reqID, used)
	// On the wire the dates are epoch seconds, as in every KMS answer.
	for _, field := range []string{"Timestamp", "TrackingStartDate", "KeyCreationDate"} {
		if !regexp.MustCompile(`"` + field + `":\d+(\.\d+)?[,}]`).MatchString(debug) {
			t.Errorf("%s is not epoch seconds on the wire:\n%s", field, debug)
		}
	}

	// kmsctl, which follows the current model, prints the same.
	kmsctl := filepath.Join(t.TempDir(), "kmsctl")
	if b, err := exec.Command("go", "build", "-o", kmsctl, "github.com/kmsd/kmsd/cmd/kmsctl").CombinedOutput(); err != nil {
		t.Fatalf("build kmsctl: %v\n%s", err, b)
	}
	cmd := exec.Command(kmsctl, "--endpoint-url", s.Endpoint, "--output", "json", "kms", "get-key-last-usage", "--key-id", arn)
	cmd.Env = cli.env
	b, err := cmd.Output()
	if err != nil {
		t.Fatalf("kmsctl kms get-key-last-usage: %v", err)
	}
	var viaKmsctl lastUsage
	if err := json.Unmarshal(b, &viaKmsctl); err != nil || viaKmsctl != used {
		t.Errorf("kmsctl printed %+v (%v), the aws CLI %+v", viaKmsctl, err, used)
	}

	// A clean stop right after an encrypt, before the flusher's next
	// round (most likely): the use is stored by the final flush, with the
	// eventID of the call's audit record.
	reqID = encrypt(keyID)
	s.Stop()
	event := auditRecord(t, s, reqID)
	s.Start()
	used, _ = getUsage(keyID)
	// The CLI prints the Timestamp as 2026-12-04T18:51:01.075000+00:00,
	// the audit record its eventTime as 2026-12-04T18:51:01Z: one instant.
	eventTime, _ := event["eventTime"].(string)
	if used.KeyLastUsage.Operation != "Encrypt" || used.KeyLastUsage.KmsRequestId != reqID || event["eventName"] != "Encrypt" ||
		event["eventID"] != used.KeyLastUsage.CloudTrailEventId || len(eventTime) < 19 || !strings.HasPrefix(used.KeyLastUsage.Timestamp, eventTime[:19]) {
		t.Errorf("after a clean restart: KeyLastUsage %+v; audit record of request %s: eventName %v eventID %v eventTime %v",
			used.KeyLastUsage, reqID, event["eventName"], event["eventID"], eventTime)
	}

	// kill -9 once the flush interval (1 s) has passed: the use was
	// stored by the flusher.
	reqID = encrypt(keyID)
	before, _ := getUsage(keyID)
	time.Sleep(2500 * time.Millisecond)
	s.Kill()
	s.Start()
	after, _ := getUsage(keyID)
	if after.KeyLastUsage.KmsRequestId != reqID || after != before {
		t.Errorf("after kill -9: %+v, want %+v (request %s)", after, before, reqID)
	}
}

// auditRecord returns the record of request reqID in s's audit log.
func auditRecord(t *testing.T, s *server, reqID string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.DataDir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		if rec["requestID"] == reqID {
			return rec
		}
	}
	t.Fatalf("no audit record of request %s", reqID)
	return nil
}
