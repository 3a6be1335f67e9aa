package kms

import (
	"strings"
	"testing"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/policy"
)

// TestKeyPolicyCacheBounded checks that keys with equal policy texts share one
// parse, that another text (PutKeyPolicy's new record) gets its own, and
// that the cache holds at most policyCacheSize texts however many keys
// are read (it used to keep one entry, and the key's record, per key).
func TestKeyPolicyCacheBounded(t *testing.T) {
	f := newFixture(t)
	def := policy.DefaultKeyPolicy("111122223333")
	a := &catalog.Key{ID: "a", Policy: def}
	b := &catalog.Key{ID: "b", Policy: def}
	pa, pb := f.svc.keyPolicy(a), f.svc.keyPolicy(b)
	if pa == nil || pa != pb {
		t.Fatalf("equal policies parsed apart: %p %p", pa, pb)
	}
	other := strings.Replace(def, "key-default-1", "key-other", 1)
	a2 := &catalog.Key{ID: "a", Policy: other}
	if p := f.svc.keyPolicy(a2); p == nil || p == pa || p.ID() != "key-other" {
		t.Fatalf("a changed policy gave the old parse: %v", p)
	}
	if p := f.svc.keyPolicy(&catalog.Key{ID: "c", Policy: "{not json"}); p != nil {
		t.Errorf("a policy that does not parse gave %v, want nil (allows nothing)", p)
	}
	for i := 0; i < policyCacheSize+100; i++ {
		id := "key-" + itoa(i)
		if p := f.svc.keyPolicy(&catalog.Key{ID: id, Policy: strings.Replace(def, "key-default-1", id, 1)}); p == nil || p.ID() != id {
			t.Fatalf("policy %d: %v", i, p)
		}
	}
	if n := f.svc.policies.cache().Len(); n > policyCacheSize {
		t.Errorf("%d policies cached, want at most %d", n, policyCacheSize)
	}
}
