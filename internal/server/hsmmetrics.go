package server

import (
	"github.com/kmsd/kmsd/internal/hsm"
	"github.com/prometheus/client_golang/prometheus"
)

// hsmStatuses is what the HSM metrics read; *hsm.Service implements it.
type hsmStatuses interface {
	Statuses() []hsm.ClusterStatus
}

var _ hsmStatuses = (*hsm.Service)(nil)

// The states the gauges enumerate (spec §13.3), so that every cluster and
// HSM has one series per state, 1 for its current state and 0 for the
// others: an alert on state="DEGRADED" == 1 needs no absent() tricks.
var (
	clusterStates = []string{hsm.ClusterCreateInProgress, hsm.ClusterUninitialized, hsm.ClusterInitializeInProgress,
		hsm.ClusterInitialized, hsm.ClusterActive, hsm.ClusterDegraded, hsm.ClusterDeleteInProgress}
	hsmStates = []string{hsm.HSMCreateInProgress, hsm.HSMActive, hsm.HSMDegraded, hsm.HSMDeleteInProgress}

	clusterStateDesc = prometheus.NewDesc("kmsd_hsm_cluster_state",
		"HSM cluster state as DescribeClusters shows it: 1 for the cluster's current state, 0 for the others.",
		[]string{"account", "region", "cluster_id", "state"}, nil)
	hsmStateDesc = prometheus.NewDesc("kmsd_hsm_state",
		"HSM state as DescribeClusters shows it, following the health probe of its token: 1 for the current state, 0 for the others.",
		[]string{"account", "region", "cluster_id", "hsm_id", "state"}, nil)
)

// hsmCollector reports the state of every HSM cluster and HSM at each
// scrape, read from the HSM service's records.
type hsmCollector struct{ svc hsmStatuses }

func (c hsmCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- clusterStateDesc
	ch <- hsmStateDesc
}

func (c hsmCollector) Collect(ch chan<- prometheus.Metric) {
	for _, cs := range c.svc.Statuses() {
		for _, st := range clusterStates {
			ch <- prometheus.MustNewConstMetric(clusterStateDesc, prometheus.GaugeValue, is(cs.State, st), cs.Account, cs.Region, cs.ID, st)
		}
		for _, h := range cs.HSMs {
			for _, st := range hsmStates {
				ch <- prometheus.MustNewConstMetric(hsmStateDesc, prometheus.GaugeValue, is(h.State, st), cs.Account, cs.Region, cs.ID, h.ID, st)
			}
		}
	}
}

func is(a, b string) float64 {
	if a == b {
		return 1
	}
	return 0
}

var rotationsDesc = prometheus.NewDesc("kmsd_keystore_password_rotations_total",
	"kmsuser password rotations (C_SetPIN at a CloudHSM key store's connect) this process made; only the controller rotates.",
	nil, nil)

// rotationsCollector reports the key store manager's password rotations.
type rotationsCollector struct {
	ks interface{ Rotations() int64 }
}

func (c rotationsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- rotationsDesc }

func (c rotationsCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(rotationsDesc, prometheus.CounterValue, float64(c.ks.Rotations()))
}
