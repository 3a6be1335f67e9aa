package server

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/kmsd/kmsd/internal/controller"
	"github.com/kmsd/kmsd/internal/keystore"
	"github.com/kmsd/kmsd/internal/release"
	"github.com/kmsd/kmsd/internal/storage"
	"github.com/kmsd/kmsd/internal/storage/postgres"
	"github.com/prometheus/client_golang/prometheus"
)

// newController makes this node's controller (node lease, controller
// election) on store, which must be a storage.Leaser (both drivers are).
// lag, if not nil, is how far this node's caches are behind the database
// (false: not known yet), published in the node record for kmsd status.
// outdated is told when a newer node raised the database's data format
// level above this node's (controller.Config.Outdated).
func newController(cfg Config, store storage.Store, addr string, share *quotaShare, lag func() (time.Duration, bool),
	cursor func() (storage.Cursor, bool), log *slog.Logger, outdated func(min int)) (*controller.Controller, error) {
	ls, ok := store.(storage.Leaser)
	if !ok {
		return nil, errors.New("the store has no leases")
	}
	id, err := nodeID(cfg)
	if err != nil {
		return nil, err
	}
	live := func(n int) {
		if share.set(1/float64(n)) && cfg.StoreRPS > 0 {
			log.Info("custom key store quota shared", "nodes", n, "rps", float64(cfg.StoreRPS)/float64(n))
		}
	}
	peers := func(nodes []controller.Node, n int) {
		demand := map[string]map[string]float64{}
		for _, p := range nodes {
			demand[p.ID] = p.StoreDemand
		}
		demand[id] = share.claim()
		share.byDemand(keystore.DemandShares(id, n, demand))
	}
	return controller.New(controller.Config{Leaser: ls, Store: store, NodeID: id, Address: addr, TTL: cfg.LeaseTTL,
		Mode: controller.Mode(cfg.Controller), Log: log, LiveNodes: live, CacheLag: lag, Demand: share.demand, Peers: peers,
		FeedCursor: cursor, Version: release.Version(), DataLevel: cfg.dataLevel, Outdated: outdated})
}

// liveNodes lists the nodes holding a live node lease.
func liveNodes(ctx context.Context, ls storage.Leaser) ([]string, error) {
	leases, err := ls.Live(ctx, controller.NodeLeasePrefix)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(leases))
	for _, l := range leases {
		out = append(out, strings.TrimPrefix(l.Name, controller.NodeLeasePrefix))
	}
	return out, nil
}

// quotaShare is this node's share of every custom key store's quota: one
// over the live nodes, and for the stores some node is asked for, a share
// by the nodes' demand (keystore.DemandShares); applied to the quota of
// the open core (a reset replaces it) and to the next.
type quotaShare struct {
	mu     sync.Mutex
	share  float64
	shares map[string]float64
	quota  *keystore.Quota
	// last and before are the demands this node published at its last
	// two heartbeats.
	last, before map[string]float64
}

// claim is the demand this node counts for itself when it splits the
// quotas: the lower of its last two published demands. The others' records
// are up to a heartbeat old; counting its own fresh demand against them
// would let every node over-claim while demand rises (and the shares add
// up to more than the quota); the lower of the two errs the safe way both
// while demand rises and while it falls.
func (q *quotaShare) claim() map[string]float64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := map[string]float64{}
	for id, d := range q.last {
		out[id] = min(d, q.before[id])
	}
	return out
}

// byDemand applies this node's shares of the stores the nodes ask for.
func (q *quotaShare) byDemand(shares map[string]float64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.shares = shares
	q.quota.SetStoreShares(shares)
}

// demand is what the open core's quota was asked of each store lately.
func (q *quotaShare) demand() map[string]float64 {
	q.mu.Lock()
	quota := q.quota
	q.mu.Unlock()
	d := quota.Demand()
	q.mu.Lock()
	q.before, q.last = q.last, d
	q.mu.Unlock()
	return d
}

// set records share and applies it; it reports whether it changed.
func (q *quotaShare) set(share float64) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if share == q.share {
		return false
	}
	q.share = share
	q.quota.SetShare(share)
	return true
}

// use applies the share to quota, the open core's.
func (q *quotaShare) use(quota *keystore.Quota) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.quota = quota
	if q.share > 0 {
		quota.SetShare(q.share)
	}
	if q.shares != nil {
		quota.SetStoreShares(q.shares)
	}
}

// controllerCollector exports the controller lease's state, and how many
// fenced writes the store refused.
type controllerCollector struct {
	c     *controller.Controller
	store storage.Store
}

// fencedCounter is a store that counts its refused fenced writes (both
// drivers).
type fencedCounter interface{ FencedRefused() int64 }

