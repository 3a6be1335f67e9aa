// Package controller elects, among the kmsd nodes sharing one database, the
// one node that runs the background duties (sweeps, change-feed pruning,
// …), by a fenced lease (MULTINODE.md §4.5, §4.6, §7.3). Every node also
// holds a node lease (node/<id>) and publishes a node record (address,
// heartbeat, cache lag) that `kmsd status` reads.
//
// The controller lease is taken with storage.Leaser.TryAcquire, renewed
// every TTL/5 with a per-call timeout of TTL/3, and given up at once when a
// renewal fails or its local deadline (minus a margin) passes: the context
// of every duty is then cancelled, and the duties have returned before the
// lease is tried for again. A duty's database writes made with its context
// go through Fence's store, which turns them into UpdateFenced calls: a
// controller that was paused past its lease and resumed has every write
// refused, whatever its own clock believes.
//
// Every node also publishes in its node record the change-feed position up
// to which it has applied every change (Node.FeedCursor); the pruning duty
// prunes no further than the earliest such position of the nodes holding
// a live node lease (FeedFloor, MULTINODE.md §4.3), for at most a bounded
// time (server's changeMaxRetention, so that a stuck node cannot hold it
// forever). MULTINODE.md §7.2 put
// the cursor in the node lease's holder string; it is in the node record
// instead, which already carries the other per-node facts, so that the
// lease row stays a lease.
//
// Version gate (MULTINODE.md §7.3): every node has a data format level
// (release.DataLevel; Config.DataLevel) and the database a minimum
// (MinLevelRecord), raised by every node that starts (kmsd's server does
// it, and refuses to start a node below it). At each heartbeat a node
// reads the minimum (one read by primary key); once a newer node has
// raised it above this node's level, the node stops campaigning, gives the
// controller lease up if it holds it and calls Config.Outdated (kmsd then
// shuts down and exits non-zero). The term record of every new controller
// term is written in a transaction that reads the minimum too, so a node
// below it never begins a term, even between two heartbeats.
//
// A node is Ready — it tries for the controller lease, and kmsd's server
// writes and answers nothing before — once it holds its node lease, has
// read the minimum after taking it without finding it above its level,
// and no other node whose record shows a lower level (or no record yet)
// holds a live node lease: an older node releases its lease only after it
// stopped serving, or leaves it to expire (Abandon), and a frozen one's
// expires a TTL after its last heartbeat, so no older node commits a write
// once a newer one serves (awaitOlder says why). That rests on the node
// lease fencing every write of the node: New hands its name to the
// store's storage.WriteFencer, so a transaction that was in flight when
// the node froze (a GC pause, SIGSTOP, a suspended VM) and outlived the
// lease is refused at its COMMIT when the node resumes, and every write
// after it too, until the node holds its lease again — which an outdated
// node does not take again (heartbeat). Without it, such a node's
// request could commit between its resumption and its next heartbeat.
// A node publishing no level (from before the gate) is not waited for.
// Departure
// from §7.3: the gate is a data format level (an integer bumped when
// writes start keeping something older nodes would not), not a version
// string; an outdated node does not merely stay out of the lease but
// stops serving, since what it must not do is write keys without what
// newer nodes keep; the minimum is raised by every newer node at start,
// not by the controller; and it is a record of the key space
// (MinLevelRecord), not a kmsd_meta row.
//
// On SQLite one process holds the database, so it always wins the lease
// at start and behaves as kmsd always has.
package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kmsd/kmsd/internal/storage"
)

// Defaults of MULTINODE.md §7.3 / §7.8.
const (
	DefaultTTL = 15 * time.Second
	// LeaseName is the controller lease; node leases are NodeLeasePrefix+id.
	LeaseName       = "controller"
	NodeLeasePrefix = "node/"
	// NodePrefix holds one record per node (Node, JSON); HistoryPrefix
	// one record per controller epoch (Term, JSON), the last keepTerms.
	NodePrefix    = "kmsd/node/"
	HistoryPrefix = "kmsd/controller/"
	keepTerms     = 100
)

// Mode says whether a node may become the controller.
type Mode string

const (
	Auto  Mode = "auto"  // take the lease when it is free
	Never Mode = "never" // serve only; never run background duties
)

