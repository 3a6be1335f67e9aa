package server

// Reset for test suites, in emulator mode only: POST /_kmsd/reset, and the
// same at POST /moto-api/reset, the path test suites written for moto's
// server mode call between tests, return kmsd to its freshly started
// state — no keys, aliases, grants, key stores or HSM clusters, the seed
// file applied again. What a reset replaces is the "core": the catalog,
// the KMS service, the HSM and key store services and their background
// work, opened again over the wiped store exactly as at start, so no
// cache or timer of the old state survives. In verify mode both paths
// answer 403: a reset is no API call any identity could be allowed.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/kmsd/kmsd/internal/awsjson"
	"github.com/kmsd/kmsd/internal/barrier"
	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/controller"
	"github.com/kmsd/kmsd/internal/dbclock"
	"github.com/kmsd/kmsd/internal/feed"
	"github.com/kmsd/kmsd/internal/keystore"
	"github.com/kmsd/kmsd/internal/kms"
	"github.com/kmsd/kmsd/internal/seed"
	"github.com/kmsd/kmsd/internal/storage"
	"github.com/prometheus/client_golang/prometheus"
)

// Reset paths.
const (
	resetPath     = "/_kmsd/reset"
	motoResetPath = "/moto-api/reset"
)

// resetter holds what opening the core takes, and how to close the open
// one.
type resetter struct {
	ctx     context.Context // Run's: the core's background work lives as long
	cfg     Config
	store   storage.Store
	barrier *barrier.Barrier
	log     *slog.Logger
	seed    *seed.File
	// close stops the open core; with purge, it first deletes the tokens
	// of kmsd's HSM clusters and returns the declared clusters' ids.
	close      func(purge bool) (declared []string)
	collectors []prometheus.Collector
}

// register adds a metrics collector of the core, unregistered as it
// closes (so that the next core, after a reset, registers its own).
func (a *api) register(c prometheus.Collector) error {
	if err := a.metrics.reg.Register(c); err != nil {
		return err
	}
	if a.reset != nil {
		a.reset.collectors = append(a.reset.collectors, c)
	}
	return nil
}

// mustRegister is register for collectors that cannot clash.
func (a *api) mustRegister(c prometheus.Collector) {
	if err := a.register(c); err != nil {
		panic(err)
	}
}

