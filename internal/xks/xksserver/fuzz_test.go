package xksserver

import (
	"strings"
	"testing"

	"github.com/kmsd/kmsd/internal/xks"
)

// FuzzRoute checks the path router: it never panics, and whatever it accepts names a
// configured prefix, a known operation and a well-formed key id, and rebuilds to the
// same path.
func FuzzRoute(f *testing.F) {
	s := &Server{stores: map[string]*store{"/a/b": {}, "": {}}}
	for _, p := range []string{"/a/b/kms/xks/v1/health", "/kms/xks/v1/keys/k/encrypt", "/a/b/kms/xks/v1/keys/x.y/metadata",
		"/kms/xks/v1/keys//decrypt", "/a/kms/xks/v1/health", "/kms/xks/v1/keys/a/b/encrypt", "kms/xks/v1/health"} {
		f.Add(p)
	}
	f.Fuzz(func(t *testing.T, path string) {
		st, op, id, ok := s.route(path)
		if !ok {
			return
		}
		if st == nil {
			t.Fatal("accepted without a store")
		}
		var rebuilt string
		switch op {
		case xks.OpHealth:
			rebuilt = xks.HealthSuffix
		case xks.OpMetadata, xks.OpEncrypt, xks.OpDecrypt:
			if !xks.ValidKeyID(id) {
				t.Fatalf("bad key id %q", id)
			}
			rebuilt = xks.KeysSegment + id + "/" + op
		default:
			t.Fatalf("unknown op %q", op)
		}
		prefix, found := strings.CutSuffix(path, rebuilt)
		if !found || s.stores[prefix] != st {
			t.Fatalf("route(%q) = %q %q, does not rebuild", path, op, id)
		}
	})
}
