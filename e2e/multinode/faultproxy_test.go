package multinode

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/kmsd/kmsd/e2e/e2etest"
)

// TestFaultProxy: the harness's TCP fault proxy forwards, holds bytes in
// both directions while blackholed without closing the connection (and
// holds new connections), delivers what it held when healed, and resets
// connections on demand while accepting new ones.
func TestFaultProxy(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() { // a line echo server
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	p := e2etest.StartFaultProxy(t, ln.Addr().String())
	dial := func() (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", p.Addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c, bufio.NewReader(c)
	}
	echo := func(c net.Conn, r *bufio.Reader, line string, wait time.Duration) (string, error) {
		if _, err := c.Write([]byte(line + "\n")); err != nil {
			return "", err
		}
		c.SetReadDeadline(time.Now().Add(wait))
		s, err := r.ReadString('\n')
		c.SetReadDeadline(time.Time{})
		return s, err
	}
	c, r := dial()
	if s, err := echo(c, r, "one", 5*time.Second); err != nil || s != "one\n" {
		t.Fatalf("through the proxy: %q %v", s, err)
	}

	p.Blackhole()
	if s, err := echo(c, r, "two", 300*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("blackholed: got %q %v, want nothing (a timeout)", s, err)
	}
	c2, r2 := dial() // accepted, then held
	if s, err := echo(c2, r2, "new", 300*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("new connection while blackholed: got %q %v, want nothing", s, err)
	}
	p.Heal()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if s, err := r.ReadString('\n'); err != nil || s != "two\n" {
		t.Fatalf("after heal, the held bytes: %q %v", s, err)
	}
	c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	if s, err := r2.ReadString('\n'); err != nil || s != "new\n" {
		t.Fatalf("after heal, the held connection: %q %v", s, err)
	}

	p.Reset()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := r.ReadString('\n'); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("after reset, a read: %v, want the connection closed", err)
	}
	c3, r3 := dial()
	if s, err := echo(c3, r3, "three", 5*time.Second); err != nil || s != "three\n" {
		t.Fatalf("a new connection after reset: %q %v", s, err)
	}
}
