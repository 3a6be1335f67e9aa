package console

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"
)

// sampler keeps the last snapshots of kmsd's request metrics, from which
// the overview draws rates and latency percentiles.
type sampler struct {
	b       Backend
	max     int
	mu      sync.Mutex
	samples []MetricsSnapshot
}

func newSampler(b Backend, max int) *sampler { return &sampler{b: b, max: max} }

func (s *sampler) sample() {
	snap, err := s.b.Metrics()
	if err != nil {
		return
	}
	s.mu.Lock()
	s.samples = append(s.samples, snap)
	if len(s.samples) > s.max {
		s.samples = append(s.samples[:0], s.samples[len(s.samples)-s.max:]...)
	}
	s.mu.Unlock()
}

func (s *sampler) all() []MetricsSnapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]MetricsSnapshot(nil), s.samples...)
}

// Run samples the metrics every Config.SampleEvery until ctx ends.
func (c *Console) Run(ctx context.Context) {
	t := time.NewTicker(c.cfg.SampleEvery)
	defer t.Stop()
	c.metrics.sample()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			c.metrics.sample()
		}
	}
}

// chart is a small line chart, drawn as an SVG polyline by the template.
type chart struct {
	Title, Unit string
	Points      string // "x,y x,y …" in a 300×60 box
	Last, Max   string
}

// opRow is one operation's line of the overview.
type opRow struct {
	Op               string
	Requests, Errors int64
	RPS              string
	P50, P90, P99    string
	Bars             []bar // p50, p90, p99 as bars in a 120×36 box
	Spark            string
	HasLatency       bool
	ErrorRatio       string
}

type bar struct {
	Label  string
	X, Y   int
	Height int
}

func (c *Console) serveOverview(w http.ResponseWriter, r *http.Request, s *session) {
	samples := c.metrics.all()
	data := obj{"Window": c.cfg.SampleEvery * time.Duration(c.cfg.History)}
	if len(samples) < 2 {
		data["Waiting"] = true
		c.page(w, r, s, "overview", "Overview", data)
		return
	}
	first, last := samples[0], samples[len(samples)-1]
	secs := last.Time.Sub(first.Time).Seconds()
	data["Span"] = (last.Time.Sub(first.Time)).Round(time.Second).String()
	// Totals per interval.
	var rps, eps []float64
	for i := 1; i < len(samples); i++ {
		dt := samples[i].Time.Sub(samples[i-1].Time).Seconds()
		var req, er float64
		for name, o := range samples[i].Ops {
			p := samples[i-1].Ops[name]
			if p == nil {
				p = &OpMetrics{}
			}
			req += o.Requests - p.Requests
			er += o.Errors - p.Errors
		}
		rps, eps = append(rps, req/dt), append(eps, er/dt)
	}
	data["Charts"] = []chart{line("Requests per second", "req/s", rps), line("Errors per second", "err/s", eps)}
	var rows []opRow
	for name, o := range last.Ops {
		p := first.Ops[name]
		if p == nil {
			p = &OpMetrics{}
		}
		n := o.Requests - p.Requests
		if n <= 0 {
			continue
		}
		row := opRow{Op: name, Requests: int64(n), Errors: int64(o.Errors - p.Errors), RPS: fmt.Sprintf("%.2f", n/secs)}
		row.ErrorRatio = fmt.Sprintf("%.0f%%", 100*(o.Errors-p.Errors)/n)
		if d := delta(o.Buckets, p.Buckets); len(d) > 0 && d[len(d)-1].Count > 0 {
			row.HasLatency = true
			q := []float64{quantile(d, .5), quantile(d, .9), quantile(d, .99)}
			row.P50, row.P90, row.P99 = ms(q[0]), ms(q[1]), ms(q[2])
			top := math.Max(q[2], 1e-6)
			for i, v := range q {
				h := int(math.Round(32 * math.Log1p(v/top*100) / math.Log1p(100)))
				row.Bars = append(row.Bars, bar{Label: []string{"p50", "p90", "p99"}[i], X: 8 + i*38, Y: 34 - h, Height: h})
			}
		}
		var series []float64
		for i := 1; i < len(samples); i++ {
			a, b := samples[i-1].Ops[name], samples[i].Ops[name]
			var v float64
			if b != nil {
				v = b.Requests
				if a != nil {
					v -= a.Requests
				}
			}
			series = append(series, v/samples[i].Time.Sub(samples[i-1].Time).Seconds())
		}
		row.Spark = line("", "", series).Points
		rows = append(rows, row)
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].Requests > rows[j].Requests })
	data["Ops"] = rows
	c.page(w, r, s, "overview", "Overview", data)
}

// line scales values into a 300×60 chart.
func line(title, unit string, vs []float64) chart {
	max := 0.0
	for _, v := range vs {
		max = math.Max(max, v)
	}
	top := max
	if top == 0 {
		top = 1
	}
	var b strings.Builder
	for i, v := range vs {
		x := 300.0
		if len(vs) > 1 {
			x = 300 * float64(i) / float64(len(vs)-1)
		}
		fmt.Fprintf(&b, "%.1f,%.1f ", x, 58-56*v/top)
	}
	c := chart{Title: title, Unit: unit, Points: strings.TrimSpace(b.String()), Max: fmt.Sprintf("%.2f", max)}
	if len(vs) > 0 {
		c.Last = fmt.Sprintf("%.2f", vs[len(vs)-1])
	}
	return c
}

// delta is the histogram of the requests between two cumulative ones.
func delta(now, before []Bucket) []Bucket {
	out := make([]Bucket, len(now))
	for i, b := range now {
		out[i] = b
		if i < len(before) && before[i].UpperBound == b.UpperBound {
			out[i].Count -= before[i].Count
		}
	}
	return out
}

// quantile estimates the q quantile of a cumulative histogram (the last
// bucket +Inf), interpolating linearly within a bucket as Prometheus's
// histogram_quantile does.
func quantile(bs []Bucket, q float64) float64 {
	total := bs[len(bs)-1].Count
	rank := q * total
	lower, below := 0.0, 0.0
	for i, b := range bs {
		if b.Count >= rank {
			if math.IsInf(b.UpperBound, 1) {
				if i > 0 {
					return bs[i-1].UpperBound
				}
				return 0
			}
			in := b.Count - below
			if in <= 0 {
				return b.UpperBound
			}
			return lower + (b.UpperBound-lower)*(rank-below)/in
		}
		lower, below = b.UpperBound, b.Count
	}
	return lower
}

func ms(sec float64) string {
	v := sec * 1000
	if v < 10 {
		return fmt.Sprintf("%.2f ms", v)
	}
	return fmt.Sprintf("%.0f ms", v)
}
