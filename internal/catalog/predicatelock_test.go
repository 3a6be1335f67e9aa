package catalog

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/storage"
	"github.com/kmsd/kmsd/internal/storage/postgres"
	"github.com/kmsd/kmsd/internal/storage/postgres/pgtest"
)

// probeStore runs probe at the end of each transaction's function, when
// it has read and written everything and not yet committed.
type probeStore struct {
	storage.Store
	probe func() error
}

func (s probeStore) Update(ctx context.Context, fn func(storage.Tx) error) error {
	return s.Store.Update(ctx, func(tx storage.Tx) error {
		if err := fn(tx); err != nil {
			return err
		}
		return s.probe()
	})
}

// TestUpdateKeysPredicateLocks: on PostgreSQL, an UpdateKeys of
// KeysPerUpdate keys with rotation dates (each a key record and a sweep
// index entry read and written) holds its serializable read locks per
// index page and tuple, below the default max_pred_locks_per_relation (32)
// at which PostgreSQL promotes them to one lock on the whole table or
// index — which would put the transaction in a read/write conflict with
// every other write to kv while it runs and until the transactions
// overlapping it end. A batch of 64 keys is promoted, which shows that
// the probe sees the locks.
func TestUpdateKeysPredicateLocks(t *testing.T) {
	ctx := context.Background()
	url := pgtest.URL(t)
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var locks []string
	cs := catalogsOn(t, 1, func() (storage.Store, error) {
		st, err := postgres.Open(ctx, url, postgres.Options{MaxConns: 4, MinConns: 1})
		return probeStore{Store: st, probe: func() error {
			rows, err := conn.Query(ctx, `SELECT locktype || ' ' || relation::regclass::text FROM pg_locks WHERE mode = 'SIReadLock'`)
			if err != nil {
				return err
			}
			locks, err = pgx.CollectRows(rows, pgx.RowTo[string])
			return err
		}}, err
	})
	c := cs[0]
	// Keys spread over a store large enough that they lie on different
	// index pages, as a sweep's due keys do.
	now := time.Now().UTC()
	const stored = 5000
	var all []*Key
	for i := range stored {
		next := now.Add(time.Hour)
		all = append(all, &Key{ID: fmt.Sprintf("%08x-0000-4000-8000-%012x", uint32(i*2654435761), i), Account: testAccount, Policy: testPolicy,
			Region: "us-east-1", Created: now, KeyUsage: keys.EncryptDecrypt, KeySpec: keys.Symmetric, Origin: "AWS_KMS",
			State: keys.Enabled, Current: 1, RotationEnabled: true, RotationPeriodInDays: 365, NextRotation: &next})
	}
	if err := c.CreateKeys(ctx, all); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i := 0; i < stored; i += stored / (KeysPerUpdate + 64) {
		ids = append(ids, all[i].ID)
	}
	update := func(batch []string) (pages int, relations []string) {
		t.Helper()
		locks = nil
		if _, err := c.UpdateKeys(ctx, batch, func(k *Key) error {
			next := now.Add(400 * 24 * time.Hour)
			k.NextRotation = &next
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		for _, l := range locks {
			switch {
			case strings.HasPrefix(l, "page "):
				pages++
			case strings.HasPrefix(l, "relation "):
				relations = append(relations, strings.TrimPrefix(l, "relation "))
			}
		}
		return pages, relations
	}
	pages, rels := update(ids[:KeysPerUpdate])
	t.Logf("UpdateKeys of %d keys: %d page locks, relations locked whole: %v", KeysPerUpdate, pages, rels)
	if len(rels) != 0 || pages == 0 {
		t.Errorf("UpdateKeys of KeysPerUpdate (%d) keys: %d page locks and whole relations %v locked; want page locks only", KeysPerUpdate, pages, rels)
	}
	if _, rels := update(ids[KeysPerUpdate:]); len(rels) == 0 {
		t.Errorf("UpdateKeys of 64 keys locked no relation whole: the probe does not see the transaction's locks")
	}
}

// BenchmarkUpdateKeysContended: UpdateKeys batches of keys spread over
// 20,000 stored keys on PostgreSQL (a rotation sweep's writes) while four
// other goroutines update random keys one at a time (API writes). It
// reports the batch's runs per transaction (1 = no retries) and the
// retries of the other writers per 1,000 of their updates. Batches past
// KeysPerUpdate hold read locks on the whole of kv's index and are the
// ones retried:
//
//	go test -run '^$' -bench UpdateKeysContended -benchtime 200x ./internal/catalog/
func BenchmarkUpdateKeysContended(b *testing.B) {
	ctx := context.Background()
	for _, batch := range []int{KeysPerUpdate, 64} {
		b.Run(fmt.Sprintf("keys=%d", batch), func(b *testing.B) {
			url := pgtest.URL(b)
			var counters []*runCounter
			cs := catalogsOn(b, 2, func() (storage.Store, error) {
				st, err := postgres.Open(ctx, url, postgres.Options{MaxConns: 8, MinConns: 1})
				rc := &runCounter{Store: st}
				counters = append(counters, rc)
				return rc, err
			})
			now := time.Now().UTC()
			const stored = 20000
			ids := make([]string, stored)
			var all []*Key
			for i := range stored {
				ids[i] = fmt.Sprintf("%08x-0000-4000-8000-%012x", uint32(i*2654435761), i)
				all = append(all, &Key{ID: ids[i], Account: testAccount, Policy: testPolicy, Region: "us-east-1", Created: now,
					KeyUsage: keys.EncryptDecrypt, KeySpec: keys.Symmetric, Origin: "AWS_KMS", State: keys.Enabled, Current: 1})
			}
			if err := cs[0].CreateKeys(ctx, all); err != nil {
				b.Fatal(err)
			}
			w0, r0 := counters[0].updates.Load(), counters[0].runs.Load()
			stop := make(chan struct{})
			var wg sync.WaitGroup
			for g := range 4 {
				wg.Go(func() {
					for i := g; ; i += 4 {
						select {
						case <-stop:
							return
						default:
						}
						if _, err := cs[0].UpdateKey(ctx, ids[(i*7919)%stored], func(k *Key) error { k.Description = "api"; return nil }); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			sweeper := cs[1]
			u0, s0 := counters[1].updates.Load(), counters[1].runs.Load()
			b.ResetTimer()
			for i := range b.N {
				at := (i * batch * 13) % (stored - batch)
				if _, err := sweeper.UpdateKeys(ctx, ids[at:at+batch], func(k *Key) error { k.Current++; return nil }); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			close(stop)
			wg.Wait()
			u, s := counters[1].updates.Load()-u0, counters[1].runs.Load()-s0
			w, r := counters[0].updates.Load()-w0, counters[0].runs.Load()-r0
			b.ReportMetric(float64(s)/float64(u), "runs/batch")
			b.ReportMetric(float64(r-w)*1000/float64(max(w, 1)), "writer-retries/1k")
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*batch), "µs/key")
		})
	}
}
