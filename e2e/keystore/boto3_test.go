package keystore

import (
	"path/filepath"
	"strings"
	"testing"
)

const python = "/usr/bin/python3" // Debian's, with python3-boto3

// TestBoto3CloudHSMStore runs testdata/boto3_cloudhsm.py with Debian's
// python3 and boto3 against a cluster made with the aws CLI: create,
// connect, describe, and a key of the store that encrypts and decrypts.
func TestBoto3CloudHSMStore(t *testing.T) {
	t.Parallel()
	requireTools(t)
	if _, _, code := run(t, nil, python, "-c", "import boto3"); code != 0 {
		t.Fatalf("boto3 (Debian package python3-boto3) is required")
	}
	k := start(t)
	clusterID, anchor, _ := k.readyCluster()
	script, err := filepath.Abs(filepath.Join("testdata", "boto3_cloudhsm.py"))
	if err != nil {
		t.Fatal(err)
	}
	env := append(k.env, "PYTHONDONTWRITEBYTECODE=1", "AWS_EC2_METADATA_DISABLED=true")
	out, errs, code := run(t, env, python, script, k.endpoint, clusterID, anchor, "kmsPswd1")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || lines[len(lines)-1] != "boto3 cloudhsm ok" {
		t.Fatalf("boto3_cloudhsm.py: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errs)
	}
}
