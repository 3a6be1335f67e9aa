package server

import (
	"fmt"
	"strings"
	"testing"

	"github.com/kmsd/kmsd/internal/keystore"
)

// TestParseVPCServices: --xks-vpc-endpoint-services takes name=host:port
// and name=private.dns.name@host:port entries.
func TestParseVPCServices(t *testing.T) {
	const a, b = "com.amazonaws.vpce.us-east-1.vpce-svc-1", "com.amazonaws.vpce.us-east-1.vpce-svc-2"
	for _, tc := range []struct {
		name, in string
		want     string // fmt of the two maps, or "error"
	}{
		{"address only", a + "=127.0.0.1:8443", "map[" + a + ":127.0.0.1:8443] map[]"},
		{"with private DNS name", " " + a + " = xks.example.com @ 127.0.0.1:8443 ," + b + "=10.0.0.1",
			"map[" + a + ":127.0.0.1:8443 " + b + ":10.0.0.1] map[" + a + ":xks.example.com]"},
		{"empty", "", "map[] map[]"},
		{"no address", a + "=xks.example.com@", "error"},
		{"no name", "=127.0.0.1:1", "error"},
		{"no =", a, "error"},
		{"bad DNS name", a + "=not_a_name@127.0.0.1:1", "error"},
		{"single label", a + "=localhost@127.0.0.1:1", "error"},
		{"twice", a + "=127.0.0.1:1," + a + "=127.0.0.1:2", "error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ext := &keystore.External{VPCServices: map[string]string{}}
			err := parseVPCServices(tc.in, ext)
			got := "error"
			if err == nil {
				got = fmt.Sprint(ext.VPCServices, " ", ext.VPCPrivateDNS)
			}
			if got != tc.want {
				t.Fatalf("got %s (%v), want %s", got, err, tc.want)
			}
		})
	}
}

// TestXKSAllowedEndpointsFlag: --xks-allowed-endpoints is checked at start
// and limits public proxies only when given.
func TestXKSAllowedEndpointsFlag(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string // the list, or "error"
	}{
		{"", "(everything)"},
		{"xks.example.com, *.corp.example,10.0.0.0/8,127.0.0.1:8443", "xks.example.com,*.corp.example,10.0.0.0/8,127.0.0.1:8443"},
		{"https://xks.example.com", "error"},
		{"10.0.0.0/8:http", "error"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			ext, _, err := xksBacking(Config{XKSAllowedEndpoints: tc.in})
			got := "error"
			if err == nil {
				got = ext.Allowed.String()
			} else if !strings.Contains(err.Error(), "--xks-allowed-endpoints") {
				t.Fatalf("error %q does not name the flag", err)
			}
			if got != tc.want {
				t.Fatalf("got %s (%v), want %s", got, err, tc.want)
			}
		})
	}
}
