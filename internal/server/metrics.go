package server

import (
	"math"
	"time"

	"github.com/kmsd/kmsd/internal/console"
	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	dto "github.com/prometheus/client_model/go"
)

// metrics counts requests by operation and outcome.
type metrics struct {
	reg      *prometheus.Registry
	requests *prometheus.CounterVec
	okByOp   map[string]prometheus.Counter // resolved once: the hot path only increments
	// latency is how long requests take by operation (KMS operations by
	// name, CloudHSM v2 ones as cloudhsm:Name), for the console's
	// overview and any Prometheus dashboard.
	latency   *prometheus.HistogramVec
	latencyOf map[string]prometheus.Observer // the KMS operations', resolved once
	// sweeps counts the sweep rounds this node ran (as controller).
	sweeps prometheus.Counter
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kmsd_requests_total",
			Help: "KMS API requests by operation and outcome (OK or the exception name).",
		}, []string{"operation", "outcome"}),
		okByOp: map[string]prometheus.Counter{},
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "kmsd_request_duration_seconds",
			Help:    "How long API requests take, by operation, from the request read to the response written.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"operation"}),
		sweeps: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kmsd_sweep_runs_total",
			Help: "Rounds of the deletion, rotation, transition and import expiry sweeps this node ran as the controller.",
		}),
	}
	m.reg.MustRegister(m.requests, m.latency, m.sweeps, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.latencyOf = map[string]prometheus.Observer{}
	for name := range kmsapi.Operations {
		m.okByOp[name] = m.requests.WithLabelValues(name, "OK")
		m.latencyOf[name] = m.latency.WithLabelValues(name)
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

// observe records how long a request of op took.
func (m *metrics) observe(op string, d time.Duration) {
	o, ok := m.latencyOf[op]
	if !ok {
		o = m.latency.WithLabelValues(op)
	}
	o.Observe(d.Seconds())
}

// snapshot reads the request counters and latency histograms for the
// console's overview: cumulative values, which the console turns into
// rates and percentiles between two snapshots.
func (m *metrics) snapshot() (console.MetricsSnapshot, error) {
	s := console.MetricsSnapshot{Time: time.Now(), Ops: map[string]*console.OpMetrics{}}
	fams, err := m.reg.Gather()
	if err != nil {
		return s, err
	}
	op := func(name string) *console.OpMetrics {
		o := s.Ops[name]
		if o == nil {
			o = &console.OpMetrics{}
			s.Ops[name] = o
		}
		return o
	}
	label := func(mt *dto.Metric, name string) string {
		for _, l := range mt.GetLabel() {
			if l.GetName() == name {
				return l.GetValue()
			}
		}
		return ""
	}
	for _, f := range fams {
		switch f.GetName() {
		case "kmsd_requests_total":
			for _, mt := range f.GetMetric() {
				v := mt.GetCounter().GetValue()
				if v == 0 {
					continue
				}
				o := op(label(mt, "operation"))
				o.Requests += v
				if label(mt, "outcome") != "OK" {
					o.Errors += v
				}
			}
		case "kmsd_request_duration_seconds":
			for _, mt := range f.GetMetric() {
				h := mt.GetHistogram()
				o := op(label(mt, "operation"))
				for _, b := range h.GetBucket() {
					o.Buckets = append(o.Buckets, console.Bucket{UpperBound: b.GetUpperBound(), Count: float64(b.GetCumulativeCount())})
				}
				o.Buckets = append(o.Buckets, console.Bucket{UpperBound: math.Inf(1), Count: float64(h.GetSampleCount())})
			}
		}
	}
	return s, nil
}
