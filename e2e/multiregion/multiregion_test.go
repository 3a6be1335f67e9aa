// Package multiregion holds the end-to-end tests of multi-Region keys:
// they start the real kmsd, which serves every Region from one process,
// and drive it with the real aws CLI v2 and boto3 (a key replicated from
// us-east-1 to eu-west-1 and ap-southeast-2, ciphertexts crossing
// Regions, UpdatePrimaryRegion through Updating, deletion waiting for the
// replicas), and with aws-sdk-go-v2 while kmsd is killed with SIGKILL in
// the middle of replications and primary-Region changes.
package multiregion

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmsd/kmsd/e2e/e2etest"
)

const (
	awsCLI = "/usr/bin/aws" // Debian's aws CLI v2
	python = "/usr/bin/python3"
	east   = "us-east-1"
	west   = "eu-west-1"
	apse   = "ap-southeast-2"
)

var kmsdBin string

func TestMain(m *testing.M) {
	e2etest.Main(m, map[string]*string{"kmsd": &kmsdBin})
}

type env struct {
	t   *testing.T
	k   *e2etest.KMSD
	dir string
}

// start runs kmsd with the given replica delay.
func start(t *testing.T, delay string) *env {
	t.Helper()
	tmp := t.TempDir()
	k := e2etest.StartKMSD(t, e2etest.KMSDConfig{Bin: kmsdBin, Env: []string{"PATH=" + os.Getenv("PATH"), "HOME=" + tmp},
		Args: []string{"--replica-delay", delay}})
	return &env{t: t, k: k, dir: t.TempDir()}
}

// aws runs the aws CLI in region and returns its exit code, stdout and
// stderr.
func (e *env) aws(region string, args ...string) (int, string, string) {
	e.t.Helper()
	cmd := exec.Command(awsCLI, append([]string{"--endpoint-url", e.k.Endpoint, "--output", "json", "--region", region}, args...)...)
	cmd.Env = append(e.k.CLIEnv(region), "HOME="+e.dir, "AWS_MAX_ATTEMPTS=1")
	return e2etest.RunCmd(e.t, cmd)
}

// ok runs a call that must succeed and returns its output (nil if empty).
func (e *env) ok(region string, args ...string) map[string]any {
	e.t.Helper()
	code, out, errOut := e.aws(region, args...)
	if code != 0 {
		e.t.Fatalf("aws --region %s %s: exit %d: %s", region, strings.Join(args, " "), code, errOut)
	}
	if strings.TrimSpace(out) == "" {
		return nil
	}
	var v map[string]any
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		e.t.Fatalf("aws %s: output %q: %v", strings.Join(args, " "), out, err)
	}
	return v
}

// fails runs a call that must fail with exception name and a message
// containing msg.
func (e *env) fails(name, msg, region string, args ...string) {
	e.t.Helper()
	code, _, errOut := e.aws(region, args...)
	if code != 254 || !strings.Contains(errOut, "("+name+")") || !strings.Contains(errOut, msg) {
		e.t.Fatalf("aws --region %s %s: exit %d, stderr %q; want %s %q", region, strings.Join(args, " "), code, errOut, name, msg)
	}
}

func (e *env) describe(region, id string) map[string]any {
	e.t.Helper()
	return e.ok(region, "kms", "describe-key", "--key-id", id)["KeyMetadata"].(map[string]any)
}

