// Package netallow decides which network destinations kmsd may connect to
// on a caller's behalf — the XKS proxies of external key stores, whose
// addresses API callers choose (--xks-allowed-endpoints) — and dials only
// those, so that such a caller cannot use kmsd to learn which hosts and
// ports it can reach.
//
// A list is comma-separated patterns, each optionally followed by :port
// (a pattern with a port allows only that port; IPv6 addresses with a port
// go in brackets, [fd00::1]:8443):
//
//	xks.example.com   that host name (case-insensitive, trailing dot ignored)
//	*.corp.example    any name below corp.example, at any depth (not corp.example itself)
//	10.0.0.0/8        any address in that network, whatever name led to it
//	127.0.0.1         that address
//
// A destination is the endpoint's host (a name or an address literal), the
// address actually dialled and the port. It is allowed when an address
// pattern matches the address, or when a name pattern matches the name and
// the address is not a loopback, link-local, unspecified or multicast one:
// a name never vouches for those (a name in an allowed domain may resolve
// to 127.0.0.1 or to 169.254.169.254), which need an address pattern.
//
// Names are resolved once and only the addresses that pass are dialled, so
// a name that resolves to an allowed address when checked and to another
// when dialled (DNS rebinding) cannot slip through.
package netallow

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
)

// ErrNotAllowed is wrapped by the errors of a List's dialer for a
// destination the list does not allow.
var ErrNotAllowed = errors.New("netallow: destination not allowed")

// List is a parsed allow list. A nil *List allows everything.
type List struct {
	patterns []pattern
	text     string
}

// pattern is one entry: exactly one of name, suffix and prefix is set.
type pattern struct {
	name   string       // exact host name, lower case, no trailing dot
	suffix string       // ".corp.example" for "*.corp.example"
	prefix netip.Prefix // an address (as a full-length prefix) or a network
	port   uint16       // 0: any port
}

// nameRe is a DNS host name: letters, digits, hyphens and underscores in
// labels of 1-63 characters.
var nameRe = regexp.MustCompile(`^([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$`)

// Parse reads a comma-separated list of patterns (see the package
// documentation). An empty list is nil: everything allowed.
func Parse(s string) (*List, error) {
	l := &List{}
	for _, e := range strings.Split(s, ",") {
		e = strings.TrimSpace(e)
		if e == "" {
			continue
		}
		p, err := parsePattern(e)
		if err != nil {
			return nil, err
		}
		l.patterns = append(l.patterns, p)
		if l.text != "" {
			l.text += ","
		}
		l.text += e
	}
	if len(l.patterns) == 0 {
		return nil, nil
	}
	return l, nil
}

func parsePattern(e string) (pattern, error) {
	if p, ok := parseHost(e); ok {
		return p, nil
	}
	host, port, err := net.SplitHostPort(e)
	if err == nil {
		n, perr := strconv.ParseUint(port, 10, 16)
		if p, ok := parseHost(host); ok && perr == nil && n > 0 {
			p.port = uint16(n)
			return p, nil
		}
	}
	return pattern{}, fmt.Errorf("%q: want a host name, *.domain, an address or a CIDR network, optionally with :port (1-65535)", e)
}

// parseHost parses a pattern without a port.
func parseHost(h string) (pattern, bool) {
	if a, err := netip.ParseAddr(h); err == nil && a.Zone() == "" {
		a = a.Unmap()
		return pattern{prefix: netip.PrefixFrom(a, a.BitLen())}, true
	}
	if p, err := netip.ParsePrefix(h); err == nil {
		if p.Addr().Is4In6() {
			return pattern{}, false // ::ffff:a.b.c.d/n: write the IPv4 network
		}
		return pattern{prefix: p.Masked()}, true
	}
	name := canonicalName(h)
	if rest, ok := strings.CutPrefix(name, "*."); ok {
		if nameRe.MatchString(rest) {
			return pattern{suffix: "." + rest}, true
		}
		return pattern{}, false
	}
	if nameRe.MatchString(name) {
		return pattern{name: name}, true
	}
	return pattern{}, false
}

func canonicalName(h string) string { return strings.ToLower(strings.TrimSuffix(h, ".")) }

// String is the list as given, for logs.
func (l *List) String() string {
	if l == nil {
		return "(everything)"
	}
	return l.text
}

// Allows reports whether the list allows connecting to addr on port for an
// endpoint whose host is host (a name, or the address literal itself).
func (l *List) Allows(host string, addr netip.Addr, port uint16) bool {
	if l == nil {
		return true
	}
	addr = addr.Unmap().WithZone("")
	host = canonicalName(host)
	_, err := netip.ParseAddr(strings.Trim(host, "[]"))
	isName := err != nil
	for _, p := range l.patterns {
		if p.port != 0 && p.port != port {
			continue
		}
		switch {
		case p.prefix.IsValid():
			if p.prefix.Contains(addr) {
				return true
			}
		case !isName || special(addr):
			// Names vouch for ordinary addresses only.
		case p.name != "":
			if host == p.name {
				return true
			}
		case strings.HasSuffix(host, p.suffix) && len(host) > len(p.suffix):
			return true
		}
	}
	return false
}

// special reports whether a is an address a name pattern never allows:
// this host, or a link-local one (the cloud metadata service lives at
// 169.254.169.254).
func special(a netip.Addr) bool {
	return a.IsLoopback() || a.IsUnspecified() || a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() ||
		a.IsInterfaceLocalMulticast() || a.IsMulticast()
}

// Dialer opens connections; *net.Dialer implements it.
type Dialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// Resolver resolves host names; *net.Resolver implements it.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Dialer returns a dialer that resolves the host of each address with r,
// keeps the addresses l allows, and dials those with d, in the order r
// gave them, until one connects. When none is allowed it dials nothing and
// returns an error wrapping ErrNotAllowed. A nil l returns d itself.
func (l *List) Dialer(d Dialer, r Resolver) Dialer {
	if l == nil {
		return d
	}
	return &guard{list: l, d: d, r: r}
}

type guard struct {
	list *List
	d    Dialer
	r    Resolver
}

func (g *guard) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	host, portText, err := net.SplitHostPort(address)
	if err != nil {
		return nil, err
	}
	port, err := strconv.ParseUint(portText, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("netallow: port %q: %w", portText, err)
	}
	var addrs []netip.Addr
	if a, err := netip.ParseAddr(host); err == nil {
		addrs = []netip.Addr{a}
	} else {
		ipNet := "ip"
		switch network {
		case "tcp4", "udp4":
			ipNet = "ip4"
		case "tcp6", "udp6":
			ipNet = "ip6"
		}
		if addrs, err = g.r.LookupNetIP(ctx, ipNet, host); err != nil {
			return nil, err
		}
	}
	var allowed []netip.Addr
	for _, a := range addrs {
		if g.list.Allows(host, a, uint16(port)) {
			allowed = append(allowed, a)
		}
	}
	if len(allowed) == 0 {
		return nil, fmt.Errorf("%w: %s (addresses %v) by %s", ErrNotAllowed, address, addrs, g.list)
	}
	var first error
	for _, a := range allowed {
		conn, err := g.d.DialContext(ctx, network, netip.AddrPortFrom(a.Unmap(), uint16(port)).String())
		if err == nil {
			return conn, nil
		}
		if first == nil {
			first = err
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, first
}
