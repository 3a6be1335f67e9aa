package xksproxy

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmsd/kmsd/e2e/e2etest"
)

// TestSecretFilePermissions is the security issue's repro for secret files
// others can read, with the real binary: like ssh with a private key,
// `xks-proxy serve` refuses to start when the SigV4 secret file, the key
// file's passphrase file, the software key file or the TLS private key is
// readable by group or others — the secret may already have leaked — and
// says which file and which mode, quickly, with a non-zero exit. With every
// file 0600 it starts; a file opened up while it runs is refused at SIGHUP
// and the files it started with stay in use.
func TestSecretFilePermissions(t *testing.T) {
	dir := t.TempDir()
	pk := pki(t, dir)
	passFile := writeFile(t, filepath.Join(dir, "pass"), pass+"\n")
	keys := filepath.Join(dir, "keys.json")
	run(t, []string{"XKS_PROXY_KEYS_PASSPHRASE=" + pass}, "keys", "create", "--keys-file", keys, "--id", "k1", "--kdf-iterations", "2000")
	secretFile := writeFile(t, filepath.Join(dir, "secret"), secretA+"\n")
	tlsKey := filepath.Join(pk, "key.pem")
	args := []string{"--access-key-id", akidA, "--secret-access-key-file", secretFile, "--keys-file", keys,
		"--passphrase-file", passFile, "--tls-cert", filepath.Join(pk, "cert.pem"), "--tls-key", tlsKey}
	// The passphrase comes from --passphrase-file only.
	env := []string{"XKS_PROXY_KEYS_PASSPHRASE="}

	tests := []struct {
		name string
		file string
		mode os.FileMode
	}{
		{"SigV4 secret file world-readable", secretFile, 0o644},
		{"SigV4 secret file group-readable", secretFile, 0o640},
		{"key file passphrase file world-readable", passFile, 0o644},
		{"software key file world-readable", keys, 0o644},
		{"TLS private key group-readable", tlsKey, 0o640},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chmod(t, tt.file, tt.mode)
			defer chmod(t, tt.file, 0o600)
			// A refusal is immediate; a proxy still running after 5 s has
			// accepted the file.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, binPath, append([]string{"serve", "--listen", e2etest.FreeAddr(t)}, args...)...)
			cmd.Env = append(os.Environ(), env...)
			t0 := time.Now()
			out, err := cmd.CombinedOutput()
			took := time.Since(t0)
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ctx.Err() != nil {
				t.Fatalf("xks-proxy serve: %v after %v, want a non-zero exit\n%s", err, took, out)
			}
			want := "UNPROTECTED SECRET FILE! Permissions " + fmt.Sprintf("%04o", tt.mode) + " for '" + tt.file + "' are too open."
			if !strings.Contains(string(out), want) || !strings.Contains(string(out), "chmod 600 '"+tt.file+"'") {
				t.Fatalf("exit %d, output lacks %q and the chmod advice:\n%s", ee.ExitCode(), want, out)
			}
			t.Logf("exit %d in %v: %s", ee.ExitCode(), took.Round(time.Millisecond), strings.TrimSpace(string(out)))
		})
	}

	t.Run("every file 0600 starts, an opened-up one is refused at SIGHUP", func(t *testing.T) {
		p := start(t, env, args...)
		c := newClient(t, "https://localhost:"+p.Port(), akidA, secretA, tlsTo(t, filepath.Join(pk, "ca.pem")))
		if _, err := c.health(); err != nil {
			t.Fatalf("health: %v", err)
		}
		chmod(t, secretFile, 0o644)
		defer chmod(t, secretFile, 0o600)
		if p.HUP(t) {
			t.Fatalf("reload accepted a world-readable secret file:\n%s", p.Log)
		}
		if !strings.Contains(p.Log.String(), "Permissions 0644 for '"+secretFile+"'") {
			t.Fatalf("the rejected reload does not name the file and mode:\n%s", p.Log)
		}
		if _, err := c.health(); err != nil {
			t.Fatalf("health after the rejected reload: %v", err)
		}
	})
}

func chmod(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}