// openCore opens the catalog, the KMS service (with the seed file
// applied), the HSM clusters and key stores, and the sweepers, and
// attaches them to a.
func (a *api) openCore(ctx context.Context) error {
	r := a.reset
	r.ctx = ctx
	cfg := r.cfg
	// The catalog's writes made by the controller's duties are fenced by
	// its lease (controller.Fence); every write, API requests' too, is
	// fenced by this node's node lease (the store's storage.WriteFencer,
	// which the controller sets up).
	cat := catalog.New(controller.Fence(r.store), r.barrier)
	cat.SetCacheSize(cfg.CacheSize)
	cat.SetFailpoint(failpoint(r.log))
	if err := cat.InitSweepIndex(ctx); err != nil {
		return err
	}
	if err := cat.InitStoreIndex(ctx); err != nil {
		return err
	}
	// Every time kms and hsm take — deletion and rotation dates, material
	// and import token expiry, HSM steps and backups — is on the
	// database's clock, so that nodes whose clocks differ agree on them;
	// one clock, measured here before the first request, serves both.
	// SigV4's skew check and audit records stay on this node's clock.
	// The fault clock offset moves it further, on every node alike.
	var dbc storage.Clock
	if c, ok := r.store.(storage.Clock); ok {
		dbc = c
	}
	clk := dbclock.New(ctx, nil, dbc)
	cfg.clock = clk
	now := clk.Now
	if off := cfg.ClockOffset; off != 0 {
		now = func() time.Time { return clk.Now().Add(off) }
	}
	opts := []kms.Option{kms.WithLogger(r.log), kms.WithPairPool(kms.PairPool(cfg.PairPool)), kms.WithReplicaDelay(cfg.ReplicaDelay),
		kms.WithClock(now)}
	svc := kms.New(cat, opts...)
	quota := keystore.NewQuota(cfg.StoreRPS, nil)
	svc.SetStoreQuota(quota)
	a.quotaShare.use(quota)
	if err := svc.StartUsageTracking(ctx); err != nil {
		svc.Close()
		return fmt.Errorf("key usage tracking: %w", err)
	}
	if err := applySeed(ctx, r.seed, svc, a.ids, r.log); err != nil {
		svc.Close()
		return err
	}
	a.svc = svc
	a.mustRegister(quotaCollector{quota})
	for i, kind := range []string{"keys", "grants", "aliases"} {
		a.mustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "kmsd_cache_entries",
			Help:        "Records this node's catalog caches, by kind (key records, per-key grant lists, aliases); each kind holds at most --cache-size.",
			ConstLabels: prometheus.Labels{"cache": kind},
		}, func() float64 {
			k, g, al := cat.CacheLen()
			return float64([]int{k, g, al}[i])
		}))
	}
	// [hsm] HSM clusters: the CloudHSM v2 API and the admin API (cloudhsm.go).
	if r.seed != nil {
		cfg.seedClusters = r.seed.Clusters
	}
	stopHSM, err := a.startHSM(ctx, cfg, r.store, r.barrier, r.log)
	if err != nil {
		a.unregister()
		svc.Close()
		return err
	}
	// The catalog, the identities and the key stores follow the change
	// feed from before the first request: the first poll resets them
	// (dropping what they cached or loaded before) and proves them fresh.
	var follower *feed.Follower
	if w, ok := r.store.(storage.Watcher); ok {
		subs := []feed.Subscriber{cat}
		if a.ids != nil {
			subs = append(subs, a.ids)
		}
		if a.hsm != nil {
			// HSM cluster records first: a key store's connect, seen
			// next, needs its cluster as the database has it.
			subs = append(subs, a.hsm.svc)
			if a.hsm.stores != nil {
				subs = append(subs, a.hsm.stores)
			}
		}
		follower = feed.New(w, cfg.CachePollInterval, r.log, subs...)
		if err := follower.Poll(ctx); err != nil {
			stopHSM()
			a.unregister()
			svc.Close()
			return fmt.Errorf("change feed: %w", err)
		}
		cat.SetFreshness(follower.FreshAsOf, cfg.CacheMaxStaleness)
		// Control-plane reads of keys, aliases and grants: from the
		// cache when the store proves nothing was committed since the
		// feed was last read (storage.Prover), else from the database.
		cat.SetReadBarrier(follower.FreshAt)
		a.follower.Store(follower)
		a.mustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kmsd_cache_horizon_lag_seconds",
			Help: "How far behind the database this node's caches may be: now minus the instant before which every committed change has been applied. Cryptographic operations read the database once it passes --cache-max-staleness.",
		}, func() float64 { return min(follower.Lag(), 24*time.Hour).Seconds() }))
		if l, ok := w.(interface{ Listening() bool }); ok && cfg.CacheNotify != "off" {
			a.mustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "kmsd_cache_notify_listening",
				Help: "1 while this node's connection listening for the other nodes' change notices (--cache-notify) is up, else 0 (the change feed is then read every --cache-poll-interval only).",
			}, func() float64 {
				if l.Listening() {
					return 1
				}
				return 0
			}))
		}
	}
	if err := applySeedStores(ctx, r.seed, svc, a.hsm.svc, r.log); err != nil {
		stopHSM()
		a.unregister()
		svc.Close()
		return err
	}
	sweepCtx, stopSweep := context.WithCancel(ctx)
	swept := make(chan struct{})
	go func() {
		defer close(swept)
		// Controller duties: run while this node holds the lease, their
		// writes fenced by it.
		var wg sync.WaitGroup
		if xks := a.xksHealth; xks != nil {
			wg.Go(func() { a.ctl.Serve(sweepCtx, xks) })
		}
		if h := a.hsm; h != nil {
			wg.Go(func() { a.ctl.Serve(sweepCtx, h.svc.RunBackground) })
		}
		a.ctl.Serve(sweepCtx, func(ctx context.Context) {
			sweep(ctx, svc, cfg.SweepInterval, r.log, a.auditExpiry, a.metrics.sweeps)
		})
		wg.Wait()
	}()
	followed := make(chan struct{})
	go func() {
		defer close(followed)
		if follower != nil {
			follower.Run(sweepCtx)
		}
	}()
	preloaded := make(chan struct{})
	go func() {
		defer close(preloaded)
		if cfg.CachePreload == "on" {
			preload(sweepCtx, cat, r.log)
		}
	}()
	h := a.hsm
	r.close = func(purge bool) (declared []string) {
		stopSweep()
		<-swept
		<-followed
		<-preloaded
		if purge {
			declared = h.svc.Purge(ctx)
		}
		stopHSM()
		a.unregister()
		svc.Close()
		return declared
	}
	return nil
}

