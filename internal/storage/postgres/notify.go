package postgres

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/kmsd/kmsd/internal/storage"
)

// Change notices: the optional accelerator of MULTINODE.md §4.3 and §7.4
// (storage.Notifier), on with Options.Notify.
//
// A Store announces each commit that replaced or deleted a record in the
// feed — what another node may have cached: a key disabled or
// re-policied, a grant revoked, an alias moved — with pg_notify on
// channel noticeChannel (a commit that only made new records, such as
// CreateKey's, is not announced: nothing can have cached them), in a
// statement of its own sent after the commit by a goroutine — never
// inside the writing transaction,
// where NOTIFY takes a lock that serializes every such commit of the
// database — and at most one every noticeGap: the commits in between are
// announced together, by the latest transaction id. Sending costs the
// write nothing: the request is answered without waiting for it.
//
// A Store also keeps one connection of its own, outside the pool, that
// LISTENs on the channel, and passes each notice of another Store to its
// readers (Notices): the change-feed follower then polls at once instead
// of at its next interval. Correctness never depends on a notice: they
// are lost while that connection is down (it is opened again with
// backoff), through a pooler in transaction mode (which does not keep a
// LISTEN), and on a standby; the feed is still polled at every interval.
// The listening connection is the only session state this driver keeps,
// and it reads nothing: a node's max_connections budget is its pool plus
// this one.

// noticeChannel is the channel notices are sent on.
const noticeChannel = "kmsd_changes"

// listenerName ends the application_name of the listening connection
// (pg_stat_activity).
const listenerName = " (notices)"

// noticeGap is the least time between two notices of one Store.
const noticeGap = 5 * time.Millisecond

// listenIdle is how long the listening connection waits for a notice
// before it checks that the connection still answers; a connection cut
// off without a reset (a partition) is found and replaced within about
// this plus pingTimeout.
var listenIdle = 30 * time.Second

// pingTimeout bounds that check, and the close of a listening connection.
const pingTimeout = 5 * time.Second

// listenBackoff is the first wait before the listening connection is
// opened again; it doubles up to listenBackoffMax while opening fails.
const (
	listenBackoff    = time.Second
	listenBackoffMax = 30 * time.Second
)

// notices is a Store's side of change notices.
type notices struct {
	id      string        // in the payload of its notices, so that its own are ignored
	pending atomic.Uint64 // the highest xid committed and not yet announced
	kick    chan struct{} // (1) pending has an xid
	out     chan uint64   // (1) Notices
	up      atomic.Bool   // the listening connection is up
	idle    time.Duration // listenIdle when the Store was opened
	stop    context.CancelFunc
	wg      sync.WaitGroup
}

// startNotices starts the sender and the listener; conn is the listening
// connection's configuration.
func (s *Store) startNotices(conn *pgx.ConnConfig) {
	conn.RuntimeParams["application_name"] += listenerName
	ctx, cancel := context.WithCancel(context.Background())
	n := &notices{
		id:   uuid.NewString(),
		kick: make(chan struct{}, 1),
		out:  make(chan uint64, 1),
		idle: listenIdle,
		stop: cancel,
	}
	s.notices = n
	n.wg.Add(2)
	go func() { defer n.wg.Done(); s.sendNotices(ctx) }()
	go func() { defer n.wg.Done(); s.listen(ctx, conn) }()
}

// stopNotices stops both goroutines and waits for them.
func (s *Store) stopNotices() {
	if s.notices != nil {
		s.notices.stop()
		s.notices.wg.Wait()
	}
}

// Notices implements storage.Notifier. Without Options.Notify it returns
// a channel that never receives.
func (s *Store) Notices() <-chan uint64 {
	if s.notices == nil {
		return nil
	}
	return s.notices.out
}

// Listening says the listening connection is up (for tests).
func (s *Store) Listening() bool { return s.notices != nil && s.notices.up.Load() }

// announce has the sender announce t's commit if t changed keys in the
// feed. It never waits.
func (s *Store) announce(t *tx) {
	n := s.notices
	if n == nil || !t.changed {
		return
	}
	x, err := strconv.ParseUint(t.xid, 10, 64)
	if err != nil {
		return
	}
	for {
		cur := n.pending.Load()
		if cur >= x || n.pending.CompareAndSwap(cur, x) {
			break
		}
	}
	select {
	case n.kick <- struct{}{}:
	default:
	}
}

// sendNotices sends the pending notice whenever there is one, at most one
// every noticeGap, until ctx ends.
func (s *Store) sendNotices(ctx context.Context) {
	n := s.notices
	gap := time.NewTimer(0)
	defer gap.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-n.kick:
		}
		x := n.pending.Swap(0)
		if x == 0 {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := s.pool.Exec(sctx, `SELECT pg_notify($1, $2)`, noticeChannel, n.id+" "+strconv.FormatUint(x, 10))
		cancel()
		if err != nil && ctx.Err() == nil {
			// The others poll anyway.
			s.log.Debug("postgres: change notice not sent", "err", err)
		}
		gap.Reset(noticeGap)
		select {
		case <-ctx.Done():
			return
		case <-gap.C:
		}
	}
}

// listen keeps a connection LISTENing on noticeChannel until ctx ends,
// opening it again with backoff when it is lost.
func (s *Store) listen(ctx context.Context, cfg *pgx.ConnConfig) {
	backoff := listenBackoff
	for {
		began := time.Now()
		err := s.listenOnce(ctx, cfg)
		s.notices.up.Store(false)
		if ctx.Err() != nil {
			return
		}
		if time.Since(began) > listenBackoffMax {
			backoff = listenBackoff // it had worked for a while
		}
		s.log.Debug("postgres: change notices: listening connection lost; the feed is polled meanwhile", "err", err, "retry_in", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, listenBackoffMax)
	}
}

// listenOnce opens the listening connection and passes on the notices it
// receives until the connection fails or ctx ends.
func (s *Store) listenOnce(ctx context.Context, cfg *pgx.ConnConfig) error {
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), pingTimeout)
		_ = conn.Close(cctx)
		cancel()
	}()
	if _, err := conn.Exec(ctx, "LISTEN "+noticeChannel); err != nil {
		return err
	}
	s.notices.up.Store(true)
	for {
		wctx, cancel := context.WithTimeout(ctx, s.notices.idle)
		nt, err := conn.WaitForNotification(wctx)
		cancel()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			if !pgconn.Timeout(err) {
				return err
			}
			// Nothing for a while: make sure the connection still
			// answers (a timed-out wait leaves it usable).
			pctx, cancel := context.WithTimeout(ctx, pingTimeout)
			err := conn.Ping(pctx)
			cancel()
			if err != nil {
				return err
			}
			continue
		}
		s.notices.deliver(nt.Payload)
	}
}

// deliver passes on the notice of payload ("<store id> <xid>") unless it
// is this Store's own, merging it with one not yet taken.
func (n *notices) deliver(payload string) {
	id, xs, ok := strings.Cut(payload, " ")
	if !ok || id == n.id {
		return
	}
	x, err := strconv.ParseUint(xs, 10, 64)
	if err != nil {
		return
	}
	for {
		select {
		case n.out <- x:
			return
		default:
		}
		select {
		case old := <-n.out:
			x = max(x, old)
		default:
		}
	}
}

var _ storage.Notifier = (*Store)(nil)
