package catalog

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	mrand "math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/kmsd/kmsd/internal/storage"
)

// bucketUse returns key id's entry in its bucket record, nil if it has
// none.
func bucketUse(t *testing.T, c *Catalog, account, region, id string) *LastUse {
	t.Helper()
	b, err := c.store.Get(t.Context(), lastUseBucketPath(account, region, id))
	if errors.Is(err, storage.ErrNotFound) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	e, ok, err := findInBucket(b, id)
	if err != nil {
		t.Fatalf("bucket of %s: %v", id, err)
	}
	if !ok {
		return nil
	}
	return e.use(account, region)
}

// TestLastUseBuckets: keys share a bucket by the first three hex digits
// of their id (a multi-Region key's after "mrk-"), a bucket keeps its keys
// in id order and each key's latest use, a key's per-key record of data
// level 2 is still read (the newer of the two wins) and deleted with the
// key, deleting a bucket's last key deletes the bucket, and a bucket that
// does not decode is replaced by the next merge into it.
func TestLastUseBuckets(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	const acct, region = "111122223333", "us-east-1"
	use := func(id, op string, at time.Time) LastUse {
		return LastUse{Account: acct, Region: region, KeyID: id, Operation: op, Time: at, EventID: "ev-" + op + id, RequestID: "req-" + op}
	}
	for _, d := range lastUseDrivers {
		t.Run(d.name, func(t *testing.T) {
			ctx := t.Context()
			c := d.open(t, 1)[0]
			ids := []string{"abc00000-1111-2222-3333-444444444444", "abcf0000-1111-2222-3333-444444444444",
				"mrk-abc0123456789abcdef0123456789ab", "abd00000-1111-2222-3333-444444444444"}
			var uses []LastUse
			for i, id := range ids {
				uses = append(uses, use(id, "Encrypt", t0.Add(time.Duration(i)*time.Second)))
			}
			if err := c.PutLastUses(ctx, uses); err != nil {
				t.Fatal(err)
			}
			// Three keys in bucket "abc", one in "abd".
			rows, err := c.store.List(ctx, lastUseBucketPrefix, "", 0)
			if err != nil {
				t.Fatal(err)
			}
			if len(rows) != 2 || rows[0].Key != lastUseBucketPrefix+acct+"/"+region+"/abc" || rows[1].Key != lastUseBucketPrefix+acct+"/"+region+"/abd" {
				t.Fatalf("buckets: %v", keysOf(rows))
			}
			var entries []entry
			err = bucketEntries(rows[0].Value, func(e entry) bool { entries = append(entries, e); return true })
			if err != nil || len(entries) != 3 {
				t.Fatalf("bucket abc: %d entries, %v", len(entries), err)
			}
			// UUIDs take 16 bytes each: the entry of ids[0] is its id,
			// "Encrypt", the time and two ids of 36 characters.
			if n := len(entries[0].all); n > 1+16+1+7+8+1+len("ev-Encrypt"+ids[0])+1+len("req-Encrypt") {
				t.Errorf("an entry of %d bytes: %q", n, entries[0].all)
			}
			// A newer and an older use of keys of one bucket.
			if err := c.PutLastUses(ctx, []LastUse{use(ids[0], "Sign", t0.Add(time.Hour)), use(ids[1], "Decrypt", t0.Add(-time.Hour))}); err != nil {
				t.Fatal(err)
			}
			for id, want := range map[string]LastUse{ids[0]: use(ids[0], "Sign", t0.Add(time.Hour)), ids[1]: uses[1], ids[2]: uses[2], ids[3]: uses[3]} {
				if got, err := c.LastUse(ctx, acct, region, id); err != nil || *got != want {
					t.Errorf("%s: %+v, %v; want %+v", id, got, err, want)
				}
			}

			// A per-key record written at data level 2, newer and then
			// older than the bucket's entry.
			for _, tc := range []struct {
				rec  LastUse
				want string
			}{{use(ids[1], "Verify", t0.Add(time.Minute)), "Verify"}, {use(ids[1], "Verify", t0.Add(-2*time.Hour)), "Encrypt"}} {
				rec := tc.rec
				rec.Account, rec.Region, rec.KeyID = "", "", ""
				b, _ := json.Marshal(rec)
				if err := c.store.Put(ctx, lastUsePath(acct, region, ids[1]), b); err != nil {
					t.Fatal(err)
				}
				if got, err := c.LastUse(ctx, acct, region, ids[1]); err != nil || got.Operation != tc.want {
					t.Errorf("with a level-2 record of %v: %+v, %v; want %s", tc.rec.Time, got, err, tc.want)
				}
			}

			// Deleting keys: the level-2 record goes too, the bucket
			// keeps the others, and goes with its last key.
			if err := c.DeleteLastUse(ctx, acct, region, ids[1]); err != nil {
				t.Fatal(err)
			}
			if _, err := c.store.Get(ctx, lastUsePath(acct, region, ids[1])); !errors.Is(err, storage.ErrNotFound) {
				t.Errorf("level-2 record after delete: %v", err)
			}
			if _, err := c.LastUse(ctx, acct, region, ids[1]); !errors.Is(err, ErrNotFound) {
				t.Errorf("deleted key: %v", err)
			}
			if u := bucketUse(t, c, acct, region, ids[0]); u == nil || u.Operation != "Sign" {
				t.Errorf("a key sharing the deleted key's bucket: %+v", u)
			}
			if err := c.DeleteLastUse(ctx, acct, region, ids[3]); err != nil {
				t.Fatal(err)
			}
			if _, err := c.store.Get(ctx, lastUseBucketPath(acct, region, ids[3])); !errors.Is(err, storage.ErrNotFound) {
				t.Errorf("bucket of a deleted bucket's last key: %v", err)
			}

			// A journal row of data format level 2 (JSON): read, merged
			// into the buckets, and edited by a delete.
			legacy, _ := json.Marshal([]LastUse{use(ids[0], "Verify", t0.Add(2*time.Hour)), use(ids[2], "Verify", t0.Add(2*time.Hour))})
			row := journalPartPrefix("ab") + "0000000000000001-000000000000"
			if err := c.store.Put(ctx, row, legacy); err != nil {
				t.Fatal(err)
			}
			if got, err := c.LastUse(ctx, acct, region, ids[0]); err != nil || got.Operation != "Verify" {
				t.Errorf("a use in a JSON journal row: %+v, %v", got, err)
			}
			if err := c.DeleteLastUse(ctx, acct, region, ids[2]); err != nil {
				t.Fatal(err)
			}
			if b, err := c.store.Get(ctx, row); err != nil || bytes.Contains(b, []byte(ids[2])) || bytes.Contains(b, appendField(nil, ids[2])) {
				t.Errorf("the JSON row after deleting one of its keys: %q, %v", b, err)
			}
			if n, err := c.MergeLastUses(ctx); n != 1 || err != nil {
				t.Errorf("merging the JSON row: %d, %v; want 1", n, err)
			}
			if u := bucketUse(t, c, acct, region, ids[0]); u == nil || *u != use(ids[0], "Verify", t0.Add(2*time.Hour)) {
				t.Errorf("bucket entry merged from the JSON row: %+v", u)
			}
			if _, err := c.LastUse(ctx, acct, region, ids[2]); !errors.Is(err, ErrNotFound) {
				t.Errorf("a deleted key after the merge: %v", err)
			}

			// A bucket that does not decode: reads report it, the next
			// write into it replaces it.
			if err := c.store.Put(ctx, lastUseBucketPath(acct, region, ids[3]), []byte("{not a bucket")); err != nil {
				t.Fatal(err)
			}
			if _, err := c.LastUse(ctx, acct, region, ids[3]); err == nil {
				t.Error("a bucket that does not decode read without an error")
			}
			if err := c.PutLastUses(ctx, []LastUse{use(ids[3], "Encrypt", t0)}); err != nil {
				t.Fatal(err)
			}
			if got, err := c.LastUse(ctx, acct, region, ids[3]); err != nil || got.Operation != "Encrypt" {
				t.Errorf("after replacing a bad bucket: %+v, %v", got, err)
			}
		})
	}
}

