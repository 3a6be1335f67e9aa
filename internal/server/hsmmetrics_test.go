package server

import (
	"testing"

	"github.com/kmsd/kmsd/internal/hsm"
	"github.com/prometheus/client_golang/prometheus"
)

type fakeStatuses []hsm.ClusterStatus

func (f fakeStatuses) Statuses() []hsm.ClusterStatus { return f }

// TestHSMCollector: one series per state for each cluster and HSM, 1 for
// the current state only.
func TestHSMCollector(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(hsmCollector{fakeStatuses{{ID: "cluster-abcdefghijk", Account: "111122223333", Region: "us-east-1", State: hsm.ClusterDegraded,
		HSMs: []hsm.HSMStatus{{ID: "hsm-abcdefghijk", State: hsm.HSMDegraded}, {ID: "hsm-bbcdefghijk", State: hsm.HSMActive}}}}})
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	ones := map[string]string{}
	counts := map[string]int{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			counts[mf.GetName()]++
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if m.GetGauge().GetValue() == 1 {
				ones[mf.GetName()+"/"+labels["cluster_id"]+"/"+labels["hsm_id"]] += labels["state"]
			}
		}
	}
	if counts["kmsd_hsm_cluster_state"] != len(clusterStates) || counts["kmsd_hsm_state"] != 2*len(hsmStates) {
		t.Fatalf("series: %v", counts)
	}
	want := map[string]string{
		"kmsd_hsm_cluster_state/cluster-abcdefghijk/":        "DEGRADED",
		"kmsd_hsm_state/cluster-abcdefghijk/hsm-abcdefghijk": "DEGRADED",
		"kmsd_hsm_state/cluster-abcdefghijk/hsm-bbcdefghijk": "ACTIVE",
	}
	for k, v := range want {
		if ones[k] != v {
			t.Errorf("%s = %q, want %q (%v)", k, ones[k], v, ones)
		}
	}
	if len(ones) != len(want) {
		t.Errorf("series at 1: %v", ones)
	}
}
