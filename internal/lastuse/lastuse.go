// Package lastuse keeps when each KMS key was last used successfully by
// one of the operations GetKeyLastUsage tracks, and which call it was.
//
// Recording is cheap, because it sits on the hot path of every Encrypt,
// Decrypt and Sign: Tracker.Record updates an entry in memory under a
// mutex and never touches storage (the first use of a key since the last
// flush it also encodes for the journal, while the request's strings are
// in the processor's cache). A background flusher writes the entries
// changed since its last run, all in one storage transaction, every
// Interval (one second), so a key's use is written at most once a second
// however often the key is used. Close stops the flusher and writes what
// is left, so a clean shutdown loses nothing.
//
// A flush appends to the store's last-use journal (at most a few hundred
// rows, whatever its size) rather than writing each key's record, which
// on a store of many keys dirtied a database page per use; every
// MergeUses uses journaled, or MergeInterval at the latest, the flusher
// also merges the journal into the keys' bucket records, each key once
// (catalog.JournalEncoded and MergeLastUses). Reads see both, so the
// merge changes no answer.
//
// A process that dies without Close (kill -9, power loss) loses the uses
// of its last second at most: the stored record then names an earlier
// successful use, or none. That is acceptable — AWS's own tracking is
// approximate, and nothing in kmsd depends on the record for correctness.
//
// Records are keyed by key ARN, which names the account, the Region and
// the key id, so related multi-Region keys (one key id, several Regions)
// each track their own use.
package lastuse

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/kmsd/kmsd/internal/catalog"
)

// Interval is how often the flusher writes changed entries: the longest
// that a use stays in memory only.
const Interval = time.Second

// MergeUses and MergeInterval say when the flusher merges the store's
// last-use journal into the keys' buckets: once this node has journaled
// MergeUses uses since its last merge, or MergeInterval after it,
// whichever comes first.
//
// A merge of a large store costs about as much however few uses it
// brings: on a million keys nearly every bucket holds a key used since
// the last merge, so each is read and rewritten. On SQLite
// (BenchmarkMergeLarge) that is 0.77 s for 120,000 uses and 1.85 s for 3
// million: a fixed ~0.7 s and ~0.4 µs a use. Merging by count charges the
// fixed part to MergeUses uses whatever the load; a timer alone charged
// it to a busy minute's uses and a quiet minute's alike, so a large store
// at 1,000 requests a second paid ~6 µs a request for merges every 2
// minutes. The count also bounds the journal, however busy the node: what
// a read of one key scans (MergeUses/256 uses of its partition, ~1 MB:
// 2 ms on SQLite, BenchmarkLastUseJournaled) and its size in the database
// (~270 MB). A larger count would not pay: a flush costs more the more
// the journal holds (~0.1 µs a use per million journaled,
// BenchmarkJournalDistinct), and with a merge's ~0.7 s/MergeUses a use
// the two balance near 4 million. The interval only bounds how long a
// quiet store's uses wait in the journal. Each node counts its own uses,
// so n nodes keep at most n times that.
const (
	MergeUses     = 4_000_000
	MergeInterval = 10 * time.Minute
)

// Store is where a Tracker keeps uses durably; *catalog.Catalog is one.
// JournalEncoded must not keep its slice or the uses' bytes once it
// returns: the tracker reuses them.
type Store interface {
	LastUse(ctx context.Context, account, region, id string) (*catalog.LastUse, error)
	JournalEncoded(ctx context.Context, uses []catalog.EncodedUse) error
	MergeLastUses(ctx context.Context) (int, error)
	DeleteLastUse(ctx context.Context, account, region, id string) error
	TrackingStart(ctx context.Context, now time.Time) (time.Time, error)
}

var _ Store = (*catalog.Catalog)(nil)

