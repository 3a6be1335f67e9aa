package catalog

import (
	"errors"
	"regexp"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/keys"
)

var materialIDPattern = regexp.MustCompile(`^[a-f0-9]{64}$`)

// TestVersionMaterialID checks the KeyMaterialId of versions with and
// without a stored id: a stored one is returned as it is, a missing one is
// MaterialID of the opened material, the same on every call and distinct
// per material and per key.
func TestVersionMaterialID(t *testing.T) {
	c := newCatalog(t)
	m1, m2 := []byte("material one, 32 bytes long!!!!!"), []byte("material two, 32 bytes long!!!!!")
	s1, err := c.Seal("k1", 1, m1)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := c.Seal("k1", 2, m2)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	k := &Key{ID: "k1", Account: testAccount, Policy: testPolicy, Region: "us-east-1", Created: now, KeyUsage: keys.EncryptDecrypt,
		KeySpec: keys.Symmetric, Origin: "AWS_KMS", State: keys.Enabled, Current: 2,
		Versions: []Version{
			{Number: 1, Created: now, Sealed: s1}, // written before kmsd stored ids
			{Number: 2, Created: now, Sealed: s2, MaterialID: "stored"},
		}}

	want := c.MaterialID("k1", m1)
	if !materialIDPattern.MatchString(want) {
		t.Fatalf("MaterialID = %q, want 64 lowercase hex digits", want)
	}
	for i := range 2 { // computed, then from memory
		got, err := c.VersionMaterialID(k, 1)
		if err != nil || got != want {
			t.Fatalf("call %d: VersionMaterialID(v1) = %q, %v; want %q", i, got, err, want)
		}
	}
	if got, err := c.VersionMaterialID(k, 2); err != nil || got != "stored" {
		t.Errorf("VersionMaterialID(v2) = %q, %v; want the stored id", got, err)
	}
	if _, err := c.VersionMaterialID(k, 3); !errors.Is(err, ErrNotFound) {
		t.Errorf("VersionMaterialID of a missing version: %v, want ErrNotFound", err)
	}
	if c.MaterialID("k1", m2) == want || c.MaterialID("k2", m1) == want {
		t.Error("MaterialID is the same for another material or another key id")
	}
	if c.MaterialID("k1", m1) != want {
		t.Error("MaterialID is not deterministic")
	}
}
