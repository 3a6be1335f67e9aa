package catalog

import "github.com/google/uuid"

// nameIndex maps key names to the key cache's slots (clock.go).
//
// Nearly every name is a key id in the canonical form kmsd makes, a UUID
// in lower-case hex, and those are kept by their 16 bytes: the map then
// holds the whole key in its own slot. Kept as strings, a lookup on a
// million cached keys compared the name with the stored string's bytes,
// one more read from memory that no cache holds — memeqbody was 0.6 µs of
// each Encrypt there, the map's probe another 1.0. Every other name
// (multi-Region keys, "mrk-…" and "mrk-…@Region") is kept as a string.
//
// The conversion is exact: only the canonical form is converted
// (parseUUID, as the last-use records do), so two names share a slot only
// when they are the same string (an upper-case id, a different key name
// to the catalog, stays a string).
type nameIndex struct {
	ids   map[uuid.UUID]int32
	names map[string]int32
}

func newNameIndex() nameIndex {
	return nameIndex{ids: map[uuid.UUID]int32{}, names: map[string]int32{}}
}

func (x *nameIndex) get(name string) (int32, bool) {
	if u, ok := parseUUID(name); ok {
		i, ok := x.ids[u]
		return i, ok
	}
	i, ok := x.names[name]
	return i, ok
}

func (x *nameIndex) set(name string, i int32) {
	if u, ok := parseUUID(name); ok {
		x.ids[u] = i
		return
	}
	x.names[name] = i
}

func (x *nameIndex) delete(name string) {
	if u, ok := parseUUID(name); ok {
		delete(x.ids, u)
		return
	}
	delete(x.names, name)
}

func (x *nameIndex) len() int { return len(x.ids) + len(x.names) }