// Tracker records the last use of keys. Its methods are safe for
// concurrent use.
type Tracker struct {
	store      Store
	log        *slog.Logger
	interval   time.Duration
	mergeEvery time.Duration
	mergeUses  int

	mu sync.Mutex
	// uses holds, by key ARN, the uses recorded since the last flush took
	// them; flushing, the uses a flush in progress writes (nil between
	// flushes). A flush swaps uses for spare, an emptied map, and empties
	// the map it took when done: no entry is looked up or deleted one by
	// one after the write, which on a million keys, where a flush takes
	// ~20,000 uses, cost a lookup and a delete in a map out of cache per
	// use (perf: 0.2 µs of each Encrypt).
	uses, flushing, spare map[string]*entry
	free                  []*entry // entries stored and forgotten, for reuse
	running               bool     // the flusher has been started
	closed                bool
	started               time.Time // when this Tracker was made
	began                 time.Time // cached TrackingStart; zero until known
	// account and region are the account and Region of the last use
	// encoded: every use of the same ones shares these strings, so that a
	// flush compares them without reading each ARN's bytes again.
	account, region string

	flushMu sync.Mutex // one flush at a time; Delete waits for it
	// A flush's batch, kept for the next flush (under flushMu): on a
	// large store a flush holds ~20,000 uses.
	batch []catalog.EncodedUse
	// journaled counts the uses flushed since the last merge (under
	// flushMu).
	journaled int
	stop      chan struct{}
	done      chan struct{}
}

// entry is the last use of one key seen by this process.
type entry struct {
	arn                    string
	op, eventID, requestID string
	at                     time.Time
	// When encoded is set, enc is the use encoded for the journal
	// (catalog.EncodeUse): in buf, unless longer than any use of a key
	// kmsd makes (catalog.MaxEncodedUse). Record encodes the use of a key
	// new since the last flush, while the request's strings are in the
	// processor's cache: on a store of a million keys, where nearly every
	// use is of such a key, a flush encoding them a second later read
	// each ARN, event id and request id from memory again (perf: ~0.6 µs
	// of each Encrypt). A later use of the same key only clears encoded,
	// and the flush encodes it then: on a store of a few keys used again
	// and again, a use costs no encoding.
	encoded         bool
	account, region string
	part            int
	enc             []byte
	buf             [catalog.MaxEncodedUse]byte
}

// New returns a Tracker over store, tracking from started (when the
// process began to serve). The flusher starts with the first Record, so
// a Tracker that never records runs nothing in the background.
func New(store Store, log *slog.Logger, started time.Time) *Tracker {
	return &Tracker{store: store, log: log, interval: Interval, mergeEvery: MergeInterval, mergeUses: MergeUses, uses: map[string]*entry{},
		started: started, stop: make(chan struct{}), done: make(chan struct{})}
}

// Record notes that one call of op, at time at, used the keys arns; the
// call's audit record has eventID and its response requestID. A later
// Record for the same key replaces the earlier one in memory. Record does
// no I/O and allocates only for a key not used since the last flush.
func (t *Tracker) Record(arns []string, op string, at time.Time, eventID, requestID string) {
	t.mu.Lock()
	for _, arn := range arns {
		e := t.uses[arn]
		first := e == nil
		if first {
			e = t.newEntry(arn)
			t.uses[arn] = e
		} else if at.Before(e.at) {
			// A concurrent call that finished later already recorded. (One
			// that a flush in progress took is not looked for: the store
			// keeps the later of two uses journaled.)
			continue
		}
		e.op, e.at, e.eventID, e.requestID = op, at, eventID, requestID
		e.encoded = false
		if first {
			t.encode(e)
		}
	}
	if !t.running && !t.closed {
		t.running = true
		go t.run()
	}
	t.mu.Unlock()
}

// maxFree bounds the entries kept for reuse: about the keys a busy second
// uses on a large store, a few MB.
const maxFree = 1 << 16

// newEntry returns an entry for arn, reusing one that a flush stored and
// forgot: on a store of a million keys nearly every use is of a key not
// used since the last flush, and its entry was an allocation a use.
// t.mu is held.
func (t *Tracker) newEntry(arn string) *entry {
	n := len(t.free)
	if n == 0 {
		return &entry{arn: arn}
	}
	e := t.free[n-1]
	t.free[n-1] = nil
	t.free = t.free[:n-1]
	e.arn = arn
	return e
}

