package server

import (
	"context"
	"errors"
	"log/slog"
	"slices"
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
	// The store of several nodes (PostgreSQL) starts held: see quotaShare.
	share.start(id, cfg.DatabaseURL != "")
	live, peers := quotaCallbacks(cfg.StoreRPS, share, log)
	return controller.New(controller.Config{Leaser: ls, Store: store, NodeID: id, Address: addr, TTL: cfg.LeaseTTL,
		Mode: controller.Mode(cfg.Controller), Log: log, LiveNodes: live, CacheLag: lag, Demand: share.demand, Peers: peers,
		Waiting: share.waiting, FeedCursor: cursor, Version: release.Version(), DataLevel: cfg.dataLevel, Outdated: outdated})
}

// quotaCallbacks are the controller's LiveNodes and Peers callbacks,
// which split the quota of rps requests a second through share.
func quotaCallbacks(rps int, share *quotaShare, log *slog.Logger) (live func(int), peers func([]controller.Node, int)) {
	report := func(n int, waiting []string) {
		held, changed := share.applied()
		switch {
		case !changed || rps <= 0:
		case held:
			log.Info("custom key store quota held until every other node counts this one", "nodes", n, "waiting", waiting)
		default:
			log.Info("custom key store quota shared", "nodes", n, "rps", float64(rps)/float64(n))
		}
	}
	live = func(n int) {
		if held := share.set(1 / float64(n)); !held {
			report(n, nil) // a held node's is reported by peers, with whom it waits for
		}
	}
	peers = func(nodes []controller.Node, n int) {
		report(n, share.peers(nodes, n))
	}
	return live, peers
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
//
// The shares the nodes apply never add up to more than the quota, also
// while a node joins and while demand moves (issue #16), by two rules:
//
//   - A node joining others holds its quota (keystore.Quota.Hold: refuses
//     every store's requests) until every other live node counts it.
//     Until then each of them applies shares computed over the nodes it
//     counted before, which add up to the whole quota already: whatever the
//     joiner took — the whole quota before its first heartbeat, 1/n or its
//     demand's share after it, as kmsd did before — was accepted on top of
//     the quota, for up to a heartbeat of the others' and more. Each node
//     says in its node record which nodes the shares it applies count
//     (controller.Node.Counts, written at each heartbeat after it applied
//     them), and the joiner, reading the records at its own heartbeats,
//     takes its share from the first at which every other record counts
//     it (it heartbeats four times as often while it waits): up to about
//     one heartbeat interval (--lease-ttl/5) and a quarter after it took
//     its node lease, during which it answers ThrottlingException for the
//     stores (clients retry it).
//   - A node claims for itself, in the split by demand, no more of a
//     store than every other node counts it for: the others split by the
//     demand of the record of this node they last read, named in their
//     Counts, or by any it published since (they read it anew at each
//     heartbeat), so it claims the lowest it published from the oldest of
//     those on (claim); and before publishing a new demand it applies it
//     (demand), so that nobody counts a lower demand than it claims.
//
// Why the sum stays within 1: the nodes applying a share are all counted
// by each of them (rule 1), so each one's live count n is at least their
// number and the tenths of equal shares every node keeps add up to at most
// a tenth; each splits the rest in proportion to its claim over a total of
// demands that (rule 2) is at least the sum of all their claims, so these
// parts add up to at most the rest. A node alone (and SQLite's single
// process) waits for nobody: it holds nothing past its first heartbeat
// (SQLite: not at all). A node publishing no Counts (an older version) is
// taken to count a joiner once its record was written twice since the
// joiner first read it — it writes its record, then reads the live nodes
// and applies its shares, so the second write follows a read that saw the
// joiner — and to have read a record at most a heartbeat old, as kmsd
// assumed before Counts.
type quotaShare struct {
	mu     sync.Mutex
	self   string // this node's id
	share  float64
	shares map[string]float64
	quota  *keystore.Quota
	// held: not every other live node counted this node at the last
	// look; logged says what report last logged.
	held, logged, loggedHeld bool
	loggedShare              float64
	// beats follows the records of nodes publishing no Counts: the
	// heartbeat first seen, and how many times it changed since.
	beats map[string]beats
	// published is the demand this node published at its last
	// heartbeats, oldest first, by the Heartbeat of the record.
	published []published
	// nodes and n are the live nodes' records and count the controller
	// last told (Peers), which demand splits the quotas by again.
	nodes []controller.Node
	n     int
}

type beats struct {
	at      time.Time
	changes int
}

type published struct {
	at     time.Time
	demand map[string]float64
}

// keepPublished is how many of its published demands a node remembers:
// another node's Counts naming an older one makes it claim nothing.
const keepPublished = 32

// start names this node and sets whether it starts held: with other nodes
// on the database, until its first heartbeat shows who counts it.
func (q *quotaShare) start(self string, held bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.self, q.held = self, held
	q.quota.Hold(held)
}

// peers applies the live nodes' records (this node's own included or
// not): the split by demand, and the hold while any other live node does
// not count this node; it returns those.
func (q *quotaShare) peers(nodes []controller.Node, n int) (waiting []string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.nodes, q.n = nodes, n
	q.split()
	seen := map[string]beats{}
	for _, p := range nodes {
		switch {
		case p.ID == q.self:
		case p.Counts != nil:
			if _, ok := p.Counts[q.self]; !ok {
				waiting = append(waiting, p.ID)
			}
		default:
			b, ok := q.beats[p.ID]
			if !ok {
				b.at = p.Heartbeat
			} else if !p.Heartbeat.Equal(b.at) {
				b.at, b.changes = p.Heartbeat, b.changes+1
			}
			seen[p.ID] = b
			if b.changes < 2 {
				waiting = append(waiting, p.ID)
			}
		}
	}
	q.beats = seen
	q.held = len(waiting) > 0
	q.quota.Hold(q.held)
	return waiting
}

// split applies this node's shares of the stores the nodes ask for, by
// the last records and this node's claim. q.mu is held.
func (q *quotaShare) split() {
	if q.n < 1 {
		return
	}
	demand := map[string]map[string]float64{}
	for _, p := range q.nodes {
		demand[p.ID] = p.StoreDemand
	}
	demand[q.self] = q.claim()
	q.shares = keystore.DemandShares(q.self, q.n, demand)
	q.quota.SetStoreShares(q.shares)
}

// claim is the demand this node counts for itself when it splits the
// quotas: of each store, the lowest it published since the oldest of its
// records the other live nodes split by (rule 2 of quotaShare); nothing
// when one of them split by none of them or by one too old to remember.
// q.mu is held.
func (q *quotaShare) claim() map[string]float64 {
	last := len(q.published) - 1
	from := last
	for _, p := range q.nodes {
		if p.ID == q.self {
			continue
		}
		if p.Counts == nil {
			from = min(from, last-1) // an older version: at most a heartbeat old
			continue
		}
		at := p.Counts[q.self]
		i := slices.IndexFunc(q.published, func(v published) bool { return v.at.Equal(at) })
		if at.IsZero() || i < 0 {
			return map[string]float64{}
		}
		from = min(from, i)
	}
	out := map[string]float64{}
	if from < 0 {
		return out
	}
	for id, d := range q.published[last].demand {
		for _, v := range q.published[from:last] {
			d = min(d, v.demand[id])
		}
		if d > 0 {
			out[id] = d
		}
	}
	return out
}

// waiting reports whether the quota is held: the controller then looks
// again at a quarter of its interval.
func (q *quotaShare) waiting() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.held
}

