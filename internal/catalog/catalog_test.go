package catalog

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/barrier"
	"github.com/kmsd/kmsd/internal/keys"
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