func keysOf(es []storage.Entry) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.Key)
	}
	return out
}

// TestBucketOf: three hex digits, after "mrk-"; other ids by partition.
func TestBucketOf(t *testing.T) {
	for id, want := range map[string]string{
		"1234abcd-12ab-34cd-56ef-1234567890ab": "123",
		"mrk-1234abcd12ab34cd56ef1234567890ab": "123",
		"12":                                   "12-",
		"k-001":                                "00-",
		"0a-k-0001":                            "0a-",
	} {
		if got := bucketOf(id); got != want {
			t.Errorf("bucketOf(%q) = %q, want %q", id, got, want)
		}
		if got := bucketOfField(appendField(nil, id)); string(got[:3]) != want || got[3] != 0 {
			t.Errorf("bucketOfField(%q) = %q, want %q", id, got, want)
		}
	}
}

// FuzzBucket: no input panics the decoders; a journal row that decodes is
// written back to the same uses; a bucket that decodes merges
// with nothing to the same entries, and with a use of a new key to one
// entry more, still in order.
func FuzzBucket(f *testing.F) {
	one := append([]byte{bucketFormat}, appendEntry(nil, &LastUse{KeyID: "abc", Operation: "Encrypt", Time: time.Unix(1, 2), EventID: "e", RequestID: "r"})...)
	f.Add([]byte{bucketFormat})
	f.Add(one)
	f.Add(append([]byte{bucketFormat}, appendEntry(nil, &LastUse{KeyID: "1234abcd-12ab-34cd-56ef-1234567890ab", Operation: "Sign",
		EventID: "1234abcd-12ab-34cd-56ef-1234567890ab", RequestID: "1234ABCD-12ab-34cd-56ef-1234567890ab"})...))
	f.Add([]byte{bucketFormat, 200, 1})
	f.Add([]byte("[{}]"))
	f.Add(appendJournalRow(nil, 1, func(int) (string, string, []byte) { return "111122223333", "us-east-1", one[1:] }))
	f.Add([]byte{journalFormat, 0, 0, 200, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		// A journal row that decodes is written back (as a delete does)
		// to a row of the same uses.
		if us, err := decodeJournalUses(b); err == nil {
			row := appendJournalRow(nil, len(us), func(i int) (string, string, []byte) { return us[i].account, us[i].region, us[i].all })
			back, err := decodeJournalUses(row)
			if err != nil || len(back) != len(us) {
				t.Fatalf("a row of %d uses written back: %d, %v", len(us), len(back), err)
			}
			for i := range us {
				if back[i].account != us[i].account || back[i].region != us[i].region || !bytes.Equal(back[i].all, us[i].all) {
					t.Fatalf("use %d written back: %+v, was %+v", i, back[i], us[i])
				}
			}
		}
		var n int
		if bucketEntries(b, func(entry) bool { n++; return true }) != nil {
			return
		}
		if _, changed := mergeBucket(b, nil); changed {
			t.Fatal("merging nothing changed a bucket")
		}
		u := appendEntry(nil, &LastUse{KeyID: "\xff\xff\xff new key", Operation: "Encrypt", Time: time.Unix(5, 0)})
		e, _, err := cutEntry(u)
		if err != nil {
			t.Fatal(err)
		}
		if _, had, _ := findInBucket(b, "\xff\xff\xff new key"); had {
			return
		}
		out, changed := mergeBucket(b, []entry{e})
		var m int
		if err := bucketEntries(out, func(entry) bool { m++; return true }); err != nil || !changed || m != n+1 {
			t.Fatalf("merged a new key: %d entries (from %d), changed %v, %v", m, n, changed, err)
		}
	})
}

