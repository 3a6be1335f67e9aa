package e2e

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
)

// withDataDir starts kmsd on dir instead of a fresh data directory.
func withDataDir(dir string) serverOpt {
	return func(s *server) { s.DataDir = dir }
}

// timedAcked is acked with each write's completion time, so that the
// writes acknowledged before a moment can be picked out.
type timedAcked struct {
	mu    sync.Mutex
	keys  []string
	keyAt []time.Time
	blobs []ackedBlob
	at    []time.Time
}

// before returns what was acknowledged before t.
func (a *timedAcked) before(t time.Time) *acked {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := &acked{}
	for i, k := range a.keys {
		if a.keyAt[i].Before(t) {
			out.keys = append(out.keys, k)
		}
	}
	for i, b := range a.blobs {
		if a.at[i].Before(t) {
			out.blobs = append(out.blobs, b)
		}
	}
	return out
}

// kmsdCmd runs `kmsd args…` to completion and returns its combined output
// and exit code.
func kmsdCmd(t *testing.T, ctx context.Context, env []string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.CommandContext(ctx, kmsdBin, args...)
	cmd.Env = append(cleanEnv(), env...)
	out, err := cmd.CombinedOutput()
	code := cmd.ProcessState.ExitCode()
	if err != nil && code < 0 {
		t.Fatalf("kmsd %v: %v\n%s", args, err, out)
	}
	return string(out), code
}

// TestBackupUnderLoad takes `kmsd backup` of a serving kmsd while clients
// create keys and encrypt, restores the backup into a fresh data directory
// with `kmsd restore` and the original root key file, starts a second kmsd
// there, and checks that every key and ciphertext acknowledged before the
// backup began is in it: each key is described, each ciphertext decrypts.
func TestBackupUnderLoad(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	cr := s.Creds()
	ctx := testContext(t)
	c := sdkClient(s, cr.AccessKeyID, cr.SecretAccessKey, region)
	var a timedAcked
	var first acked // keys the writers encrypt under

	var stop atomic.Bool
	var wg sync.WaitGroup
	for w := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(7, uint64(w)))
			for !stop.Load() {
				key := first.randomKey(r)
				if key == "" || r.IntN(3) == 0 {
					out, err := c.CreateKey(ctx, &kms.CreateKeyInput{Description: aws.String("backup writer " + strconv.Itoa(w))})
					if err != nil {
						t.Errorf("CreateKey: %v", err)
						return
					}
					done := time.Now()
					id := aws.ToString(out.KeyMetadata.KeyId)
					first.addKey(id)
					a.mu.Lock()
					a.keys, a.keyAt = append(a.keys, id), append(a.keyAt, done)
					a.mu.Unlock()
					continue
				}
				pt := randomBytes(r, 1+r.IntN(256))
				ec := randomContext(r)
				out, err := c.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String(key), Plaintext: pt, EncryptionContext: ec})
				if err != nil {
					t.Errorf("Encrypt: %v", err)
					return
				}
				done := time.Now()
				a.mu.Lock()
				a.blobs, a.at = append(a.blobs, ackedBlob{keyID: key, blob: out.CiphertextBlob, pt: pt, ec: ec}), append(a.at, done)
				a.mu.Unlock()
			}
		}()
	}
	defer func() { stop.Store(true); wg.Wait() }()

	time.Sleep(1500 * time.Millisecond)
	dir := t.TempDir()
	file := filepath.Join(dir, "kmsd.backup")
	began := time.Now()
	out, code := kmsdCmd(t, ctx, nil, "backup", "--data-dir", s.DataDir, "--out", file)
	ended := time.Now()
	time.Sleep(300 * time.Millisecond) // writes go on after the backup too
	stop.Store(true)
	wg.Wait()
	if code != 0 {
		t.Fatalf("kmsd backup: exit %d\n%s", code, out)
	}
	if !strings.Contains(out, "The root key is NOT in the backup") || !strings.Contains(out, "opens it") {
		t.Errorf("kmsd backup does not say the root key is not in the backup, or that the data directory's key opens it:\n%s", out)
	}
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	header, _, _ := bytes.Cut(raw, []byte("\n\n"))
	if !bytes.HasPrefix(header, []byte("kmsd-backup 1\n")) || !bytes.Contains(header, []byte("\nRoot-Key: NOT INCLUDED.")) || !bytes.Contains(header, []byte("\nCreated: ")) {
		t.Errorf("backup header does not say what the file is:\n%s", header)
	}
	key, err := os.ReadFile(filepath.Join(s.DataDir, "root.key"))
	if err != nil {
		t.Fatal(err)
	}
	if k := bytes.TrimSpace(key); bytes.Contains(raw, k) {
		t.Error("the backup file holds the root key")
	}
	if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("backup file mode: %v %v, want 0600", fi.Mode(), err)
	}

	before := a.before(began)
	during := a.before(ended)
	all := a.before(time.Now().Add(time.Hour))
	t.Logf("acknowledged: %d keys and %d ciphertexts before the backup began, %d and %d by its end (%v), %d and %d in all",
		len(before.keys), len(before.blobs), len(during.keys), len(during.blobs), ended.Sub(began).Round(time.Millisecond), len(all.keys), len(all.blobs))
	if len(before.keys) == 0 || len(before.blobs) == 0 {
		t.Fatalf("no load before the backup: %d keys, %d ciphertexts", len(before.keys), len(before.blobs))
	}
	if len(all.keys)+len(all.blobs) == len(during.keys)+len(during.blobs) {
		t.Errorf("no write was acknowledged after the backup: the writers were not running beside it")
	}

	// Restore into a directory that does not exist yet, with the key file.
	restored := filepath.Join(t.TempDir(), "restored")
	out, code = kmsdCmd(t, ctx, nil, "restore", "--from", file, "--data-dir", restored, "--root-key-file", filepath.Join(s.DataDir, "root.key"))
	if code != 0 {
		t.Fatalf("kmsd restore: exit %d\n%s", code, out)
	}
	if fi, err := os.Stat(filepath.Join(restored, "root.key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("restored root.key: %v, %v; want mode 0600", fi, err)
	}
	// Stopped first: the second kmsd proves the backup, not the first.
	s.Stop()
	s2 := startServer(t, withDataDir(restored))
	verifyAcked(t, ctx, sdkClient(s2, cr.AccessKeyID, cr.SecretAccessKey, region), before, 1)
	// The banner says where the administrator's keys are: in the
	// restored store, as the credentials file is not in backups.
	if log, _ := os.ReadFile(s2.logPath); !bytes.Contains(log, []byte("the access keys already in the store")) {
		t.Errorf("the restored kmsd's banner does not say its access keys are in the store:\n%s", log)
	}

	// Writes acknowledged after the backup ended are not in it.
	c2 := sdkClient(s2, cr.AccessKeyID, cr.SecretAccessKey, region)
	var missing int
	for _, id := range all.keys[len(during.keys):] {
		if _, err := c2.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(id)}); err != nil {
			missing++
		}
	}
	if n := len(all.keys) - len(during.keys); n > 0 && missing == 0 {
		t.Errorf("all %d keys created after the backup ended are in it", n)
	}
}

