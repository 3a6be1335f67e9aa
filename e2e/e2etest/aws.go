package e2etest

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/kms"
)

// CleanEnv is the host's environment without its AWS_, KMSD_ and PG
// settings, plus extra: what a test gives the kmsd processes and CLIs it
// starts, so that nothing of the developer's own setup leaks in.
func CleanEnv(extra ...string) []string {
	var e []string
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "AWS_") || strings.HasPrefix(k, "KMSD_") || strings.HasPrefix(k, "PG") {
			continue
		}
		e = append(e, kv)
	}
	return append(e, extra...)
}

// KMSClient is an aws-sdk-go-v2 client of endpoint with profile "kmsd" of
// the shared credentials file creds; no retries, so every answer is seen.
func KMSClient(t testing.TB, creds, region, endpoint string) *kms.Client {
	t.Helper()
	cfg, err := config.LoadDefaultConfig(t.Context(), config.WithRegion(region),
		config.WithSharedCredentialsFiles([]string{creds}), config.WithSharedConfigProfile("kmsd"),
		config.WithSharedConfigFiles([]string{}))
	if err != nil {
		t.Fatal(err)
	}
	return kms.NewFromConfig(cfg, func(o *kms.Options) {
		o.BaseEndpoint = aws.String(endpoint)
		o.RetryMaxAttempts = 1
	})
}

// AWSKMS runs `aws kms ARGS` (the aws CLI v2) against endpoint with
// profile "kmsd" of the shared credentials file creds; it must succeed,
// and its JSON output is returned decoded (empty for no output).
func AWSKMS(t testing.TB, creds, region, endpoint string, args ...string) map[string]any {
	t.Helper()
	cmd := exec.Command("/usr/bin/aws", append([]string{"--endpoint-url", endpoint, "--output", "json", "kms"}, args...)...)
	cmd.Env = CleanEnv("AWS_SHARED_CREDENTIALS_FILE="+creds, "AWS_CONFIG_FILE=/dev/null", "AWS_PROFILE=kmsd",
		"AWS_DEFAULT_REGION="+region, "AWS_PAGER=")
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("aws kms %s: %v\n%s", strings.Join(args, " "), err, ee.Stderr)
		}
		t.Fatalf("aws kms %s: %v", strings.Join(args, " "), err)
	}
	m := map[string]any{}
	if len(bytes.TrimSpace(out)) > 0 {
		if err := json.Unmarshal(out, &m); err != nil {
			t.Fatalf("aws kms %s: output %q: %v", args[0], out, err)
		}
	}
	return m
}

// RunCmd runs cmd, a CLI that reports failure by its exit code, and
// returns that code, its stdout and its stderr; a command that cannot be
// run at all fails t.
func RunCmd(t testing.TB, cmd *exec.Cmd) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), out.String(), errb.String()
	}
	if err != nil {
		t.Fatalf("%s: %v", strings.Join(cmd.Args, " "), err)
	}
	return 0, out.String(), errb.String()
}
