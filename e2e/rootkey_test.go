package e2e

import (
	"context"
	"encoding/base64"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
)

// TestRootKeyMismatch: kmsd refuses to start on a database whose root key
// is missing or replaced, says why and where the key must be, and never
// creates a new root key over an existing database. With the original key
// back it starts and decrypts what it encrypted before.
func TestRootKeyMismatch(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	cr := s.Creds()
	ctx := testContext(t)
	c := sdkClient(s, cr.AccessKeyID, cr.SecretAccessKey, region)
	k := aws.ToString(createKey(t, ctx, c, "root key").KeyId)
	blob := encrypt(t, ctx, c, k, []byte("before"), nil)
	s.Stop()

	keyFile := filepath.Join(s.DataDir, "root.key")
	dbFile := filepath.Join(s.DataDir, "kmsd.db")
	original, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}

	// start runs kmsd on the data directory and returns its exit code and
	// output; it must exit on its own.
	start := func(t *testing.T, env ...string) (int, string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, kmsdBin, "serve", "--listen", freeAddr(t), "--data-dir", s.DataDir)
		cmd.Env = append(cleanEnv(), env...)
		out, err := cmd.CombinedOutput()
		if ctx.Err() != nil {
			t.Fatalf("kmsd did not exit on its own:\n%s", out)
		}
		var exit *exec.ExitError
		if err != nil && !errors.As(err, &exit) {
			t.Fatalf("run kmsd: %v", err)
		}
		return cmd.ProcessState.ExitCode(), string(out)
	}
	expect := func(t *testing.T, code int, out string, want ...string) {
		t.Helper()
		if code == 0 {
			t.Fatalf("kmsd exited 0, want non-zero:\n%s", out)
		}
		for _, w := range want {
			if !strings.Contains(out, w) {
				t.Errorf("kmsd output does not say %q:\n%s", w, out)
			}
		}
	}

	t.Run("missing root key file", func(t *testing.T) {
		if err := os.Remove(keyFile); err != nil {
			t.Fatal(err)
		}
		code, out := start(t)
		expect(t, code, out, "the database "+dbFile+" exists but the root key file "+keyFile+" is missing",
			"will not create a new one")
		if _, err := os.Stat(keyFile); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("kmsd recreated %s (stat: %v)", keyFile, err)
		}
	})
	t.Run("replaced root key file", func(t *testing.T) {
		other := base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))
		if err := os.WriteFile(keyFile, []byte(other+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		code, out := start(t)
		expect(t, code, out, "the database in "+dbFile+" was created with another root key",
			"the root key at "+keyFile+" does not open it", "Restore the original root key file")
		if got, _ := os.ReadFile(keyFile); string(got) != other+"\n" {
			t.Fatalf("kmsd changed %s", keyFile)
		}
	})
	t.Run("wrong KMSD_ROOT_KEY", func(t *testing.T) {
		other := base64.StdEncoding.EncodeToString([]byte("fedcba9876543210fedcba9876543210"))
		code, out := start(t, "KMSD_ROOT_KEY="+other)
		expect(t, code, out, "was created with another root key", "the root key in KMSD_ROOT_KEY does not open it")
	})
	t.Run("original key restored", func(t *testing.T) {
		if err := os.WriteFile(keyFile, original, 0o600); err != nil {
			t.Fatal(err)
		}
		s.Start()
		out, err := c.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: blob})
		if err != nil || string(out.Plaintext) != "before" {
			t.Fatalf("Decrypt after restoring the key = %v; want the old plaintext", err)
		}
	})
}
