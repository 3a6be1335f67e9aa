package catalog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/kmsd/kmsd/internal/storage"
)

// journalRows returns the journal's rows.
func journalRows(t *testing.T, c *Catalog) []storage.Entry {
	t.Helper()
	rows, err := c.store.List(t.Context(), journalPrefix, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	return rows
}

// TestLastUseJournal: journaled uses are read before any merge (the later
// of journal and record wins, per Region), one flush writes one row per
// partition whatever its size, a merge writes each key's latest use into
// its record and empties the journal, and deleting a key takes its uses
// out of the journal too, so that no merge writes them back.
func TestLastUseJournal(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	const acct = "111122223333"
	use := func(region, id, op string, at time.Time) LastUse {
		return LastUse{Account: acct, Region: region, KeyID: id, Operation: op, Time: at, EventID: "ev-" + op + id, RequestID: "req-" + op}
	}
	for _, d := range lastUseDrivers {
		t.Run(d.name, func(t *testing.T) {
			ctx := t.Context()
			c := d.open(t, 1)[0]
			// A record newer than what the journal will hold, and one older.
			if err := c.PutLastUses(ctx, []LastUse{
				use("us-east-1", "rec-newer", "Sign", t0.Add(time.Hour)),
				use("us-east-1", "rec-older", "Sign", t0),
			}); err != nil {
				t.Fatal(err)
			}
			want := map[string]LastUse{} // by region/id
			var flush1, flush2 []LastUse
			for i := range 1000 {
				id := fmt.Sprintf("%02x-k-%04d", i%256, i)
				u := use("us-east-1", id, "Encrypt", t0.Add(time.Duration(i)*time.Millisecond))
				flush1 = append(flush1, u)
				want["us-east-1/"+id] = u
			}
			// One key id in two Regions (related multi-Region keys).
			flush1 = append(flush1, use("eu-west-1", "01-k-0001", "Verify", t0.Add(time.Minute)))
			want["eu-west-1/01-k-0001"] = use("eu-west-1", "01-k-0001", "Verify", t0.Add(time.Minute))
			flush1 = append(flush1, use("us-east-1", "rec-newer", "Encrypt", t0.Add(time.Minute)),
				use("us-east-1", "rec-older", "Encrypt", t0.Add(time.Minute)))
			want["us-east-1/rec-newer"] = use("us-east-1", "rec-newer", "Sign", t0.Add(time.Hour))
			want["us-east-1/rec-older"] = use("us-east-1", "rec-older", "Encrypt", t0.Add(time.Minute))
			// A second flush: newer uses of some keys, an older one of another.
			flush2 = append(flush2, use("us-east-1", "02-k-0002", "Decrypt", t0.Add(2*time.Minute)),
				use("us-east-1", "03-k-0003", "Decrypt", t0.Add(-time.Minute)))
			want["us-east-1/02-k-0002"] = use("us-east-1", "02-k-0002", "Decrypt", t0.Add(2*time.Minute))
			for _, f := range [][]LastUse{flush1, flush2} {
				if err := c.JournalLastUses(ctx, f); err != nil {
					t.Fatal(err)
				}
			}
			rows := journalRows(t, c)
			// At most one row per partition a flush's uses fall in: the
			// first flush's ~1,000 uses fill at most every partition, the
			// second's 2 uses at most 2.
			if len(rows) > journalParts+2 {
				t.Errorf("two flushes wrote %d journal rows, want at most %d", len(rows), journalParts+2)
			}
			if u := bucketUse(t, c, acct, "us-east-1", "00-k-0000"); u != nil {
				t.Errorf("a journaled use wrote its key's bucket: %+v", u)
			}
			check := func(when string) {
				t.Helper()
				for k, w := range want {
					region, id, _ := strings.Cut(k, "/")
					got, err := c.LastUse(ctx, acct, region, id)
					if err != nil || *got != w {
						t.Fatalf("%s: %s: %+v, %v; want %+v", when, k, got, err, w)
					}
				}
				if _, err := c.LastUse(ctx, acct, "eu-west-1", "02-k-0002"); !errors.Is(err, ErrNotFound) {
					t.Errorf("%s: a key id's use in another Region answered: %v", when, err)
				}
			}
			check("journaled")

			n, err := c.MergeLastUses(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if want := 1000 + 3; n != want { // keys of the journal, each once
				t.Errorf("merged %d uses, want %d", n, want)
			}
			if rows := journalRows(t, c); len(rows) != 0 {
				t.Errorf("%d journal rows left after the merge", len(rows))
			}
			check("merged")
			// A bucket leaves out what its path names.
			if b, err := c.store.Get(ctx, lastUseBucketPath(acct, "us-east-1", "02-k-0002")); err != nil ||
				strings.Contains(string(b), acct) || strings.Contains(string(b), "us-east-1") || !strings.Contains(string(b), "Decrypt") {
				t.Errorf("bucket of 02-k-0002: %q, %v; want its use without account or Region", b, err)
			}
			if u := bucketUse(t, c, acct, "us-east-1", "02-k-0002"); u == nil || *u != want["us-east-1/02-k-0002"] {
				t.Errorf("bucket entry of 02-k-0002: %+v, want %+v", u, want["us-east-1/02-k-0002"])
			}
			if n, err := c.MergeLastUses(ctx); n != 0 || err != nil {
				t.Errorf("a merge of an empty journal: %d, %v", n, err)
			}

			// Deleting a key whose uses are in the journal.
			if err := c.JournalLastUses(ctx, []LastUse{use("us-east-1", "05-k-0005", "Sign", t0.Add(time.Hour)),
				use("us-east-1", "06-k-0006", "Sign", t0.Add(time.Hour))}); err != nil {
				t.Fatal(err)
			}
			if err := c.DeleteLastUse(ctx, acct, "us-east-1", "05-k-0005"); err != nil {
				t.Fatal(err)
			}
			if _, err := c.LastUse(ctx, acct, "us-east-1", "05-k-0005"); !errors.Is(err, ErrNotFound) {
				t.Errorf("deleted key: %v, want ErrNotFound", err)
			}
			for _, r := range journalRows(t, c) {
				if strings.Contains(string(r.Value), "05-k-0005") {
					t.Errorf("journal row %s still holds the deleted key: %s", r.Key, r.Value)
				}
			}
			if _, err := c.MergeLastUses(ctx); err != nil {
				t.Fatal(err)
			}
			if _, err := c.LastUse(ctx, acct, "us-east-1", "05-k-0005"); !errors.Is(err, ErrNotFound) {
				t.Errorf("deleted key after a merge: %v, want ErrNotFound", err)
			}
			if got, err := c.LastUse(ctx, acct, "us-east-1", "06-k-0006"); err != nil || got.Operation != "Sign" {
				t.Errorf("a key sharing the deleted key's journal row: %+v, %v", got, err)
			}
		})
	}
}

// TestLastUseJournalConcurrent: nodes journaling overlapping flushes
// (older after newer, as a slow flush racing a fast one) while two of
// them merge over and over: every read meanwhile answers a use no older
// than one it answered before, and once all is merged each key holds the
// latest use any node journaled and the journal is empty.
func TestLastUseJournalConcurrent(t *testing.T) {
	const acct, region = "111122223333", "us-east-1"
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, d := range lastUseDrivers {
		t.Run(d.name, func(t *testing.T) {
			ctx := t.Context()
			cs := d.open(t, 3)
			r := racingRounds{nodes: len(cs), keys: 100, rounds: 6}
			// Every key has a use before the merges start, so a read
			// never has a reason to find none.
			var first []LastUse
			for k := range r.keys {
				first = append(first, LastUse{Account: acct, Region: region, KeyID: fmt.Sprintf("k-%03d", k), Operation: "first", Time: t0.Add(-time.Hour)})
			}
			if err := cs[0].JournalLastUses(ctx, first); err != nil {
				t.Fatal(err)
			}
			var background sync.WaitGroup
			stop := make(chan struct{})
			errs := make(chan error, 3)
			for _, c := range cs[1:] {
				background.Add(1)
				go func() {
					defer background.Done()
					for {
						select {
						case <-stop:
							return
						default:
						}
						if _, err := c.MergeLastUses(ctx); err != nil {
							errs <- err
							return
						}
					}
				}()
			}
			// A reader: a key's answer never goes back, nor disappears.
			background.Add(1)
			go func() {
				defer background.Done()
				seen := map[int]time.Time{}
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					k := i % 7 // a few keys, read often
					got, err := cs[0].LastUse(ctx, acct, region, fmt.Sprintf("k-%03d", k))
					if err != nil {
						errs <- fmt.Errorf("read of k-%03d: %w", k, err)
						return
					}
					if got.Time.Before(seen[k]) {
						errs <- fmt.Errorf("k-%03d went back from %v to %v", k, seen[k], got.Time)
						return
					}
					seen[k] = got.Time
				}
			}()
			err := r.write(cs, (*Catalog).JournalLastUses)
			close(stop)
			background.Wait()
			close(errs)
			if err != nil {
				t.Fatal(err)
			}
			for err := range errs {
				t.Fatal(err)
			}
			if _, err := cs[0].MergeLastUses(ctx); err != nil {
				t.Fatal(err)
			}
			if rows := journalRows(t, cs[0]); len(rows) != 0 {
				t.Fatalf("%d journal rows left", len(rows))
			}
			r.check(t, cs[0])
		})
	}
}

// TestJournalPartsAreRanges: a partition of the journal is a range of the
// records' order — for the key ids kmsd makes (UUIDs; multi-Region keys'
// "mrk-" and 32 hex digits, which sort after every UUID), the partitions
// of the records in key order never go back within each kind — so that
// one partition's merge writes pages of records no other partition's
// does.
func TestJournalPartsAreRanges(t *testing.T) {
	var ids []string
	for range 3000 {
		ids = append(ids, uuid.NewString(), "mrk-"+strings.ReplaceAll(uuid.NewString(), "-", ""))
	}
	slices.SortFunc(ids, func(a, b string) int {
		return strings.Compare(lastUsePath("111122223333", "us-east-1", a), lastUsePath("111122223333", "us-east-1", b))
	})
	seen := map[string]bool{}
	last := map[bool]string{}
	for _, id := range ids {
		mrk := strings.HasPrefix(id, "mrk-")
		p := journalPart(id)
		if p < last[mrk] {
			t.Fatalf("%s: partition %s after %s", id, p, last[mrk])
		}
		last[mrk] = p
		seen[p] = true
	}
	if len(seen) != journalParts {
		t.Errorf("6,000 random ids fell in %d partitions, want all %d", len(seen), journalParts)
	}
	if got := journalPart("not-hex"); got != "00" {
		t.Errorf("journalPart(not-hex) = %q, want 00", got)
	}
}

// BenchmarkJournalHotKeys: 30 s of a small store's steady state — 30
// flushes, each of one use of each of 1,000 keys — written into the
// records flush by flush ("put", what the tracker did before the
// journal) or journaled and merged once ("journal", what it does now).
// The operations run one after another, so the time per op counts the
// database server's work as well as the catalog's.
//
//	go test -run '^$' -bench JournalHotKeys -benchtime 5x ./internal/catalog/
func BenchmarkJournalHotKeys(b *testing.B) {
	const keys, flushes = 1000, 30
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, d := range lastUseDrivers {
		for _, mode := range []string{"put", "journal"} {
			b.Run(d.name+"/"+mode, func(b *testing.B) {
				ctx := context.Background()
				c := d.open(b, 1)[0]
				ids := make([]string, keys)
				for i := range ids {
					ids[i] = uuid.NewString()
				}
				step := 0
				for b.Loop() {
					for range flushes {
						step++
						uses := make([]LastUse, keys)
						for i, id := range ids {
							uses[i] = LastUse{Account: "111122223333", Region: "us-east-1", KeyID: id, Operation: "Encrypt",
								Time: t0.Add(time.Duration(step) * time.Second), EventID: uuid.NewString(), RequestID: uuid.NewString()}
						}
						var err error
						if mode == "put" {
							err = c.PutLastUses(ctx, uses)
						} else {
							err = c.JournalLastUses(ctx, uses)
						}
						if err != nil {
							b.Fatal(err)
						}
					}
					if mode == "journal" {
						if _, err := c.MergeLastUses(ctx); err != nil {
							b.Fatal(err)
						}
					}
				}
			})
		}
	}
}

// BenchmarkMergeLarge: the merge of 30 one-second flushes of uses of keys
// picked at random among many that already have a use stored — what a
// large store's merge does (e2e/scale: a million keys, ~7,000 distinct
// keys a second) — and ("first") of as many first uses, of keys without
// one among them. Only the merges are timed; b.N merges, each
// of KMSD_BENCH_MERGE_USES uses (default 30 × 2,000) over
// KMSD_BENCH_MERGE_KEYS keys (default 300,000).
func BenchmarkMergeLarge(b *testing.B) {
	keys, perFlush := envInt(b, "KMSD_BENCH_MERGE_KEYS", 300000), envInt(b, "KMSD_BENCH_MERGE_USES", 60000)/30
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, d := range lastUseDrivers {
		for _, first := range []bool{false, true} {
			name := d.name
			if first {
				name += "/first"
			}
			b.Run(name, func(b *testing.B) {
				ctx := context.Background()
				c := d.open(b, 1)[0]
				ids := make([]string, keys)
				for i := range ids {
					ids[i] = uuid.NewString()
				}
				use := func(id string, step int) LastUse {
					return LastUse{Account: "111122223333", Region: "us-east-1", KeyID: id, Operation: "Encrypt",
						Time: t0.Add(time.Duration(step) * time.Second), EventID: uuid.NewString(), RequestID: uuid.NewString()}
				}
				// Every key gets its record, through the journal as kmsd does.
				for lo := 0; lo < keys; lo += 10000 {
					var uses []LastUse
					for _, id := range ids[lo:min(lo+10000, keys)] {
						uses = append(uses, use(id, 0))
					}
					if err := c.JournalLastUses(ctx, uses); err != nil {
						b.Fatal(err)
					}
					if _, err := c.MergeLastUses(ctx); err != nil {
						b.Fatal(err)
					}
				}
				step, merged, cpu := 0, 0, int64(0)
				b.ResetTimer()
				for range b.N {
					b.StopTimer()
					for range 30 {
						step++
						uses := make([]LastUse, perFlush)
						for i := range uses {
							id := ids[mrand.IntN(keys)]
							if first {
								id = uuid.NewString()
							}
							uses[i] = use(id, step)
						}
						if err := c.JournalLastUses(ctx, uses); err != nil {
							b.Fatal(err)
						}
					}
					b.StartTimer()
					cpu0 := cpuTime()
					n, err := c.MergeLastUses(ctx)
					cpu += cpuTime() - cpu0
					if err != nil {
						b.Fatal(err)
					}
					merged += n
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(merged), "ns/use")
				// The merges' CPU (the process's, all threads): on a shared
				// machine wall time counts the neighbours' load too.
				b.ReportMetric(float64(cpu)/float64(merged), "cpu-ns/use")
			})
		}
	}
}

// BenchmarkJournalDistinct: one flush of 20,000 uses of distinct keys
// (about a second of kmsbench Encrypt on a million keys, where nearly
// every use is of a key not used in the second), per use. With
// KMSD_BENCH_JOURNAL_BEFORE the journal first holds that many uses, as it
// does between two merges: a flush costs more the more it holds (on
// SQLite ~0.69 µs a use after 100,000, 0.89 after 2 million, 1.05 after
// 4 million), which bounds how rarely a merge pays (lastuse.MergeUses).
//
//	go test -run '^$' -bench JournalDistinct ./internal/catalog/
func BenchmarkJournalDistinct(b *testing.B) {
	const perFlush = 20000
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, d := range lastUseDrivers {
		b.Run(d.name, func(b *testing.B) {
			ctx := context.Background()
			c := d.open(b, 1)[0]
			uses := make([]LastUse, perFlush)
			fill := func() {
				for i := range uses {
					uses[i] = LastUse{Account: "111122223333", Region: "us-east-1", KeyID: uuid.NewString(), Operation: "Encrypt",
						Time: t0, EventID: uuid.NewString(), RequestID: uuid.NewString()}
				}
			}
			for range envInt(b, "KMSD_BENCH_JOURNAL_BEFORE", 0) / perFlush {
				fill()
				if err := c.JournalLastUses(ctx, uses); err != nil {
					b.Fatal(err)
				}
			}
			fill()
			b.ReportAllocs()
			n := 0
			for b.Loop() {
				if err := c.JournalLastUses(ctx, uses); err != nil {
					b.Fatal(err)
				}
				n += len(uses)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n), "ns/use")
		})
	}
}

