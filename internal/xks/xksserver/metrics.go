package xksserver

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kmsd/kmsd/internal/xks/keyman"
)

// metrics are the proxy's Prometheus series. A nil *metrics records nothing.
type metrics struct {
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	health   *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer, version string) *metrics {
	if reg == nil {
		return nil
	}
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xks_proxy_requests_total",
			Help: "XKS API requests by key store prefix, operation and outcome (OK or the error name).",
		}, []string{"prefix", "operation", "outcome"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "xks_proxy_request_duration_seconds",
			Help:    "Time to answer XKS API requests; KMS allows 250ms per call.",
			Buckets: []float64{.0005, .001, .002, .005, .01, .025, .05, .1, .25, .5, 1},
		}, []string{"prefix", "operation"}),
		health: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "xks_proxy_ekm_health",
			Help: "Last deep health check per key manager and EKM: 2 ACTIVE, 1 DEGRADED, 0 UNAVAILABLE.",
		}, []string{"manager", "ekm"}),
	}
	info := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "xks_proxy_build_info", Help: "Build information."}, []string{"version"})
	info.WithLabelValues(version).Set(1)
	reg.MustRegister(m.requests, m.latency, m.health, info)
	return m
}

func (m *metrics) observe(prefix, op, outcome string, d time.Duration) {
	if m == nil {
		return
	}
	m.requests.WithLabelValues(prefix, op, outcome).Inc()
	m.latency.WithLabelValues(prefix, op).Observe(d.Seconds())
}

func (m *metrics) ekmHealth(manager string, h keyman.Health) {
	if m == nil {
		return
	}
	for _, e := range h.EKMs {
		v := 0.0
		switch e.Status {
		case keyman.Active:
			v = 2
		case keyman.Degraded:
			v = 1
		}
		m.health.WithLabelValues(manager, e.ID).Set(v)
	}
}
