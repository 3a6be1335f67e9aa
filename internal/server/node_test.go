package server

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// TestNodeID: --node-id wins; without it the id made on first start is
// kept in the data directory and read back, processes starting at once
// agree on it, and a damaged file is an error rather than a new id.
func TestNodeID(t *testing.T) {
	dir := t.TempDir()
	if id, err := nodeID(Config{DataDir: dir, NodeID: "given-1"}); err != nil || id != "given-1" {
		t.Fatalf("with --node-id: %q, %v", id, err)
	}
	if _, err := os.Stat(filepath.Join(dir, nodeIDFile)); err == nil {
		t.Error("--node-id wrote a node-id file")
	}
	const n = 8
	ids := make([]string, n)
	var wg sync.WaitGroup
	for i := range ids {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			id, err := nodeID(Config{DataDir: dir})
			if err != nil {
				t.Error(err)
			}
			ids[i] = id
		}(i)
	}
	wg.Wait()
	for _, id := range ids {
		if id != ids[0] || !validNodeID(id) {
			t.Fatalf("concurrent first starts made ids %v", ids)
		}
	}
	if again, _ := nodeID(Config{DataDir: dir}); again != ids[0] {
		t.Errorf("after a restart: %q, want %q", again, ids[0])
	}
	if other, _ := nodeID(Config{DataDir: t.TempDir()}); other == ids[0] {
		t.Errorf("another data directory got the same id %q", other)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".node-id-*")); len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
	os.WriteFile(filepath.Join(dir, nodeIDFile), []byte("bad id!\n"), 0o600)
	if _, err := nodeID(Config{DataDir: dir}); err == nil || !strings.Contains(err.Error(), "not a node id") {
		t.Errorf("damaged node-id file: %v", err)
	}
	for _, bad := range []string{"has space", strings.Repeat("x", 65), "a/b"} {
		c := Config{DataDir: dir, NodeID: bad}
		if err := c.Validate(); err == nil {
			t.Errorf("--node-id %q accepted", bad)
		}
	}
	c := Config{DataDir: dir, AuditSync: "sometimes"}
	if err := c.Validate(); err == nil {
		t.Error("--audit-sync sometimes accepted")
	}
}
