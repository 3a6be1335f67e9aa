package catalog

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/kmsd/kmsd/internal/storage"
)

// Last-use buckets.
//
// Merged uses are kept in bucket records, not one record per key: the
// bucket of a key is the first three hex digits of its id (bucketOf), so
// an account's keys of one Region fall in at most 4,096 buckets, and a
// bucket record holds the latest use of each of its keys in a compact
// binary layout (entries, below), in the order of their encoded key ids.
// On a store of a million keys a bucket holds about 250 keys (~17 KB),
// and a merge that brings 200,000 keys up to date rewrites the 4,096
// buckets by copying bytes — no record per key read, decoded, encoded
// and written, which cost a merge about 20 µs a key (BenchmarkMergeLarge)
// and, on a million keys, where nearly every use is of a key not used
// since the last merge, about that much per Encrypt.
//
// Per-key records (lastUsePath) written by kmsd before data format level
// 3 are still read — the newest of bucket, record, older record and
// journal wins — and deleted with their key, never written. A kmsd of a
// lower level reads neither buckets nor binary journal rows, which is why
// writing them raised the level (internal/release).
const lastUseBucketPrefix = storage.UnfedPrefix + "lastuseb/"

// bucketFormat is the first byte of a bucket record, and of a binary
// journal row of data format level 3: its layout. (A journal row of level
// 4 starts with journalFormat, lastuse.go; one of level 2, JSON, with
// '['.)
const bucketFormat = 1

// bucketOf is the bucket of key id: its first three hex digits (after
// "mrk-" for a multi-Region key); an id that does not start with three
// lower-case hex digits (none that kmsd makes) goes in a bucket named by
// its journal partition and "-".
func bucketOf(id string) string {
	id = strings.TrimPrefix(id, "mrk-")
	if len(id) >= 3 && isHex(id[0]) && isHex(id[1]) && isHex(id[2]) {
		return id[:3]
	}
	return journalPart(id) + "-"
}

// bucketOfField is bucketOf the key id field f holds, without making the
// id's string for a UUID.
func bucketOfField(f []byte) (b [4]byte) {
	h, k := binary.Uvarint(f)
	if h&1 == 1 {
		p := f[k:]
		return [4]byte{hexDigits[p[0]>>4], hexDigits[p[0]&15], hexDigits[p[1]>>4]}
	}
	copy(b[:], bucketOf(string(f[k:])))
	return b
}

func lastUseBucketPath(account, region, id string) string {
	return lastUseBucketPrefix + account + "/" + region + "/" + bucketOf(id)
}

// Fields and entries.
//
// A field is a string: uvarint(len<<1) and its bytes, or, for a UUID in
// its canonical lower-case form (key ids, audit event ids, request ids),
// uvarint(16<<1|1) and its 16 bytes. An entry is one key's use: the
// fields key id and operation, the time as 8 bytes (Unix nanoseconds, big
// endian), and the fields event id and request id. A bucket record is
// bucketFormat and its entries back to back, ordered by the bytes of
// their key id field, no id twice. Entries are compared and copied as
// bytes; only a read that answers a use decodes one.

var errBadLastUse = errors.New("catalog: last-use record does not decode")

// appendField appends s as a field.
func appendField(b []byte, s string) []byte {
	if u, ok := parseUUID(s); ok {
		b = binary.AppendUvarint(b, 16<<1|1)
		return append(b, u[:]...)
	}
	b = binary.AppendUvarint(b, uint64(len(s))<<1)
	return append(b, s...)
}

// cutField splits the field at the start of b from the rest.
func cutField(b []byte) (field, rest []byte, err error) {
	h, k := binary.Uvarint(b)
	if k <= 0 || h>>1 > uint64(len(b)-k) || h&1 == 1 && h>>1 != 16 {
		return nil, nil, errBadLastUse
	}
	n := k + int(h>>1)
	return b[:n:n], b[n:], nil
}

// fieldString is the string field f holds.
func fieldString(f []byte) string {
	h, k := binary.Uvarint(f)
	if h&1 == 0 {
		return string(f[k:])
	}
	return uuid.UUID(f[k:]).String()
}

