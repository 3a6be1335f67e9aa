package catalog

import (
	"context"
	"encoding/json"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/storage"
)

// countingStore counts the records its reads return.
type countingStore struct {
	storage.Store
	read atomic.Int64
}

func (s *countingStore) Get(ctx context.Context, key string) ([]byte, error) {
	v, err := s.Store.Get(ctx, key)
	if err == nil {
		s.read.Add(1)
	}
	return v, err
}

func (s *countingStore) List(ctx context.Context, prefix, after string, limit int) ([]storage.Entry, error) {
	es, err := s.Store.List(ctx, prefix, after, limit)
	s.read.Add(int64(len(es)))
	return es, err
}

// dueByScan is what DueKeys must return at now, found the slow way: every
// key whose SweepDue (to the millisecond the index keeps) is at or before
// now, sorted.
func dueByScan(t *testing.T, c *Catalog, now time.Time) []string {
	t.Helper()
	var out []string
	err := c.ScanKeys(t.Context(), func(k *Key) error {
		if due, ok := SweepDue(k); ok && max(due.UnixMilli(), 0) <= now.UnixMilli() {
			out = append(out, k.Name())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}

func dueByIndex(t *testing.T, c *Catalog, now time.Time) []string {
	t.Helper()
	var out []string
	if err := c.DueKeys(t.Context(), now, func(k *Key) error { out = append(out, k.Name()); return nil }); err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}

// indexOf is the index as the store has it, and as the records say it
// must be.
func indexOf(t *testing.T, c *Catalog) (stored, want []string) {
	t.Helper()
	es, err := c.store.List(t.Context(), sweepPrefix, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		stored = append(stored, e.Key)
	}
	err = c.ScanKeys(t.Context(), func(k *Key) error {
		if p := sweepPath(k); p != "" {
			want = append(want, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(want)
	return stored, want
}

// TestSweepIndexFollowsWrites: through every kind of key write (create,
// bulk create, seed, update, multi-Region update with create and delete,
// delete) the sweep index holds exactly one entry per key a sweeper may
// act on, at its due instant, and DueKeys returns, at any instant, exactly
// the keys due by then.
func TestSweepIndexFollowsWrites(t *testing.T) {
	ctx := t.Context()
	c := newCatalog(t)
	base := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	at := func(d int) *time.Time { t := base.Add(time.Duration(d) * time.Hour); return &t }
	var names []string
	for i := range 40 {
		k := realKey(t, c, fmt.Sprintf("%08d-1111-4000-8000-000000000000", i))
		switch i % 4 {
		case 0:
			if err := c.CreateKey(ctx, k); err != nil {
				t.Fatal(err)
			}
		case 1:
			if err := c.CreateKeys(ctx, []*Key{k}); err != nil {
				t.Fatal(err)
			}
		case 2:
			k.RotationEnabled, k.NextRotation = true, at(i)
			if err := c.CreateAll(ctx, []*Key{k}, nil, nil); err != nil {
				t.Fatal(err)
			}
		case 3:
			k.State, k.DeletionDate = keys.PendingDeletion, at(100-i)
			if err := c.CreateKey(ctx, k); err != nil {
				t.Fatal(err)
			}
		}
		names = append(names, k.Name())
	}
	// A multi-Region primary, whose update creates a replica and later
	// deletes it.
	mrk := realKey(t, c, "mrk-0123456789abcdef0123456789abcdef")
	mrk.PrimaryRegion = "us-east-1"
	if err := c.CreateKey(ctx, mrk); err != nil {
		t.Fatal(err)
	}
	names = append(names, mrk.Name())
	rng := mrand.New(mrand.NewPCG(1, 2))
	changes := []func(k *Key){
		func(k *Key) { k.State, k.DeletionDate = keys.PendingDeletion, at(rng.IntN(200)) },
		func(k *Key) { k.State, k.DeletionDate = keys.Enabled, nil },
		func(k *Key) { k.RotationEnabled, k.NextRotation = true, at(rng.IntN(200)) },
		func(k *Key) { k.RotationEnabled, k.NextRotation = false, nil },
		func(k *Key) { k.Versions[0].ValidTo = at(rng.IntN(200)) },
		func(k *Key) { k.Versions[0].ValidTo = nil },
		func(k *Key) { k.Pending = &Transition{Kind: "REPLICA", Due: *at(5)} },
		func(k *Key) { k.Pending = nil },
		func(k *Key) { k.State, k.DeletionDate = keys.PendingDeletion, nil },
		func(k *Key) { k.Description = "unrelated change" },
	}
	check := func(step string) {
		t.Helper()
		stored, want := indexOf(t, c)
		if !slices.Equal(stored, want) {
			t.Fatalf("%s: index %v, want %v", step, stored, want)
		}
		for _, h := range []int{-1, 0, 3, 50, 99, 150, 250} {
			now := base.Add(time.Duration(h) * time.Hour)
			if got, want := dueByIndex(t, c, now), dueByScan(t, c, now); !slices.Equal(got, want) {
				t.Fatalf("%s: DueKeys at %v = %v, want %v", step, now, got, want)
			}
		}
	}
	check("after creation")
	for step := range 200 {
		name := names[rng.IntN(len(names))]
		change := changes[rng.IntN(len(changes))]
		var err error
		if rng.IntN(3) == 0 {
			_, err = c.UpdateRelated(ctx, name, func(ks []*Key, _ *Batch) error { change(ks[0]); return nil })
		} else {
			_, err = c.UpdateKey(ctx, name, func(k *Key) error { change(k); return nil })
		}
		if err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
	}
	check("after 200 updates")
	// A replica created, then deleted, through UpdateRelated.
	_, err := c.UpdateRelated(ctx, mrk.Name(), func(ks []*Key, b *Batch) error {
		r := *ks[0]
		r.Region, r.Pending = "eu-west-1", &Transition{Kind: "REPLICA", Due: *at(1)}
		ks[0].ReplicaRegions = []string{"eu-west-1"}
		b.Create(&r)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	check("after a replica was created")
	_, err = c.UpdateRelated(ctx, mrk.Name(), func(ks []*Key, b *Batch) error {
		if len(ks) != 2 {
			return fmt.Errorf("%d related keys, want 2", len(ks))
		}
		ks[0].ReplicaRegions = nil
		b.Delete(ks[1].Name())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	check("after the replica was deleted")
	for _, name := range names[:20] {
		if err := c.DeleteKey(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	check("after deletions")
}

// TestDueKeysReadsOnlyDue: on 5,000 keys of which 3 are due, a sweep
// round reads a handful of records, not the store; a store written before
// the index (records put straight into storage) is indexed by the first
// round, once, and then read as cheaply.
func TestDueKeysReadsOnlyDue(t *testing.T) {
	ctx := t.Context()
	c0 := newCatalog(t)
	cs := &countingStore{Store: c0.store}
	c := New(cs, c0.barrier)
	// kmsd's start on an empty store marks it indexed.
	if err := c.InitSweepIndex(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c0.store.Get(ctx, sweepIndexedPath); err != nil {
		t.Fatalf("an empty store is not marked indexed at start: %v", err)
	}
	makeKeys(t, c, 5000)
	now := time.Now()
	past := now.Add(-time.Hour)
	var due []string
	for i, id := range []string{"00000007-0000-4000-8000-000000000000", "00000070-0000-4000-8000-000000000000", "00000700-0000-4000-8000-000000000000"} {
		_, err := c.UpdateKey(ctx, id, func(k *Key) error {
			switch i {
			case 0:
				k.State, k.DeletionDate = keys.PendingDeletion, &past
			case 1:
				k.RotationEnabled, k.NextRotation = true, &past
			case 2:
				k.Pending = &Transition{Kind: "REPLICA", Due: now.Add(time.Hour)}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		due = append(due, id)
	}
	// Not due yet: indexed, not returned.
	later := now.Add(time.Hour)
	if _, err := c.UpdateKey(ctx, "00000008-0000-4000-8000-000000000000", func(k *Key) error {
		k.RotationEnabled, k.NextRotation = true, &later
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	round := func(c *Catalog) ([]string, int64) {
		cs.read.Store(0)
		got := dueByIndex(t, c, now)
		return got, cs.read.Load()
	}
	got, reads := round(c)
	if !slices.Equal(got, due) {
		t.Fatalf("DueKeys = %v, want %v", got, due)
	}
	// The index entries up to the first not due (4), the 3 records, and
	// the mark.
	if reads > 10 {
		t.Errorf("a sweep round over 5,000 keys with 3 due read %d records", reads)
	}
	t.Logf("sweep round, 5,000 keys, 3 due: %d records read", reads)

	// A store from before the index: its records and no index.
	old := newCatalog(t)
	ocs := &countingStore{Store: old.store}
	cs = ocs
	es, err := c0.store.List(ctx, "key/", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		k := new(Key)
		if err := json.Unmarshal(e.Value, k); err != nil {
			t.Fatal(err)
		}
		material, err := c0.barrier.Open(materialAAD(k.Name(), 1), k.Versions[0].Sealed)
		if err != nil {
			t.Fatal(err)
		}
		if k.Versions[0].Sealed, err = old.Seal(k.Name(), 1, material); err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(k)
		if err := old.store.Put(ctx, e.Key, b); err != nil {
			t.Fatal(err)
		}
	}
	oc := New(ocs, old.barrier)
	// Its start leaves the indexing to the first round.
	if err := oc.InitSweepIndex(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := old.store.Get(ctx, sweepIndexedPath); err == nil {
		t.Fatal("a store with keys from before the index was marked indexed at start")
	}
	if stored, _ := indexOf(t, oc); len(stored) != 0 {
		t.Fatalf("the store from before the index has %d index entries", len(stored))
	}
	if got, _ := round(oc); !slices.Equal(got, due) {
		t.Fatalf("first round on a store from before the index: %v, want %v", got, due)
	}
	if stored, want := indexOf(t, oc); !slices.Equal(stored, want) || len(want) != 4 {
		t.Errorf("index built by the first round: %v, want %v (4 entries)", stored, want)
	}
	if got, reads := round(New(ocs, old.barrier)); !slices.Equal(got, due) || reads > 10 {
		t.Errorf("a later round (another process): %v, %d records read; want %v, at most 10", got, reads, due)
	}
}
