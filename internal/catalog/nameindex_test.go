package catalog

import "testing"

// TestNameIndex: names of both kinds are kept apart and found again; an
// id converts only in its canonical form (parseUUID: FuzzParseUUID), so
// its upper-case spelling is another name.
func TestNameIndex(t *testing.T) {
	x := newNameIndex()
	names := []string{
		"1234abcd-12ab-34cd-56ef-1234567890ab", "1234ABCD-12AB-34CD-56EF-1234567890AB",
		"mrk-1234abcd12ab34cd56ef1234567890ab", "mrk-1234abcd12ab34cd56ef1234567890ab@eu-west-1",
	}
	for i, n := range names {
		x.set(n, int32(i))
	}
	if x.len() != len(names) || len(x.ids) != 1 {
		t.Fatalf("len %d, ids %d", x.len(), len(x.ids))
	}
	for i, n := range names {
		if got, ok := x.get(n); !ok || got != int32(i) {
			t.Fatalf("get(%s) = %d, %v; want %d", n, got, ok, i)
		}
	}
	x.delete(names[0])
	if _, ok := x.get(names[0]); ok || x.len() != 3 {
		t.Fatalf("after delete: found, or len %d", x.len())
	}
	if got, ok := x.get(names[1]); !ok || got != 1 {
		t.Fatalf("get(%s) after deleting its lower-case form = %d, %v", names[1], got, ok)
	}
}
