package catalog

import (
	"fmt"
	"testing"
	"unsafe"
)

// TestPolicyTextShared: key records read from the store with the same
// policy share one copy of its text; a record with another policy keeps
// its own, and the text is unchanged.
func TestPolicyTextShared(t *testing.T) {
	c := newCatalog(t)
	ids := makeKeys(t, c, 3)
	c = New(c.store, c.barrier) // nothing cached: every read decodes
	var texts []string
	for _, id := range ids {
		texts = append(texts, readKey(t, c, id).Policy)
	}
	if texts[0] != texts[1] || unsafe.StringData(texts[0]) != unsafe.StringData(texts[1]) || unsafe.StringData(texts[0]) != unsafe.StringData(texts[2]) {
		t.Fatalf("the three records' equal policies are not one copy")
	}
	other := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"kms:*","Resource":"*"}]}`
	if _, err := c.UpdateKey(t.Context(), ids[2], func(k *Key) error { k.Policy = other; return nil }); err != nil {
		t.Fatal(err)
	}
	c = New(c.store, c.barrier)
	a, b := readKey(t, c, ids[0]), readKey(t, c, ids[2])
	if b.Policy != other || a.Policy != texts[0] {
		t.Fatalf("policies after the update: %q and %q", a.Policy, b.Policy)
	}
	if unsafe.StringData(a.Policy) == unsafe.StringData(b.Policy) {
		t.Fatal("two different policies share one text")
	}
	// The table is bounded: more distinct policies than it keeps are read
	// correctly, and the oldest texts leave it.
	for i := range policyTextLimit + 10 {
		s := c.policies.share(fmt.Sprintf(`{"n":%d}`, i))
		if s != fmt.Sprintf(`{"n":%d}`, i) {
			t.Fatalf("share changed the text %d into %q", i, s)
		}
	}
	if n := c.policies.c.Len(); n != policyTextLimit {
		t.Fatalf("%d policy texts kept, want the limit %d", n, policyTextLimit)
	}
}
