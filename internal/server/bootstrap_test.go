package server

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/kmsd/kmsd/internal/barrier"
	"github.com/kmsd/kmsd/internal/identity"
	"github.com/kmsd/kmsd/internal/storage"
	"github.com/kmsd/kmsd/internal/storage/sqlite"
)

func bootstrapFixture(t *testing.T) (storage.Store, *barrier.Barrier) {
	t.Helper()
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "kmsd.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	b, err := barrier.New(make([]byte, barrier.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	return st, b
}

func openIDs(t *testing.T, st storage.Store, b *barrier.Barrier) *identity.Store {
	t.Helper()
	ids, err := identity.Open(context.Background(), st, b)
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

// TestBootstrapAdminThreeNodes: three nodes, each with its own data
// directory, start at once on one empty database, 10 times over: one
// administrator key is stored, the one node that made it has it as its
// profile, the others have no profile (nor a pending one) and all three
// accept that key.
func TestBootstrapAdminThreeNodes(t *testing.T) {
	ctx := context.Background()
	for round := 0; round < 10; round++ {
		st, b := bootstrapFixture(t)
		const n = 3
		cfgs := make([]Config, n)
		idss := make([]*identity.Store, n)
		files := make([]string, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range cfgs {
			cfgs[i] = Config{DataDir: t.TempDir(), AccountID: "111122223333", DefaultRegion: "us-east-1"}
			idss[i] = openIDs(t, st, b)
		}
		for i := range cfgs {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				files[i], errs[i] = bootstrapAdmin(ctx, cfgs[i], idss[i])
			}(i)
		}
		wg.Wait()
		var akid, secret string
		writers := 0
		for i := range cfgs {
			if errs[i] != nil {
				t.Fatalf("round %d, node %d: %v", round, i, errs[i])
			}
			if left, _ := filepath.Glob(filepath.Join(cfgs[i].DataDir, ".credentials-*")); len(left) > 0 {
				t.Errorf("round %d, node %d left %v", round, i, left)
			}
			if files[i] == "" {
				continue
			}
			writers++
			if fi, err := os.Stat(files[i]); err != nil || fi.Mode().Perm() != 0o600 {
				t.Fatalf("round %d, node %d: profile %v", round, i, err)
			}
			akid, secret = readProfile(files[i])
		}
		if writers != 1 {
			t.Fatalf("round %d: %d nodes have a profile, want the 1 that made the administrator", round, writers)
		}
		keys, _ := st.List(ctx, "identity/accesskey/", "", 0)
		if len(keys) != 1 || keys[0].Key != "identity/accesskey/"+akid {
			t.Fatalf("round %d: stored access keys %v, want only the profile's %s", round, keys, akid)
		}
		for i, ids := range idss {
			if got, ok := ids.Secret(akid); !ok || got != secret {
				t.Fatalf("round %d: node %d does not accept the administrator's key", round, i)
			}
		}
	}
}

// TestBootstrapAdminCrash: a start that stored the administrator but
// crashed before its profile was renamed into place finds it again on
// the next start; a data directory restored over a database with an
// administrator gets no profile.
func TestBootstrapAdminCrash(t *testing.T) {
	ctx := context.Background()
	st, b := bootstrapFixture(t)
	cfg := Config{DataDir: t.TempDir(), AccountID: "111122223333", DefaultRegion: "us-east-1"}
	akid, secret := "AKIACRASHEDADMIN0001", "crashed/admin/secret/0123456789abcdefghij"
	content := fmt.Sprintf("[%s]\naws_access_key_id = %s\naws_secret_access_key = %s\nregion = us-east-1\n", ProfileName, akid, secret)
	if err := writeSynced(filepath.Join(cfg.DataDir, ".credentials-pending-"+akid), content); err != nil {
		t.Fatal(err)
	}
	// The crashed start: stored, not renamed.
	if _, _, _, err := openIDs(t, st, b).Bootstrap(ctx, cfg.AccountID, "kmsd-admin", akid, secret); err != nil {
		t.Fatal(err)
	}
	file, err := bootstrapAdmin(ctx, cfg, openIDs(t, st, b))
	if err != nil {
		t.Fatal(err)
	}
	if a, s := readProfile(file); a != akid || s != secret {
		t.Fatalf("after the crash, the profile has %q, want the stored administrator %s", a, akid)
	}

	restored := Config{DataDir: t.TempDir(), AccountID: "111122223333", DefaultRegion: "us-east-1"}
	if file, err := bootstrapAdmin(ctx, restored, openIDs(t, st, b)); err != nil || file != "" {
		t.Fatalf("restored data directory: profile %q, %v; want none", file, err)
	}
	if keys, _ := st.List(ctx, "identity/accesskey/", "", 0); len(keys) != 1 {
		t.Errorf("%d access keys stored, want 1", len(keys))
	}
}

// TestBootstrapAdminSharedDataDir: three processes starting at once on
// one data directory (and its database) end with one stored key, and the
// profile they share is that key's.
func TestBootstrapAdminSharedDataDir(t *testing.T) {
	ctx := context.Background()
	for round := 0; round < 10; round++ {
		st, b := bootstrapFixture(t)
		cfg := Config{DataDir: t.TempDir(), AccountID: "111122223333", DefaultRegion: "us-east-1"}
		const n = 3
		idss := make([]*identity.Store, n)
		for i := range idss {
			idss[i] = openIDs(t, st, b)
		}
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range idss {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				_, errs[i] = bootstrapAdmin(ctx, cfg, idss[i])
			}(i)
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d, process %d: %v", round, i, err)
			}
		}
		akid, secret := readProfile(filepath.Join(cfg.DataDir, "credentials"))
		keys, _ := st.List(ctx, "identity/accesskey/", "", 0)
		if len(keys) != 1 || keys[0].Key != "identity/accesskey/"+akid {
			t.Fatalf("round %d: stored %v, profile names %s", round, keys, akid)
		}
		for i, ids := range idss {
			if got, ok := ids.Secret(akid); !ok || got != secret {
				t.Fatalf("round %d: process %d does not accept the profile's key", round, i)
			}
		}
		if left, _ := filepath.Glob(filepath.Join(cfg.DataDir, ".credentials-*")); len(left) > 0 {
			t.Errorf("round %d: left %v", round, left)
		}
	}
}
