package server

import (
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/keystore"
	"github.com/prometheus/client_golang/prometheus"
)

// TestQuotaCollector: a store's refused requests show as
// kmsd_custom_key_store_throttled_total{custom_key_store_id}; no quota
// (--custom-key-store-rps 0), no series.
func TestQuotaCollector(t *testing.T) {
	now := time.Unix(0, 0)
	q := keystore.NewQuota(2, func() time.Time { return now })
	for range 5 {
		q.Allow("cks-aaaaaaaaaaaaaaaaa")
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(quotaCollector{q})
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if len(mfs) != 1 || mfs[0].GetName() != "kmsd_custom_key_store_throttled_total" || len(mfs[0].Metric) != 1 {
		t.Fatalf("gathered %v", mfs)
	}
	m := mfs[0].Metric[0]
	if l := m.GetLabel(); len(l) != 1 || l[0].GetName() != "custom_key_store_id" || l[0].GetValue() != "cks-aaaaaaaaaaaaaaaaa" || m.GetCounter().GetValue() != 3 {
		t.Fatalf("series %v", m)
	}
	none := prometheus.NewRegistry()
	none.MustRegister(quotaCollector{nil})
	if mfs, err := none.Gather(); err != nil || len(mfs) != 0 {
		t.Fatalf("no quota: %v %v", mfs, err)
	}
}
