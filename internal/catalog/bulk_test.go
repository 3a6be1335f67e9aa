package catalog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/keys"
)

func bulkKey(t *testing.T, c *Catalog, id string) *Key {
	t.Helper()
	sealed, err := c.Seal(id, 1, []byte("material of "+id))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	return &Key{ID: id, Account: testAccount, Region: "us-east-1", Created: now, KeyUsage: keys.EncryptDecrypt,
		KeySpec: keys.Symmetric, Origin: "AWS_KMS", State: keys.Enabled, Policy: "{}", Current: 1,
		Versions: []Version{{Number: 1, Created: now, Sealed: sealed}}}
}

// TestCreateKeys checks that CreateKeys writes what CreateKey writes (the
// same records under the same names), that the keys are then read, listed
// and scanned like any, and that a taken name stores none of a batch.
func TestCreateKeys(t *testing.T) {
	ctx := context.Background()
	one, many := newCatalog(t), newCatalog(t)
	var batch []*Key
	for i := 0; i < 3; i++ {
		id := fmt.Sprintf("0000000%d-aaaa-bbbb-cccc-dddddddddddd", i)
		k := bulkKey(t, one, id)
		if err := one.CreateKey(ctx, k); err != nil {
			t.Fatal(err)
		}
		batch = append(batch, k)
	}
	if err := many.CreateKeys(ctx, batch); err != nil {
		t.Fatal(err)
	}
	a, err := one.store.List(ctx, "", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	b, err := many.store.List(ctx, "", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(a) != len(b) || len(a) != 6 {
		t.Fatalf("CreateKey wrote %d records, CreateKeys %d", len(a), len(b))
	}
	for i := range a {
		if a[i].Key != b[i].Key || !bytes.Equal(a[i].Value, b[i].Value) {
			t.Errorf("record %d: CreateKey %s=%q, CreateKeys %s=%q", i, a[i].Key, a[i].Value, b[i].Key, b[i].Value)
		}
	}
	ids, err := many.ListKeys(ctx, "111122223333", "us-east-1", batch[0].ID, 10)
	if err != nil || len(ids) != 2 || ids[0] != batch[1].ID || ids[1] != batch[2].ID {
		t.Errorf("ListKeys after the first = %v, %v", ids, err)
	}
	k, err := many.Key(ctx, batch[2].ID)
	if err != nil {
		t.Fatal(err)
	}
	// batch was sealed under one's root key, which many's does not open.
	if _, err := many.Material(k, 1); err == nil {
		t.Error("material sealed by another barrier opened")
	}
	own := bulkKey(t, many, "10000000-aaaa-bbbb-cccc-dddddddddddd")
	if err := many.CreateKeys(ctx, []*Key{own}); err != nil {
		t.Fatal(err)
	}
	got, err := many.Key(ctx, own.ID)
	if err != nil {
		t.Fatal(err)
	}
	if m, err := many.Material(got, 1); err != nil || string(m) != "material of "+own.ID {
		t.Errorf("Material = %q, %v", m, err)
	}

	// A batch with one taken name stores nothing.
	fresh := bulkKey(t, many, "20000000-aaaa-bbbb-cccc-dddddddddddd")
	if err := many.CreateKeys(ctx, []*Key{fresh, batch[0]}); !errors.Is(err, ErrExists) {
		t.Fatalf("CreateKeys with a taken name: %v, want ErrExists", err)
	}
	if _, err := many.Key(ctx, fresh.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("a key of the refused batch was stored: %v", err)
	}

	var scanned []string
	if err := many.ScanKeys(ctx, func(k *Key) error { scanned = append(scanned, k.ID); return nil }); err != nil {
		t.Fatal(err)
	}
	want := []string{batch[0].ID, batch[1].ID, batch[2].ID, own.ID}
	if fmt.Sprint(scanned) != fmt.Sprint(want) {
		t.Errorf("ScanKeys visited %v, want %v", scanned, want)
	}
}

// TestScanKeysPages checks ScanKeys across several of its pages, and that
// it sees what UpdateKey stored and stops at fn's error.
func TestScanKeysPages(t *testing.T) {
	ctx := context.Background()
	c := newCatalog(t)
	var batch []*Key
	for i := 0; i < 1234; i++ {
		batch = append(batch, bulkKey(t, c, fmt.Sprintf("%08d-aaaa-bbbb-cccc-dddddddddddd", i)))
	}
	if err := c.CreateKeys(ctx, batch); err != nil {
		t.Fatal(err)
	}
	if _, err := c.UpdateKey(ctx, batch[700].ID, func(k *Key) error { k.Description = "changed"; return nil }); err != nil {
		t.Fatal(err)
	}
	n, prev := 0, ""
	err := c.ScanKeys(ctx, func(k *Key) error {
		if k.ID <= prev {
			t.Fatalf("%s after %s", k.ID, prev)
		}
		prev = k.ID
		if (k.ID == batch[700].ID) != (k.Description == "changed") {
			t.Errorf("%s: description %q", k.ID, k.Description)
		}
		n++
		return nil
	})
	if err != nil || n != len(batch) {
		t.Fatalf("ScanKeys visited %d of %d: %v", n, len(batch), err)
	}
	stop := errors.New("stop")
	n = 0
	if err := c.ScanKeys(ctx, func(*Key) error { n++; return stop }); !errors.Is(err, stop) || n != 1 {
		t.Errorf("ScanKeys with an error from fn: %v after %d", err, n)
	}
}
