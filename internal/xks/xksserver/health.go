package xksserver

import (
	"context"
	"encoding/json"
	"net/http"
	"sync"
	"time"

	"github.com/kmsd/kmsd/internal/xks"
	"github.com/kmsd/kmsd/internal/xks/keyman"
)

// maxHealthAge is the spec's limit on a cached deep health result.
const maxHealthAge = time.Minute

// healthCache runs a manager's deep check at most once at a time and keeps the last
// result for the TTL.
type healthCache struct {
	manager keyman.Manager
	name    string

	mu      sync.Mutex
	last    keyman.Health
	at      time.Time
	valid   bool
	running chan struct{}
}

// get returns a result no older than ttl when one is at hand; otherwise it starts a
// check (in the background, bounded by 5s) and waits up to wait for it, falling back
// to a result younger than a minute, and finally to UNAVAILABLE.
func (h *healthCache) get(now time.Time, ttl, wait time.Duration, onResult func(keyman.Health)) keyman.Health {
	h.mu.Lock()
	if h.valid && now.Sub(h.at) < ttl {
		defer h.mu.Unlock()
		return h.last
	}
	if h.running == nil {
		done := make(chan struct{})
		h.running = done
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			res := h.manager.Health(ctx)
			cancel()
			h.mu.Lock()
			h.last, h.at, h.valid, h.running = res, time.Now(), true, nil
			h.mu.Unlock()
			close(done)
			if onResult != nil {
				onResult(res)
			}
		}()
	}
	ch := h.running
	h.mu.Unlock()
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-ch:
	case <-t.C:
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.valid && time.Since(h.at) < maxHealthAge {
		return h.last
	}
	return keyman.Health{Vendor: "unknown", EKMs: []keyman.EKM{{ID: h.name, Model: "unknown",
		Status: keyman.Unavailable, Detail: "health check did not finish in time"}}}
}

func (s *Server) checkHealth(hc *healthCache) keyman.Health {
	return hc.get(s.opts.Now(), s.opts.HealthTTL, s.opts.HealthWait, func(h keyman.Health) {
		s.metrics.ekmHealth(hc.name, h)
		for _, e := range h.EKMs {
			if e.Status != keyman.Active {
				s.log.Warn("key manager health", "manager", hc.name, "ekm", e.ID, "status", string(e.Status), "detail", e.Detail)
			}
		}
	})
}

func (s *Server) healthResponse(_ context.Context, st *store) xks.HealthResponse {
	h := s.checkHealth(st.health)
	resp := xks.HealthResponse{
		XksProxyFleetSize: s.opts.FleetSize,
		XksProxyVendor:    "kmsd",
		XksProxyModel:     "kmsd xks-proxy " + s.opts.Version,
		EkmVendor:         h.Vendor,
	}
	for i, e := range h.EKMs {
		if i == 10 {
			break
		}
		resp.EkmFleetDetails = append(resp.EkmFleetDetails, xks.EKMDetail{ID: e.ID, Model: e.Model, HealthStatus: string(e.Status)})
	}
	if len(resp.EkmFleetDetails) == 0 {
		resp.EkmFleetDetails = []xks.EKMDetail{{ID: st.ManagerName, Model: "unknown", HealthStatus: xks.HealthUnavailable}}
	}
	return resp
}

// ServeReadiness answers the unauthenticated GET health path for load balancers: 200
// when no key manager is UNAVAILABLE, else 503, with a JSON summary (no key data).
func (s *Server) ServeReadiness(w http.ResponseWriter, _ *http.Request) {
	type ekm struct {
		Manager string `json:"manager"`
		ID      string `json:"id"`
		Status  string `json:"status"`
	}
	out := struct {
		Status string `json:"status"`
		EKMs   []ekm  `json:"ekms"`
	}{Status: "ok"}
	code := http.StatusOK
	for _, hc := range s.health {
		h := s.checkHealth(hc)
		for _, e := range h.EKMs {
			out.EKMs = append(out.EKMs, ekm{hc.name, e.ID, string(e.Status)})
			if e.Status == keyman.Unavailable {
				code, out.Status = http.StatusServiceUnavailable, "unavailable"
			}
		}
	}
	body, _ := json.Marshal(out)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	w.Write(body)
}
