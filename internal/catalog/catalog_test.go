package catalog

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"maps"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/barrier"
	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/storage"
	"github.com/kmsd/kmsd/internal/storage/sqlite"
)

func newCatalog(t testing.TB) *Catalog {
	t.Helper()
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "kmsd.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	root := make([]byte, 32)
	rand.Read(root)
	b, err := barrier.New(root)
	if err != nil {
		t.Fatal(err)
	}
	return New(st, b)
}

// TestMaterial checks sealed material opens for its own key and version
// only, and that the public key stays beside it.
func TestMaterial(t *testing.T) {
	c := newCatalog(t)
	ctx := context.Background()
	secret := []byte("private key bytes of key one")
	sealed, err := c.Seal("k1", 1, secret)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	k := &Key{ID: "k1", Account: testAccount, Policy: testPolicy, Region: "us-east-1", Created: now, KeyUsage: keys.SignVerify,
		KeySpec: "ECC_NIST_P256", Origin: "AWS_KMS", State: keys.Enabled, Current: 1,
		Versions: []Version{{Number: 1, Created: now, Sealed: sealed, Public: []byte("spki")}}}
	if err := c.CreateKey(ctx, k); err != nil {
		t.Fatal(err)
	}
	got, err := c.Key(ctx, "k1")
	if err != nil {
		t.Fatal(err)
	}
	m, err := c.Material(got, 1)
	if err != nil || !bytes.Equal(m, secret) {
		t.Fatalf("Material = %q, %v", m, err)
	}
	if v := got.Version(1); v == nil || string(v.Public) != "spki" {
		t.Fatalf("Version(1) = %+v", v)
	}
	if _, err := c.Material(got, 2); !errors.Is(err, ErrNotFound) {
		t.Errorf("Material of a missing version: %v, want ErrNotFound", err)
	}
	// The same sealed bytes moved to another key do not open.
	moved := *got
	moved.ID = "k2"
	if _, err := c.Material(&moved, 1); err == nil {
		t.Error("material sealed for k1 opened as k2's")
	}
}

// runCounter counts a store's transactions and the runs of their
// functions: a run beyond the first is a retry (on PostgreSQL, after a
// serialization failure).
type runCounter struct {
	storage.Store
	updates, runs atomic.Int64
}

func (s *runCounter) Update(ctx context.Context, fn func(storage.Tx) error) error {
	s.updates.Add(1)
	return s.Store.Update(ctx, func(tx storage.Tx) error { s.runs.Add(1); return fn(tx) })
}

// TestUpdateKeys: UpdateKeys writes several keys in one transaction; a key
// not found or whose fn returns ErrNoChange is left as it is and the
// others go on; any other error from fn leaves every key as it was; what
// it wrote is what the database and the cache then hold.
func TestUpdateKeys(t *testing.T) {
	base := newCatalog(t)
	counted := &runCounter{Store: base.store}
	c := New(counted, base.barrier)
	ctx := context.Background()
	now := time.Now().UTC()
	for _, id := range []string{"k1", "k2", "k3", "k4"} {
		k := &Key{ID: id, Account: testAccount, Policy: testPolicy, Region: "us-east-1", Created: now, KeyUsage: keys.EncryptDecrypt,
			KeySpec: keys.Symmetric, Origin: "AWS_KMS", State: keys.Enabled, Current: 1, Description: "old"}
		if err := c.CreateKey(ctx, k); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Key(ctx, id); err != nil { // cached before the update
			t.Fatal(err)
		}
	}
	describe := func(cat *Catalog) map[string]string {
		t.Helper()
		got := map[string]string{}
		for _, id := range []string{"k1", "k2", "k3", "k4"} {
			k, err := cat.Key(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			got[id] = k.Description
		}
		return got
	}
	before := counted.updates.Load()
	done, err := c.UpdateKeys(ctx, []string{"k1", "k2", "missing", "k3", "k4"}, func(k *Key) error {
		if k.ID == "k2" {
			return ErrNoChange
		}
		k.Description = "new " + k.ID
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, k := range done {
		names = append(names, k.ID)
	}
	if !slices.Equal(names, []string{"k1", "k3", "k4"}) {
		t.Errorf("UpdateKeys returned %v, want [k1 k3 k4]", names)
	}
	if n := counted.updates.Load() - before; n != 1 {
		t.Errorf("UpdateKeys of 5 keys began %d transactions, want 1", n)
	}
	want := map[string]string{"k1": "new k1", "k2": "old", "k3": "new k3", "k4": "new k4"}
	if got := describe(c); !maps.Equal(got, want) {
		t.Errorf("through the updating catalog's cache: %v, want %v", got, want)
	}
	if got := describe(New(base.store, base.barrier)); !maps.Equal(got, want) {
		t.Errorf("read from the database: %v, want %v", got, want)
	}

	// An error from fn for one key leaves the keys before it unchanged too.
	boom := errors.New("boom")
	if _, err := c.UpdateKeys(ctx, []string{"k1", "k2", "k3"}, func(k *Key) error {
		if k.ID == "k3" {
			return boom
		}
		k.Description = "lost"
		return nil
	}); !errors.Is(err, boom) {
		t.Fatalf("UpdateKeys with a failing fn: %v, want boom", err)
	}
	if got := describe(c); !maps.Equal(got, want) {
		t.Errorf("after a failed UpdateKeys, cached: %v, want %v", got, want)
	}
	if got := describe(New(base.store, base.barrier)); !maps.Equal(got, want) {
		t.Errorf("after a failed UpdateKeys, in the database: %v, want %v", got, want)
	}
}