// Config is a Controller's configuration.
type Config struct {
	Leaser storage.Leaser
	Store  storage.Store // for node and history records
	NodeID string
	// Address is where this node serves the API, for status.
	Address string
	TTL     time.Duration // default DefaultTTL
	Mode    Mode          // default Auto
	Log     *slog.Logger
	// CacheLag, if not nil, tells how far this node's caches are behind
	// the database; it is published in the node record.
	CacheLag func() (time.Duration, bool)
	// LiveNodes, if not nil, is told after each heartbeat how many nodes
	// hold a live node lease (this one included), e.g. to split a quota.
	LiveNodes func(n int)
	// Demand, if not nil, is published in the node record at each
	// heartbeat: requests a second asked of each custom key store. at is
	// the record's Heartbeat, which names this demand in the others'
	// Node.Counts.
	Demand func(at time.Time) map[string]float64
	// Peers, if not nil, is told after each heartbeat the records of the
	// nodes holding a live node lease (this one's included; a node whose
	// record is not written yet is left out) and how many hold one.
	Peers func(nodes []Node, live int)
	// Waiting, if not nil, says after a heartbeat whether the node waits
	// for the other nodes to count it (Node.Counts): the next heartbeat
	// then comes after a quarter of the interval, so that it sees them
	// count it soon after they do.
	Waiting func() bool
	// FeedCursor, if not nil, is this node's change-feed position
	// (false: none yet), published in the node record at each heartbeat
	// so that the feed is not pruned past it while the node lives
	// (FeedFloor).
	FeedCursor func() (storage.Cursor, bool)
	// Version and DataLevel are this node's version and data format
	// level (release.Version, release.DataLevel), published in the node
	// record. DataLevel 0 turns the version gate off (tests of other
	// things); else a node whose DataLevel is below the database's
	// minimum (MinLevel) takes no controller term and gives up the one it
	// holds.
	Version   string
	DataLevel int
	// Outdated, if not nil, is called once, from the heartbeat, when a
	// newer node has raised the database's minimum data format level to
	// min, above DataLevel (the controller lease is given up by then or
	// is being given up).
	Outdated func(min int)
}

// Duty is background work run only while this node is the controller. It
// must return soon after ctx is cancelled; writes it makes with ctx (through
// a store wrapped by Fence) are fenced by the lease.
type Duty func(ctx context.Context)

// Controller runs the node heartbeat and the controller election.
type Controller struct {
	cfg    Config
	holder string

	mu     sync.Mutex
	duties []namedDuty
	// cur is the term in progress (nil: not the controller); changed is
	// closed and replaced whenever cur changes, for Serve.
	cur     *termState
	changed chan struct{}

	epoch        atomic.Int64 // of the lease held now or last
	deadline     atomic.Int64 // the held lease's local deadline (unix ns), 0 when none
	leader       atomic.Bool
	acquisitions atomic.Int64
	stepDowns    atomic.Int64
	started      time.Time
	address      atomic.Value // string
	// outdated is closed once the database's minimum data format level
	// is found above this node's (markOutdated).
	outdated     chan struct{}
	outdatedOnce sync.Once
	// ready is closed once this node may serve (Ready); waitingFor is
	// what it waited for at the last look ([]string).
	ready      chan struct{}
	waitingFor atomic.Value
	abandoned  atomic.Bool
	// fenced wakes the heartbeat at once when the store refused a write
	// because the node lease had expired (New), so that the lease is
	// taken again within a round trip rather than at the next beat.
	fenced chan struct{}
	// warnedOlder: the node logged that it waits for older nodes (only
	// the heartbeat goroutine uses it).
	warnedOlder bool
	// counts is the live node set last told to LiveNodes and Peers
	// (Node.Counts); only the heartbeat goroutine uses it.
	counts map[string]time.Time
}

// termState is one term's duty context and the duties running in it.
type termState struct {
	ctx context.Context
	wg  sync.WaitGroup
}

type namedDuty struct {
	name string
	fn   Duty
}

// New returns a Controller; Run starts it.
func New(cfg Config) (*Controller, error) {
	if cfg.TTL == 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.TTL < 300*time.Millisecond {
		return nil, fmt.Errorf("lease ttl %s: want at least 300ms", cfg.TTL)
	}
	switch cfg.Mode {
	case "":
		cfg.Mode = Auto
	case Auto, Never:
	default:
		return nil, fmt.Errorf("controller mode %q: want auto or never", cfg.Mode)
	}
	if err := ValidNodeID(cfg.NodeID); err != nil {
		return nil, err
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.DataLevel < 0 {
		return nil, fmt.Errorf("data format level %d: want 0 or more", cfg.DataLevel)
	}
	c := &Controller{cfg: cfg, holder: cfg.NodeID, started: time.Now(), changed: make(chan struct{}), outdated: make(chan struct{}),
		ready: make(chan struct{}), fenced: make(chan struct{}, 1)}
	c.address.Store(cfg.Address)
	// Every write of this node is fenced by its node lease: once the
	// lease has expired (the node paused longer than the ttl, while newer
	// nodes may have stopped waiting for it: awaitOlder), a transaction
	// can no longer commit.
	if f, ok := cfg.Leaser.(storage.WriteFencer); ok {
		f.FenceWrites(NodeLeasePrefix+cfg.NodeID, func() {
			if c.Outdated() {
				return // it does not take the lease again (heartbeat)
			}
			select {
			case c.fenced <- struct{}{}:
			default:
			}
		})
	}
	return c, nil
}

// minBeatGap is the least time between two heartbeats woken early by
// writes the expired node lease refused.
const minBeatGap = 100 * time.Millisecond

// ValidNodeID checks a node id: 1 to 64 of [A-Za-z0-9._-].
func ValidNodeID(id string) error {
	if id == "" || len(id) > 64 {
		return fmt.Errorf("node id %q: want 1 to 64 characters", id)
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return fmt.Errorf("node id %q: want only letters, digits, '.', '_' and '-'", id)
		}
	}
	return nil
}

