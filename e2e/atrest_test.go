package e2e

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
)

// TestNoSecretsAtRest checks that the data directory never holds secrets in
// clear: not a data key's plaintext, not a plaintext given to Encrypt, not
// the administrator's secret access key (outside the credentials file kmsd
// writes for the user) — in the database, its WAL and shared-memory files,
// while kmsd runs and after it stops. root.key is left out because it is
// the root key. The files holding secrets must be private (0600).
func TestNoSecretsAtRest(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	cr := s.Creds()
	ctx := testContext(t)
	c := sdkClient(s, cr.AccessKeyID, cr.SecretAccessKey, region)

	k := aws.ToString(createKey(t, ctx, c, "at rest").KeyId)
	dk, err := c.GenerateDataKey(ctx, &kms.GenerateDataKeyInput{KeyId: aws.String(k), KeySpec: types.DataKeySpecAes256})
	if err != nil {
		t.Fatalf("GenerateDataKey: %v", err)
	}
	marker := []byte("e2e plaintext that must never be stored 7d1c0a")
	encrypt(t, ctx, c, k, marker, map[string]string{"at": "rest"})

	secrets := []struct {
		name  string
		value []byte
	}{
		{"the data key plaintext", dk.Plaintext},
		{"the data key plaintext in base64", []byte(base64.StdEncoding.EncodeToString(dk.Plaintext))},
		{"the data key plaintext in hex", []byte(hex.EncodeToString(dk.Plaintext))},
		{"an Encrypt plaintext", marker},
		{"the admin secret access key", []byte(cr.SecretAccessKey)},
	}
	scan := func(when string) {
		t.Helper()
		var names []string
		err := filepath.WalkDir(s.DataDir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			name, _ := filepath.Rel(s.DataDir, path)
			names = append(names, name)
			if name == "root.key" {
				return nil
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			for _, sec := range secrets {
				if name == "credentials" && sec.name == "the admin secret access key" {
					continue // the file kmsd writes for the user to use it
				}
				if i := bytes.Index(b, sec.value); i >= 0 {
					t.Errorf("%s: %s holds %s in clear at offset %d", when, name, sec.name, i)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%s: walk %s: %v", when, s.DataDir, err)
		}
		t.Logf("%s: scanned %v", when, names)
		if _, err := os.Stat(filepath.Join(s.DataDir, "kmsd.db")); err != nil {
			t.Errorf("%s: kmsd.db: %v", when, err)
		}
	}
	scan("while kmsd runs")
	s.Stop()
	scan("after kmsd stopped")

	for name, want := range map[string]fs.FileMode{"credentials": 0o600, "root.key": 0o600, ".": fs.ModeDir | 0o700} {
		fi, err := os.Stat(filepath.Join(s.DataDir, name))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if got := fi.Mode(); got != want {
			t.Errorf("mode of %s in the data directory: got %v, want %v", name, got, want)
		}
	}
}
