package catalog

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/storage"
)

// TestLastUse: records per (account, Region, key id), the newer use kept
// whichever is written last, deletion, and the tracking start stored once.
func TestLastUse(t *testing.T) {
	ctx := context.Background()
	c := newCatalog(t)
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	mrk := "mrk-1234abcd12ab34cd56ef1234567890ab"
	use := func(region, op string, at time.Time) LastUse {
		return LastUse{Account: "111122223333", Region: region, KeyID: mrk, Operation: op, Time: at, EventID: "ev-" + op, RequestID: "req-" + op}
	}
	if _, err := c.LastUse(ctx, "111122223333", "us-east-1", mrk); !errors.Is(err, ErrNotFound) {
		t.Fatalf("no use yet: %v, want ErrNotFound", err)
	}
	// Related multi-Region keys: one key id, a record per Region.
	if err := c.PutLastUses(ctx, []LastUse{use("us-east-1", "Sign", t0.Add(time.Second)), use("eu-west-1", "Verify", t0)}); err != nil {
		t.Fatal(err)
	}
	// An older use written later (another node's slower flush) loses.
	if err := c.PutLastUses(ctx, []LastUse{use("us-east-1", "Encrypt", t0)}); err != nil {
		t.Fatal(err)
	}
	for region, want := range map[string]LastUse{"us-east-1": use("us-east-1", "Sign", t0.Add(time.Second)), "eu-west-1": use("eu-west-1", "Verify", t0)} {
		got, err := c.LastUse(ctx, "111122223333", region, mrk)
		if err != nil || *got != want {
			t.Errorf("%s: %+v, %v; want %+v", region, got, err, want)
		}
	}
	if err := c.DeleteLastUse(ctx, "111122223333", "us-east-1", mrk); err != nil {
		t.Fatal(err)
	}
	if _, err := c.LastUse(ctx, "111122223333", "us-east-1", mrk); !errors.Is(err, ErrNotFound) {
		t.Errorf("after delete: %v, want ErrNotFound", err)
	}
	if _, err := c.LastUse(ctx, "111122223333", "eu-west-1", mrk); err != nil {
		t.Errorf("deleting one Region's record deleted another's: %v", err)
	}

	for i, now := range []time.Time{t0, t0.Add(time.Hour)} {
		got, err := c.TrackingStart(ctx, now)
		if err != nil || !got.Equal(t0) {
			t.Errorf("TrackingStart #%d = %v, %v; want %v", i+1, got, err, t0)
		}
	}
}

// TestLastUseUnfedAndLegacy: records are written under storage.UnfedPrefix
// (left out of the change feed), a record an older kmsd kept at
// "lastuse/…" is still read — the newer of the two wins — and both are
// deleted with the key.
func TestLastUseUnfedAndLegacy(t *testing.T) {
	ctx := context.Background()
	c := newCatalog(t)
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	const acct, region, id = "111122223333", "us-east-1", "1234abcd-12ab-34cd-56ef-1234567890ab"
	use := func(op string, at time.Time) LastUse {
		return LastUse{Account: acct, Region: region, KeyID: id, Operation: op, Time: at, EventID: "ev-" + op, RequestID: "req-" + op}
	}
	w := c.store.(storage.Watcher)
	b, err := w.Changes(ctx, storage.Cursor{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.PutLastUses(ctx, []LastUse{use("Encrypt", t0)}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.store.Get(ctx, storage.UnfedPrefix+"lastuseb/"+acct+"/"+region+"/"+id[:3]); err != nil {
		t.Fatalf("the bucket is not under %q: %v", storage.UnfedPrefix, err)
	}
	if b, err = w.Changes(ctx, b.Next, 0); err != nil || len(b.Keys) != 0 {
		t.Fatalf("a last-use write is in the change feed: %v, %v", b.Keys, err)
	}
	legacy := "lastuse/" + acct + "/" + region + "/" + id
	for _, tc := range []struct {
		legacy LastUse
		want   string
	}{{use("Decrypt", t0.Add(-time.Second)), "Encrypt"}, {use("Sign", t0.Add(time.Second)), "Sign"}} {
		v, err := json.Marshal(tc.legacy)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.store.Put(ctx, legacy, v); err != nil {
			t.Fatal(err)
		}
		got, err := c.LastUse(ctx, acct, region, id)
		if err != nil || got.Operation != tc.want {
			t.Errorf("with an older kmsd's record of %s at %v: %+v, %v; want %s", tc.legacy.Operation, tc.legacy.Time, got, err, tc.want)
		}
	}
	if err := c.DeleteLastUse(ctx, acct, region, id); err != nil {
		t.Fatal(err)
	}
	if _, err := c.LastUse(ctx, acct, region, id); !errors.Is(err, ErrNotFound) {
		t.Errorf("after delete: %v, want ErrNotFound", err)
	}
	if _, err := c.store.Get(ctx, legacy); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("the older kmsd's record survived the delete: %v", err)
	}
}
