package e2etest

import (
	"net"
	"sync"
	"testing"
)

// FaultProxy is a TCP proxy on a loopback port between a client (a kmsd
// node) and a server (PostgreSQL) that can cut the link the way a network
// does: Blackhole holds every byte in both directions while keeping the
// connections open (what a partition looks like to TCP: nothing arrives,
// nothing fails), Heal delivers what was held, as TCP's retransmission
// would, and Reset closes every connection at once with an RST.
type FaultProxy struct {
	Addr   string // 127.0.0.1:port
	target string
	ln     net.Listener

	mu     sync.Mutex
	cond   *sync.Cond
	black  bool
	closed bool
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

// StartFaultProxy listens on a free loopback port and forwards every
// connection to target until the test ends.
func StartFaultProxy(t testing.TB, target string) *FaultProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &FaultProxy{Addr: ln.Addr().String(), target: target, ln: ln, conns: map[net.Conn]struct{}{}}
	p.cond = sync.NewCond(&p.mu)
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

// Port is the proxy's port.
func (p *FaultProxy) Port() string { _, port, _ := net.SplitHostPort(p.Addr); return port }

// Blackhole stops forwarding: bytes read on either side are held, new
// connections are accepted and held too.
func (p *FaultProxy) Blackhole() {
	p.mu.Lock()
	p.black = true
	p.mu.Unlock()
}

// Heal resumes forwarding, first what was held.
func (p *FaultProxy) Heal() {
	p.mu.Lock()
	p.black = false
	p.cond.Broadcast()
	p.mu.Unlock()
}

// Reset closes every open connection with an RST (SO_LINGER 0); new ones
// are forwarded as before.
func (p *FaultProxy) Reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
		c.Close()
	}
}

// Close stops the proxy and closes every connection.
func (p *FaultProxy) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	p.black = false
	p.cond.Broadcast()
	p.mu.Unlock()
	p.ln.Close()
	p.Reset()
	p.wg.Wait()
}

func (p *FaultProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		c.Close()
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *FaultProxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	c.Close()
}

// wait blocks while the proxy is blackholed; false once it is closed.
func (p *FaultProxy) wait() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.black && !p.closed {
		p.cond.Wait()
	}
	return !p.closed
}

func (p *FaultProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if !p.track(c) {
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer p.untrack(c)
			if !p.wait() { // a connection made during a partition hangs
				return
			}
			s, err := net.Dial("tcp", p.target)
			if err != nil {
				return
			}
			if !p.track(s) {
				return
			}
			defer p.untrack(s)
			done := make(chan struct{}, 2)
			go func() { p.pipe(s, c); done <- struct{}{} }()
			go func() { p.pipe(c, s); done <- struct{}{} }()
			<-done
			// One side ended: end both, like a proxy that sees a FIN/RST.
			c.Close()
			s.Close()
			<-done
		}()
	}
}

// pipe copies src to dst, holding each chunk while blackholed.
func (p *FaultProxy) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !p.wait() {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil { // io.EOF or a closed/reset connection
			return
		}
	}
}
