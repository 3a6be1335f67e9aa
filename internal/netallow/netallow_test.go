package netallow

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		in   string
		ok   bool
		want string // String() of the list
	}{
		{"", true, "(everything)"},
		{" , ", true, "(everything)"},
		{"xks.example.com", true, "xks.example.com"},
		{"XKS.Example.COM.", true, "XKS.Example.COM."},
		{"*.corp.example", true, "*.corp.example"},
		{"10.0.0.0/8", true, "10.0.0.0/8"},
		{"127.0.0.1:8443", true, "127.0.0.1:8443"},
		{"[::1]:8443", true, "[::1]:8443"},
		{"::1", true, "::1"},
		{"fd00::/8", true, "fd00::/8"},
		{"10.0.0.0/8:443", true, "10.0.0.0/8:443"},
		{"xks.example.com:443, *.corp.example ,10.0.0.0/8", true, "xks.example.com:443,*.corp.example,10.0.0.0/8"},
		{"localhost", true, "localhost"},
		{"*", false, ""},
		{"*.", false, ""},
		{"a.*.example", false, ""},
		{"https://xks.example.com", false, ""},
		{"xks.example.com:0", false, ""},
		{"xks.example.com:65536", false, ""},
		{"xks.example.com:https", false, ""},
		{"10.0.0.0/33", false, ""},
		{"::ffff:10.0.0.0/104", false, ""},
		{"fe80::1%eth0", false, ""},
		{"bad_-.example..com", false, ""},
		{"-bad.example", false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			l, err := Parse(tt.in)
			if !tt.ok {
				if err == nil {
					t.Fatalf("Parse accepted it: %v", l)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if got := l.String(); got != tt.want {
				t.Fatalf("String() = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestAllows(t *testing.T) {
	l, err := Parse("xks.example.com,*.corp.example,10.0.0.0/8,127.0.0.1:8443,fd00::/8,only443.example:443")
	if err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddr
	tests := []struct {
		name string
		host string
		addr string
		port uint16
		want bool
	}{
		{"exact name", "xks.example.com", "203.0.113.7", 443, true},
		{"exact name, any case and trailing dot", "XKS.example.com.", "203.0.113.7", 8443, true},
		{"other name", "evil.example.com", "203.0.113.7", 443, false},
		{"parent of exact name", "example.com", "203.0.113.7", 443, false},
		{"wildcard, one level", "xks.corp.example", "198.51.100.1", 443, true},
		{"wildcard, two levels", "a.b.corp.example", "198.51.100.1", 443, true},
		{"wildcard apex", "corp.example", "198.51.100.1", 443, false},
		{"wildcard lookalike", "xcorp.example", "198.51.100.1", 443, false},
		{"allowed name resolving to loopback", "xks.example.com", "127.0.0.1", 443, false},
		{"allowed name resolving to IPv6 loopback", "xks.corp.example", "::1", 443, false},
		{"allowed name resolving to metadata service", "xks.corp.example", "169.254.169.254", 80, false},
		{"allowed name resolving to unspecified", "xks.corp.example", "0.0.0.0", 443, false},
		{"allowed name resolving to IPv4-mapped loopback", "xks.corp.example", "::ffff:127.0.0.1", 443, false},
		{"allowed name, loopback allowed by address on its port", "xks.example.com", "127.0.0.1", 8443, true},
		{"CIDR by address literal", "10.1.2.3", "10.1.2.3", 9999, true},
		{"CIDR by any name", "anything.internal", "10.1.2.3", 443, true},
		{"CIDR, IPv4-mapped", "::ffff:10.1.2.3", "::ffff:10.1.2.3", 443, true},
		{"outside CIDR", "11.0.0.1", "11.0.0.1", 443, false},
		{"address with port, right port", "127.0.0.1", "127.0.0.1", 8443, true},
		{"address with port, wrong port", "127.0.0.1", "127.0.0.1", 22, false},
		{"IPv6 network", "fd00::5", "fd00::5", 443, true},
		{"IPv6 loopback literal", "::1", "::1", 443, false},
		{"name with port, right port", "only443.example", "203.0.113.9", 443, true},
		{"name with port, wrong port", "only443.example", "203.0.113.9", 8443, false},
		{"address literal never matches a name pattern", "203.0.113.7", "203.0.113.7", 443, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := l.Allows(tt.host, a(tt.addr), tt.port); got != tt.want {
				t.Fatalf("Allows(%s, %s, %d) = %v, want %v", tt.host, tt.addr, tt.port, got, tt.want)
			}
		})
	}
	var none *List
	if !none.Allows("anything", a("127.0.0.1"), 22) {
		t.Fatal("a nil list refuses")
	}
}

// recorder is a Dialer that records what it is asked to dial.
type recorder struct{ dialed []string }

func (r *recorder) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	r.dialed = append(r.dialed, address)
	return nil, errors.New("recorded")
}

// resolver answers from a table.
type resolver map[string][]netip.Addr

func (r resolver) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	if a, ok := r[host]; ok {
		return a, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

func TestDialer(t *testing.T) {
	l, err := Parse("*.corp.example,10.0.0.0/8")
	if err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddr
	res := resolver{
		"xks.corp.example":   {a("198.51.100.1")},
		"local.corp.example": {a("127.0.0.1")},
		"mixed.corp.example": {a("127.0.0.1"), a("198.51.100.2")},
		"evil.example":       {a("10.9.9.9"), a("192.0.2.1")},
	}
	tests := []struct {
		addr    string
		dialed  []string
		refused bool
	}{
		{"xks.corp.example:443", []string{"198.51.100.1:443"}, false},
		{"local.corp.example:443", nil, true},
		{"mixed.corp.example:443", []string{"198.51.100.2:443"}, false},
		{"evil.example:443", []string{"10.9.9.9:443"}, false},
		{"127.0.0.1:8443", nil, true},
		{"10.0.0.1:22", []string{"10.0.0.1:22"}, false},
		{"[::1]:443", nil, true},
		{"missing.corp.example:443", nil, false}, // a resolution error, not a refusal
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			rec := &recorder{}
			_, err := l.Dialer(rec, res).DialContext(context.Background(), "tcp", tt.addr)
			if err == nil {
				t.Fatal("dial succeeded")
			}
			if errors.Is(err, ErrNotAllowed) != tt.refused {
				t.Fatalf("error %v; refused %v, want %v", err, !tt.refused, tt.refused)
			}
			if strings.Join(rec.dialed, " ") != strings.Join(tt.dialed, " ") {
				t.Fatalf("dialed %v, want %v", rec.dialed, tt.dialed)
			}
		})
	}
	// No list: the inner dialer itself, given the address unresolved.
	rec := &recorder{}
	var none *List
	none.Dialer(rec, res).DialContext(context.Background(), "tcp", "anything:1")
	if len(rec.dialed) != 1 || rec.dialed[0] != "anything:1" {
		t.Fatalf("nil list dialed %v", rec.dialed)
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"xks.example.com", "*.corp.example", "10.0.0.0/8:443", "[::1]:8443", "a,b,,c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		l, err := Parse(s)
		if err != nil {
			return
		}
		// A list that parsed parses again from its own text, alike.
		l2, err := Parse(l.String())
		if l == nil {
			return
		}
		if err != nil || l2.String() != l.String() {
			t.Fatalf("re-parse of %q: %v %v", l.String(), l2, err)
		}
	})
}