// parseUUID returns the bytes of s if it is a UUID in canonical
// lower-case form, which uuid.UUID.String (fieldString) gives back
// exactly (uuid.Parse also takes upper case and other forms). It decodes
// in one pass: a flush encodes three UUIDs a use, and validating first
// and then calling uuid.Parse was a third of a flush's CPU.
func parseUUID(s string) (u uuid.UUID, ok bool) {
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return uuid.UUID{}, false
	}
	var bad byte
	for i, at := range uuidDigits {
		hi, lo := hexValue[s[at]], hexValue[s[at+1]]
		bad |= hi | lo
		u[i] = hi<<4 | lo
	}
	if bad&0x80 != 0 {
		return uuid.UUID{}, false
	}
	return u, true
}

// uuidDigits is where each byte's two hex digits start in a canonical
// UUID.
var uuidDigits = [16]int{0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34}

// hexDigits are the lower-case hex digits by value.
const hexDigits = "0123456789abcdef"

// hexValue is the value of a lower-case hex digit, 0x80 for any other
// byte.
var hexValue = func() (t [256]byte) {
	for i := range t {
		t[i] = 0x80
	}
	for c := byte('0'); c <= '9'; c++ {
		t[c] = c - '0'
	}
	for c := byte('a'); c <= 'f'; c++ {
		t[c] = c - 'a' + 10
	}
	return t
}()

// appendEntry appends u (its key id, operation, time, event and request
// ids) as an entry.
func appendEntry(b []byte, u *LastUse) []byte {
	b = appendField(b, u.KeyID)
	b = appendField(b, u.Operation)
	b = binary.BigEndian.AppendUint64(b, uint64(u.Time.UnixNano()))
	b = appendField(b, u.EventID)
	return appendField(b, u.RequestID)
}

// entry is one entry's parts, views of its bytes.
type entry struct {
	all, id, op, eventID, requestID []byte
	at                              int64
}

// cutEntry splits the entry at the start of b from the rest.
func cutEntry(b []byte) (e entry, rest []byte, err error) {
	start := b
	if e.id, b, err = cutField(b); err != nil {
		return e, nil, err
	}
	if e.op, b, err = cutField(b); err != nil {
		return e, nil, err
	}
	if len(b) < 8 {
		return e, nil, errBadLastUse
	}
	e.at, b = int64(binary.BigEndian.Uint64(b)), b[8:]
	if e.eventID, b, err = cutField(b); err != nil {
		return e, nil, err
	}
	if e.requestID, b, err = cutField(b); err != nil {
		return e, nil, err
	}
	n := len(start) - len(b)
	e.all = start[:n:n]
	return e, b, nil
}

func (e entry) use(account, region string) *LastUse {
	return &LastUse{Account: account, Region: region, KeyID: fieldString(e.id), Operation: fieldString(e.op),
		Time: time.Unix(0, e.at).UTC(), EventID: fieldString(e.eventID), RequestID: fieldString(e.requestID)}
}

// bucketEntries calls fn with each entry of bucket record b, in order,
// and reports whether b decodes.
func bucketEntries(b []byte, fn func(entry) bool) error {
	if len(b) == 0 || b[0] != bucketFormat {
		return errBadLastUse
	}
	b = b[1:]
	var prev []byte
	for len(b) > 0 {
		e, rest, err := cutEntry(b)
		if err != nil {
			return err
		}
		if prev != nil && bytes.Compare(prev, e.id) >= 0 {
			return errBadLastUse
		}
		if !fn(e) {
			return nil
		}
		prev, b = e.id, rest
	}
	return nil
}

// findInBucket returns the entry of key id in bucket record b.
func findInBucket(b []byte, id string) (e entry, found bool, err error) {
	want := appendField(nil, id)
	err = bucketEntries(b, func(x entry) bool {
		switch c := bytes.Compare(x.id, want); {
		case c == 0:
			e, found = x, true
			return false
		case c > 0:
			return false
		}
		return true
	})
	return e, found, err
}