// SetAddress sets the address published in the node record.
func (c *Controller) SetAddress(addr string) { c.address.Store(addr) }

func (c *Controller) addr() string { s, _ := c.address.Load().(string); return s }

// Serve runs fn whenever this node is the controller, until ctx ends: once
// per term, with a context that carries the term's lease (WithLease) and
// ends when the term does or ctx ends; the term's end waits for fn to
// return. It is Add for work whose owner starts and stops it (a service
// that a reset replaces).
func (c *Controller) Serve(ctx context.Context, fn Duty) {
	for {
		c.mu.Lock()
		ts, changed := c.cur, c.changed
		ok := ts != nil && ts.ctx.Err() == nil
		if ok {
			ts.wg.Add(1)
		}
		c.mu.Unlock()
		if !ok {
			select {
			case <-changed:
				continue
			case <-ctx.Done():
				return
			}
		}
		dctx, cancel := context.WithCancel(ts.ctx)
		stop := context.AfterFunc(ctx, cancel)
		fn(dctx)
		stop()
		cancel()
		ts.wg.Done()
		select {
		case <-ts.ctx.Done(): // once per term
		case <-ctx.Done():
			return
		}
	}
}

// Add registers a duty; duties added after Run start with the next term.
func (c *Controller) Add(name string, d Duty) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.duties = append(c.duties, namedDuty{name, d})
}

// IsController says this node holds the controller lease now.
func (c *Controller) IsController() bool { return c.leader.Load() }

// Epoch is the epoch of the controller lease this node holds or last held
// (0: never).
func (c *Controller) Epoch() int64 { return c.epoch.Load() }

// Counts returns how often this node took the controller lease and how
// often it stepped down.
func (c *Controller) Counts() (acquired, steppedDown int64) {
	return c.acquisitions.Load(), c.stepDowns.Load()
}

// Deadline returns until when the controller lease of epoch lets this node
// act — its local deadline as last renewed, less the margin at which the
// node steps down — and false if this node no longer holds that lease.
// The lease a duty's context carries (LeaseFrom) keeps the deadline it was
// acquired with; this one follows the renewals.
func (c *Controller) Deadline(epoch int64) (time.Time, bool) {
	d := c.deadline.Load()
	if d == 0 || !c.leader.Load() || c.epoch.Load() != epoch {
		return time.Time{}, false
	}
	return time.Unix(0, d).Add(-c.margin()), true
}

// NodeID is this node's id.
func (c *Controller) NodeID() string { return c.cfg.NodeID }

// Run heartbeats and campaigns until ctx is cancelled, then stops the
// duties and releases the leases, so another node takes over at once.
func (c *Controller) Run(ctx context.Context) {
	// The heartbeat outlives the campaign, so that the last node record
	// says whether this node still holds the controller lease: it does not.
	hctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.heartbeat(hctx)
	}()
	if c.cfg.Mode == Auto {
		select {
		case <-c.ready:
			c.campaign(ctx) // returns early once outdated: heartbeats go on
		case <-ctx.Done():
		case <-c.outdated:
		}
	}
	<-ctx.Done()
	stop()
	<-done
}

// interval is how often leases are renewed and tried for.
func (c *Controller) interval() time.Duration { return c.cfg.TTL / 5 }

// margin is how long before its local deadline a holder stops acting.
func (c *Controller) margin() time.Duration { return min(2*time.Second, c.cfg.TTL/5) }

// campaign tries for the controller lease, and while holding it runs the
// duties and renews it.
func (c *Controller) campaign(ctx context.Context) {
	for ctx.Err() == nil && !c.Outdated() {
		l, ok, err := c.cfg.Leaser.TryAcquire(ctx, LeaseName, c.holder, c.cfg.TTL)
		switch {
		case err != nil && ctx.Err() == nil:
			c.cfg.Log.Warn("controller lease: acquire", "err", err)
		case ok:
			c.term(ctx, l)
		}
		// Jittered, so that nodes started together do not ask in step.
		d := c.interval() + rand.N(c.interval()/2+1)
		select {
		case <-ctx.Done():
		case <-c.outdated:
		case <-time.After(d):
		}
	}
}

