package audit

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestFileRotates: a regular file past its size is renamed PATH.1 and a
// new PATH begun.
func TestFileRotates(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	f, err := OpenFile(path, 100, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	line := append(bytes.Repeat([]byte("x"), 59), '\n')
	for range 3 {
		if _, err := f.Write(line); err != nil {
			t.Fatal(err)
		}
	}
	if got := Files(path); len(got) != 3 {
		t.Fatalf("files after three 60-byte writes with a 100-byte limit: %q, want PATH.2, PATH.1 and PATH", got)
	}
}

// TestFileNotRegularNeverRotates: a log at a FIFO (as at /dev/null or a
// pipe to a log shipper) is written past its size without being renamed
// — kmsd with --audit-log /dev/null once renamed /dev/null to /dev/null.1
// and made a regular file in its place at each rotation.
func TestFileNotRegularNeverRotates(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.fifo")
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	got := make(chan int64)
	go func() {
		r, err := os.Open(path)
		if err != nil {
			got <- -1
			return
		}
		defer r.Close()
		n, _ := io.Copy(io.Discard, r)
		got <- n
	}()
	f, err := OpenFile(path, 100, 2)
	if err != nil {
		t.Fatal(err)
	}
	line := append(bytes.Repeat([]byte("x"), 59), '\n')
	for range 10 {
		if _, err := f.Write(line); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if n := <-got; n != 600 {
		t.Fatalf("the reader got %d bytes, want 600", n)
	}
	st, err := os.Lstat(path)
	if err != nil || st.Mode()&os.ModeNamedPipe == 0 {
		t.Fatalf("%s is no longer the FIFO: %v, %v", path, st.Mode(), err)
	}
	if rotated := Files(path); len(rotated) != 1 {
		t.Fatalf("files: %q, want the FIFO alone", rotated)
	}
}