// TestRestoreRefuses checks that restore changes nothing given a used
// data directory, a damaged or truncated backup, or the wrong root key,
// and that restore without a key gives a directory only the right key
// opens.
func TestRestoreRefuses(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	cr := s.Creds()
	ctx := testContext(t)
	c := sdkClient(s, cr.AccessKeyID, cr.SecretAccessKey, region)
	k, err := c.CreateKey(ctx, &kms.CreateKeyInput{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "b")
	if out, code := kmsdCmd(t, ctx, []string{"KMSD_DATA_DIR=" + s.DataDir}, "backup", "--out", file); code != 0 {
		t.Fatalf("kmsd backup (data directory from KMSD_DATA_DIR): exit %d\n%s", code, out)
	}
	// serve's config file, with keys backup has no use for, names the
	// data directory as well.
	conf := filepath.Join(dir, "kmsd.toml")
	os.WriteFile(conf, []byte("listen = \"127.0.0.1:1\"\ndata_dir = \""+s.DataDir+"\"\n"), 0o600)
	if out, code := kmsdCmd(t, ctx, nil, "backup", "--config", conf, "--out", filepath.Join(dir, "from-config")); code != 0 {
		t.Errorf("kmsd backup --config: exit %d\n%s", code, out)
	}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"backup", "--data-dir", s.DataDir}, 1, "--out is required"},
		{[]string{"backup", "--out", filepath.Join(dir, "x"), "--data-dir", dir}, 1, "no kmsd database in"},
		{[]string{"backup", "--out", filepath.Join(dir, "x"), "--nope"}, 2, "flag provided but not defined"},
		{[]string{"restore", "--from", file}, 1, "--data-dir is required"},
	} {
		if out, code := kmsdCmd(t, ctx, nil, tc.args...); code != tc.code || !strings.Contains(out, tc.want) {
			t.Errorf("kmsd %v: exit %d, output %q; want %d and %q", tc.args, code, out, tc.code, tc.want)
		}
	}
	good, _ := os.ReadFile(file)
	rootKey := filepath.Join(s.DataDir, "root.key")
	wrongKey := filepath.Join(dir, "wrong.key")
	os.WriteFile(wrongKey, []byte("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"), 0o600)
	damaged := filepath.Join(dir, "damaged")
	d := bytes.Clone(good)
	d[len(d)-100] ^= 1
	os.WriteFile(damaged, d, 0o600)
	truncated := filepath.Join(dir, "truncated")
	os.WriteFile(truncated, good[:len(good)-1000], 0o600)
	notBackup := filepath.Join(dir, "notbackup")
	os.WriteFile(notBackup, []byte("hello\n\nworld"), 0o600)

	for _, tc := range []struct {
		name, from, key, want string
	}{
		{"used data directory", file, rootKey, "is not empty"},
		{"damaged", damaged, rootKey, "is damaged"},
		{"truncated", truncated, rootKey, "is truncated"},
		{"not a backup", notBackup, rootKey, "not a kmsd backup file"},
		{"wrong root key", file, wrongKey, "does not open this backup"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			target := filepath.Join(t.TempDir(), "new")
			if tc.name == "used data directory" {
				target = s.DataDir
			}
			var beforeNames []string
			if es, err := os.ReadDir(target); err == nil {
				for _, e := range es {
					beforeNames = append(beforeNames, e.Name())
				}
			}
			out, code := kmsdCmd(t, ctx, nil, "restore", "--from", tc.from, "--data-dir", target, "--root-key-file", tc.key)
			if code != 1 || !strings.Contains(out, tc.want) {
				t.Errorf("exit %d, output %q; want 1 and %q", code, out, tc.want)
			}
			var after []string
			if es, err := os.ReadDir(target); err == nil {
				for _, e := range es {
					after = append(after, e.Name())
				}
			}
			if strings.Join(after, " ") != strings.Join(beforeNames, " ") {
				t.Errorf("restore changed %s: %v before, %v after", target, beforeNames, after)
			}
		})
	}

	// Without a key: the directory is made, and kmsd starts on it only
	// with the original key.
	restored := filepath.Join(t.TempDir(), "nokey")
	if out, code := kmsdCmd(t, ctx, nil, "restore", "--from", file, "--data-dir", restored); code != 0 || !strings.Contains(out, "No root key was given") {
		t.Fatalf("restore without a key: exit %d\n%s", code, out)
	}
	// kmsd must refuse at once; the deadline only bounds a failure.
	short, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if out, code := kmsdCmd(t, short, []string{"KMSD_ROOT_KEY=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}, "serve", "--listen", freeAddr(t), "--data-dir", restored); code == 0 || !strings.Contains(out, "root key mismatch") {
		t.Errorf("kmsd on the restored directory with another root key: exit %d\n%s", code, out)
	}
	key, _ := os.ReadFile(rootKey)
	s2 := startServer(t, withDataDir(restored), withEnv("KMSD_ROOT_KEY="+strings.TrimSpace(string(key))))
	c2 := sdkClient(s2, cr.AccessKeyID, cr.SecretAccessKey, region)
	if _, err := c2.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: k.KeyMetadata.KeyId}); err != nil {
		t.Errorf("DescribeKey on the restored kmsd: %v", err)
	}
}