// term runs one holding of the controller lease: duties started, lease
// renewed until a renewal fails, the local deadline passes or ctx ends;
// then the duties are cancelled and waited for.
func (c *Controller) term(ctx context.Context, l storage.Lease) {
	// Fenced: a record of the term, for status and for tracing that no two
	// terms overlap. A lease lost already is not acted on at all.
	if err := c.recordTerm(ctx, l); errors.Is(err, storage.ErrFenced) {
		c.cfg.Log.Warn("controller lease lost before its term began", "node", c.cfg.NodeID, "epoch", l.Epoch)
		return
	} else if errors.Is(err, ErrOutdated) {
		// Version-gated: a newer node raised the minimum between this
		// node's heartbeats. The lease is handed back unused.
		c.cfg.Log.Warn("controller lease not taken: "+err.Error(), "node", c.cfg.NodeID, "epoch", l.Epoch)
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		if err := c.cfg.Leaser.Release(rctx, l); err != nil {
			c.cfg.Log.Warn("controller lease: release", "err", err)
		}
		rcancel()
		if min, err := MinLevel(ctx, c.cfg.Store); err == nil && min > c.cfg.DataLevel {
			c.markOutdated(min)
		}
		return
	} else if err != nil && ctx.Err() == nil {
		c.cfg.Log.Warn("controller: record term", "epoch", l.Epoch, "err", err)
	}
	c.epoch.Store(l.Epoch)
	c.deadline.Store(l.Deadline.UnixNano())
	c.leader.Store(true)
	c.acquisitions.Add(1)
	c.cfg.Log.Info("controller lease acquired", "node", c.cfg.NodeID, "epoch", l.Epoch)
	dctx, cancel := context.WithCancel(WithLease(ctx, l))
	ts := &termState{ctx: dctx}
	c.mu.Lock()
	for _, d := range c.duties {
		ts.wg.Add(1)
		go func() {
			defer ts.wg.Done()
			d.fn(dctx)
		}()
	}
	c.cur = ts
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()

	reason := "shutdown"
	for {
		wait := time.NewTimer(min(c.interval(), time.Until(l.Deadline.Add(-c.margin()))))
		select {
		case <-ctx.Done():
			wait.Stop()
		case <-c.outdated:
			wait.Stop()
		case <-wait.C:
		}
		if ctx.Err() != nil {
			break
		}
		if c.Outdated() {
			reason = "a newer node raised the database's data format level above this node's"
			break
		}
		if time.Until(l.Deadline) <= c.margin() {
			// Paused, or renewals too slow: acting now could overlap the
			// next holder.
			reason = "local deadline passed"
			break
		}
		rctx, rcancel := context.WithTimeout(ctx, min(c.cfg.TTL/3, time.Until(l.Deadline.Add(-c.margin()))))
		nl, err := c.cfg.Leaser.Renew(rctx, l, c.cfg.TTL)
		rcancel()
		if err != nil {
			if ctx.Err() == nil {
				reason = "renew: " + err.Error()
			}
			break
		}
		l = nl
		c.deadline.Store(l.Deadline.UnixNano())
	}
	cancel()
	c.leader.Store(false)
	c.deadline.Store(0)
	c.stepDowns.Add(1)
	c.mu.Lock()
	c.cur = nil
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
	ts.wg.Wait()
	c.cfg.Log.Info("controller lease given up", "node", c.cfg.NodeID, "epoch", l.Epoch, "reason", reason)
	if ctx.Err() != nil || c.Outdated() {
		rctx, rcancel := context.WithTimeout(context.Background(), 2*time.Second)
		if err := c.cfg.Leaser.Release(rctx, l); err != nil {
			c.cfg.Log.Warn("controller lease: release", "err", err)
		}
		rcancel()
	}
}

// Term is the record of one controller epoch.
type Term struct {
	Epoch    int64     `json:"epoch"`
	Node     string    `json:"node"`
	Address  string    `json:"address,omitempty"`
	Acquired time.Time `json:"acquired"` // the holder's clock
}

// termKey orders terms by epoch.
func termKey(epoch int64) string { return fmt.Sprintf("%s%020d", HistoryPrefix, epoch) }

func (c *Controller) recordTerm(ctx context.Context, l storage.Lease) error {
	b, err := json.Marshal(Term{Epoch: l.Epoch, Node: c.cfg.NodeID, Address: c.addr(), Acquired: time.Now().UTC()})
	if err != nil {
		return err
	}
	return c.cfg.Leaser.UpdateFenced(ctx, l, func(tx storage.Tx) error {
		if c.cfg.DataLevel > 0 {
			// In the term's own transaction: a newer node's raise
			// commits either before it (and the term is refused) or
			// after it (and the heartbeat sees it).
			min, err := MinLevel(ctx, tx)
			if err != nil {
				return err
			}
			if min > c.cfg.DataLevel {
				return fmt.Errorf("%w: the database's minimum is %d, this node's level %d", ErrOutdated, min, c.cfg.DataLevel)
			}
		}
		if err := tx.Put(ctx, termKey(l.Epoch), b); err != nil {
			return err
		}
		if l.Epoch > keepTerms {
			return tx.Delete(ctx, termKey(l.Epoch-keepTerms))
		}
		return nil
	})
}