// encode encodes e's use into e.enc, unless its ARN names no key (then
// e stays unencoded, and the flush drops it). t.mu is held: t.account and
// t.region are shared.
func (t *Tracker) encode(e *entry) {
	account, region, id, ok := split(e.arn)
	if !ok {
		return
	}
	if account != t.account {
		t.account = strings.Clone(account)
	}
	if region != t.region {
		t.region = strings.Clone(region)
	}
	e.account, e.region = t.account, t.region
	e.enc, e.part = catalog.EncodeUse(e.buf[:0], &catalog.LastUse{Account: e.account, Region: e.region, KeyID: id,
		Operation: e.op, Time: e.at, EventID: e.eventID, RequestID: e.requestID})
	e.encoded = true
}

// run flushes every interval, and merges the journal once mergeUses uses
// have been flushed since the last merge or mergeEvery has passed (after
// a flush, in the same goroutine: a merge delays the next flush, never
// overlaps it), until Close.
func (t *Tracker) run() {
	defer close(t.done)
	tick := time.NewTicker(t.interval)
	defer tick.Stop()
	// The first merge comes at a random point of the second half of the
	// first period, by time and by count, so that nodes started together
	// do not merge the same partitions at the same moment.
	nextMerge := time.Now().Add(t.mergeEvery/2 + time.Duration(rand.Int64N(int64(t.mergeEvery/2)+1)))
	mergeAt := t.mergeUses/2 + rand.IntN(t.mergeUses/2+1)
	for {
		select {
		case <-t.stop:
			return
		case <-tick.C:
			ctx, cancel := context.WithTimeout(context.Background(), 10*t.interval)
			if err := t.Flush(ctx); err != nil {
				t.log.Error("key last use: flush failed; retrying", "err", err)
			}
			cancel()
			t.flushMu.Lock()
			due := t.journaled >= mergeAt || !time.Now().Before(nextMerge)
			if due {
				t.journaled = 0
			}
			t.flushMu.Unlock()
			if !due {
				continue
			}
			nextMerge, mergeAt = time.Now().Add(t.mergeEvery), t.mergeUses
			ctx, cancel = context.WithTimeout(context.Background(), MergeInterval)
			began := time.Now()
			switch n, err := t.store.MergeLastUses(ctx); {
			case err != nil:
				t.log.Error("key last use: merging the journal failed; retrying later", "err", err)
			case n > 0:
				// Rare (MergeUses), and what a large store's CPU and
				// database load at that moment come from.
				t.log.Info("key last use: merged the journal", "keys", n, "took", time.Since(began).Round(time.Millisecond))
			}
			cancel()
		}
	}
}

