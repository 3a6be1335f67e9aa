package xksserver

import (
	"bytes"
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/kmsd/kmsd/internal/sigv4"
	"github.com/kmsd/kmsd/internal/xks"
)

// sourceCases are ParseSources' unit cases, also the fuzz seeds.
var sourceCases = []struct {
	name, in, want string // want: the prefixes joined by spaces, or "error"
}{
	{"cidr", "10.1.2.3/8", "10.0.0.0/8"},
	{"address", "192.0.2.7", "192.0.2.7/32"},
	{"v6", "2001:db8::1/32, ::1", "2001:db8::/32 ::1/128"},
	{"mapped", "::ffff:10.0.0.0/104", "10.0.0.0/8"},
	{"mapped too short", "::ffff:0.0.0.0/90", "error"},
	{"empty items", " , 127.0.0.2/32,", "127.0.0.2/32"},
	{"garbage", "10.0.0.0/33", "error"},
	{"host name", "localhost", "error"},
	{"zone", "fe80::1%eth0", "error"},
}

func TestParseSources(t *testing.T) {
	for _, tc := range sourceCases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseSources(strings.Split(tc.in, ","))
			if tc.want == "error" {
				if err == nil {
					t.Fatalf("accepted: %v", got)
				}
				return
			}
			var s []string
			for _, p := range got {
				s = append(s, p.String())
			}
			if err != nil || strings.Join(s, " ") != tc.want {
				t.Fatalf("got %v, %v; want %s", s, err, tc.want)
			}
		})
	}
}

// FuzzParseSources: any list parses or fails without panicking; what parses
// is masked, IPv4 where it can be, and parses again to itself.
func FuzzParseSources(f *testing.F) {
	for _, tc := range sourceCases {
		f.Add(tc.in)
	}
	f.Fuzz(func(t *testing.T, in string) {
		ps, err := ParseSources(strings.Split(in, ","))
		if err != nil {
			return
		}
		for _, p := range ps {
			if p != p.Masked() || p.Addr().Is4In6() {
				t.Fatalf("%q → %v: not canonical", in, p)
			}
			again, err := ParseSources([]string{p.String()})
			if err != nil || len(again) != 1 || again[0] != p {
				t.Fatalf("%q → %v → %v, %v", in, p, again, err)
			}
		}
	})
}

// TestSourceRule: a key store with allowed source networks answers other addresses
// 403 AccessDeniedException on every API, health included; the path is resolved and
// the signature checked first; a policy change applies at once.
func TestSourceRule(t *testing.T) {
	h := newHarness(t, nil)
	const prefix = "/example/uri/path/prefix"
	only := func(cidrs ...string) {
		t.Helper()
		src, err := ParseSources(cidrs)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.srv.SetPolicy(prefix, Policy{Credentials: []Credential{{akid1, secret1}}, Sources: src}); err != nil {
			t.Fatal(err)
		}
	}
	// from signs and serves body from remote.
	from := func(remote, path string, body any, sec string) (int, string) {
		t.Helper()
		raw, _ := json.Marshal(body)
		r := httptest.NewRequest("POST", "https://xks.example.com"+path, bytes.NewReader(raw))
		r.RemoteAddr = remote
		(&sigv4.Signer{RawPath: true, Headers: []string{}}).Sign(r, raw, akid1, sec, "", "us-east-1", Service, h.now)
		w := httptest.NewRecorder()
		h.srv.ServeHTTP(w, r)
		var out struct{ ErrorName string }
		json.Unmarshal(w.Body.Bytes(), &out)
		return w.Code, out.ErrorName
	}
	health := map[string]any{"requestMetadata": md("KmsHealthCheck")}
	meta := map[string]any{"requestMetadata": md("CreateKey")}
	only("127.0.0.2/32", "10.0.0.0/8")
	for _, tc := range []struct {
		name, remote, path string
		body               any
		sec                string
		status             int
		errName            string
	}{
		{"health from elsewhere", "127.0.0.1:5000", base + "/health", health, secret1, 403, xks.AccessDeniedException},
		{"metadata from elsewhere", "127.0.0.1:5000", base + "/keys/both/metadata", meta, secret1, 403, xks.AccessDeniedException},
		{"mapped address from elsewhere", "[::ffff:192.0.2.1]:5000", base + "/health", health, secret1, 403, xks.AccessDeniedException},
		{"unparsable peer", "pipe", base + "/health", health, secret1, 403, xks.AccessDeniedException},
		{"allowed address", "127.0.0.2:5000", base + "/health", health, secret1, 200, ""},
		{"allowed network, mapped", "[::ffff:10.9.8.7]:5000", base + "/keys/both/metadata", meta, secret1, 200, ""},
		{"wrong secret stays 401", "127.0.0.1:5000", base + "/health", health, secret2, 401, xks.AuthenticationFailedException},
		{"unknown prefix stays 404", "127.0.0.1:5000", "/nope/kms/xks/v1/health", health, secret1, 404, xks.InvalidURIPathException},
		{"other key store unaffected", "127.0.0.1:5000", "/kms/xks/v1/health", health, secret1, 200, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if code, name := from(tc.remote, tc.path, tc.body, tc.sec); code != tc.status || name != tc.errName {
				t.Fatalf("got %d %q, want %d %q", code, name, tc.status, tc.errName)
			}
		})
	}
	if !strings.Contains(h.log.String(), `"rule":"allowed_source_cidrs"`) || !strings.Contains(h.log.String(), "source address 127.0.0.1:5000 is not in") {
		t.Fatalf("denial not logged with its reason:\n%s", h.log)
	}
	only() // no rule: everyone
	if code, name := from("127.0.0.1:5000", base+"/health", health, secret1); code != 200 {
		t.Fatalf("after removing the rule: %d %s", code, name)
	}
}
