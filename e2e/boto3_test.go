package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestBoto3Flow runs testdata/boto3_flow.py with Debian's Python and
// boto3: the key life cycle and the ClientError codes of disabled keys,
// missing keys, tampered ciphertexts and wrong encryption contexts, with
// credentials and region from the profile kmsd writes. The script asserts
// as it goes and ends by printing "boto3 flow ok".
func TestBoto3Flow(t *testing.T) {
	t.Parallel()
	if _, err := os.Stat(pythonPath); err != nil {
		t.Fatalf("Debian's python3 is required: %v", err)
	}
	if err := exec.Command(pythonPath, "-c", "import boto3").Run(); err != nil {
		t.Fatalf("boto3 (Debian package python3-boto3) is required: import boto3: %v", err)
	}
	s := startServer(t)
	home := clientHome(t, boto3KMSModel)
	script, err := filepath.Abs(filepath.Join("testdata", "boto3_flow.py"))
	if err != nil {
		t.Fatalf("%v", err)
	}
	cmd := exec.Command(pythonPath, script, s.Endpoint)
	cmd.Dir = home
	cmd.Env = append(cleanEnv(),
		"HOME="+home,
		"AWS_CONFIG_FILE="+filepath.Join(home, "config"),
		"AWS_SHARED_CREDENTIALS_FILE="+filepath.Join(s.DataDir, "credentials"),
		"AWS_EC2_METADATA_DISABLED=true",
		"PYTHONDONTWRITEBYTECODE=1",
	)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	if err != nil || lines[len(lines)-1] != "boto3 flow ok" {
		t.Fatalf("boto3_flow.py: %v\nstdout:\n%s\nstderr:\n%s\nwant the last line %q", err, stdout.String(), stderr.String(), "boto3 flow ok")
	}
}