// TestJournalRowFormat: a flush's row names each account and Region once
// per group of their uses (data format level 4), however the flush
// interleaves them, and so is smaller than a row naming them with every
// use; rows of level 3, each use with its own account and Region, are
// still read, rewritten by a delete, and merged.
func TestJournalRowFormat(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	accts := []string{"111122223333", "444455556666"}
	regions := []string{"us-east-1", "eu-west-1"}
	for _, d := range lastUseDrivers {
		t.Run(d.name, func(t *testing.T) {
			ctx := t.Context()
			c := d.open(t, 1)[0]
			var flush []LastUse
			level3 := 1 // the size of the row as level 3 wrote it
			for i := range 400 {
				u := LastUse{Account: accts[i%2], Region: regions[i/2%2], KeyID: fmt.Sprintf("ab%06x-1111-4222-8333-%012x", i, i),
					Operation: "Encrypt", Time: t0.Add(time.Duration(i) * time.Millisecond), EventID: uuid.NewString(), RequestID: uuid.NewString()}
				flush = append(flush, u)
				level3 += len(appendJournalUse(nil, &u))
			}
			if err := c.JournalLastUses(ctx, flush); err != nil {
				t.Fatal(err)
			}
			rows := journalRows(t, c)
			if len(rows) != 1 || rows[0].Value[0] != journalFormat {
				t.Fatalf("a flush in one partition wrote %d rows (first byte %d)", len(rows), rows[0].Value[0])
			}
			row := rows[0].Value
			for _, s := range append(accts, regions...) {
				if n := bytes.Count(row, appendField(nil, s)); n != 2 { // once with each of the other kind
					t.Errorf("%s appears %d times in the row, want 2", s, n)
				}
			}
			if saved := level3 - len(row); saved < 400*(13+10)-4*30 {
				t.Errorf("row of %d bytes, %d as level 3 wrote it", len(row), level3)
			}
			for _, u := range flush {
				if got, err := c.LastUse(ctx, u.Account, u.Region, u.KeyID); err != nil || *got != u {
					t.Fatalf("%s: %+v, %v; want %+v", u.KeyID, got, err, u)
				}
			}

			// A row of level 3.
			old := []LastUse{
				{Account: accts[0], Region: regions[0], KeyID: "cd000000-1111-4222-8333-444444444444", Operation: "Sign",
					Time: t0, EventID: uuid.NewString(), RequestID: uuid.NewString()},
				{Account: accts[1], Region: regions[0], KeyID: "cd000001-1111-4222-8333-444444444444", Operation: "Verify",
					Time: t0, EventID: uuid.NewString(), RequestID: uuid.NewString()},
				{Account: accts[1], Region: regions[1], KeyID: "cd000002-1111-4222-8333-444444444444", Operation: "Decrypt",
					Time: t0, EventID: uuid.NewString(), RequestID: uuid.NewString()},
			}
			b := []byte{bucketFormat}
			for i := range old {
				b = appendJournalUse(b, &old[i])
			}
			key := journalPartPrefix("cd") + "0000000000000001-000000000000"
			if err := c.store.Put(ctx, key, b); err != nil {
				t.Fatal(err)
			}
			for _, u := range old {
				if got, err := c.LastUse(ctx, u.Account, u.Region, u.KeyID); err != nil || *got != u {
					t.Errorf("a use in a level-3 row: %+v, %v; want %+v", got, err, u)
				}
			}
			if err := c.DeleteLastUse(ctx, old[0].Account, old[0].Region, old[0].KeyID); err != nil {
				t.Fatal(err)
			}
			b, err := c.store.Get(ctx, key)
			if err != nil || b[0] != journalFormat {
				t.Fatalf("the level-3 row after a delete: %v, %v", b, err)
			}
			us, err := decodeJournalUses(b)
			if err != nil || len(us) != 2 || us[0].use(us[0].account, us[0].region).KeyID != old[1].KeyID ||
				*us[1].use(us[1].account, us[1].region) != old[2] {
				t.Fatalf("the level-3 row after a delete: %d uses, %v", len(us), err)
			}
			if n, err := c.MergeLastUses(ctx); n != 400+2 || err != nil {
				t.Errorf("merge: %d, %v; want %d", n, err, 400+2)
			}
			for _, u := range append(flush, old[1:]...) {
				if got := bucketUse(t, c, u.Account, u.Region, u.KeyID); got == nil || *got != u {
					t.Fatalf("bucket entry of %s: %+v; want %+v", u.KeyID, got, u)
				}
			}
			if _, err := c.LastUse(ctx, old[0].Account, old[0].Region, old[0].KeyID); !errors.Is(err, ErrNotFound) {
				t.Errorf("the deleted key after the merge: %v", err)
			}
		})
	}
}

