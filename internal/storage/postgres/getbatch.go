package postgres

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/kmsd/kmsd/internal/storage"
)

// Point reads outside a transaction (Store.Get) are coalesced: up to
// batchReaders statements run at once, each reading every key asked for
// while the ones before were in flight (`key = ANY($1)`), at most
// batchMax keys. Each statement costs PostgreSQL (parse, plan, execute, a
// round trip) and kmsd (the protocol) far more than each key it reads, and
// on a large store the data plane reads every key it has not cached: with
// many requests at once, a statement per key spent the CPU the requests
// needed. A lone read waits for nothing but a free reader; under load a
// read waits at most for the statements ahead of it.
//
// A read's statement starts after the read was asked for, so it sees every
// write committed before that, as a statement of its own would: reads stay
// linearizable and a node reads its own writes.
const (
	batchReaders = 4
	batchMax     = 256
)

// pointRead is one Get waiting for its batch. done has room for the one
// result, so the reader never blocks on a caller that has given up.
type pointRead struct {
	key      string
	deadline time.Time // the caller's, if any
	done     chan pointResult
}

type pointResult struct {
	value []byte
	err   error
}

// batchGets runs the coalesced point reads of one Store.
type batchGets struct {
	pool *pgxpool.Pool
	// wait bounds a batch none of whose callers has a deadline: the
	// statement timeout and a second, for a connection that went dead.
	wait time.Duration
	ctx  context.Context // ended by stop: the readers' statements
	stop context.CancelFunc

	// statements and keys count the batches read and the keys they
	// held (for tests).
	statements, keys atomic.Int64

	mu      sync.Mutex
	cond    *sync.Cond
	pending []*pointRead
	closed  bool
	wg      sync.WaitGroup
}

func newBatchGets(pool *pgxpool.Pool, statementTimeout time.Duration) *batchGets {
	b := &batchGets{pool: pool, wait: statementTimeout + time.Second}
	b.ctx, b.stop = context.WithCancel(context.Background())
	b.cond = sync.NewCond(&b.mu)
	for range batchReaders {
		b.wg.Add(1)
		go b.reader()
	}
	return b
}

// close stops the readers; reads still waiting get errClosed.
func (b *batchGets) close() {
	b.mu.Lock()
	b.closed = true
	b.cond.Broadcast()
	b.mu.Unlock()
	b.stop()
	b.wg.Wait()
}

// get reads key in the next batch. If ctx ends first, get returns its
// error; the batch still reads the key.
func (b *batchGets) get(ctx context.Context, key string) ([]byte, error) {
	if err := storage.ValidateKey(key); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r := &pointRead{key: key, done: make(chan pointResult, 1)}
	r.deadline, _ = ctx.Deadline()
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil, errClosed
	}
	b.pending = append(b.pending, r)
	b.cond.Signal()
	b.mu.Unlock()
	select {
	case res := <-r.done:
		return res.value, res.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (b *batchGets) reader() {
	defer b.wg.Done()
	for {
		b.mu.Lock()
		for len(b.pending) == 0 && !b.closed {
			b.cond.Wait()
		}
		if b.closed {
			rest := b.pending
			b.pending = nil
			b.mu.Unlock()
			for _, r := range rest {
				r.done <- pointResult{err: errClosed}
			}
			return
		}
		n := min(len(b.pending), batchMax)
		batch := b.pending[:n:n]
		b.pending = b.pending[n:]
		if len(b.pending) == 0 {
			b.pending = nil // the next append starts a fresh array
		}
		b.mu.Unlock()
		b.read(batch)
	}
}

// read reads batch's keys in one statement and hands each read its value.
// The statement runs until the latest of its callers' deadlines, as each
// caller's own statement would have: a read on a connection that went
// dead does not hold a reader longer than someone waits for it.
func (b *batchGets) read(batch []*pointRead) {
	var deadline time.Time
	for _, r := range batch {
		if r.deadline.IsZero() {
			deadline = time.Now().Add(b.wait)
			break
		}
		if r.deadline.After(deadline) {
			deadline = r.deadline
		}
	}
	ctx, cancel := context.WithDeadline(b.ctx, deadline)
	defer cancel()
	b.statements.Add(1)
	b.keys.Add(int64(len(batch)))
	if len(batch) == 1 {
		v, err := get(ctx, b.pool, batch[0].key)
		batch[0].done <- pointResult{v, err}
		return
	}
	keys := make([]string, len(batch))
	found := make(map[string][]byte, len(batch))
	left := make(map[string]int, len(batch)) // times asked for, not yet answered
	for i, r := range batch {
		keys[i] = r.key
		left[r.key]++
	}
	err := readKeys(ctx, b.pool, keys, found)
	if err != nil {
		if errors.Is(err, context.Canceled) && b.ctx.Err() != nil {
			err = errClosed
		}
		err = fmt.Errorf("postgres: get: %w", err)
	}
	for _, r := range batch {
		switch v, ok := found[r.key]; {
		case err != nil:
			r.done <- pointResult{err: err}
		case !ok:
			r.done <- pointResult{err: storage.ErrNotFound}
		default:
			// Each caller owns its value: a key asked for n times in one
			// batch goes as a copy to the first n-1 and as read to the
			// last, which no one else holds.
			if left[r.key]--; left[r.key] > 0 {
				v = bytes.Clone(v)
			}
			r.done <- pointResult{value: v}
		}
	}
}