// FuzzParseUUID: parseUUID takes exactly the UUIDs in canonical
// lower-case form, with the bytes uuid.Parse gives, so that a field
// holding a UUID's bytes gives back the string it was made from, and any
// other string is kept as it is.
func FuzzParseUUID(f *testing.F) {
	for _, s := range []string{
		"1234abcd-12ab-34cd-56ef-1234567890ab", "1234ABCD-12ab-34cd-56ef-1234567890ab",
		"1234abcd-12ab-34cd-56ef-1234567890a", "1234abcd-12ab-34cd-56ef-1234567890abc",
		"1234abcd+12ab-34cd-56ef-1234567890ab", "1234abcd-12ab-34cd-56ef-1234567890ag",
		"g234abcd-12ab-34cd-56ef-1234567890ab", "00000000-0000-0000-0000-000000000000",
		"ffffffff-ffff-ffff-ffff-ffffffffffff", "{234abcd-12ab-34cd-56ef-1234567890ab}",
		"urn:uuid:1234abcd-12ab-34cd-56ef-1234567890ab", "1234abcd12ab34cd56ef1234567890ab", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, ok := parseUUID(s)
		want, err := uuid.Parse(s)
		canonical := err == nil && want.String() == s
		if ok != canonical || ok && u != want {
			t.Fatalf("parseUUID(%q) = %v, %v; want %v, %v", s, u, ok, want, canonical)
		}
		if got := fieldString(appendField(nil, s)); got != s {
			t.Fatalf("field of %q gives back %q", s, got)
		}
	})
}