// applied reports whether the quota is held, and whether that or the
// equal share changed since the last call.
func (q *quotaShare) applied() (held, changed bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	changed = !q.logged || q.held != q.loggedHeld || (!q.held && q.share != q.loggedShare)
	q.logged, q.loggedHeld = true, q.held
	if !q.held {
		q.loggedShare = q.share
	}
	return q.held, changed
}

// demand is what the open core's quota was asked of each store lately,
// to be published in the node record of heartbeat at. It is applied to
// this node's claim before it is returned: published, the others may
// split by it at once.
func (q *quotaShare) demand(at time.Time) map[string]float64 {
	q.mu.Lock()
	quota := q.quota
	q.mu.Unlock()
	d := quota.Demand()
	q.mu.Lock()
	defer q.mu.Unlock()
	q.published = append(q.published, published{at: at, demand: d})
	if len(q.published) > keepPublished {
		q.published = slices.Delete(q.published, 0, len(q.published)-keepPublished)
	}
	q.split()
	return d
}

// set records the equal share and applies it; it reports whether the
// quota is held.
func (q *quotaShare) set(share float64) (held bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.share = share
	q.quota.SetShare(share)
	return q.held
}

// use applies the shares to quota, the open core's.
func (q *quotaShare) use(quota *keystore.Quota) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.quota = quota
	quota.Hold(q.held)
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
		"Writes of this node the database refused because a lease fencing them had ended: the controller lease no longer held at their epoch (a controller paused or cut off past its lease), or this node's node lease expired before they could commit (a node paused past --lease-ttl).", []string{"node"}, nil)
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
