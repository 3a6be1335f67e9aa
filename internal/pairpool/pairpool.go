// Package pairpool keeps a small, bounded stock of pre-generated data key
// pairs per KeyPairSpec, so that GenerateDataKeyPair does not pay for RSA
// key generation (tens of milliseconds) on the request path.
//
// What it promises: every pair is handed out at most once (a pair leaves
// the pool by a channel receive, which exactly one taker wins); a spec's
// stock never holds more than its configured size; pairs live only in
// memory and their private keys are cleared when the pool closes; a spec
// is filled only after its first Take, so an idle server generates
// nothing; and Take never waits for the filler — when the stock is empty
// the caller generates inline.
//
// A spec is filled by one worker per CPU (GOMAXPROCS), so a burst of
// takes is refilled as fast as the machine can make pairs: an RSA_2048
// pair costs ~50 ms of one core, so one worker alone tops up fewer than
// 20 a second. Workers reserve a place in the stock before generating,
// which keeps the stock within its bound.
//
// Workers must not delay requests. Go's scheduler cannot preempt a worker
// in the middle of a key generation for up to its 10 ms time slice, so a
// request that becomes runnable while every P is generating waits that
// long (GenerateDataKeyPair RSA_2048 at 20 req/s on two cores had a p99
// of 11-14 ms for this reason alone). So each worker runs on an OS thread
// of its own at the lowest CPU priority (nice 19 on Linux, see
// background_linux.go), and the pool adds one P per running worker to
// GOMAXPROCS while its workers run: request goroutines then always find
// a free P, and the kernel, which preempts within a millisecond, gives
// their threads the CPU ahead of the workers'. Workers use the CPU that
// requests leave idle; when there is none, takers find the stock empty
// and generate inline, as without a pool.
package pairpool

import (
	"context"
	"io"
	"runtime"
	"sync"
)

// Generate makes one pair: the private key (DER PKCS #8) and the public
// key (DER SPKI). material.GeneratePair has this shape.
type Generate func(spec string, rand io.Reader) (private, public []byte, err error)

// Pair is one pre-generated key pair. The taker owns it and clears
// Private when done.
type Pair struct {
	Private, Public []byte
}

// Pool is a set of per-spec stocks. Its zero value is not usable; call New.
type Pool struct {
	gen   Generate
	rand  io.Reader
	specs map[string]*stock

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex // guards closed, added and every stock's started
	closed bool
	added  int // Ps this pool's workers added to GOMAXPROCS
}

// stock is one spec's pairs and the signal that asks its filler to top
// it up.
type stock struct {
	spec    string
	pairs   chan Pair     // buffered: its capacity is the bound
	wake    chan struct{} // closed and replaced by a take: wakes every worker
	started bool

	mu     sync.Mutex // guards making and wake
	making int        // pairs workers are generating, each with a reserved place
}

// New returns a pool holding up to sizes[spec] pairs of each spec; specs
// absent or with size ≤ 0 are never pooled. rand is the randomness the
// filler generates with. Nothing runs until the first Take of a spec;
// Close stops the fillers.
func New(gen Generate, rand io.Reader, sizes map[string]int) *Pool {
	ctx, cancel := context.WithCancel(context.Background())
	p := &Pool{gen: gen, rand: rand, specs: map[string]*stock{}, ctx: ctx, cancel: cancel}
	for spec, n := range sizes {
		if n > 0 {
			p.specs[spec] = &stock{spec: spec, pairs: make(chan Pair, n), wake: make(chan struct{})}
		}
	}
	return p
}

