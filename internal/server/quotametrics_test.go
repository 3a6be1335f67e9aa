package server

import (
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/keystore"
	"github.com/prometheus/client_golang/prometheus"
)

// TestQuotaCollector: a store's refused requests show as
// kmsd_custom_key_store_throttled_total{custom_key_store_id} and this
// node's share of its quota as kmsd_custom_key_store_quota_share; no quota
// (--custom-key-store-rps 0), no series.
func TestQuotaCollector(t *testing.T) {
	now := time.Unix(0, 0)
	q := keystore.NewQuota(2, func() time.Time { return now })
	for range 5 {
		q.Allow("cks-aaaaaaaaaaaaaaaaa")
	}
	q.SetStoreShares(map[string]float64{"cks-aaaaaaaaaaaaaaaaa": 0.25})
	reg := prometheus.NewRegistry()
	reg.MustRegister(quotaCollector{q})
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{"kmsd_custom_key_store_throttled_total": 3, "kmsd_custom_key_store_quota_share": 0.25}
	if len(mfs) != len(want) {
		t.Fatalf("gathered %v", mfs)
	}
	for _, mf := range mfs {
		v, ok := want[mf.GetName()]
		if !ok || len(mf.Metric) != 1 {
			t.Fatalf("gathered %v", mf)
		}
		m := mf.Metric[0]
		got := m.GetCounter().GetValue() + m.GetGauge().GetValue()
		if l := m.GetLabel(); len(l) != 1 || l[0].GetName() != "custom_key_store_id" || l[0].GetValue() != "cks-aaaaaaaaaaaaaaaaa" || got != v {
			t.Fatalf("series %s %v, want %v", mf.GetName(), m, v)
		}
	}
	none := prometheus.NewRegistry()
	none.MustRegister(quotaCollector{nil})
	if mfs, err := none.Gather(); err != nil || len(mfs) != 0 {
		t.Fatalf("no quota: %v %v", mfs, err)
	}
}
