// Package kmsctl_test holds kmsctl's end-to-end tests: the real kmsctl
// and kmsd binaries, with the Debian aws CLI v2 (/usr/bin/aws) as the
// oracle for every byte kmsctl prints.
package kmsctl_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmsd/kmsd/e2e/e2etest"
)

// awsBin is the oracle: Debian's aws CLI v2. The pip aws CLI v1 that may
// be first on PATH is never used.
const awsBin = "/usr/bin/aws"

// oracleModels is where the oracle keeps its own botocore models.
const oracleModels = "/usr/lib/python3/dist-packages/awscli/botocore/data"

var (
	workDir      string
	kmsdBin      string
	kmsctlBin    string // as shipped: tables from the newest model on the machine
	kmsctlOracle string // the same code with tables generated from the oracle's model
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "kmsctl-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	workDir = dir
	kmsdBin = filepath.Join(dir, "kmsd")
	kmsctlBin = filepath.Join(dir, "kmsctl")
	kmsctlOracle = filepath.Join(dir, "kmsctl-oracle-model")
	root, err := moduleRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	steps := [][]string{
		{"go", "build", "-o", kmsdBin, "./cmd/kmsd"},
		{"go", "build", "-o", kmsctlBin, "./cmd/kmsctl"},
	}
	// The oracle-model build: kmsctl's tables regenerated from the aws
	// CLI's own model files and swapped in with -overlay, so that a
	// difference in output is a difference in kmsctl's code, never in the
	// model versions of the two programs.
	overlay := map[string]string{}
	for _, s := range []struct{ svc, file, v string }{
		{"kms", "zz_kms.go", "KMS"},
		{"cloudhsmv2", "zz_cloudhsmv2.go", "CloudHSMV2"},
	} {
		models, _ := filepath.Glob(filepath.Join(oracleModels, s.svc, "*", "service-2.json*"))
		if len(models) == 0 {
			fmt.Fprintf(os.Stderr, "no oracle model for %s under %s\n", s.svc, oracleModels)
			return 1
		}
		out := filepath.Join(dir, s.file)
		steps = append(steps, []string{"go", "run", "./internal/apigen", "-mode", "cli", "-service", s.svc, "-package", "model", "-var", s.v, "-model", models[0], "-out", out})
		overlay[filepath.Join(root, "internal", "cli", "model", s.file)] = out
	}
	ov, _ := json.Marshal(map[string]any{"Replace": overlay})
	ovPath := filepath.Join(dir, "overlay.json")
	os.WriteFile(ovPath, ov, 0o644)
	steps = append(steps, []string{"go", "build", "-overlay", ovPath, "-o", kmsctlOracle, "./cmd/kmsctl"})
	for _, s := range steps {
		cmd := exec.Command(s[0], s[1:]...)
		cmd.Dir = root
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", strings.Join(s, " "), err)
			return 1
		}
	}
	return m.Run()
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", err
	}
	return filepath.Dir(strings.TrimSpace(string(out))), nil
}

// requireOracle fails (never skips) when the aws CLI v2 is missing.
func requireOracle(t *testing.T) {
	t.Helper()
	out, err := exec.Command(awsBin, "--version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "aws-cli/2.") {
		t.Fatalf("%s is the oracle of these tests and must be aws CLI v2 (Debian package awscli): %v %s", awsBin, err, out)
	}
}

type kmsd struct {
	endpoint string
	dataDir  string
}

// startKMSD starts kmsd on a free loopback port with a fresh data
// directory and waits for /healthz; it is stopped when the test ends.
func startKMSD(t *testing.T, args ...string) *kmsd {
	t.Helper()
	p := e2etest.StartKMSD(t, e2etest.KMSDConfig{Bin: kmsdBin, Args: args,
		Env: []string{"HOME=" + t.TempDir(), "PATH=" + os.Getenv("PATH")}})
	return &kmsd{endpoint: p.Endpoint, dataDir: p.DataDir}
}

// result is one run of a client.
type result struct {
	stdout, stderr string
	code           int
}

// clientEnv is the environment both clients run in: nothing from the
// host's configuration, no instance metadata, UTC.
func clientEnv(home string, extra ...string) []string {
	return append([]string{
		"HOME=" + home,
		"PATH=/usr/bin:/bin",
		"TZ=UTC",
		"LANG=C.UTF-8",
		"AWS_CONFIG_FILE=" + filepath.Join(home, "config"),
		"AWS_SHARED_CREDENTIALS_FILE=" + filepath.Join(home, "credentials"),
		"AWS_EC2_METADATA_DISABLED=true",
		"AWS_PAGER=",
	}, extra...)
}

func runBin(ctx context.Context, bin string, env []string, args ...string) result {
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = env
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	code := 0
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else {
			code = -1
			e.WriteString(err.Error())
		}
	}
	return result{o.String(), e.String(), code}
}

// asKmsctl rewrites the aws CLI's own name in its usage text, the one
// place where kmsctl's output differs by design.
func asKmsctl(s string) string {
	r := strings.NewReplacer(
		"usage: aws [options]", "usage: kmsctl [options]",
		"  aws help", "  kmsctl help",
		"  aws <command> help", "  kmsctl <command> help",
		"  aws <command> <subcommand> help", "  kmsctl <command> <subcommand> help",
		"\naws: error:", "\nkmsctl: error:",
	)
	return r.Replace(s)
}
