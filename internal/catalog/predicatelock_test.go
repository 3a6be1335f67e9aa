package catalog

import (
	"context"
	"fmt"
	"strings"
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
