package xksserver

import (
	"fmt"
	"net/http"
	"net/netip"
	"strings"

	"github.com/kmsd/kmsd/internal/xks"
)

// SourceRule names the network rule in logs (the "rule" attribute of a denial) and in
// configuration files.
const SourceRule = "allowed_source_cidrs"

// ParseSources parses a key store's allowed client networks: CIDR prefixes
// ("10.0.0.0/8", "2001:db8::/32") or single addresses ("192.0.2.7", a /32 or /128).
// IPv4-mapped IPv6 forms are reduced to IPv4, as are the addresses they are matched
// against, so "::ffff:10.0.0.0/104" and "10.0.0.0/8" mean the same.
func ParseSources(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range list {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		var pr netip.Prefix
		if strings.Contains(s, "/") {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return nil, fmt.Errorf("allowed source %q: want a CIDR prefix such as 10.0.0.0/8 or an address", s)
			}
			pr = p
		} else {
			a, err := netip.ParseAddr(s)
			if err != nil || a.Zone() != "" {
				return nil, fmt.Errorf("allowed source %q: want a CIDR prefix such as 10.0.0.0/8 or an address", s)
			}
			pr = netip.PrefixFrom(a, a.BitLen())
		}
		if a := pr.Addr(); a.Is4In6() {
			if pr.Bits() < 96 {
				return nil, fmt.Errorf("allowed source %q: an IPv4-mapped prefix needs at least 96 bits", s)
			}
			pr = netip.PrefixFrom(a.Unmap(), pr.Bits()-96)
		}
		out = append(out, pr.Masked())
	}
	return out, nil
}

// allowsSource reports whether a client at remote (http.Request.RemoteAddr, the TCP
// peer) may use the key store. An address that cannot be parsed is refused when a
// rule exists.
func (p *Policy) allowsSource(remote string) bool {
	if len(p.Sources) == 0 {
		return true
	}
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		return false
	}
	addr := ap.Addr().Unmap().WithZone("")
	for _, pr := range p.Sources {
		if pr.Contains(addr) {
			return true
		}
	}
	return false
}

// checkSource applies the key store's network rule (Policy.Sources) to every API,
// GetHealthStatus included — unlike the secondary-authorization Rules, which the spec
// keeps away from health — so that a proxy can refuse a KMS (or anyone) at connect:
// KMS then reports XKS_PROXY_ACCESS_DENIED. It runs after path resolution (an unknown
// prefix stays InvalidUriPathException) and after SigV4 (a wrong credential stays
// AuthenticationFailedException, and a caller without the credential learns nothing
// about the rule). The address is the TCP peer's: behind a load balancer that is the
// balancer's, and forwarded-for headers are not trusted.
func checkSource(r *http.Request, rq *request, p *Policy) *xks.Error {
	if p.allowsSource(r.RemoteAddr) {
		return nil
	}
	rq.denyRule = SourceRule
	rq.cause = fmt.Errorf("source address %s is not in the key store's %s", r.RemoteAddr, SourceRule)
	return xks.Errorf(xks.AccessDeniedException, "the proxy does not accept requests for this key store from this network address")
}
