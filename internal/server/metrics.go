package server

import (
	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics counts requests by operation and outcome.
type metrics struct {
	reg      *prometheus.Registry
	requests *prometheus.CounterVec
	okByOp   map[string]prometheus.Counter // resolved once: the hot path only increments
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kmsd_requests_total",
			Help: "KMS API requests by operation and outcome (OK or the exception name).",
		}, []string{"operation", "outcome"}),
		okByOp: map[string]prometheus.Counter{},
	}
	m.reg.MustRegister(m.requests, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for name := range kmsapi.Operations {
		m.okByOp[name] = m.requests.WithLabelValues(name, "OK")
	}
	return m
}

func (m *metrics) ok(op string) { m.okByOp[op].Inc() }

func (m *metrics) fail(op, code string) {
	if op == "" {
		op = "unknown"
	}
	m.requests.WithLabelValues(op, code).Inc()
}
