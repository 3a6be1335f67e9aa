// Package postgres tests kmsd serving from PostgreSQL (--database-url) on
// a real server (internal/storage/postgres/pgtest), driven by the real aws
// CLI v2 and aws-sdk-go-v2: acknowledged keys and ciphertexts survive a
// kill -9, and a node given another root key (or none) refuses to start
// and writes nothing.
package postgres

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	neturl "net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/jackc/pgx/v5"

	"github.com/kmsd/kmsd/e2e/e2etest"
	"github.com/kmsd/kmsd/internal/storage/postgres/pgtest"
)

var kmsdBin, kmsctlBin string

func TestMain(m *testing.M) {
	code := e2etest.Run(m, map[string]*string{"kmsd": &kmsdBin, "kmsctl": &kmsctlBin})
	if err := pgtest.Stop(); err != nil {
		code = 1
	}
	os.Exit(code)
}

const region = "us-east-1"

// env is kmsd's environment: the host's without AWS_/KMSD_ settings, plus
// extra.
func env(extra ...string) []string {
	var e []string
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "AWS_") || strings.HasPrefix(k, "KMSD_") || strings.HasPrefix(k, "PG") {
			continue
		}
		e = append(e, kv)
	}
	return append(e, extra...)
}

func newRootKey(t *testing.T) string {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(k)
}

// aws runs the aws CLI against k and returns its JSON output decoded.
func awsCLI(t *testing.T, k *e2etest.KMSD, args ...string) map[string]any {
	t.Helper()
	cmd := exec.Command("/usr/bin/aws", append([]string{"--endpoint-url", k.Endpoint, "--output", "json", "kms"}, args...)...)
	cmd.Env = k.CLIEnv(region)
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("aws kms %s: %v\n%s", strings.Join(args, " "), err, ee.Stderr)
		}
		t.Fatalf("aws kms %s: %v", strings.Join(args, " "), err)
	}
	var m map[string]any
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatalf("aws kms %s: output %q: %v", args[0], out, err)
	}
	return m
}

func sdkClient(t *testing.T, k *e2etest.KMSD) *kms.Client {
	cfg, err := config.LoadDefaultConfig(t.Context(), config.WithRegion(region),
		config.WithSharedCredentialsFiles([]string{k.Creds}), config.WithSharedConfigProfile("kmsd"),
		config.WithSharedConfigFiles([]string{}))
	if err != nil {
		t.Fatal(err)
	}
	return kms.NewFromConfig(cfg, func(o *kms.Options) {
		o.BaseEndpoint = aws.String(k.Endpoint)
		o.RetryMaxAttempts = 1
	})
}

// TestCrashRestart: kmsd on PostgreSQL, kill -9 while keys are being
// created, restarted on the same database: the key the aws CLI created
// and its ciphertext, and every CreateKey that was acknowledged, are there.
func TestCrashRestart(t *testing.T) {
	url := pgtest.URL(t)
	e := env("KMSD_ROOT_KEY="+newRootKey(t), "KMSD_DATABASE_URL="+url)
	k := e2etest.StartKMSD(t, e2etest.KMSDConfig{Bin: kmsdBin, Env: e})

	keyID := awsCLI(t, k, "create-key", "--description", "survives kill -9")["KeyMetadata"].(map[string]any)["KeyId"].(string)
	dir := t.TempDir()
	plain := filepath.Join(dir, "plain")
	if err := os.WriteFile(plain, []byte("acknowledged before the crash"), 0o600); err != nil {
		t.Fatal(err)
	}
	blob64 := awsCLI(t, k, "encrypt", "--key-id", keyID, "--plaintext", "fileb://"+plain)["CiphertextBlob"].(string)
	blob, err := base64.StdEncoding.DecodeString(blob64)
	if err != nil {
		t.Fatal(err)
	}
	blobFile := filepath.Join(dir, "blob")
	if err := os.WriteFile(blobFile, blob, 0o600); err != nil {
		t.Fatal(err)
	}

	// Create keys until kmsd is killed; only acknowledged ones count.
	c := sdkClient(t, k)
	var mu sync.Mutex
	var acked []string
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
				out, err := c.CreateKey(ctx, &kms.CreateKeyInput{})
				cancel()
				if err != nil {
					continue // not acknowledged: may or may not exist
				}
				mu.Lock()
				acked = append(acked, aws.ToString(out.KeyMetadata.KeyId))
				mu.Unlock()
			}
		})
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		mu.Lock()
		n := len(acked)
		mu.Unlock()
		if n >= 10 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d CreateKey calls acknowledged in 30s", n)
		}
	}
	k.Kill()
	close(stop)
	wg.Wait()
	if _, err := os.Stat(filepath.Join(k.DataDir, "kmsd.db")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("kmsd on --database-url made %s (stat: %v): state must be in PostgreSQL", filepath.Join(k.DataDir, "kmsd.db"), err)
	}

	k2 := e2etest.StartKMSD(t, e2etest.KMSDConfig{Bin: kmsdBin, Env: e, DataDir: k.DataDir})
	got := awsCLI(t, k2, "decrypt", "--ciphertext-blob", "fileb://"+blobFile)
	if p, _ := base64.StdEncoding.DecodeString(got["Plaintext"].(string)); string(p) != "acknowledged before the crash" {
		t.Errorf("decrypt after restart = %q", p)
	}
	if got["KeyId"] != "arn:aws:kms:"+region+":111122223333:key/"+keyID {
		t.Errorf("decrypt KeyId = %v", got["KeyId"])
	}
	md := awsCLI(t, k2, "describe-key", "--key-id", keyID)["KeyMetadata"].(map[string]any)
	if md["KeyState"] != "Enabled" || md["Description"] != "survives kill -9" {
		t.Errorf("describe-key after restart = %v", md)
	}
	c2 := sdkClient(t, k2)
	for _, id := range acked {
		if _, err := c2.DescribeKey(t.Context(), &kms.DescribeKeyInput{KeyId: aws.String(id)}); err != nil {
			t.Errorf("acknowledged key %s lost: %v", id, err)
		}
	}
	t.Logf("%d acknowledged CreateKey calls before kill -9, all present after restart", len(acked))

	// The data really is in PostgreSQL: the key's records are rows of kv.
	if n := count(t, url, `SELECT count(*) FROM kv WHERE position($1 in key) > 0`, keyID); n == 0 {
		t.Errorf("no kv row names key %s", keyID)
	}
}

