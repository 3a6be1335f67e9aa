package proxycmd

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/xks/keyman/keyfile"
	"github.com/kmsd/kmsd/internal/xks/xksserver"
)

// TestServeRefusesUnprotectedSecretFiles: `xks-proxy serve` does not start
// when a file holding a secret (the SigV4 secret, the key file, its
// passphrase, the TLS private key) is group- or world-accessible, and says
// which file and what to do, as ssh does.
func TestServeRefusesUnprotectedSecretFiles(t *testing.T) {
	for _, tt := range []struct {
		name string // the file made too open; "" for none
		mode os.FileMode
	}{
		{"", 0},
		{"secret", 0o644},
		{"secret", 0o640},
		{"keys.json", 0o644},
		{"pass", 0o604},
		{"key.pem", 0o644},
	} {
		t.Run(fmt.Sprintf("%s %04o", tt.name, tt.mode), func(t *testing.T) {
			dir := t.TempDir()
			must := func(err error) {
				t.Helper()
				if err != nil {
					t.Fatal(err)
				}
			}
			must(os.WriteFile(filepath.Join(dir, "secret"), []byte("PleaseReplaceThisWithSomeSecretOfLength43To64\n"), 0o600))
			must(os.WriteFile(filepath.Join(dir, "pass"), []byte("passphrase\n"), 0o600))
			must(keyfile.CreateKey(filepath.Join(dir, "keys.json"), []byte("passphrase"), 1000, "k1", nil, nil, time.Now()))
			pki, err := xksserver.NewDevCerts(xksserver.DevCertOptions{Hosts: []string{"localhost"}})
			must(err)
			must(pki.Write(dir))
			if tt.name != "" {
				must(os.Chmod(filepath.Join(dir, tt.name), tt.mode))
			}
			ctx, cancel := context.WithCancel(context.Background())
			cancel() // a proxy that starts stops at once
			var stderr bytes.Buffer
			code := Run(ctx, []string{"serve", "--listen", "127.0.0.1:0", "--access-key-id", "AKIAIOSFODNN7EXAMPLEAB",
				"--secret-access-key-file", filepath.Join(dir, "secret"), "--keys-file", filepath.Join(dir, "keys.json"),
				"--passphrase-file", filepath.Join(dir, "pass"), "--tls-cert", filepath.Join(dir, "cert.pem"),
				"--tls-key", filepath.Join(dir, "key.pem")}, &bytes.Buffer{}, &stderr)
			if tt.name == "" {
				if code != 0 {
					t.Fatalf("exit %d with private files:\n%s", code, stderr.String())
				}
				return
			}
			if code == 0 {
				t.Fatalf("started with %s mode %04o", tt.name, tt.mode)
			}
			path := filepath.Join(dir, tt.name)
			for _, want := range []string{fmt.Sprintf("UNPROTECTED SECRET FILE! Permissions %04o for '%s' are too open", tt.mode, path), "chmod 600"} {
				if !strings.Contains(stderr.String(), want) {
					t.Errorf("stderr does not say %q:\n%s", want, stderr.String())
				}
			}
		})
	}
}
