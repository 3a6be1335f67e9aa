package audit

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// DefaultMaxSize is the size at which a log file is rotated.
const DefaultMaxSize = 100 << 20

// DefaultBackups is how many rotated files are kept.
const DefaultBackups = 10

// File is an append-only log file (mode 0600) rotated by size: when a
// write would take it past MaxSize it is renamed PATH.1 (older ones move to
// PATH.2 …, the oldest beyond Backups is removed) and a new PATH begun.
// Rotation happens only between records, since Logger writes whole lines
// through a buffer that it flushes at line boundaries. Only a regular file
// is rotated: a device or a pipe (/dev/null, a FIFO read by a log shipper)
// is written to as it is, and never renamed.
type File struct {
	path    string
	maxSize int64
	backups int

	mu      sync.Mutex
	f       *os.File
	size    int64
	regular bool // f is a regular file, which rotates
}

// OpenFile opens (or creates) path for appending.
func OpenFile(path string, maxSize int64, backups int) (*File, error) {
	if maxSize <= 0 {
		maxSize = DefaultMaxSize
	}
	if backups <= 0 {
		backups = DefaultBackups
	}
	l := &File{path: path, maxSize: maxSize, backups: backups}
	if err := l.open(); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *File) open() error {
	if err := os.MkdirAll(filepath.Dir(l.path), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	l.f, l.size, l.regular = f, st.Size(), st.Mode().IsRegular()
	return nil
}

// Write appends p, rotating first if p would overflow the file. The
// Logger's buffer hands it whole records (or several), so a record never
// straddles two files unless a single record exceeds the buffer.
func (l *File) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.regular && l.size > 0 && l.size+int64(len(p)) > l.maxSize {
		if err := l.rotate(); err != nil {
			return 0, err
		}
	}
	n, err := l.f.Write(p)
	l.size += int64(n)
	return n, err
}

func (l *File) rotate() error {
	if err := l.f.Close(); err != nil {
		return err
	}
	os.Remove(l.path + "." + strconv.Itoa(l.backups))
	for i := l.backups - 1; i >= 1; i-- {
		os.Rename(l.path+"."+strconv.Itoa(i), l.path+"."+strconv.Itoa(i+1))
	}
	if err := os.Rename(l.path, l.path+".1"); err != nil {
		return fmt.Errorf("audit: rotate: %w", err)
	}
	return l.open()
}

// Sync commits the file to stable storage.
func (l *File) Sync() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.Sync()
}

// Close closes the file.
func (l *File) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.Close()
}

// Files lists path and its rotated predecessors that exist, oldest first.
func Files(path string) []string {
	matches, _ := filepath.Glob(path + ".*")
	type rf struct {
		n    int
		name string
	}
	var rs []rf
	for _, m := range matches {
		n, err := strconv.Atoi(strings.TrimPrefix(m, path+"."))
		if err == nil && n > 0 {
			rs = append(rs, rf{n, m})
		}
	}
	sort.Slice(rs, func(i, j int) bool { return rs[i].n > rs[j].n })
	var out []string
	for _, r := range rs {
		out = append(out, r.name)
	}
	if _, err := os.Stat(path); err == nil {
		out = append(out, path)
	}
	return out
}