// TestBackupKilled kills `kmsd backup` with SIGKILL while it writes (slowed
// by --max-rate so that there is a middle to kill it in), and checks that
// --out is as it was: absent, or the previous backup, whole.
func TestBackupKilled(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	cr := s.Creds()
	ctx := testContext(t)
	c := sdkClient(s, cr.AccessKeyID, cr.SecretAccessKey, region)
	for i := range 8 {
		if _, err := c.CreateKey(ctx, &kms.CreateKeyInput{Description: aws.String("killed backup " + strconv.Itoa(i))}); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	previous := filepath.Join(dir, "previous")
	if out, code := kmsdCmd(t, ctx, nil, "backup", "--data-dir", s.DataDir, "--out", previous); code != 0 {
		t.Fatalf("kmsd backup: exit %d\n%s", code, out)
	}
	old, _ := os.ReadFile(previous)

	for _, out := range []string{filepath.Join(dir, "fresh"), previous} {
		cmd := exec.Command(kmsdBin, "backup", "--data-dir", s.DataDir, "--out", out, "--max-rate", "4k")
		cmd.Env = cleanEnv()
		var log bytes.Buffer
		cmd.Stdout, cmd.Stderr = &log, &log
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Kill once the temporary file beside out holds the header and
		// part of the snapshot.
		var tmp string
		for deadline := time.Now().Add(20 * time.Second); tmp == "" && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			ms, _ := filepath.Glob(filepath.Join(dir, "."+filepath.Base(out)+".tmp-*"))
			for _, m := range ms {
				if fi, err := os.Stat(m); err == nil && fi.Size() > 2048 {
					tmp = m
				}
			}
		}
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		if tmp == "" {
			t.Fatalf("%s: no partly written temporary file seen; backup output:\n%s", out, log.String())
		}
		fi, _ := os.Stat(tmp)
		t.Logf("%s: killed with %d bytes in %s", filepath.Base(out), fi.Size(), filepath.Base(tmp))
		got, err := os.ReadFile(out)
		switch {
		case out == previous && !bytes.Equal(got, old):
			t.Errorf("the previous backup at %s changed (%v)", out, err)
		case out != previous && err == nil:
			t.Errorf("a killed backup left %d bytes at --out %s", len(got), out)
		}
	}
	// The previous backup still restores.
	if out, code := kmsdCmd(t, ctx, nil, "restore", "--from", previous, "--data-dir", filepath.Join(dir, "restored"), "--root-key-file", filepath.Join(s.DataDir, "root.key")); code != 0 {
		t.Errorf("restore of the previous backup after the kill: exit %d\n%s", code, out)
	}
}