// Node is the record a node publishes about itself.
type Node struct {
	ID        string    `json:"id"`
	Address   string    `json:"address,omitempty"`
	Started   time.Time `json:"started"`
	Heartbeat time.Time `json:"heartbeat"` // the node's clock
	// Controller and Epoch: whether it held the controller lease at the
	// heartbeat, and the epoch it holds or last held.
	Controller bool  `json:"controller"`
	Epoch      int64 `json:"epoch,omitempty"`
	// CacheLagSeconds is how far its caches were behind the database,
	// when it knows.
	CacheLagSeconds *float64 `json:"cacheLagSeconds,omitempty"`
	// Stopped says the node shut down cleanly at Heartbeat.
	Stopped bool `json:"stopped,omitempty"`
	// StoreDemand is the requests a second the node was asked of each
	// custom key store (by id), for splitting their quotas by demand.
	StoreDemand map[string]float64 `json:"storeDemand,omitempty"`
	// FeedCursor is the change-feed position up to which the node had
	// applied every change at Heartbeat (Config.FeedCursor).
	FeedCursor *storage.Cursor `json:"feedCursor,omitempty"`
	// Version and DataLevel are the node's version and data format
	// level (Config.Version, Config.DataLevel).
	Version   string `json:"version,omitempty"`
	DataLevel int    `json:"dataLevel,omitempty"`
	// Counts names the nodes that held a live node lease at the node's
	// last read of them (at this heartbeat, before the record was
	// written), told to LiveNodes and Peers — what the quota shares it
	// applies account for — each with the Heartbeat of its record then
	// read (zero: none yet), whose StoreDemand they were split by. A node
	// that has just joined waits until every other counts it before it
	// takes a share, and a node claims no more demand than the others
	// count it for (server's quotaShare). Absent from a node that has not
	// read them yet, and from versions before it was published.
	Counts map[string]time.Time `json:"counts,omitempty"`
}

// heartbeat holds the node lease, tells the live nodes (tell) and writes
// the node record every interval; it releases the lease when ctx ends.
func (c *Controller) heartbeat(ctx context.Context) {
	name := NodeLeasePrefix + c.cfg.NodeID
	var l storage.Lease
	held, hadLease := false, false
	var lastEarly time.Time // the last beat woken by a refused write
	for {
		var err error
		// mine: the node lease is held by another process of this node id
		// — most often this node's own before a crash and restart, whose
		// lease has not expired yet.
		mine := false
		if held {
			l, err = c.cfg.Leaser.Renew(ctx, l, c.cfg.TTL)
			held = err == nil
		}
		// An outdated node that lost its lease (paused past its expiry)
		// does not take it again: its writes stay fenced by the expired
		// lease (New) while it stops.
		if !held && ctx.Err() == nil && (!hadLease || c.checkLevel(ctx)) {
			// Lost (or never had): the node may have been paused. A node
			// lease held by another process of the same id means a
			// misconfiguration, which the log shows.
			var ok bool
			l, ok, err = c.cfg.Leaser.TryAcquire(ctx, name, c.holder, c.cfg.TTL)
			held = err == nil && ok
			hadLease = hadLease || held
			if err == nil && !ok {
				mine = true
				c.cfg.Log.Warn("node lease held by another process with this node id", "node", c.cfg.NodeID)
			}
		}
		if err != nil && ctx.Err() == nil {
			c.cfg.Log.Warn("node lease", "err", err)
		}
		levelOK := c.checkLevel(ctx)
		if levelOK && (held || mine) && !c.Ready() {
			// Both after the node lease was taken: see awaitOlder.
			c.awaitOlder(ctx)
		}
		// The demand first (Demand applies it to this node's claim), then
		// the live nodes told, then the record written: its Counts name
		// what the shares applied now count, so that the others know it
		// a heartbeat sooner than if it were written first.
		at := time.Now().UTC()
		var demand map[string]float64
		if c.cfg.Demand != nil {
			demand = c.cfg.Demand(at)
		}
		// The live nodes are told also while the lease is held under this
		// node id by another process: the others count this id already, so
		// a node restarted after a crash takes the place its old process
		// had (its quota shares) at once, rather than holding its custom
		// key stores' quota until the old lease expires. Two live
		// processes with one node id (a misconfiguration, logged above)
		// would share one node's part.
		if (c.cfg.LiveNodes != nil || c.cfg.Peers != nil) && (held || mine) {
			c.tell(ctx)
		}
		if err := c.writeNode(ctx, false, at, demand); err != nil && ctx.Err() == nil {
			c.cfg.Log.Warn("node record", "err", err)
		}
		wait := c.interval()
		if (c.cfg.Waiting != nil && c.cfg.Waiting()) || (!c.Ready() && !c.Outdated()) {
			wait /= 4
		}
		// A write refused by the expired node lease wakes the next beat
		// early (New) — not one of this beat's own (its node record,
		// refused as well), and at most every minBeatGap, so that a node
		// that cannot take its lease again is not made to beat per
		// refused request.
		select {
		case <-c.fenced:
		default:
		}
		kick := c.fenced
		if time.Since(lastEarly) < minBeatGap {
			kick = nil
		}
		select {
		case <-ctx.Done():
			// A clean stop says so, for status.
			rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			if c.abandoned.Load() {
				// Requests may still be running: the lease is left to
				// expire, which newer nodes wait for (awaitOlder).
				return
			}
			if err := c.writeNode(rctx, true, time.Now().UTC(), nil); err != nil {
				c.cfg.Log.Warn("node record", "err", err)
			}
			if held {
				c.cfg.Leaser.Release(rctx, l)
			}
			return
		case <-time.After(wait):
		case <-kick:
			lastEarly = time.Now()
		}
	}
}

