package secretfile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRead(t *testing.T) {
	tests := []struct {
		name string
		mode os.FileMode
		ok   bool
	}{
		{"0600", 0o600, true},
		{"0400", 0o400, true},
		{"0640 group-readable", 0o640, false},
		{"0644 world-readable", 0o644, false},
		{"0604 world-readable only", 0o604, false},
		{"0620 group-writable", 0o620, false},
		{"0601 others may execute", 0o601, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "secret")
			if err := os.WriteFile(path, []byte("s3cret\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, tt.mode); err != nil {
				t.Fatal(err)
			}
			got, err := Read(path)
			if tt.ok {
				if err != nil || string(got) != "s3cret\n" {
					t.Fatalf("Read = %q, %v; want the contents", got, err)
				}
				return
			}
			if !errors.Is(err, ErrUnprotected) {
				t.Fatalf("Read = %q, %v; want ErrUnprotected", got, err)
			}
			for _, s := range []string{"UNPROTECTED SECRET FILE!", fmt.Sprintf("Permissions %04o for", tt.mode), "are too open", "'" + path + "'", "chmod 600"} {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("message %q does not say %q", err, s)
				}
			}
			if strings.Contains(err.Error(), "s3cret") {
				t.Errorf("message repeats the secret: %q", err)
			}
		})
	}
}

func TestReadFollowsLinks(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "target")
	if err := os.WriteFile(target, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	// A link is always 0777; the file it leads to is what counts.
	if _, err := Read(link); !errors.Is(err, ErrUnprotected) {
		t.Fatalf("Read(link to 0644) = %v, want ErrUnprotected", err)
	}
	os.Chmod(target, 0o600)
	if _, err := Read(link); err != nil {
		t.Fatalf("Read(link to 0600) = %v", err)
	}
}

func TestReadRefusesNonRegular(t *testing.T) {
	if _, err := Read(t.TempDir()); err == nil {
		t.Fatal("Read(directory) succeeded")
	}
}

// TestOwner: a file owned by another user (not root) is refused. Only
// root can make one, so the test runs only as root (as CI does).
func TestOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to chown")
	}
	path := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(path, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Read(path); err != nil {
		t.Fatalf("root-owned: %v", err)
	}
	if err := os.Chown(path, 4242, 4242); err != nil {
		t.Fatal(err) // root can always chown its own temporary file
	}
	// Root accepts a root-owned file only; uid 4242 may replace this one.
	if _, err := Read(path); !errors.Is(err, ErrUnprotected) || !strings.Contains(err.Error(), "owned by uid 4242") {
		t.Fatalf("Read(owned by 4242) = %v, want ErrUnprotected naming the owner", err)
	}
}