// count runs a counting query on the database at url.
func count(t *testing.T, url, sql string, args ...any) int64 {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var n int64
	if err := conn.QueryRow(t.Context(), sql, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestRootKeyRefused: a node given another root key than the database's,
// or none, refuses to start, says which root key source it used, and
// writes nothing to the database (nor a root key file).
func TestRootKeyRefused(t *testing.T) {
	url := pgtest.URL(t)
	rk := newRootKey(t)
	k := e2etest.StartKMSD(t, e2etest.KMSDConfig{Bin: kmsdBin, Env: env("KMSD_ROOT_KEY=" + rk), Args: []string{"--database-url", url}})
	awsCLI(t, k, "create-key", "--description", "before")
	k.Stop()

	state := func() [3]int64 {
		return [3]int64{
			count(t, url, `SELECT count(*) FROM kv`),
			count(t, url, `SELECT count(*) FROM kv_changes`),
			count(t, url, `SELECT count(*) FROM kmsd_leases`),
		}
	}
	before := state()
	u, err := neturl.Parse(url)
	if err != nil {
		t.Fatal(err)
	}
	dbName := strings.TrimPrefix(u.Path, "/")

	run := func(t *testing.T, dataDir string, env []string, args ...string) (int, string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, kmsdBin, append([]string{"serve", "--listen", e2etest.FreeAddr(t), "--data-dir", dataDir}, args...)...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if ctx.Err() != nil {
			t.Fatalf("kmsd did not exit on its own:\n%s", out)
		}
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatal(err)
		}
		return cmd.ProcessState.ExitCode(), string(out)
	}
	tests := []struct {
		name string
		env  []string
		args func(dir string) []string
		want []string
	}{
		{"another key in KMSD_ROOT_KEY", env("KMSD_ROOT_KEY="+newRootKey(t), "KMSD_DATABASE_URL="+url), nil,
			[]string{"root key mismatch", "in KMSD_ROOT_KEY", dbName, "PostgreSQL"}},
		{"another key in a file", env("KMSD_DATABASE_URL=" + url), func(dir string) []string {
			f := filepath.Join(dir, "other.key")
			if err := os.WriteFile(f, []byte(newRootKey(t)), 0o600); err != nil {
				t.Fatal(err)
			}
			return []string{"--root-key-file", f}
		}, []string{"root key mismatch", "other.key", "--root-key-file", dbName}},
		{"no key", env(), func(string) []string { return []string{"--database-url", url} },
			[]string{"root key missing", "root.key", "KMSD_ROOT_KEY", "will not create a root key"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			dataDir := filepath.Join(dir, "data")
			var args []string
			if tt.args != nil {
				args = tt.args(dir)
			}
			code, out := run(t, dataDir, tt.env, args...)
			if code == 0 {
				t.Fatalf("kmsd exited 0, want a refusal:\n%s", out)
			}
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			if strings.Contains(out, url) || strings.Contains(out, "password") {
				t.Errorf("output shows the database URL or a password:\n%s", out)
			}
			if got := state(); got != before {
				t.Errorf("database rows (kv, kv_changes, leases) %v -> %v: a refused node wrote", before, got)
			}
			if _, err := os.Stat(filepath.Join(dataDir, "root.key")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("a root key file was created (stat: %v)", err)
			}
		})
	}

	// A new database is not even given kmsd's schema by a node without a
	// root key.
	t.Run("no key, new database", func(t *testing.T) {
		fresh := pgtest.URL(t)
		code, out := run(t, filepath.Join(t.TempDir(), "data"), env("KMSD_DATABASE_URL="+fresh))
		if code == 0 || !strings.Contains(out, "root key missing") {
			t.Fatalf("kmsd without a root key on a new database: exit %d:\n%s", code, out)
		}
		if n := count(t, fresh, `SELECT count(*) FROM pg_tables WHERE schemaname = 'public'`); n != 0 {
			t.Errorf("%d tables created by a refused node, want 0", n)
		}
	})

	// The right key still opens it.
	k2 := e2etest.StartKMSD(t, e2etest.KMSDConfig{Bin: kmsdBin, DataDir: k.DataDir, Env: env("KMSD_ROOT_KEY="+rk, "KMSD_DATABASE_URL="+url)})
	if n := len(awsCLI(t, k2, "list-keys")["Keys"].([]any)); n != 1 {
		t.Errorf("list-keys after the refusals: %d keys, want 1", n)
	}
}
