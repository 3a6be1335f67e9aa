package catalog

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/keys"
)

// TestRelatedKeysByRegion checks that related multi-Region keys, which
// share a key id, are separate records told apart by Region: each has its
// own sealed material (which does not open as the other's), its own
// grants, its own entry in its Region's key list, and deleting one leaves
// the other.
func TestRelatedKeysByRegion(t *testing.T) {
	c := newCatalog(t)
	ctx := context.Background()
	const id = "mrk-0123456789abcdef0123456789abcdef"
	now := time.Now().UTC()
	secret := []byte("shared material, 32 bytes long!!")
	mk := func(region string) *Key {
		sealed, err := c.Seal(Name(region, id), 1, secret)
		if err != nil {
			t.Fatal(err)
		}
		return &Key{ID: id, Account: testAccount, Policy: testPolicy, Region: region, Created: now, KeyUsage: keys.EncryptDecrypt,
			KeySpec: keys.Symmetric, Origin: "AWS_KMS", State: keys.Enabled, Current: 1,
			Versions: []Version{{Number: 1, Created: now, Sealed: sealed}}}
	}
	east, west := mk("us-east-1"), mk("eu-west-1")
	for _, k := range []*Key{east, west} {
		if err := c.CreateKey(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	if got := east.Name(); got != id+"@us-east-1" {
		t.Fatalf("Name = %q", got)
	}
	if got := Name("us-east-1", "1234abcd-12ab-34cd-56ef-1234567890ab"); got != "1234abcd-12ab-34cd-56ef-1234567890ab" {
		t.Fatalf("single-Region Name = %q, want the bare id", got)
	}
	for _, region := range []string{"us-east-1", "eu-west-1"} {
		k, err := c.Key(ctx, Name(region, id))
		if err != nil || k.Region != region {
			t.Fatalf("Key(%s) = %+v, %v", region, k, err)
		}
		m, err := c.Material(k, 1)
		if err != nil || !bytes.Equal(m, secret) {
			t.Fatalf("Material(%s) = %q, %v", region, m, err)
		}
		ids, err := c.ListKeys(ctx, "111122223333", region, "", 0)
		if err != nil || len(ids) != 1 || ids[0] != id {
			t.Fatalf("ListKeys(%s) = %v, %v", region, ids, err)
		}
	}
	// A sealed value of one Region's record does not open as the other's.
	swapped := *west
	swapped.Versions = []Version{{Number: 1, Created: now, Sealed: east.Versions[0].Sealed}}
	if _, err := c.Material(&swapped, 1); err == nil {
		t.Fatal("east's sealed material opened as west's")
	}
	if err := c.CreateGrant(ctx, &Grant{ID: "g1", KeyID: id, Region: "eu-west-1", Created: now, Token: "t"}); err != nil {
		t.Fatal(err)
	}
	if l, _ := c.Grants(ctx, Name("us-east-1", id)); len(l) != 0 {
		t.Fatalf("east has west's grant: %v", l)
	}
	if l, _ := c.Grants(ctx, Name("eu-west-1", id)); len(l) != 1 {
		t.Fatalf("west's grants = %v", l)
	}
	if err := c.DeleteKey(ctx, Name("us-east-1", id)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Key(ctx, Name("us-east-1", id)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted east: %v", err)
	}
	if _, err := c.Key(ctx, Name("eu-west-1", id)); err != nil {
		t.Fatalf("west after east's deletion: %v", err)
	}
}