// checkLevel reads the database's minimum data format level and, when it
// is above this node's, marks the node outdated. It reports whether the
// node is not outdated as of this read (true without a read when the gate
// is off). A failed read changes nothing: the next heartbeat reads again.
func (c *Controller) checkLevel(ctx context.Context) bool {
	if c.cfg.DataLevel == 0 {
		return true
	}
	if c.Outdated() {
		return false
	}
	min, err := MinLevel(ctx, c.cfg.Store)
	if err != nil {
		if ctx.Err() == nil {
			c.cfg.Log.Warn("data format level", "err", err)
		}
		return false
	}
	if min > c.cfg.DataLevel {
		c.markOutdated(min)
		return false
	}
	return true
}

// awaitOlder makes the node ready (Ready) once no other node of a lower
// data format level holds a live node lease, and logs which ones it waits
// for when that changes. It runs at a heartbeat after this node took its
// node lease and then read the minimum without finding it above its level.
//
// Why no older node commits a write once this one is ready: an older node
// stops at the first heartbeat that reads the minimum this node's server
// raised before starting it, and releases its node lease only once it has
// stopped (its server finishes the requests in flight first), or lets it
// expire (Abandon); a frozen one's lease expires TTL after it last renewed
// it. An older node still starting took its node lease before it read the
// minimum: if it read it before the raise, its lease was live before this
// node looked (and it is waited for), else it stops without serving. A
// node whose lease is live but whose record is not written yet (it writes
// it in the heartbeat that took the lease) is waited for until it is; a
// node publishing no level (DataLevel 0: a kmsd from before the version
// gate, which never stops for it) is not waited for. Left open: an older
// node restarted after a crash while its crashed process's node lease
// still lives is Ready without a lease of its own ("mine"), so it is
// waited for only until that lease expires, which may be up to a
// heartbeat before it takes its own and finds itself outdated.
func (c *Controller) awaitOlder(ctx context.Context) {
	var older, starting []string
	if c.cfg.DataLevel > 0 {
		var err error
		if older, starting, err = c.olderNodes(ctx); err != nil {
			if ctx.Err() == nil {
				c.cfg.Log.Warn("older nodes", "err", err)
			}
			return
		}
	}
	prev, _ := c.waitingFor.Load().([]string)
	all := append(older, starting...)
	c.waitingFor.Store(all)
	switch {
	case len(all) == 0:
		if c.warnedOlder {
			c.cfg.Log.Info("every older node has stopped: this node serves", "node", c.cfg.NodeID, "level", c.cfg.DataLevel)
		}
		close(c.ready)
	case slices.Equal(prev, all):
	case len(older) > 0:
		c.warnedOlder = true
		c.cfg.Log.Warn(fmt.Sprintf("waiting for %d older nodes to stop: %s", len(older), strings.Join(older, ", ")),
			"node", c.cfg.NodeID, "level", c.cfg.DataLevel, "starting", starting)
	default:
		c.cfg.Log.Debug("waiting for starting nodes to publish their data format level", "node", c.cfg.NodeID, "starting", starting)
	}
}

// olderNodes names the nodes, other than this one, that hold a live node
// lease: older, those whose record shows a data format level from 1 to
// below this node's; starting, those that have no record yet.
func (c *Controller) olderNodes(ctx context.Context) (older, starting []string, err error) {
	ls, err := c.cfg.Leaser.Live(ctx, NodeLeasePrefix)
	if err != nil {
		return nil, nil, err
	}
	for _, l := range ls {
		id := strings.TrimPrefix(l.Name, NodeLeasePrefix)
		if id == c.cfg.NodeID {
			continue
		}
		n, ok, err := readNode(ctx, c.cfg.Store, id)
		if err != nil {
			return nil, nil, err
		}
		if !ok {
			starting = append(starting, id+" (starting, level not known yet)")
			continue
		}
		if n.DataLevel > 0 && n.DataLevel < c.cfg.DataLevel {
			older = append(older, fmt.Sprintf("%s (version %s, level %d)", id, n.Version, n.DataLevel))
		}
	}
	return older, starting, nil
}

// Ready says this node may serve: it holds its node lease (or another
// process of its node id does), its data format level is not below the
// database's minimum as read after it took the lease, and no node of a
// lower level holds a live node lease any more (awaitOlder). It stays true
// once it is. The controller lease is not tried for before; a server
// should not answer requests before either (ReadyC).
func (c *Controller) Ready() bool {
	select {
	case <-c.ready:
		return true
	default:
		return false
	}
}