// mergeBucket returns bucket record old (nil: none, or one that does not
// decode, which is replaced) with uses (entries in key id order, no id
// twice) applied: a key's later use is kept, an equal or older one
// ignored, so that a merge never moves a key's last use back in time. It
// reports whether anything changed; when not, the result is nil.
func mergeBucket(old []byte, uses []entry) ([]byte, bool) {
	if len(old) == 0 || old[0] != bucketFormat {
		old = []byte{bucketFormat}
	}
	size := len(old)
	for _, u := range uses {
		size += len(u.all)
	}
	out := make([]byte, 1, size)
	out[0] = bucketFormat
	changed := false
	// have walks old's entries; one that does not decode, or comes out
	// of order, makes the merge start again as if old were empty.
	rest := old[1:]
	var have, prev entry
	bad := false
	next := func() bool {
		if len(rest) == 0 {
			return false
		}
		var err error
		prev = have
		if have, rest, err = cutEntry(rest); err != nil || prev.id != nil && bytes.Compare(prev.id, have.id) >= 0 {
			bad = true
			return false
		}
		return true
	}
	ok := next()
	j := 0
	for ok || j < len(uses) {
		c := 0
		switch {
		case j == len(uses):
			c = -1
		case !ok:
			c = 1
		default:
			c = bytes.Compare(have.id, uses[j].id)
		}
		switch {
		case c < 0:
			out = append(out, have.all...)
			ok = next()
		case c > 0:
			out = append(out, uses[j].all...)
			changed = true
			j++
		case uses[j].at > have.at:
			out = append(out, uses[j].all...)
			changed = true
			ok = next()
			j++
		default:
			out = append(out, have.all...)
			ok = next()
			j++
		}
	}
	if bad {
		return mergeBucket(nil, uses)
	}
	if !changed {
		return nil, false
	}
	return out, true
}

// withoutKey returns bucket record b without key id's entry, and whether
// it had one.
func withoutKey(b []byte, id string) ([]byte, bool, error) {
	want := appendField(nil, id)
	out := []byte{bucketFormat}
	found := false
	err := bucketEntries(b, func(e entry) bool {
		if bytes.Equal(e.id, want) {
			found = true
		} else {
			out = append(out, e.all...)
		}
		return true
	})
	return out, found, err
}

// sortEntries orders entries by key id, keeping of each id the latest
// use (entries of one id and time: any one of them).
//
// It sorts a compact key per entry — the id field's first 8 bytes as a
// number, the time and the entry's index — and moves the entries once at
// the end: a merge on a million keys sorts about a million uses, whose id
// bytes lie scattered in the journal rows it read, and sorting the
// 128-byte entries themselves by their bytes was 0.6 µs of each Encrypt's
// CPU there (perf). Ids whose first 8 bytes tie are compared whole.
func sortEntries(es []entry) []entry {
	if len(es) < 2 {
		return es
	}
	sb := sortBufs.Get().(*sortBuf)
	defer func() {
		clear(sb.tmp)
		sb.keys, sb.tmp = sb.keys[:0], sb.tmp[:0]
		sortBufs.Put(sb)
	}()
	keys := slices.Grow(sb.keys[:0], len(es))
	for i := range es {
		keys = append(keys, sortKey{prefix: idPrefix(es[i].id), at: es[i].at, i: int32(i)})
	}
	sb.keys = keys
	slices.SortFunc(keys, func(a, b sortKey) int {
		if a.prefix != b.prefix {
			return cmp.Compare(a.prefix, b.prefix)
		}
		if c := bytes.Compare(es[a.i].id, es[b.i].id); c != 0 {
			return c
		}
		return cmp.Compare(b.at, a.at) // latest first
	})
	tmp := append(sb.tmp[:0], es...)
	sb.tmp = tmp
	n := 0
	for j, k := range keys {
		if j > 0 && k.prefix == keys[j-1].prefix && bytes.Equal(tmp[k.i].id, es[n-1].id) {
			continue // an earlier use of the id just kept
		}
		es[n] = tmp[k.i]
		n++
	}
	clear(es[n:])
	return es[:n]
}

// sortKey is what sortEntries sorts: an entry's id prefix (idPrefix),
// its time and its index.
type sortKey struct {
	prefix uint64
	at     int64
	i      int32
}

// idPrefix is the first 8 bytes of id field f, big endian, zero-padded
// when shorter: two fields whose prefixes differ compare as their
// prefixes do (a shorter field padded with zeros ties with, or sorts
// before, any field it starts).
func idPrefix(f []byte) uint64 {
	if len(f) >= 8 {
		return binary.BigEndian.Uint64(f)
	}
	var b [8]byte
	copy(b[:], f)
	return binary.BigEndian.Uint64(b[:])
}

// sortBuf is sortEntries' buffers, kept between calls: a merge sorts
// thousands of buckets.
type sortBuf struct {
	keys []sortKey
	tmp  []entry
}

var sortBufs = sync.Pool{New: func() any { return new(sortBuf) }}