func (a *api) unregister() {
	if a.reset == nil {
		return
	}
	for _, c := range a.reset.collectors {
		a.metrics.reg.Unregister(c)
	}
	a.reset.collectors = nil
}

// closeCore closes the open core at shutdown.
func (a *api) closeCore() {
	a.resetMu.Lock()
	defer a.resetMu.Unlock()
	if a.reset.close != nil {
		a.reset.close(false)
		a.reset.close = nil
	}
}

// isReset reports whether r is for one of the reset paths.
func isReset(r *http.Request) bool {
	return r.URL.Path == resetPath || r.URL.Path == motoResetPath
}

// serveReset serves the reset paths. Requests in flight finish first;
// those arriving meanwhile wait and then see the fresh state.
// Every reset request, refused or not, is one audit record (eventSource
// kmsd-admin, eventName Reset).
func (a *api) serveReset(w http.ResponseWriter, r *http.Request) {
	reqID := uuid.NewString()
	rec := newRecord(r, reqID)
	rec.EventSource, rec.EventName = adminEventSource, "Reset"
	defer func() {
		if rec != nil {
			a.audit.Log(rec)
		}
	}()
	if a.ids != nil {
		rec.ErrorCode = "AccessDeniedException"
		awsjson.WriteError(w, reqID, &awsjson.Error{Code: rec.ErrorCode, Status: http.StatusForbidden,
			Message: "Reset is only available in emulator mode (--auth emulator); this kmsd verifies signatures."})
		return
	}
	if r.Method != http.MethodPost {
		rec.ErrorCode = "ValidationException"
		writeJSON(w, http.StatusBadRequest, map[string]string{"Error": "Need to POST to reset kmsd"})
		return
	}
	if err := a.resetAll(); err != nil {
		a.log.Error("reset failed", "err", err)
		rec.ErrorCode = "InternalFailure"
		awsjson.WriteError(w, reqID, &awsjson.Error{Code: "InternalFailure", Status: http.StatusInternalServerError,
			Message: "The reset failed; see kmsd's log."})
		return
	}
	a.log.Info("reset: kmsd is in its freshly started state", "path", r.URL.Path)
	if a.audit != nil && mustSync(a.auditSync, rec) {
		// A reset is a change: with --audit-sync its record is synced
		// before the client hears of it, as for every other change.
		err := a.audit.LogSync(rec)
		rec = nil // logged
		if err != nil {
			a.log.Error("audit log sync failed", "requestId", reqID, "err", err)
			awsjson.WriteError(w, reqID, &awsjson.Error{Code: "KMSInternalException",
				Message: "The audit record of the request could not be written.", Status: 500})
			return
		}
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// resetAll closes the core, wipes the store but for the barrier's check
// value, the data format level, identities and declared clusters'
// records, and opens the core again.
func (a *api) resetAll() error {
	a.resetMu.Lock()
	defer a.resetMu.Unlock()
	r := a.reset
	if r.close == nil {
		return errors.New("no core open")
	}
	declared := r.close(true)
	r.close = nil
	keep := func(k string) bool {
		if k == barrier.CheckRecord || k == controller.MinLevelRecord || strings.HasPrefix(k, "identity/") {
			return true
		}
		for _, id := range declared {
			p := "hsm/cluster/" + id
			if k == p || strings.HasPrefix(k, p+"/") {
				return true
			}
		}
		return false
	}
	ctx := r.ctx
	entries, err := r.store.List(ctx, "", "", 0)
	if err != nil {
		return err
	}
	err = r.store.Update(ctx, func(tx storage.Tx) error {
		for _, e := range entries {
			if !keep(e.Key) {
				if err := tx.Delete(ctx, e.Key); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("wipe: %w", err)
	}
	return a.openCore(ctx)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, _ := json.Marshal(v)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(b)
}

// preload reads the keys into cat's cache (--cache-preload), logging how
// many and how long it took.
func preload(ctx context.Context, cat *catalog.Catalog, log *slog.Logger) {
	start := time.Now()
	n, err := cat.Preload(ctx)
	switch {
	case ctx.Err() != nil:
		return
	case err != nil:
		log.Error("cache preload failed; keys not cached yet are read when first used", "err", err, "keys", n)
	default:
		log.Info("cache preloaded", "keys", n, "took", time.Since(start).Round(time.Millisecond))
	}
}