// ReadyC is closed when Ready becomes true.
func (c *Controller) ReadyC() <-chan struct{} { return c.ready }

// WaitingFor names the older nodes this node waited for at its last look
// (empty once Ready).
func (c *Controller) WaitingFor() []string {
	if c.Ready() {
		return nil
	}
	s, _ := c.waitingFor.Load().([]string)
	return s
}

// Abandon makes Run end without saying the node stopped: no Stopped node
// record is written and the node lease is not released, but left to
// expire, so that newer nodes wait for this one until then. A server calls
// it when requests may still be running as it shuts down.
func (c *Controller) Abandon() { c.abandoned.Store(true) }

// markOutdated stops the campaign and the term in progress, once, and
// tells Config.Outdated.
func (c *Controller) markOutdated(min int) {
	c.outdatedOnce.Do(func() {
		c.cfg.Log.Error("a newer kmsd raised the database's data format level above this node's: this node takes no controller term and stops",
			"node", c.cfg.NodeID, "level", c.cfg.DataLevel, "databaseMinimum", min, "version", c.cfg.Version)
		close(c.outdated)
		if c.cfg.Outdated != nil {
			c.cfg.Outdated(min)
		}
	})
}

// Outdated says a newer node has raised the database's minimum data format
// level above this node's (seen at a heartbeat).
func (c *Controller) Outdated() bool {
	select {
	case <-c.outdated:
		return true
	default:
		return false
	}
}

// tell reads the live nodes and their records and tells LiveNodes and
// Peers; once both were told, c.counts is what they count.
func (c *Controller) tell(ctx context.Context) {
	ls, err := c.cfg.Leaser.Live(ctx, NodeLeasePrefix)
	if err != nil || len(ls) == 0 {
		if err != nil && ctx.Err() == nil {
			c.cfg.Log.Warn("live nodes", "err", err)
		}
		return
	}
	if c.cfg.LiveNodes != nil {
		c.cfg.LiveNodes(len(ls))
	}
	var nodes []Node
	if c.cfg.Peers != nil {
		if nodes, err = c.liveRecords(ctx, ls); err != nil {
			if ctx.Err() == nil {
				c.cfg.Log.Warn("node records", "err", err)
			}
			return
		}
		c.cfg.Peers(nodes, len(ls))
	}
	counts := make(map[string]time.Time, len(ls))
	for _, l := range ls {
		counts[strings.TrimPrefix(l.Name, NodeLeasePrefix)] = time.Time{}
	}
	for _, n := range nodes {
		if _, ok := counts[n.ID]; ok {
			counts[n.ID] = n.Heartbeat
		}
	}
	c.counts = counts
}

// liveRecords reads the node records of the holders of live node leases
// ls.
func (c *Controller) liveRecords(ctx context.Context, ls []storage.Lease) ([]Node, error) {
	live := map[string]bool{}
	for _, l := range ls {
		live[strings.TrimPrefix(l.Name, NodeLeasePrefix)] = true
	}
	es, err := c.cfg.Store.List(ctx, NodePrefix, "", 0)
	if err != nil {
		return nil, err
	}
	var out []Node
	for _, e := range es {
		var n Node
		if err := json.Unmarshal(e.Value, &n); err != nil {
			return nil, fmt.Errorf("node record %s: %w", e.Key, err)
		}
		if live[n.ID] && !n.Stopped {
			out = append(out, n)
		}
	}
	return out, nil
}

// writeNode writes this node's record of heartbeat at, with demand as
// its StoreDemand.
func (c *Controller) writeNode(ctx context.Context, stopped bool, at time.Time, demand map[string]float64) error {
	n := Node{ID: c.cfg.NodeID, Address: c.addr(), Started: c.started.UTC(), Heartbeat: at,
		Controller: c.IsController(), Epoch: c.Epoch(), Stopped: stopped, StoreDemand: demand, Counts: c.counts,
		Version: c.cfg.Version, DataLevel: c.cfg.DataLevel}
	if c.cfg.FeedCursor != nil {
		if cur, ok := c.cfg.FeedCursor(); ok {
			n.FeedCursor = &cur
		}
	}
	if c.cfg.CacheLag != nil {
		if d, ok := c.cfg.CacheLag(); ok {
			s := d.Seconds()
			n.CacheLagSeconds = &s
		}
	}
	b, err := json.Marshal(n)
	if err != nil {
		return err
	}
	return c.cfg.Store.Put(ctx, NodePrefix+c.cfg.NodeID, b)
}

// readNode reads node id's record; ok is false when it has none (a node
// that took its node lease writes it in the same heartbeat).
func readNode(ctx context.Context, r storage.Reader, id string) (n Node, ok bool, err error) {
	b, err := r.Get(ctx, NodePrefix+id)
	if errors.Is(err, storage.ErrNotFound) {
		return Node{}, false, nil
	}
	if err != nil {
		return Node{}, false, err
	}
	if err := json.Unmarshal(b, &n); err != nil {
		return Node{}, false, fmt.Errorf("node record %s: %w", id, err)
	}
	return n, true, nil
}