// TestJournalPartIndex: a key id's partition is named by the first two
// hex digits of its id (after "mrk-"), or "00" for an id without them,
// for every two-digit prefix; the partition names are in number order,
// which is the journal rows' key order.
func TestJournalPartIndex(t *testing.T) {
	want := map[string]string{"": "00", "1": "00", "k-001": "00", "mrk-": "00", "mrk-0": "00",
		"AB12": "00", "0A12": "00", "mrk-ff00": "ff"}
	const digits = "0123456789abcdef"
	for p := range journalParts {
		name := string([]byte{digits[p/16], digits[p%16]})
		want[name+"34abcd-12ab-34cd-56ef-1234567890ab"] = name
		want["mrk-"+name+"00"] = name
		if journalPartNames[p] != name {
			t.Errorf("partition %d is named %q, want %q", p, journalPartNames[p], name)
		}
	}
	for id, name := range want {
		if got := journalPart(id); got != name || journalPartNames[journalPartIndex(id)] != name {
			t.Errorf("partition of %q: %q (number %d), want %q", id, got, journalPartIndex(id), name)
		}
	}
}

// sortTestEntries returns n entries of ids drawn from distinct ones (so
// that some repeat, at different times), a few of them short non-UUID
// ids that share a prefix with one another.
func sortTestEntries(n, distinct int) []entry {
	ids := make([]string, distinct)
	for i := range ids {
		switch i % 50 {
		case 1:
			ids[i] = "k"
		case 2:
			ids[i] = "k\x00"
		case 3:
			ids[i] = "k\x00x"
		default:
			ids[i] = uuid.NewString()
		}
	}
	es := make([]entry, n)
	for i := range es {
		u := LastUse{KeyID: ids[mrand.IntN(distinct)], Operation: "Encrypt", Time: time.Unix(0, mrand.Int64N(1000)),
			EventID: uuid.NewString(), RequestID: uuid.NewString()}
		e, _, err := cutEntry(appendEntry(nil, &u))
		if err != nil {
			panic(err)
		}
		es[i] = e
	}
	return es
}

// TestSortEntries: sortEntries orders by the id field's bytes and keeps
// each id's latest use, as a plain sort by (id, time descending) does.
func TestSortEntries(t *testing.T) {
	for _, n := range []int{0, 1, 2, 7, 100, 3000} {
		es := sortTestEntries(n, max(1, n/2))
		want := slices.Clone(es)
		slices.SortStableFunc(want, func(a, b entry) int {
			if c := bytes.Compare(a.id, b.id); c != 0 {
				return c
			}
			return cmp.Compare(b.at, a.at)
		})
		want = slices.CompactFunc(want, func(a, b entry) bool { return bytes.Equal(a.id, b.id) })
		got := sortEntries(es)
		if len(got) != len(want) {
			t.Fatalf("n %d: %d entries, want %d", n, len(got), len(want))
		}
		for i := range got {
			if !bytes.Equal(got[i].id, want[i].id) || got[i].at != want[i].at {
				t.Fatalf("n %d: entry %d is %q at %d, want %q at %d", n, i, got[i].id, got[i].at, want[i].id, want[i].at)
			}
		}
	}
}

// BenchmarkSortEntries: one bucket's uses in a merge transaction on a
// million keys (about 530, few repeated), per entry.
func BenchmarkSortEntries(b *testing.B) {
	src := sortTestEntries(530, 100000)
	es := make([]entry, len(src))
	for b.Loop() {
		copy(es, src)
		sortEntries(es)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(src)), "ns/entry")
}