var (
	descEpoch = prometheus.NewDesc("kmsd_controller_lease_epoch",
		"Epoch of the controller lease this node holds or last held (0: never held).", []string{"node"}, nil)
	descLeader = prometheus.NewDesc("kmsd_controller_is_leader",
		"1 while this node holds the controller lease and runs the background duties.", []string{"node"}, nil)
	descAcquired = prometheus.NewDesc("kmsd_controller_acquisitions_total",
		"Times this node took the controller lease.", []string{"node"}, nil)
	descStepDowns = prometheus.NewDesc("kmsd_controller_step_downs_total",
		"Times this node gave the controller lease up (renewal failed, deadline passed or shutdown).", []string{"node"}, nil)
	descFencedRefused = prometheus.NewDesc("kmsd_fenced_writes_refused_total",
		"Writes of this node fenced by the controller lease that the database refused: the lease was no longer held at their epoch (a controller paused or cut off past its lease).", []string{"node"}, nil)
)

func (c controllerCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descEpoch
	ch <- descLeader
	ch <- descAcquired
	ch <- descStepDowns
	ch <- descFencedRefused
}

func (c controllerCollector) Collect(ch chan<- prometheus.Metric) {
	n := c.c.NodeID()
	leader := 0.0
	if c.c.IsController() {
		leader = 1
	}
	acq, down := c.c.Counts()
	ch <- prometheus.MustNewConstMetric(descEpoch, prometheus.GaugeValue, float64(c.c.Epoch()), n)
	ch <- prometheus.MustNewConstMetric(descLeader, prometheus.GaugeValue, leader, n)
	ch <- prometheus.MustNewConstMetric(descAcquired, prometheus.CounterValue, float64(acq), n)
	ch <- prometheus.MustNewConstMetric(descStepDowns, prometheus.CounterValue, float64(down), n)
	if f, ok := c.store.(fencedCounter); ok {
		ch <- prometheus.MustNewConstMetric(descFencedRefused, prometheus.CounterValue, float64(f.FencedRefused()), n)
	}
}

// poolCollector exports the PostgreSQL connection pool's statistics; it
// exports nothing on SQLite.
type poolCollector struct{ store storage.Store }

var (
	descPoolConns = prometheus.NewDesc("kmsd_db_pool_connections",
		"PostgreSQL pool connections by state (acquired, idle, total, max).", []string{"state"}, nil)
	descPoolAcquires = prometheus.NewDesc("kmsd_db_pool_acquires_total",
		"Connections taken from the PostgreSQL pool.", nil, nil)
	descPoolEmpty = prometheus.NewDesc("kmsd_db_pool_empty_acquires_total",
		"Connections taken from the PostgreSQL pool that had to wait for one.", nil, nil)
	descPoolWait = prometheus.NewDesc("kmsd_db_pool_acquire_wait_seconds_total",
		"Total time spent taking connections from the PostgreSQL pool.", nil, nil)
)

func (p poolCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descPoolConns
	ch <- descPoolAcquires
	ch <- descPoolEmpty
	ch <- descPoolWait
}

func (p poolCollector) Collect(ch chan<- prometheus.Metric) {
	pg, ok := p.store.(*postgres.Store)
	if !ok {
		return
	}
	s := pg.PoolStats()
	for state, v := range map[string]int32{"acquired": s.Acquired, "idle": s.Idle, "total": s.Total, "max": s.Max} {
		ch <- prometheus.MustNewConstMetric(descPoolConns, prometheus.GaugeValue, float64(v), state)
	}
	ch <- prometheus.MustNewConstMetric(descPoolAcquires, prometheus.CounterValue, float64(s.Acquires))
	ch <- prometheus.MustNewConstMetric(descPoolEmpty, prometheus.CounterValue, float64(s.EmptyAcquires))
	ch <- prometheus.MustNewConstMetric(descPoolWait, prometheus.CounterValue, s.AcquireWait.Seconds())
}

// feedCursor is the open core's change-feed position (feed.Follower.Cursor),
// as the node record publishes it: false until its follower has polled.
func (a *api) feedCursor() (storage.Cursor, bool) {
	f := a.follower.Load()
	if f == nil {
		return storage.Cursor{}, false
	}
	c := f.Cursor()
	return c, !c.IsZero()
}

// cacheLag is the open core's change-feed lag (feed.Follower.Lag), as the
// node record publishes it: false until the core's follower has proved
// the caches fresh once.
func (a *api) cacheLag() (time.Duration, bool) {
	f := a.follower.Load()
	if f == nil || f.FreshAsOf().IsZero() {
		return 0, false
	}
	return f.Lag(), true
}