// Flush writes every use recorded since the last flush, in one
// transaction. Uses it could not write stay to be written next time.
func (t *Tracker) Flush(ctx context.Context) error {
	t.flushMu.Lock()
	defer t.flushMu.Unlock()
	t.mu.Lock()
	taken := t.uses
	if len(taken) == 0 {
		t.mu.Unlock()
		return nil
	}
	t.uses, t.spare, t.flushing = t.spare, nil, taken
	if t.uses == nil {
		t.uses = make(map[string]*entry, len(taken))
	}
	t.mu.Unlock()
	// Nothing writes taken or its entries now: Record writes t.uses, and
	// Delete waits for flushMu. Get reads them under t.mu.
	batch := t.batch[:0]
	defer func() {
		clear(batch)
		t.batch = batch[:0]
	}()
	for _, e := range taken {
		if !e.encoded {
			// Used again since Record encoded it. Only the flush
			// touches taken's entries now, but encode shares t.account
			// and t.region with Record.
			t.mu.Lock()
			t.encode(e)
			t.mu.Unlock()
		}
		// An ARN that does not name a key is dropped: nothing
		// GetKeyLastUsage could ask for.
		if e.encoded {
			batch = append(batch, catalog.EncodedUse{Account: e.account, Region: e.region, Part: e.part, Entry: e.enc})
		}
	}
	var err error
	if len(batch) > 0 {
		if err = t.store.JournalEncoded(ctx, batch); err == nil {
			t.journaled += len(batch)
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for arn, e := range taken {
		if err != nil {
			if _, _, _, ok := split(arn); ok {
				// Written next time, with the later of it and whatever
				// was recorded since (never older than what failed).
				cur := t.uses[arn]
				if cur == nil {
					t.uses[arn] = e
					continue
				}
				if cur.at.Before(e.at) {
					cur.op, cur.at, cur.eventID, cur.requestID = e.op, e.at, e.eventID, e.requestID
					cur.encoded = false
				}
			}
		}
		// Stored (Get reads it from the store, so memory holds only the
		// keys used since the last flush, however many keys there are),
		// or dropped: kept for reuse, so a key in steady use costs no
		// allocation per interval.
		if len(t.free) < maxFree {
			*e = entry{}
			t.free = append(t.free, e)
		}
	}
	clear(taken)
	t.flushing, t.spare = nil, taken
	return err
}

// Get returns the last use of the key arn: the newer of what this
// process has seen and what is stored (another node sharing the store
// may have recorded a later one). It returns catalog.ErrNotFound when the
// key has no recorded use.
func (t *Tracker) Get(ctx context.Context, arn string) (*catalog.LastUse, error) {
	account, region, id, ok := split(arn)
	if !ok {
		return nil, catalog.ErrNotFound
	}
	var mem *catalog.LastUse
	t.mu.Lock()
	for _, e := range [2]*entry{t.uses[arn], t.flushing[arn]} {
		if e != nil && (mem == nil || e.at.After(mem.Time)) {
			mem = &catalog.LastUse{Account: account, Region: region, KeyID: id,
				Operation: e.op, Time: e.at, EventID: e.eventID, RequestID: e.requestID}
		}
	}
	t.mu.Unlock()
	stored, err := t.store.LastUse(ctx, account, region, id)
	switch {
	case errors.Is(err, catalog.ErrNotFound):
		if mem == nil {
			return nil, catalog.ErrNotFound
		}
		return mem, nil
	case err != nil:
		return nil, err
	case mem != nil && mem.Time.After(stored.Time):
		return mem, nil
	}
	return stored, nil
}

// Delete forgets the key arn, in memory and in the store, as the key
// itself is deleted. A flush in progress is waited for, so that it does
// not write the record back.
func (t *Tracker) Delete(ctx context.Context, arn string) error {
	account, region, id, ok := split(arn)
	if !ok {
		return nil
	}
	t.flushMu.Lock()
	defer t.flushMu.Unlock()
	t.mu.Lock()
	delete(t.uses, arn) // flushing is nil: no flush runs
	t.mu.Unlock()
	return t.store.DeleteLastUse(ctx, account, region, id)
}

// Began returns when tracking began: the started time of the first
// Tracker that called it on a store, stored then, and the same ever
// after — when the first kmsd that tracks usage started. Keys created
// before it have no usage recorded from before it.
func (t *Tracker) Began(ctx context.Context) (time.Time, error) {
	t.mu.Lock()
	b := t.began
	t.mu.Unlock()
	if !b.IsZero() {
		return b, nil
	}
	b, err := t.store.TrackingStart(ctx, t.started)
	if err != nil {
		return time.Time{}, err
	}
	t.mu.Lock()
	t.began = b
	t.mu.Unlock()
	return b, nil
}

// Close stops the flusher and writes what is left. Uses recorded after
// Close stay in memory and are written by Flush only.
func (t *Tracker) Close(ctx context.Context) error {
	t.mu.Lock()
	running, closed := t.running, t.closed
	t.closed = true
	t.mu.Unlock()
	if running && !closed {
		close(t.stop)
		<-t.done
	}
	return t.Flush(ctx)
}

// split takes a key ARN, arn:<partition>:kms:<region>:<account>:key/<id>,
// apart.
func split(arn string) (account, region, id string, ok bool) {
	// By hand rather than strings.SplitN, which allocates: a flush splits
	// every use's ARN.
	rest, ok := strings.CutPrefix(arn, "arn:")
	if !ok {
		return "", "", "", false
	}
	var parts [4]string // partition, service, Region, account
	for i := range parts {
		var found bool
		if parts[i], rest, found = strings.Cut(rest, ":"); !found {
			return "", "", "", false
		}
	}
	id, ok = strings.CutPrefix(rest, "key/")
	if parts[1] != "kms" || !ok || id == "" || parts[2] == "" || parts[3] == "" {
		return "", "", "", false
	}
	return parts[3], parts[2], id, true
}
