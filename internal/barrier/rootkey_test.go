package barrier

import (
	"bytes"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestParseRootKey(t *testing.T) {
	key := testKey()
	std := base64.StdEncoding.EncodeToString(key)
	tests := []struct {
		name string
		in   string
		ok   bool
	}{
		{"standard", std, true},
		{"trailing newline", std + "\n", true},
		{"surrounding spaces", "  " + std + "\t", true},
		{"empty", "", false},
		{"16 bytes", base64.StdEncoding.EncodeToString(key[:16]), false},
		{"33 bytes", base64.StdEncoding.EncodeToString(append(bytes.Clone(key), 0)), false},
		{"unpadded", base64.RawStdEncoding.EncodeToString(key), false},
		{"url alphabet", base64.URLEncoding.EncodeToString(bytes.Repeat([]byte{0xfb, 0xff}, 16)), false},
		{"hex", strings.Repeat("ab", 32), false},
		{"inner space", std[:10] + " " + std[10:], false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseRootKey(tt.in)
			if !tt.ok {
				if err == nil {
					t.Fatalf("ParseRootKey succeeded")
				}
				if len(tt.in) > 8 && strings.Contains(err.Error(), strings.TrimSpace(tt.in)[:8]) {
					t.Fatalf("error repeats the input: %v", err)
				}
				return
			}
			if err != nil || !bytes.Equal(got, key) {
				t.Fatalf("ParseRootKey = %x, %v; want %x", got, err, key)
			}
		})
	}
}

func TestLoadOrCreateRootKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "root.key")
	key, created, err := LoadOrCreateRootKey(path, bytes.NewReader(testKey()))
	if err != nil {
		t.Fatalf("first LoadOrCreateRootKey: %v", err)
	}
	if !created || !bytes.Equal(key, testKey()) {
		t.Fatalf("first LoadOrCreateRootKey = %x, created %v; want the random bytes, created", key, created)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Fatalf("key file mode %04o, want 0600", perm)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if want := base64.StdEncoding.EncodeToString(testKey()) + "\n"; string(data) != want {
		t.Fatalf("key file holds %q, want %q", data, want)
	}

	// The second start loads the same key and draws no randomness.
	again, created, err := LoadOrCreateRootKey(path, errReader{})
	if err != nil {
		t.Fatalf("second LoadOrCreateRootKey: %v", err)
	}
	if created || !bytes.Equal(again, key) {
		t.Fatalf("second LoadOrCreateRootKey = %x, created %v; want the same key, not created", again, created)
	}
}

func TestLoadRootKeyModes(t *testing.T) {
	tests := []struct {
		mode os.FileMode
		ok   bool
	}{
		{0o600, true},
		{0o400, true},
		{0o644, false},
		{0o640, false},
		{0o604, false},
		{0o620, false},
		{0o602, false},
		{0o666, false},
	}
	for _, tt := range tests {
		t.Run(tt.mode.String(), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "root.key")
			if err := os.WriteFile(path, []byte(base64.StdEncoding.EncodeToString(testKey())), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, tt.mode); err != nil {
				t.Fatal(err)
			}
			key, created, err := LoadOrCreateRootKey(path, errReader{})
			if created {
				t.Fatalf("created a key over an existing file")
			}
			if tt.ok {
				if err != nil || !bytes.Equal(key, testKey()) {
					t.Fatalf("LoadOrCreateRootKey = %x, %v; want the file's key", key, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("LoadOrCreateRootKey accepted a key file with mode %v", tt.mode)
			}
			if !strings.Contains(err.Error(), "group or others") || !strings.Contains(err.Error(), "chmod 600") {
				t.Fatalf("error does not explain the problem and the remedy: %v", err)
			}
		})
	}
}

func TestLoadRootKeyRefuses(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, path string)
	}{
		{"empty file", func(t *testing.T, path string) { write(t, path, "") }},
		{"short key", func(t *testing.T, path string) { write(t, path, base64.StdEncoding.EncodeToString(testKey()[:16])) }},
		{"long key", func(t *testing.T, path string) {
			write(t, path, base64.StdEncoding.EncodeToString(append(testKey(), 1)))
		}},
		{"not base64", func(t *testing.T, path string) { write(t, path, "this is not a key!") }},
		{"huge file", func(t *testing.T, path string) { write(t, path, strings.Repeat("A", 1<<20)) }},
		{"directory", func(t *testing.T, path string) {
			if err := os.Mkdir(path, 0o700); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "root.key")
			tt.setup(t, path)
			if key, created, err := LoadOrCreateRootKey(path, bytes.NewReader(testKey())); err == nil || created {
				t.Fatalf("LoadOrCreateRootKey = %x, created %v, %v; want an error", key, created, err)
			}
		})
	}
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestCreateRootKeyFailures(t *testing.T) {
	t.Run("no randomness", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "root.key")
		if _, _, err := LoadOrCreateRootKey(path, errReader{}); err == nil {
			t.Fatalf("LoadOrCreateRootKey succeeded without randomness")
		}
		if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 0 {
			t.Fatalf("files were left behind: %v", entries)
		}
	})
	t.Run("short randomness", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "root.key")
		if _, _, err := LoadOrCreateRootKey(path, bytes.NewReader(make([]byte, KeySize-1))); err == nil {
			t.Fatalf("LoadOrCreateRootKey succeeded with too few random bytes")
		}
	})
	t.Run("nil randomness", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "root.key")
		if _, _, err := LoadOrCreateRootKey(path, nil); err == nil {
			t.Fatalf("LoadOrCreateRootKey succeeded with a nil random source")
		}
	})
	t.Run("missing directory", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "no", "root.key")
		if _, _, err := LoadOrCreateRootKey(path, bytes.NewReader(testKey())); err == nil {
			t.Fatalf("LoadOrCreateRootKey succeeded in a missing directory")
		}
	})
}

// TestCreateRootKeyRace checks that concurrent first starts agree on one
// key: exactly one creates it and the others load it.
func TestCreateRootKeyRace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "root.key")
	const n = 16
	keys := make([][]byte, n)
	created := make([]bool, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			keys[i], created[i], errs[i] = LoadOrCreateRootKey(path, bytes.NewReader(bytes.Repeat([]byte{byte(i)}, KeySize)))
		})
	}
	wg.Wait()
	creators := 0
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("LoadOrCreateRootKey: %v", errs[i])
		}
		if created[i] {
			creators++
		}
		if !bytes.Equal(keys[i], keys[0]) {
			t.Fatalf("starts disagree on the key")
		}
	}
	if creators != 1 {
		t.Fatalf("%d starts created the key, want 1", creators)
	}
	entries, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Fatalf("directory holds %d files, want only the key file", len(entries))
	}
}