// BenchmarkLastUseJournaled: LastUse (GetKeyLastUsage's read) of a random
// key while the journal holds KMSD_BENCH_READ_USES uses (default 400,000)
// of random keys, in flushes of 24,000 (a second of Encrypt on a million
// keys): it scans the key's partition of the journal, the part a merge
// bounds (lastuse.MergeUses).
//
//	KMSD_BENCH_READ_USES=4000000 go test -run '^$' -bench 'LastUseJournaled/sqlite' ./internal/catalog/
func BenchmarkLastUseJournaled(b *testing.B) {
	const perFlush = 24000
	total := envInt(b, "KMSD_BENCH_READ_USES", 400000)
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, d := range lastUseDrivers {
		b.Run(d.name, func(b *testing.B) {
			ctx := context.Background()
			c := d.open(b, 1)[0]
			var ids []string
			for done := 0; done < total; done += perFlush {
				uses := make([]LastUse, min(perFlush, total-done))
				for i := range uses {
					uses[i] = LastUse{Account: "111122223333", Region: "us-east-1", KeyID: uuid.NewString(), Operation: "Encrypt",
						Time: t0.Add(time.Duration(done) * time.Millisecond), EventID: uuid.NewString(), RequestID: uuid.NewString()}
					if i%100 == 0 {
						ids = append(ids, uses[i].KeyID)
					}
				}
				if err := c.JournalLastUses(ctx, uses); err != nil {
					b.Fatal(err)
				}
			}
			for b.Loop() {
				u, err := c.LastUse(ctx, "111122223333", "us-east-1", ids[mrand.IntN(len(ids))])
				if err != nil || u == nil {
					b.Fatalf("LastUse: %v, %v", u, err)
				}
			}
		})
	}
}