// ErrFeedFloorUnknown says a node holding a live node lease has published
// no change-feed cursor yet (it is starting): the feed must not be pruned
// until it has.
var ErrFeedFloorUnknown = errors.New("controller: a live node has published no change-feed cursor yet")

// FeedFloor is how far the change feed of generation gen may be pruned
// without taking from a live node a change it has not applied: the
// earliest cursor of gen published by a node holding a live node lease.
// bounded is false when no live node holds a cursor of gen (one of another
// generation will be Reset anyway). A node whose lease expired — dead, or
// cut off from the database for longer than the lease TTL — does not hold
// the feed back: when it comes back, its cursor is older than the pruning
// point and it reloads everything (storage.Watcher's Reset). The error
// wraps ErrFeedFloorUnknown when a live node has published no cursor.
func FeedFloor(ctx context.Context, st storage.Store, ls storage.Leaser, gen string) (floor storage.Cursor, bounded bool, err error) {
	leases, err := ls.Live(ctx, NodeLeasePrefix)
	if err != nil {
		return storage.Cursor{}, false, err
	}
	for _, l := range leases {
		id := strings.TrimPrefix(l.Name, NodeLeasePrefix)
		n, ok, err := readNode(ctx, st, id)
		if err != nil {
			return storage.Cursor{}, false, err
		}
		if !ok {
			return storage.Cursor{}, false, fmt.Errorf("%w (node %s has no record)", ErrFeedFloorUnknown, id)
		}
		switch {
		case n.Stopped:
			// Stopped cleanly after its lease was last renewed: its
			// next start begins with a Reset.
		case n.FeedCursor == nil:
			return storage.Cursor{}, false, fmt.Errorf("%w (node %s)", ErrFeedFloorUnknown, id)
		case n.FeedCursor.Gen != gen:
		case !bounded || n.FeedCursor.Before(floor):
			floor, bounded = *n.FeedCursor, true
		}
	}
	return floor, bounded, nil
}

// Status is what status reports: the nodes' records, the live leases and
// the controller history, newest last.
type Status struct {
	Now     time.Time       `json:"now"`
	Nodes   []NodeStatus    `json:"nodes"`
	Leases  []LeaseStatus   `json:"leases"`
	Terms   []Term          `json:"controllerHistory"`
	Current *ControllerInfo `json:"controller"`
	// MinDataLevel is the database's minimum data format level (0: none
	// recorded).
	MinDataLevel int `json:"minDataLevel"`
}

// NodeStatus is a node's record and whether its node lease is live.
type NodeStatus struct {
	Node
	Live bool `json:"live"`
}

// LeaseStatus is one live lease.
type LeaseStatus struct {
	Name             string  `json:"name"`
	Holder           string  `json:"holder"`
	Epoch            int64   `json:"epoch"`
	ExpiresInSeconds float64 `json:"expiresInSeconds"`
}

// ControllerInfo is the live controller lease.
type ControllerInfo struct {
	Node  string `json:"node"`
	Epoch int64  `json:"epoch"`
}

// ReadStatus reads the status of the nodes sharing st.
func ReadStatus(ctx context.Context, st storage.Store, ls storage.Leaser) (*Status, error) {
	s := &Status{Now: time.Now().UTC(), Nodes: []NodeStatus{}, Leases: []LeaseStatus{}, Terms: []Term{}}
	live, err := ls.Live(ctx, "")
	if err != nil {
		return nil, err
	}
	if s.MinDataLevel, err = MinLevel(ctx, st); err != nil {
		return nil, err
	}
	liveNodes := map[string]bool{}
	for _, l := range live {
		s.Leases = append(s.Leases, LeaseStatus{Name: l.Name, Holder: l.Holder, Epoch: l.Epoch,
			ExpiresInSeconds: time.Until(l.Deadline).Round(time.Millisecond).Seconds()})
		if l.Name == LeaseName {
			s.Current = &ControllerInfo{Node: l.Holder, Epoch: l.Epoch}
		}
		if id, ok := strings.CutPrefix(l.Name, NodeLeasePrefix); ok {
			liveNodes[id] = true
		}
	}
	nodes, err := st.List(ctx, NodePrefix, "", 0)
	if err != nil {
		return nil, err
	}
	for _, e := range nodes {
		var n Node
		if err := json.Unmarshal(e.Value, &n); err != nil {
			return nil, fmt.Errorf("node record %s: %w", e.Key, err)
		}
		s.Nodes = append(s.Nodes, NodeStatus{Node: n, Live: liveNodes[n.ID]})
	}
	terms, err := st.List(ctx, HistoryPrefix, "", 0)
	if err != nil {
		return nil, err
	}
	for _, e := range terms {
		var t Term
		if err := json.Unmarshal(e.Value, &t); err != nil {
			return nil, fmt.Errorf("controller record %s: %w", e.Key, err)
		}
		s.Terms = append(s.Terms, t)
	}
	return s, nil
}
