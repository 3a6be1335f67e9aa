package catalog

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/keys"
)

// TestUpdateRelated checks that UpdateRelated reads the related records
// a key's configuration names, writes them (with the records it creates
// and deletes) in one transaction — all or nothing — and keeps the cache
// in step with storage.
func TestUpdateRelated(t *testing.T) {
	c := newCatalog(t)
	ctx := context.Background()
	const id = "mrk-00112233445566778899aabbccddeeff"
	now := time.Now().UTC()
	mk := func(region string, replicas ...string) *Key {
		return &Key{ID: id, Account: testAccount, Policy: testPolicy, Region: region, Created: now, KeyUsage: keys.EncryptDecrypt,
			KeySpec: keys.Symmetric, Origin: "AWS_KMS", State: keys.Enabled, Current: 1,
			PrimaryRegion: "us-east-1", ReplicaRegions: replicas}
	}
	if err := c.CreateKey(ctx, mk("us-east-1")); err != nil {
		t.Fatal(err)
	}
	// Create a replica and list it on every related key.
	add := func(region string) error {
		_, err := c.UpdateRelated(ctx, Name("us-east-1", id), func(ks []*Key, b *Batch) error {
			for _, k := range ks {
				k.ReplicaRegions = append(k.ReplicaRegions, region)
			}
			b.Create(mk(region, ks[0].ReplicaRegions...))
			return nil
		})
		return err
	}
	for _, r := range []string{"eu-west-1", "ap-southeast-2"} {
		if err := add(r); err != nil {
			t.Fatal(err)
		}
	}
	check := func(want ...string) {
		t.Helper()
		for _, r := range append([]string{"us-east-1"}, want...) {
			k, err := c.Key(ctx, Name(r, id))
			if err != nil || !slices.Equal(k.ReplicaRegions, want) {
				t.Fatalf("%s: %v, %v; want replicas %v", r, k, err, want)
			}
		}
	}
	check("eu-west-1", "ap-southeast-2")
	// A failing fn changes nothing; a name taken fails the whole
	// transaction with ErrExists, the updates included.
	boom := errors.New("boom")
	if _, err := c.UpdateRelated(ctx, Name("eu-west-1", id), func(ks []*Key, _ *Batch) error {
		if len(ks) != 3 || ks[0].Region != "eu-west-1" {
			t.Errorf("related records %d, first %s", len(ks), ks[0].Region)
		}
		ks[1].State = keys.Disabled
		return boom
	}); !errors.Is(err, boom) {
		t.Fatalf("err = %v", err)
	}
	if err := add("eu-west-1"); !errors.Is(err, ErrExists) {
		t.Fatalf("replica made twice: %v", err)
	}
	check("eu-west-1", "ap-southeast-2")
	// Deleting a replica drops its aliases, not those of another Region.
	for _, r := range []string{"us-east-1", "eu-west-1"} {
		if err := c.CreateAlias(ctx, &Alias{Name: "alias/a", Account: "111122223333", Region: r, KeyID: id}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.UpdateRelated(ctx, Name("eu-west-1", id), func(ks []*Key, b *Batch) error {
		b.Delete(ks[0].Name())
		for _, k := range ks[1:] {
			k.ReplicaRegions = slices.DeleteFunc(k.ReplicaRegions, func(r string) bool { return r == "eu-west-1" })
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	check("ap-southeast-2")
	if _, err := c.Key(ctx, Name("eu-west-1", id)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted replica: %v", err)
	}
	if _, err := c.Alias(ctx, "111122223333", "eu-west-1", "alias/a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted replica's alias: %v", err)
	}
	if _, err := c.Alias(ctx, "111122223333", "us-east-1", "alias/a"); err != nil {
		t.Fatalf("primary's alias: %v", err)
	}
	if ids, _ := c.ListKeys(ctx, "111122223333", "eu-west-1", "", 0); len(ids) != 0 {
		t.Fatalf("eu-west-1 still lists %v", ids)
	}
	// What the cache says is what storage says: a fresh catalog over the
	// same store reads the same records.
	fresh := New(c.store, c.barrier)
	for _, r := range []string{"us-east-1", "ap-southeast-2"} {
		a, _ := c.Key(ctx, Name(r, id))
		b, err := fresh.Key(ctx, Name(r, id))
		if err != nil || !slices.Equal(a.ReplicaRegions, b.ReplicaRegions) || a.State != b.State {
			t.Fatalf("%s: cache %+v, storage %+v, %v", r, a, b, err)
		}
	}
}
