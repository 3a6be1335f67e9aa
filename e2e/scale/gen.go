// Package scale measures kmsd on a large key store (issue #16's scale
// requirement): it writes N keys straight into a SQLite data directory or a
// PostgreSQL database through the catalog (Generate), starts kmsd on it and
// on a 1,000-key store, and compares DescribeKey and Encrypt on random keys,
// ListKeys paging, memory and cold start (scale_test.go).
package scale

import (
	"context"
	"crypto/rand"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/policy"
)

// GenStats says where Generate spent its time.
type GenStats struct {
	Keys         int
	Total        time.Duration
	Make, Write  time.Duration // making the records (material, sealing), writing them
	Transactions int
}

// Generate stores n new symmetric encryption keys of account and region in
// cat, batch of them per transaction, as CreateKey would make them (random
// AES-256 material sealed by the catalog's barrier, its KeyMaterialId, the
// default key policy), and returns their ids. Records are made on one
// goroutine while the previous batch is written on another.
func Generate(ctx context.Context, cat *catalog.Catalog, account, region string, n, batch int) ([]string, GenStats, error) {
	st := GenStats{Keys: n}
	start := time.Now()
	pol := policy.DefaultKeyPolicy(account)
	ids := make([]string, 0, n)
	batches := make(chan []*catalog.Key, 2)
	errc := make(chan error, 1)
	go func() {
		defer close(batches)
		material := make([]byte, 32)
		defer clear(material)
		for done := 0; done < n; {
			t0 := time.Now()
			size := min(batch, n-done)
			ks := make([]*catalog.Key, size)
			for i := range ks {
				id := uuid.NewString()
				created := time.Now().UTC().Truncate(time.Millisecond)
				if _, err := rand.Read(material); err != nil {
					errc <- err
					return
				}
				sealed, err := cat.Seal(id, 1, material)
				if err != nil {
					errc <- err
					return
				}
				ks[i] = &catalog.Key{ID: id, Account: account, Region: region, Created: created,
					KeyUsage: keys.EncryptDecrypt, KeySpec: keys.Symmetric, Origin: "AWS_KMS", State: keys.Enabled,
					Policy: pol, Current: 1,
					Versions: []catalog.Version{{Number: 1, Created: created, Sealed: sealed, MaterialID: cat.MaterialID(id, material)}}}
				ids = append(ids, id)
			}
			done += size
			st.Make += time.Since(t0)
			select {
			case batches <- ks:
			case <-ctx.Done():
				return
			}
		}
	}()
	for ks := range batches {
		t0 := time.Now()
		if err := cat.CreateKeys(ctx, ks); err != nil {
			for range batches {
			}
			return nil, st, fmt.Errorf("generate: %w", err)
		}
		st.Write += time.Since(t0)
		st.Transactions++
	}
	select {
	case err := <-errc:
		return nil, st, fmt.Errorf("generate: %w", err)
	default:
	}
	if err := ctx.Err(); err != nil {
		return nil, st, err
	}
	st.Total = time.Since(start)
	return ids, st, nil
}
