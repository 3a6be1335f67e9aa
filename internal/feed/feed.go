// Package feed follows a store's change feed (storage.Watcher) on behalf
// of the in-memory caches of one kmsd node: it hands every changed key to
// the subscribers, tells them to drop everything when the feed cannot say
// what changed (Reset), and publishes the node's freshness — the instant
// before which every committed change has been handed over
// (MULTINODE.md §4.3, §7.4). Data-plane reads trust a cache only while
// that instant is recent enough; the lag is exported as the
// kmsd_cache_horizon_lag_seconds metric.
package feed

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kmsd/kmsd/internal/storage"
)

// Subscriber is a cache kept in step with the database.
type Subscriber interface {
	// Invalidate forgets (or reloads) what is cached for the storage keys
	// keys, which changed; keys the subscriber does not cache are ignored.
	// An error leaves the batch unconsumed: it is offered again.
	Invalidate(ctx context.Context, keys []string) error
	// Reset forgets (or reloads) everything cached.
	Reset(ctx context.Context) error
}

// DefaultInterval is how often the feed is polled unless told otherwise.
const DefaultInterval = 200 * time.Millisecond

// pollTimeout bounds one Poll, so that a connection that stops answering
// is given up and the next poll can open another.
const pollTimeout = 5 * time.Second

// batchLimit is how many changes one poll asks for.
const batchLimit = 1000

// Follower polls a change feed and dispatches it to its subscribers.
type Follower struct {
	w        storage.Watcher
	subs     []Subscriber
	interval time.Duration
	log      *slog.Logger

	cursor storage.Cursor
	pos    atomic.Pointer[storage.Cursor] // cursor, for Cursor
	fresh  atomic.Pointer[time.Time]
	kick   chan struct{} // FreshAt found the cursor behind: Run polls soon

	prover  storage.Prover // w's, or nil
	proveMu sync.Mutex
	proving *proof // under way, or nil
	queued  *proof // to begin when proving ends, or nil
}

// New returns a follower of w for subs, polling every interval (zero:
// DefaultInterval). Nothing is fresh until its first poll.
func New(w storage.Watcher, interval time.Duration, log *slog.Logger, subs ...Subscriber) *Follower {
	if interval <= 0 {
		interval = DefaultInterval
	}
	if log == nil {
		log = slog.Default()
	}
	f := &Follower{w: w, subs: subs, interval: interval, log: log, kick: make(chan struct{}, 1)}
	f.prover, _ = w.(storage.Prover)
	f.fresh.Store(&time.Time{})
	f.pos.Store(&storage.Cursor{})
	return f
}

// Cursor is the feed position up to which every change has been handed to
// the subscribers (the zero Cursor before the first poll). The node
// publishes it, so that the feed is never pruned past it while the node
// lives (a pruned cursor would cost it a Reset).
func (f *Follower) Cursor() storage.Cursor { return *f.pos.Load() }

// FreshAsOf is the instant, on this process's monotonic clock, before
// which every committed change has been handed to the subscribers; the
// zero time before the first successful poll.
func (f *Follower) FreshAsOf() time.Time { return *f.fresh.Load() }

// FreshAt says whether every change committed before t has been handed to
// the subscribers: FreshAsOf is not before t, or the Watcher proves
// (storage.Prover), when asked now, that the follower's cursor covers
// every change committed so far — nothing was committed since the changes
// it has handed over — in which case the instant before it was asked
// becomes FreshAsOf. It never polls, and answers false when neither proves
// it (a change committed since the last poll, a Watcher without Prover,
// an error): the caller then reads the database. A failed proof makes Run
// poll soon (as a notice does), so that the caches, and FreshAt, catch up
// before the next interval; until that poll begins FreshAt answers false
// without asking again, so that under a stream of writes a read pays for
// the database alone.
//
// A control-plane read begun at t (MULTINODE.md §4.2: "a cache entry
// proven fresh for that key") may use the caches once FreshAt(t) is true.
func (f *Follower) FreshAt(ctx context.Context, t time.Time) bool {
	if !f.FreshAsOf().Before(t) {
		return true
	}
	if f.prover == nil || len(f.kick) > 0 {
		// No proof, or one failed since the last poll began: asking
		// again would prove nothing.
		return false
	}
	// One proof at a time: a read that comes while one is under way
	// waits for the next, which begins when that one ends and answers
	// every read that came meanwhile, so that under many concurrent
	// reads the store is asked about once per proof's time rather than
	// once per read. A proof begun after t proves t.
	f.proveMu.Lock()
	pr := f.queued
	switch {
	case f.proving == nil:
		pr = &proof{done: make(chan struct{})}
		f.proving = pr
		f.proveMu.Unlock()
		f.prove(pr)
	case pr == nil:
		pr = &proof{done: make(chan struct{})}
		f.queued = pr
		f.proveMu.Unlock()
	default:
		f.proveMu.Unlock()
	}
	select {
	case <-pr.done:
		return pr.ok
	case <-ctx.Done():
		return false
	}
}

// proof is one Covers call that FreshAt's callers share.
type proof struct {
	done chan struct{} // closed once ok is set
	ok   bool
}

// proofTimeout bounds one proof, which no single request's context
// bounds; a read whose proof fails goes to the database.
const proofTimeout = time.Second

