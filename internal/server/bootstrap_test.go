package server

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/kmsd/kmsd/internal/barrier"
	"github.com/kmsd/kmsd/internal/identity"
	"github.com/kmsd/kmsd/internal/storage/sqlite"
)

// TestBootstrapAdminThreeNodes: three nodes, each with its own data
// directory, start at once on one empty database: they write the same
// administrator profile, whose key is the only one stored, and a node
// whose profile went missing writes it again on restart.
func TestBootstrapAdminThreeNodes(t *testing.T) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "kmsd.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	b, err := barrier.New(make([]byte, barrier.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	const n = 3
	cfgs := make([]Config, n)
	files := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range cfgs {
		cfgs[i] = Config{DataDir: t.TempDir(), AccountID: "111122223333", DefaultRegion: "us-east-1"}
		ids, err := identity.Open(ctx, st, b)
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			files[i], errs[i] = bootstrapAdmin(ctx, cfgs[i], ids)
		}(i)
	}
	wg.Wait()
	var first string
	for i := range cfgs {
		if errs[i] != nil {
			t.Fatalf("node %d: %v", i, errs[i])
		}
		c, err := os.ReadFile(files[i])
		if err != nil {
			t.Fatalf("node %d wrote no profile: %v", i, err)
		}
		if fi, _ := os.Stat(files[i]); fi.Mode().Perm() != 0o600 {
			t.Errorf("node %d: profile mode %v, want 0600", i, fi.Mode().Perm())
		}
		if i == 0 {
			first = string(c)
		} else if string(c) != first {
			t.Errorf("node %d's profile differs:\n%s\nwant\n%s", i, c, first)
		}
	}
	keys, _ := st.List(ctx, "identity/accesskey/", "", 0)
	if len(keys) != 1 || !strings.Contains(first, strings.TrimPrefix(keys[0].Key, "identity/accesskey/")) {
		t.Errorf("stored access keys %v, want only the profile's", keys)
	}

	os.Remove(files[1])
	ids, _ := identity.Open(ctx, st, b)
	if f, err := bootstrapAdmin(ctx, cfgs[1], ids); err != nil {
		t.Fatal(err)
	} else if c, _ := os.ReadFile(f); string(c) != first {
		t.Errorf("profile written again on restart:\n%s\nwant\n%s", c, first)
	}
}
