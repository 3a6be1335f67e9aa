// Package pairpool keeps a small, bounded stock of pre-generated data key
// pairs per KeyPairSpec, so that GenerateDataKeyPair does not pay for RSA
// key generation (tens of milliseconds) on the request path, and makes
// the cheap specs' pairs in small batches.
//
// What it promises: every pair is handed out at most once (a pair leaves
// the pool by a channel receive, which exactly one taker wins); a spec's
// stock never holds more than its configured size; pairs live only in
// memory and their private keys are cleared when the pool closes; a spec
// is filled only after its first Take, so an idle server generates
// nothing; and Take never waits for the filler or another taker — when
// the stock is empty the caller generates inline.
//
// A spec is stocked in one of two modes (Stock).
//
// Background mode (RSA). A spec is filled by one worker per CPU
// (GOMAXPROCS), so a burst of takes is refilled as fast as the machine
// can make pairs: an RSA_2048 pair costs ~50 ms of one core, so one
// worker alone tops up fewer than 20 a second. Workers reserve a place in
// the stock before generating, which keeps the stock within its bound.
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
//
// Batch mode (EC, Ed25519, SM2: pairs of tens to hundreds of µs). No
// worker runs: a taker that finds the stock empty generates Batch pairs
// inline in one tight loop, keeps the first and stocks the others. The
// point is not to save the generation, which every pair still costs on
// some request, but its cache footprint: P-256 key generation sweeps an
// ~88 KB precomputed table and runs code that a request's handler has
// evicted, so one generation inside a handler costs more than one in a
// loop of them (the tight-loop benchmark's figure); in a batch all but
// the first run warm, and the handler's own data is evicted once per
// batch instead of once per request. The taker reserves the places its
// extra pairs will take before generating them, never more than the
// stock has free, so a batch never overfills it and nothing made is
// thrown away; a taker that finds the stock empty while another is
// batching makes its own (a smaller batch, or a single pair, if the other
// has reserved the room). Nothing is generated that no request asked for
// beyond one batch, and only while requests come. The batch sizes, chosen
// so that the request that makes a batch pays at most about 250 µs more
// than one generation, are kms.PairPool's.
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

// Stock configures one spec's stock. Size is its bound: at most that
// many pairs are held; 0 or less, the spec is not pooled. Batch, when
// above 1, selects batch mode: a taker that finds the stock empty makes
// up to Batch pairs inline (one for itself, the others stocked, as many
// as fit) and no worker runs for the spec. Otherwise the spec is filled
// in the background (see the package doc).
type Stock struct {
	Size, Batch int
}

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
	batch   int           // pairs a taker makes at once; ≤ 1: background mode
	pairs   chan Pair     // buffered: its capacity is the bound
	wake    chan struct{} // closed and replaced by a take: wakes every worker
	started bool

	mu     sync.Mutex // guards making, wake and closed
	making int        // pairs being generated, each with a reserved place
	closed bool       // batch mode: the pool closed, stock no more pairs
}

// New returns a pool with stocks[spec]'s stock of each spec; specs absent
// or with a Size ≤ 0 are never pooled. rand is the randomness the pool
// generates with. Nothing runs until the first Take of a spec; Close
// stops the fillers.
func New(gen Generate, rand io.Reader, stocks map[string]Stock) *Pool {
	ctx, cancel := context.WithCancel(context.Background())
	p := &Pool{gen: gen, rand: rand, specs: map[string]*stock{}, ctx: ctx, cancel: cancel}
	for spec, st := range stocks {
		if st.Size > 0 {
			p.specs[spec] = &stock{spec: spec, batch: st.Batch, pairs: make(chan Pair, st.Size), wake: make(chan struct{})}
		}
	}
	return p
}

// Take returns a pre-generated pair of spec, or ok false when the spec is
// not pooled, its stock is empty or the pool is closed; the caller then
// generates one itself. Take never blocks on another's generation. In
// background mode the first Take of a spec starts its filler and every
// Take asks it to refill; in batch mode a Take that finds the stock
// empty makes a batch and returns its first pair (ok false only if the
// generator failed or the pool is closed).
func (p *Pool) Take(spec string) (pair Pair, ok bool) {
	if p == nil {
		return Pair{}, false
	}
	s := p.specs[spec]
	if s == nil {
		return Pair{}, false
	}
	if s.batch > 1 {
		select {
		case pair = <-s.pairs:
			return pair, true
		default:
			return p.makeBatch(s)
		}
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

// makeBatch generates one pair for the caller and up to s.batch-1 more
// for the stock, as many as it has places free that no other taker has
// reserved, in one loop.
func (p *Pool) makeBatch(s *stock) (Pair, bool) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return Pair{}, false
	}
	extra := min(s.batch-1, cap(s.pairs)-len(s.pairs)-s.making)
	extra = max(extra, 0)
	s.making += extra
	s.mu.Unlock()

	priv, pub, err := p.gen(s.spec, p.rand)
	if err != nil {
		s.mu.Lock()
		s.making -= extra
		s.mu.Unlock()
		return Pair{}, false
	}
	made := make([]Pair, 0, extra)
	for range extra {
		priv, pub, err := p.gen(s.spec, p.rand)
		if err != nil {
			break // the caller's pair is made; stock what there is
		}
		made = append(made, Pair{Private: priv, Public: pub})
	}
	// Stocked and unreserved in one step: every send has a reserved place,
	// so none blocks. A pool that closed meanwhile has drained its stock
	// for the last time: the pairs are cleared instead.
	s.mu.Lock()
	for _, pair := range made {
		if s.closed {
			clear(pair.Private)
			continue
		}
		s.pairs <- pair
	}
	s.making -= extra
	s.mu.Unlock()
	return Pair{Private: priv, Public: pub}, true
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
// private keys still in stock, and those of batches being made when they
// are done. Later Takes return ok false. Close is idempotent.
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
		// A batching taker stocks under s.mu only while s is open, so
		// once it is closed here no pair enters after the drain.
		s.mu.Lock()
		s.closed = true
		for {
			select {
			case pair := <-s.pairs:
				clear(pair.Private)
				continue
			default:
			}
			break
		}
		s.mu.Unlock()
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