// prove runs pr, then the proof queued meanwhile (in a goroutine of its
// own, so that pr's caller is not kept waiting for it).
func (f *Follower) prove(pr *proof) {
	// The cursor is read before the proof: it only moves once the
	// subscribers have what it covers, and what the proof shows for it
	// holds for any later position.
	c := f.Cursor()
	start := time.Now()
	var ok bool
	var err error
	if len(f.kick) == 0 { // else the proof before failed: no poll since
		ctx, cancel := context.WithTimeout(context.Background(), proofTimeout)
		ok, err = f.prover.Covers(ctx, c)
		cancel()
	}
	if ok && err == nil {
		f.advance(start)
		pr.ok = true
	} else if err == nil {
		select {
		case f.kick <- struct{}{}:
		default: // asked already
		}
	}
	close(pr.done)
	f.proveMu.Lock()
	next := f.queued
	f.queued, f.proving = nil, next
	f.proveMu.Unlock()
	if next != nil {
		go f.prove(next)
	}
}

// advance makes t FreshAsOf unless that is later already.
func (f *Follower) advance(t time.Time) {
	for {
		cur := f.fresh.Load()
		if !t.After(*cur) || f.fresh.CompareAndSwap(cur, &t) {
			return
		}
	}
}

// Lag is how far behind now the node's caches may be.
func (f *Follower) Lag() time.Duration {
	t := f.FreshAsOf()
	if t.IsZero() {
		return time.Duration(1<<63 - 1)
	}
	return time.Since(t)
}

// Run polls until ctx ends. Errors are logged and retried at the next
// interval; meanwhile freshness ages, which is what makes the node stop
// trusting its caches. FreshAt's finding that the feed moved makes it
// poll at once (but no sooner than noticeGap after the last poll).
//
// A Watcher that is also a storage.Notifier makes a notice poll at once
// (but no sooner than noticeGap after the last poll): a transaction that
// committed while an older one was still open is below the feed's horizon
// only once that one ends, so until the cursor has passed the noticed
// transaction the follower looks again after 10, 20, 40 … ms, for at most
// an interval, after which the regular polls are in charge again.
func (f *Follower) Run(ctx context.Context) {
	t := time.NewTicker(f.interval)
	defer t.Stop()
	var notices <-chan uint64
	if n, ok := f.w.(storage.Notifier); ok {
		notices = n.Notices()
	}
	var (
		want      uint64    // a noticed transaction not yet delivered (0: none)
		wantSince time.Time // when it was noticed
		again     time.Duration
		lastPoll  time.Time
	)
	soon := time.NewTimer(time.Hour)
	soon.Stop()
	defer soon.Stop()
	failing := false
	for {
		lastPoll = time.Now()
		pctx, cancel := context.WithTimeout(ctx, pollTimeout)
		err := f.Poll(pctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if !failing {
				f.log.Warn("change feed poll failed; caches age until it works again", "err", err)
			}
			failing = true
		} else if failing {
			f.log.Info("change feed poll works again")
			failing = false
		}
		if want != 0 && (f.cursor.XID > want || err != nil || time.Since(wantSince) > f.interval) {
			want = 0
		}
		if want != 0 {
			again = min(max(2*again, noticeRetry), f.interval)
			soon.Reset(again)
		}
		for due := false; !due; {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				due = true
			case <-f.kick:
				gap(lastPoll)
				due = true
			case <-soon.C:
				gap(lastPoll)
				due = true
			case x := <-notices:
				if f.cursor.XID > x {
					continue // delivered already
				}
				if want == 0 {
					wantSince, again = time.Now(), 0
				}
				want = max(want, x)
				gap(lastPoll)
				due = true
			}
		}
		soon.Stop()
	}
}

// noticeGap is the least time between a poll and the next one made for
// a notice (at most 100 a second, however many nodes write), and
// noticeRetry the first wait before looking again for a noticed
// transaction that the poll did not deliver yet.
const (
	noticeGap   = 10 * time.Millisecond
	noticeRetry = noticeGap
)

// gap waits until noticeGap has passed since last.
func gap(last time.Time) {
	if d := noticeGap - time.Since(last); d > 0 {
		time.Sleep(d)
	}
}

// Poll reads the feed until it has caught up, dispatching every change,
// then publishes the freshness the last batch proved. It answers a poll
// FreshAt asked for.
func (f *Follower) Poll(ctx context.Context) error {
	select {
	case <-f.kick: // this poll answers it
	default:
	}
	for {
		b, err := f.w.Changes(ctx, f.cursor, batchLimit)
		if err != nil {
			return err
		}
		for _, s := range f.subs {
			switch {
			case b.Reset:
				err = s.Reset(ctx)
			case len(b.Keys) > 0:
				err = s.Invalidate(ctx, b.Keys)
			}
			if err != nil {
				// The cursor stays: the batch comes again, and
				// subscribers that took it already take it twice,
				// which invalidation allows.
				return err
			}
		}
		f.cursor = b.Next
		next := b.Next
		f.pos.Store(&next)
		if !b.FreshAsOf.IsZero() {
			// Published only after every subscriber has the changes.
			f.advance(b.FreshAsOf)
			return nil
		}
		if len(b.Keys) == 0 && !b.Reset {
			return nil
		}
	}
}
