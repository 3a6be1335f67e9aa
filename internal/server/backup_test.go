package server

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/barrier"
	"github.com/kmsd/kmsd/internal/storage/sqlite"
)

// newDataDir makes a data directory as kmsd leaves it: a root key file
// and a database with the key's check value and n records.
func newDataDir(t *testing.T, n int) string {
	t.Helper()
	dir := t.TempDir()
	ctx := t.Context()
	key, _, err := barrier.LoadOrCreateRootKey(filepath.Join(dir, "root.key"), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	b, err := barrier.New(key)
	if err != nil {
		t.Fatal(err)
	}
	s, err := sqlite.Open(ctx, filepath.Join(dir, dbFile))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	check, _ := b.SealCheck()
	if err := s.Create(ctx, barrier.CheckRecord, check); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if err := s.Put(ctx, fmt.Sprintf("rec/%04d", i), []byte(fmt.Sprint("value ", i))); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestBackupRestore backs up a data directory and restores it, and checks
// that the restored database holds the same records and that the restored
// root key file is the original key.
func TestBackupRestore(t *testing.T) {
	ctx := t.Context()
	src := newDataDir(t, 50)
	file := filepath.Join(t.TempDir(), "b")
	var msg bytes.Buffer
	if err := Backup(ctx, BackupConfig{DataDir: src, Out: file}, &msg); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(msg.String(), "51 records") || !strings.Contains(msg.String(), "The root key in "+filepath.Join(src, "root.key")+" opens it") {
		t.Errorf("backup message: %s", msg.String())
	}
	dst := filepath.Join(t.TempDir(), "d")
	msg.Reset()
	if err := Restore(ctx, RestoreConfig{From: file, DataDir: dst, RootKeyFile: filepath.Join(src, "root.key")}, &msg); err != nil {
		t.Fatal(err)
	}
	k1, _ := os.ReadFile(filepath.Join(src, "root.key"))
	k2, _ := os.ReadFile(filepath.Join(dst, "root.key"))
	if !bytes.Equal(k1, k2) {
		t.Error("restored root.key differs from the original")
	}
	entries, _ := os.ReadDir(dst)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if strings.Join(names, " ") != "kmsd.db root.key" {
		t.Errorf("restored directory holds %v, want kmsd.db and root.key", names)
	}
	s, err := sqlite.Open(ctx, filepath.Join(dst, dbFile))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	all, err := s.List(ctx, "rec/", "", 1000)
	if err != nil || len(all) != 50 || string(all[49].Value) != "value 49" {
		t.Errorf("restored records: %d, %v", len(all), err)
	}
}

// TestBackupHeader checks what the header says, and that restore refuses
// a format it does not know and a header whose counts disagree with the
// database.
func TestBackupHeader(t *testing.T) {
	h := &backupHeader{Format: 1, Created: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC), Source: "/d/kmsd.db",
		SchemaVersion: 1, Records: 7, Size: 4096, SHA256: make([]byte, 32)}
	enc := h.encode()
	got, err := readBackupHeader(bufio.NewReader(bytes.NewReader(enc)))
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(h) {
		t.Errorf("round trip: got %+v, want %+v", got, h)
	}
	if !bytes.Contains(enc, []byte("\nRoot-Key: NOT INCLUDED.")) {
		t.Errorf("header does not say the root key is not included:\n%s", enc)
	}

	ctx := t.Context()
	src := newDataDir(t, 3)
	file := filepath.Join(t.TempDir(), "b")
	if err := Backup(ctx, BackupConfig{DataDir: src, Out: file}, io.Discard); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(file)
	for _, tc := range []struct{ name, from, to, want string }{
		{"newer format", "kmsd-backup 1\n", "kmsd-backup 2\n", "newer than this kmsd reads"},
		{"record count", "Records: 4\n", "Records: 5\n", "the header says 5"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			edited := bytes.Replace(raw, []byte(tc.from), []byte(tc.to), 1)
			if bytes.Equal(edited, raw) {
				t.Fatalf("%q not in the backup", tc.from)
			}
			f := filepath.Join(t.TempDir(), "b")
			os.WriteFile(f, edited, 0o600)
			dst := filepath.Join(t.TempDir(), "d")
			err := Restore(ctx, RestoreConfig{From: f, DataDir: dst}, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want %q", err, tc.want)
			}
			if _, err := os.Stat(dst); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("failed restore left %s", dst)
			}
		})
	}
	// A database that is not kmsd's, with a header that matches it.
	other := filepath.Join(t.TempDir(), "other.db")
	os.WriteFile(other, bytes.Repeat([]byte{0}, 4096), 0o600)
	body, _ := os.ReadFile(other)
	sum := sha256.Sum256(body)
	h2 := *h
	h2.SHA256, h2.Size = sum[:], int64(len(body))
	f := filepath.Join(t.TempDir(), "b")
	os.WriteFile(f, append(h2.encode(), body...), 0o600)
	if err := Restore(ctx, RestoreConfig{From: f, DataDir: filepath.Join(t.TempDir(), "d")}, io.Discard); err == nil {
		t.Error("restore of a file that is no kmsd database succeeded")
	}
}

// FuzzReadBackupHeader feeds readBackupHeader arbitrary bytes: it must
// not panic, and what it accepts must encode and read back the same.
func FuzzReadBackupHeader(f *testing.F) {
	h := &backupHeader{Format: 1, Created: time.Unix(1700000000, 0).UTC(), Source: "/d/kmsd.db", SchemaVersion: 1, Records: 2, Size: 4096, SHA256: make([]byte, 32)}
	f.Add(h.encode())
	f.Add([]byte("kmsd-backup 1\nRecords: x\n\n"))
	f.Add([]byte("kmsd-backup 9\n\n"))
	f.Add([]byte("SQLite format 3\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := readBackupHeader(bufio.NewReader(bytes.NewReader(data)))
		if err != nil {
			return
		}
		again, err := readBackupHeader(bufio.NewReader(bytes.NewReader(got.encode())))
		if err != nil {
			t.Fatalf("re-encoded header does not read: %v", err)
		}
		if got.Size != again.Size || !bytes.Equal(got.SHA256, again.SHA256) || got.Records != again.Records || !got.Created.Equal(again.Created) {
			t.Fatalf("round trip: %+v, then %+v", got, again)
		}
	})
}