// waitState polls describe-key in region until the key is in state.
func (e *env) waitState(region, id, state string) map[string]any {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		md := e.describe(region, id)
		if md["KeyState"] == state {
			return md
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%s in %s: still %v, want %s", id, region, md["KeyState"], state)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// roles returns a key's MultiRegionKeyType, its primary's Region and its
// replicas' Regions.
func roles(t *testing.T, md map[string]any) (kind, primary string, replicas []string) {
	t.Helper()
	c, ok := md["MultiRegionConfiguration"].(map[string]any)
	if !ok || md["MultiRegion"] != true {
		t.Fatalf("no multi-Region configuration: %v", md)
	}
	for _, r := range c["ReplicaKeys"].([]any) {
		replicas = append(replicas, r.(map[string]any)["Region"].(string))
	}
	return c["MultiRegionKeyType"].(string), c["PrimaryKey"].(map[string]any)["Region"].(string), replicas
}

func (e *env) file(name string, data []byte) string {
	e.t.Helper()
	p := filepath.Join(e.dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		e.t.Fatal(err)
	}
	return p
}

// TestCLI is the flow of spec §9 with the aws CLI: a key made in
// us-east-1, replicated to eu-west-1 and ap-southeast-2, a ciphertext of
// us-east-1 decrypted in both, the primary moved through Updating, and
// the primary's deletion waiting for its replicas.
func TestCLI(t *testing.T) {
	t.Parallel()
	e := start(t, "8s") // the aws CLI takes seconds a call on a loaded machine
	md := e.ok(east, "kms", "create-key", "--multi-region", "--description", "e2e multi-Region")["KeyMetadata"].(map[string]any)
	id := md["KeyId"].(string)
	if !strings.HasPrefix(id, "mrk-") || len(id) != 36 {
		t.Fatalf("key id %q", id)
	}
	if kind, primary, replicas := roles(t, md); kind != "PRIMARY" || primary != east || len(replicas) != 0 {
		t.Fatalf("new key: %s %s %v", kind, primary, replicas)
	}
	// Not in eu-west-1 yet.
	e.fails("NotFoundException", "Key 'arn:aws:kms:eu-west-1:", west, "kms", "describe-key", "--key-id", id)

	out := e.ok(east, "kms", "replicate-key", "--key-id", id, "--replica-region", west)
	rmd := out["ReplicaKeyMetadata"].(map[string]any)
	if rmd["KeyState"] != "Creating" || rmd["Enabled"] != false || rmd["Description"] != "" {
		t.Fatalf("replica-key response: %v", rmd)
	}
	if pol, ok := out["ReplicaPolicy"].(string); !ok || !json.Valid([]byte(pol)) {
		t.Fatalf("ReplicaPolicy %v is not a JSON string", out["ReplicaPolicy"])
	}
	if _, ok := out["ReplicaTags"]; ok {
		t.Fatalf("ReplicaTags without tags: %v", out)
	}
	out = e.ok(east, "kms", "replicate-key", "--key-id", id, "--replica-region", apse, "--tags", "TagKey=city,TagValue=sydney")
	if tags, _ := out["ReplicaTags"].([]any); len(tags) != 1 {
		t.Fatalf("ReplicaTags: %v", out["ReplicaTags"])
	}
	if kind, _, replicas := roles(t, e.describe(east, id)); kind != "PRIMARY" || strings.Join(replicas, ",") != west+","+apse {
		t.Fatalf("primary lists %v", replicas)
	}
	for _, r := range []string{west, apse} {
		if st := e.describe(r, id)["KeyState"]; st != "Creating" && st != "Enabled" {
			t.Fatalf("replica in %s: %v", r, st)
		}
		rmd := e.waitState(r, id, "Enabled")
		if kind, primary, replicas := roles(t, rmd); kind != "REPLICA" || primary != east || len(replicas) != 2 {
			t.Fatalf("replica in %s: %s %s %v", r, kind, primary, replicas)
		}
	}

	// A ciphertext of us-east-1 decrypts in both replica Regions, with
	// or without the local ARN.
	pt := []byte("made in us-east-1")
	enc := e.ok(east, "kms", "encrypt", "--key-id", id, "--plaintext", "fileb://"+e.file("pt", pt))
	blob, _ := base64.StdEncoding.DecodeString(enc["CiphertextBlob"].(string))
	ct := e.file("ct", blob)
	for _, r := range []string{west, apse} {
		for _, keyArgs := range [][]string{nil, {"--key-id", "arn:aws:kms:" + r + ":111122223333:key/" + id}} {
			dec := e.ok(r, append([]string{"kms", "decrypt", "--ciphertext-blob", "fileb://" + ct}, keyArgs...)...)
			if got, _ := base64.StdEncoding.DecodeString(dec["Plaintext"].(string)); !bytes.Equal(got, pt) {
				t.Fatalf("decrypt in %s: %q", r, got)
			}
		}
	}
	// An ARN of another Region.
	e.fails("NotFoundException", "Invalid arn us-east-1", west, "kms", "describe-key", "--key-id", md["Arn"].(string))
	// A replica cannot be replicated.
	e.fails("UnsupportedOperationException", "is not a multi-region primary key.", west, "kms", "replicate-key", "--key-id", id, "--replica-region", "us-west-2")

	// update-primary-region: {} (no output), both keys Updating, then
	// the roles swapped everywhere.
	if v := e.ok(east, "kms", "update-primary-region", "--key-id", id, "--primary-region", west); len(v) != 0 {
		t.Fatalf("update-primary-region printed %v", v)
	}
	if st := e.describe(east, id)["KeyState"]; st != "Updating" {
		t.Fatalf("old primary during the update: %v", st)
	}
	e.fails("KMSInvalidStateException", "is updating.", east, "kms", "disable-key", "--key-id", id)
	e.ok(east, "kms", "encrypt", "--key-id", id, "--plaintext", "fileb://"+e.file("pt", pt)) // cryptography still works
	e.waitState(east, id, "Enabled")
	e.waitState(west, id, "Enabled")
	for r, want := range map[string]string{east: "REPLICA", west: "PRIMARY", apse: "REPLICA"} {
		if kind, primary, _ := roles(t, e.describe(r, id)); kind != want || primary != west {
			t.Fatalf("%s after the update: %s, primary %s", r, kind, primary)
		}
	}

	// Deleting the primary waits for its replicas: PendingReplicaDeletion,
	// no DeletionDate, the window in PendingDeletionWindowInDays.
	del := e.ok(west, "kms", "schedule-key-deletion", "--key-id", id, "--pending-window-in-days", "7")
	if del["KeyState"] != "PendingReplicaDeletion" || del["DeletionDate"] != nil || del["PendingWindowInDays"] != float64(7) {
		t.Fatalf("schedule-key-deletion of the primary: %v", del)
	}
	pmd := e.describe(west, id)
	if pmd["KeyState"] != "PendingReplicaDeletion" || pmd["DeletionDate"] != nil || pmd["PendingDeletionWindowInDays"] != float64(7) {
		t.Fatalf("describe-key of the primary: %v", pmd)
	}
	e.fails("KMSInvalidStateException", "is pending replica deletion.", west, "kms", "encrypt", "--key-id", id, "--plaintext", "fileb://"+e.file("pt", pt))
	// The replicas keep working; scheduling them is ordinary.
	e.ok(apse, "kms", "decrypt", "--ciphertext-blob", "fileb://"+ct)
	rdel := e.ok(east, "kms", "schedule-key-deletion", "--key-id", id, "--pending-window-in-days", "7")
	if rdel["KeyState"] != "PendingDeletion" || rdel["DeletionDate"] == nil {
		t.Fatalf("schedule-key-deletion of a replica: %v", rdel)
	}
	// Listed until actually deleted (the windows' end is proven by the
	// unit tests, which move kmsd's clock).
	if _, _, replicas := roles(t, e.describe(west, id)); len(replicas) != 2 {
		t.Fatalf("replicas after scheduling one: %v", replicas)
	}
	e.ok(west, "kms", "cancel-key-deletion", "--key-id", id)
	if st := e.describe(west, id)["KeyState"]; st != "Disabled" {
		t.Fatalf("after cancel-key-deletion: %v", st)
	}
	// ListKeys lists the key in each Region it has a related key.
	for _, r := range []string{east, west, apse} {
		list := e.ok(r, "kms", "list-keys")["Keys"].([]any)
		if len(list) != 1 || list[0].(map[string]any)["KeyArn"] != "arn:aws:kms:"+r+":111122223333:key/"+id {
			t.Fatalf("list-keys in %s: %v", r, list)
		}
	}
	if list := e.ok("us-west-2", "kms", "list-keys")["Keys"].([]any); len(list) != 0 {
		t.Fatalf("list-keys in us-west-2: %v", list)
	}
}

// TestBoto3 runs testdata/boto3_multiregion.py: the same flow with boto3.
func TestBoto3(t *testing.T) {
	t.Parallel()
	if err := exec.Command(python, "-c", "import boto3").Run(); err != nil {
		t.Fatalf("python3 with boto3 (Debian python3-boto3) is required: %v", err)
	}
	e := start(t, "2s")
	script, err := filepath.Abs(filepath.Join("testdata", "boto3_multiregion.py"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(python, script, e.k.Endpoint)
	cmd.Env = append(e.k.CLIEnv(east), "HOME="+e.dir, "PYTHONDONTWRITEBYTECODE=1", "AWS_EC2_METADATA_DISABLED=true")
	out, err := cmd.CombinedOutput()
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if err != nil || lines[len(lines)-1] != "boto3 multiregion ok" {
		t.Fatalf("boto3_multiregion.py: %v\n%s", err, out)
	}
}