// Take returns a pre-generated pair of spec, or ok false when the spec is
// not pooled, its stock is empty or the pool is closed; the caller then
// generates one itself. Take never blocks on generation. The first Take
// of a spec starts its filler; every Take asks it to refill.
func (p *Pool) Take(spec string) (pair Pair, ok bool) {
	if p == nil {
		return Pair{}, false
	}
	s := p.specs[spec]
	if s == nil {
		return Pair{}, false
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return Pair{}, false
	}
	if !s.started {
		// The first demand starts the workers; the stock was empty until
		// now, so this caller generates its own pair.
		s.started = true
		n := runtime.GOMAXPROCS(0) - extraPs()
		if n < 1 {
			n = 1
		}
		addPs(n)
		p.added += n
		p.wg.Add(n)
		for range n {
			go p.fill(s)
		}
		p.mu.Unlock()
		return Pair{}, false
	}
	p.mu.Unlock()
	select {
	case pair, ok = <-s.pairs:
	default:
	}
	s.mu.Lock()
	close(s.wake)
	s.wake = make(chan struct{})
	s.mu.Unlock()
	return pair, ok
}

// reserve reserves a place in s for a pair about to be made, or returns
// the channel that the next take closes when the stock (with the pairs
// being made) is full.
func (s *stock) reserve() (ok bool, wake <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.pairs)+s.making >= cap(s.pairs) {
		return false, s.wake
	}
	s.making++
	return true, nil
}

// fill is one worker keeping s topped up to its capacity until the pool
// closes. Only workers send on s.pairs, each into a place it reserved
// (takers only receive), so a send never blocks and the stock never
// exceeds its bound.
func (p *Pool) fill(s *stock) {
	defer p.wg.Done()
	// The thread stays locked to this goroutine until it returns, so the
	// runtime ends the thread with it: no other goroutine ever runs at the
	// lowered priority.
	runtime.LockOSThread()
	lowerThreadPriority()
	for {
		if p.ctx.Err() != nil {
			return
		}
		ok, wake := s.reserve()
		if !ok {
			select {
			case <-wake:
				continue
			case <-p.ctx.Done():
				return
			}
		}
		priv, pub, err := p.gen(s.spec, p.rand)
		if err != nil {
			// Takers fall back to inline generation, which reports the
			// error to its caller; wait for the next take.
			s.mu.Lock()
			s.making--
			wake := s.wake
			s.mu.Unlock()
			select {
			case <-wake:
				continue
			case <-p.ctx.Done():
				return
			}
		}
		// Sent and unreserved in one step, so that no other worker sees
		// the pair counted twice; the reserved place makes the send
		// immediate.
		s.mu.Lock()
		s.pairs <- Pair{Private: priv, Public: pub}
		s.making--
		s.mu.Unlock()
	}
}

// Len is the number of pairs of spec in stock now (for tests and metrics).
func (p *Pool) Len(spec string) int {
	if p == nil || p.specs[spec] == nil {
		return 0
	}
	return len(p.specs[spec].pairs)
}

// Close stops the fillers, waits for them to return and clears the
// private keys still in stock. Later Takes return ok false. Close is
// idempotent.
func (p *Pool) Close() {
	if p == nil {
		return
	}
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.cancel()
	p.wg.Wait()
	p.mu.Lock()
	addPs(-p.added)
	p.added = 0
	p.mu.Unlock()
	for _, s := range p.specs {
		for {
			select {
			case pair := <-s.pairs:
				clear(pair.Private)
				continue
			default:
			}
			break
		}
	}
}

// The Ps every pool's running workers added to GOMAXPROCS, and the value
// GOMAXPROCS had before the first was added.
var (
	psMu    sync.Mutex
	psExtra int
	psBase  int
)

// addPs changes by n the number of Ps added for workers.
func addPs(n int) {
	if n == 0 {
		return
	}
	psMu.Lock()
	defer psMu.Unlock()
	if psExtra == 0 {
		psBase = runtime.GOMAXPROCS(0)
	}
	psExtra += n
	runtime.GOMAXPROCS(psBase + psExtra)
}

// extraPs is the number of Ps added for workers now.
func extraPs() int {
	psMu.Lock()
	defer psMu.Unlock()
	return psExtra
}
