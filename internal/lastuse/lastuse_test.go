package lastuse

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/google/uuid"

	"github.com/kmsd/kmsd/internal/catalog"
)

// fakeStore is a Store in memory that counts its writes and can fail them.
type fakeStore struct {
	mu      sync.Mutex
	uses    map[string]catalog.LastUse // by account/region/id
	batches [][]catalog.LastUse
	fail    error
	start   time.Time
	merges  int
}

func newFakeStore() *fakeStore { return &fakeStore{uses: map[string]catalog.LastUse{}} }

func path(account, region, id string) string { return account + "/" + region + "/" + id }

func (s *fakeStore) LastUse(_ context.Context, account, region, id string) (*catalog.LastUse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	u, ok := s.uses[path(account, region, id)]
	if !ok {
		return nil, catalog.ErrNotFound
	}
	return &u, nil
}

func (s *fakeStore) MergeLastUses(context.Context) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.merges++
	return 0, nil
}

func (s *fakeStore) JournalLastUses(_ context.Context, uses []catalog.LastUse) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail != nil {
		return s.fail
	}
	s.batches = append(s.batches, append([]catalog.LastUse(nil), uses...))
	for _, u := range uses {
		p := path(u.Account, u.Region, u.KeyID)
		if cur, ok := s.uses[p]; !ok || cur.Time.Before(u.Time) {
			s.uses[p] = u
		}
	}
	return nil
}

// JournalEncoded decodes the uses and journals them as JournalLastUses.
func (s *fakeStore) JournalEncoded(ctx context.Context, enc []catalog.EncodedUse) error {
	uses := make([]catalog.LastUse, len(enc))
	for i := range enc {
		u, err := enc[i].Use()
		if err != nil {
			return err
		}
		uses[i] = *u
	}
	return s.JournalLastUses(ctx, uses)
}

func (s *fakeStore) DeleteLastUse(_ context.Context, account, region, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.uses, path(account, region, id))
	return nil
}

func (s *fakeStore) TrackingStart(_ context.Context, now time.Time) (time.Time, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.start.IsZero() {
		s.start = now
	}
	return s.start, nil
}

// stored is how many keys have a use stored.
func (s *fakeStore) stored() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.uses)
}

func (s *fakeStore) writes() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.batches)
}

func (s *fakeStore) setFail(err error) {
	s.mu.Lock()
	s.fail = err
	s.mu.Unlock()
}

const (
	arnA   = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
	arnB   = "arn:aws:kms:us-east-1:111122223333:key/0987dcba-09fe-87dc-65ba-ab0987654321"
	mrkUS  = "arn:aws:kms:us-east-1:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab"
	mrkEU  = "arn:aws:kms:eu-west-1:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab"
	idA    = "1234abcd-12ab-34cd-56ef-1234567890ab"
	mrkID  = "mrk-1234abcd12ab34cd56ef1234567890ab"
	accnt  = "111122223333"
	region = "us-east-1"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func newTracker(st Store) *Tracker {
	return New(st, slog.New(slog.NewTextHandler(io.Discard, nil)), t0)
}

// TestBatching: many uses of several keys become one write per flush,
// holding each key once with its latest use.
func TestBatching(t *testing.T) {
	st := newFakeStore()
	tr := newTracker(st)
	defer tr.Close(context.Background())
	for i := range 1000 {
		tr.Record([]string{arnA}, "Encrypt", t0.Add(time.Duration(i)*time.Millisecond), "ev-a", "req-a")
	}
	tr.Record([]string{arnA, arnB}, "ReEncrypt", t0.Add(time.Second), "ev-re", "req-re")
	if st.writes() != 0 {
		t.Fatalf("Record wrote to the store %d times", st.writes())
	}
	if err := tr.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := tr.Flush(context.Background()); err != nil { // nothing changed: no write
		t.Fatal(err)
	}
	if st.writes() != 1 || len(st.batches[0]) != 2 {
		t.Fatalf("writes %d (%v), want one batch of two keys", st.writes(), st.batches)
	}
	if n := len(tr.uses); n != 0 {
		t.Errorf("%d stored uses still held in memory", n)
	}
	u, err := st.LastUse(context.Background(), accnt, region, idA)
	if err != nil || u.Operation != "ReEncrypt" || u.EventID != "ev-re" || u.RequestID != "req-re" || !u.Time.Equal(t0.Add(time.Second)) {
		t.Fatalf("stored %+v, %v", u, err)
	}
}

// TestLaterWins: a use recorded after a later one (a slower concurrent
// call) does not replace it, and Get prefers the newer of memory and
// store.
func TestLaterWins(t *testing.T) {
	ctx := context.Background()
	st := newFakeStore()
	tr := newTracker(st)
	defer tr.Close(ctx)
	tr.Record([]string{arnA}, "Sign", t0.Add(time.Second), "ev2", "req2")
	tr.Record([]string{arnA}, "Verify", t0, "ev1", "req1")
	u, err := tr.Get(ctx, arnA)
	if err != nil || u.RequestID != "req2" {
		t.Fatalf("Get = %+v, %v; want req2", u, err)
	}
	// Another node stored a later use.
	st.JournalLastUses(ctx, []catalog.LastUse{{Account: accnt, Region: region, KeyID: idA, Operation: "Decrypt", Time: t0.Add(time.Minute), RequestID: "other"}})
	if u, err = tr.Get(ctx, arnA); err != nil || u.RequestID != "other" {
		t.Fatalf("Get = %+v, %v; want the stored, later use", u, err)
	}
	if _, err := tr.Get(ctx, arnB); !errors.Is(err, catalog.ErrNotFound) {
		t.Fatalf("Get of an unused key: %v, want ErrNotFound", err)
	}
}

// TestMultiRegion: related multi-Region keys share a key id but track
// their use separately, by Region.
func TestMultiRegion(t *testing.T) {
	ctx := context.Background()
	st := newFakeStore()
	tr := newTracker(st)
	defer tr.Close(ctx)
	tr.Record([]string{mrkUS}, "Encrypt", t0, "ev-us", "req-us")
	tr.Record([]string{mrkEU}, "Decrypt", t0.Add(time.Second), "ev-eu", "req-eu")
	if err := tr.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	us, err1 := st.LastUse(ctx, accnt, "us-east-1", mrkID)
	eu, err2 := st.LastUse(ctx, accnt, "eu-west-1", mrkID)
	if err1 != nil || err2 != nil || us.Operation != "Encrypt" || eu.Operation != "Decrypt" {
		t.Fatalf("us-east-1 %+v %v, eu-west-1 %+v %v", us, err1, eu, err2)
	}
}

// TestFailedFlushRetried: uses a failed flush could not write are written
// by the next one.
func TestFailedFlushRetried(t *testing.T) {
	ctx := context.Background()
	st := newFakeStore()
	tr := newTracker(st)
	defer tr.Close(ctx)
	tr.Record([]string{arnA}, "Encrypt", t0, "ev1", "req1")
	st.setFail(errors.New("disk full"))
	if err := tr.Flush(ctx); err == nil {
		t.Fatal("Flush hid the store's error")
	}
	st.setFail(nil)
	if err := tr.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if u, err := st.LastUse(ctx, accnt, region, idA); err != nil || u.RequestID != "req1" {
		t.Fatalf("after the retry: %+v, %v", u, err)
	}
}

// TestFlusherAndClose: the flusher writes without being asked, and Close
// writes what is left and stops it.
func TestFlusherAndClose(t *testing.T) {
	ctx := context.Background()
	st := newFakeStore()
	tr := newTracker(st)
	tr.interval = 10 * time.Millisecond
	tr.Record([]string{arnA}, "Encrypt", t0, "ev1", "req1")
	for deadline := time.Now().Add(5 * time.Second); st.writes() == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the flusher wrote nothing in 5 s")
		}
	}
	tr.Record([]string{arnB}, "Decrypt", t0, "ev2", "req2")
	if err := tr.Close(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-tr.done:
	default:
		t.Fatal("the flusher still runs after Close")
	}
	if _, err := st.LastUse(ctx, accnt, region, "0987dcba-09fe-87dc-65ba-ab0987654321"); err != nil {
		t.Fatalf("Close did not write the last use: %v", err)
	}
	if err := tr.Close(ctx); err != nil { // twice is harmless
		t.Fatal(err)
	}
}

// TestFlusherMerges: the flusher merges the journal every mergeEvery,
// after a flush, and keeps merging while the tracker runs, however few
// uses it journals.
func TestFlusherMerges(t *testing.T) {
	ctx := context.Background()
	st := newFakeStore()
	tr := newTracker(st)
	tr.interval, tr.mergeEvery = 5*time.Millisecond, 20*time.Millisecond
	tr.Record([]string{arnA}, "Encrypt", t0, "ev1", "req1")
	merges := func() int {
		st.mu.Lock()
		defer st.mu.Unlock()
		return st.merges
	}
	for deadline := time.Now().Add(5 * time.Second); merges() < 3; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d merges in 5 s, want 3 at one each 20 ms", merges())
		}
	}
	if err := tr.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if st.writes() == 0 {
		t.Error("no flush")
	}
}

// TestFlusherMergesByCount: the flusher merges the journal once it has
// journaled mergeUses uses since its last merge, long before mergeEvery,
// and then not again until it has journaled as many more.
func TestFlusherMergesByCount(t *testing.T) {
	ctx := context.Background()
	st := newFakeStore()
	tr := newTracker(st)
	// The first merge by time comes after half an hour at the earliest.
	tr.interval, tr.mergeEvery, tr.mergeUses = 5*time.Millisecond, time.Hour, 4
	merges := func() int {
		st.mu.Lock()
		defer st.mu.Unlock()
		return st.merges
	}
	arn := func(i int) string {
		return fmt.Sprintf("arn:aws:kms:us-east-1:111122223333:key/%08x-0000-4000-8000-000000000000", i)
	}
	used := 0
	waitFlushed := func(n int) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); st.stored() < n; time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%d uses stored in 5 s, want %d", st.stored(), n)
			}
		}
	}
	record := func(n int) {
		var arns []string
		for range n {
			arns = append(arns, arn(used))
			used++
		}
		tr.Record(arns, "Encrypt", t0, "ev", "req") // one flush takes them all
	}
	waitMerges := func(n int) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); merges() < n; time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%d merges after %d uses, want %d", merges(), used, n)
			}
		}
	}
	// The first period's count is random in its second half, 2 to 4.
	record(4)
	waitMerges(1)
	// Then one every 4 uses.
	record(3)
	waitFlushed(used)
	time.Sleep(50 * time.Millisecond)
	if n := merges(); n != 1 {
		t.Fatalf("%d merges after 3 more uses, want still 1", n)
	}
	record(1)
	waitMerges(2)
	if err := tr.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestDelete: a deleted key's use is gone from memory and store, and a
// flush does not bring it back.
func TestDelete(t *testing.T) {
	ctx := context.Background()
	st := newFakeStore()
	tr := newTracker(st)
	defer tr.Close(ctx)
	tr.Record([]string{arnA}, "Encrypt", t0, "ev1", "req1")
	tr.Flush(ctx)
	tr.Record([]string{arnA}, "Encrypt", t0.Add(time.Second), "ev2", "req2")
	if err := tr.Delete(ctx, arnA); err != nil {
		t.Fatal(err)
	}
	tr.Flush(ctx)
	if _, err := tr.Get(ctx, arnA); !errors.Is(err, catalog.ErrNotFound) {
		t.Fatalf("Get after Delete: %v, want ErrNotFound", err)
	}
}

// TestBegan: the tracking start is stored once and cached.
func TestBegan(t *testing.T) {
	ctx := context.Background()
	st := newFakeStore()
	if b, _ := newTracker(st).Began(ctx); !b.Equal(t0) {
		t.Fatalf("first start: %v", b)
	}
	later := New(st, slog.New(slog.NewTextHandler(io.Discard, nil)), t0.Add(time.Hour))
	if b, _ := later.Began(ctx); !b.Equal(t0) {
		t.Fatalf("a restart moved the tracking start to %v", b)
	}
}

// TestEntryReuse: an entry a flush stored and forgot serves another key
// without carrying anything of the first, and the first key, used again,
// gets an entry of its own.
func TestEntryReuse(t *testing.T) {
	ctx := context.Background()
	st := newFakeStore()
	tr := newTracker(st)
	tr.running = true // flushed by the test only
	tr.Record([]string{arnA}, "Encrypt", t0, "ev-a", "req-a")
	if err := tr.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if len(tr.free) != 1 || len(tr.uses) != 0 {
		t.Fatalf("after a flush: %d entries free, %d in use; want 1, 0", len(tr.free), len(tr.uses))
	}
	tr.Record([]string{arnB}, "Decrypt", t0.Add(time.Second), "ev-b", "req-b")
	tr.Record([]string{arnA}, "Sign", t0.Add(2*time.Second), "ev-a2", "req-a2")
	if len(tr.free) != 0 {
		t.Fatalf("%d entries free after two new keys; want 0", len(tr.free))
	}
	if err := tr.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	for arn, want := range map[string]catalog.LastUse{
		arnA: {Operation: "Sign", Time: t0.Add(2 * time.Second), EventID: "ev-a2", RequestID: "req-a2"},
		arnB: {Operation: "Decrypt", Time: t0.Add(time.Second), EventID: "ev-b", RequestID: "req-b"},
	} {
		u, err := tr.Get(ctx, arn)
		if err != nil {
			t.Fatal(err)
		}
		if u.Operation != want.Operation || !u.Time.Equal(want.Time) || u.EventID != want.EventID || u.RequestID != want.RequestID {
			t.Errorf("%s: %+v, want %+v", arn, *u, want)
		}
	}
	if got := st.batches[len(st.batches)-1]; len(got) != 2 {
		t.Errorf("second flush wrote %d uses, want 2", len(got))
	}
}

func TestSplit(t *testing.T) {
	for _, c := range []struct {
		name, arn           string
		account, region, id string
		ok                  bool
	}{
		{"key", arnA, accnt, region, idA, true},
		{"multi-Region key", mrkEU, accnt, "eu-west-1", mrkID, true},
		{"China partition", "arn:aws-cn:kms:cn-north-1:111122223333:key/" + idA, accnt, "cn-north-1", idA, true},
		{"alias", "arn:aws:kms:us-east-1:111122223333:alias/x", "", "", "", false},
		{"other service", "arn:aws:iam::111122223333:root", "", "", "", false},
		{"other service, key-shaped", "arn:aws:kmsx:us-east-1:111122223333:key/" + idA, "", "", "", false},
		{"not an ARN", "arx:aws:kms:us-east-1:111122223333:key/" + idA, "", "", "", false},
		{"garbage", "key/" + idA, "", "", "", false},
		{"no Region", "arn:aws:kms::111122223333:key/" + idA, "", "", "", false},
		{"no account", "arn:aws:kms:us-east-1::key/" + idA, "", "", "", false},
		{"no id", "arn:aws:kms:us-east-1:111122223333:key/", "", "", "", false},
		{"too few parts", "arn:aws:kms:us-east-1:key/" + idA, "", "", "", false},
		{"colon in the resource", "arn:aws:kms:us-east-1:111122223333:key/a:b", accnt, region, "a:b", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			a, r, id, ok := split(c.arn)
			if a != c.account || r != c.region || id != c.id || ok != c.ok {
				t.Errorf("split(%s) = %q %q %q %v", c.arn, a, r, id, ok)
			}
		})
	}
}

// FuzzSplit: split takes an ARN apart as strings.SplitN on its six
// colon-separated parts does.
func FuzzSplit(f *testing.F) {
	for _, s := range []string{arnA, mrkEU, "arn:aws:kms:us-east-1:111122223333:alias/x", "arn:::::key/x", "arn:a:kms:r:a:key/:", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, arn string) {
		var want [3]string
		wantOK := false
		if p := strings.SplitN(arn, ":", 6); len(p) == 6 && p[0] == "arn" && p[2] == "kms" && p[3] != "" && p[4] != "" {
			if id, ok := strings.CutPrefix(p[5], "key/"); ok && id != "" {
				want, wantOK = [3]string{p[4], p[3], id}, true
			}
		}
		a, r, id, ok := split(arn)
		if ok != wantOK || [3]string{a, r, id} != want {
			t.Fatalf("split(%q) = %q %q %q %v; want %q %v", arn, a, r, id, ok, want, wantOK)
		}
	})
}

// BenchmarkRecord is the hot-path cost every tracked call pays, with 16
// goroutines on the same key as in kmsbench's Encrypt at concurrency 16.
func BenchmarkRecord(b *testing.B) {
	tr := newTracker(newFakeStore())
	defer tr.Close(context.Background())
	arns := []string{arnA}
	b.ReportAllocs()
	b.SetParallelism(16)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			tr.Record(arns, "Encrypt", time.Now(), "ev", "req")
		}
	})
}

// discardStore is a Store whose journal writes cost nothing, so that a
// benchmark times the tracker alone.
type discardStore struct{ fakeStore }

func (*discardStore) JournalEncoded(context.Context, []catalog.EncodedUse) error { return nil }

// BenchmarkRecordDistinct is the tracker's own cost of a use of a key
// not used since the last flush — nearly every use on a store of a
// million keys under random load (e2e/scale): Record, then its share of
// a Flush of 20,000 such uses (about a second of kmsbench Encrypt). Since
// Record encodes such a use for the journal, that encoding (before, the
// catalog's, in the flush) is counted here too.
func BenchmarkRecordDistinct(b *testing.B) {
	const perFlush = 20000
	tr := New(&discardStore{}, slog.New(slog.DiscardHandler), time.Now())
	tr.running = true // flushed by the loop only: no flusher started
	arns := make([][]string, perFlush)
	events, requests := make([]string, perFlush), make([]string, perFlush)
	for i := range arns {
		arns[i] = []string{"arn:aws:kms:us-east-1:111122223333:key/" + uuid.NewString()}
		events[i], requests[i] = uuid.NewString(), uuid.NewString()
	}
	ctx := context.Background()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		tr.Record(arns[i], "Encrypt", time.Now(), events[i], requests[i])
		if i++; i == perFlush {
			i = 0
			if err := tr.Flush(ctx); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// blockingStore is a fakeStore whose JournalEncoded waits for release
// once it has said (on entered) that a flush is writing.
type blockingStore struct {
	*fakeStore
	entered, release chan struct{}
}

func (s *blockingStore) JournalEncoded(ctx context.Context, uses []catalog.EncodedUse) error {
	s.entered <- struct{}{}
	<-s.release
	return s.fakeStore.JournalEncoded(ctx, uses)
}

// TestRecordDuringFlush: uses recorded while a flush writes go to the next
// flush, Get meanwhile answers the newest of those being written and
// those recorded since, and a failed flush leaves the later of its use
// and a use recorded since to be written next.
func TestRecordDuringFlush(t *testing.T) {
	ctx := context.Background()
	for _, fail := range []bool{false, true} {
		st := &blockingStore{fakeStore: newFakeStore(), entered: make(chan struct{}), release: make(chan struct{})}
		tr := New(st, slog.New(slog.DiscardHandler), t0)
		tr.running = true // flushed by the test only
		tr.Record([]string{arnA}, "Encrypt", t0.Add(2*time.Second), "ev-a2", "req-a2")
		tr.Record([]string{arnB}, "Encrypt", t0, "ev-b1", "req-b1")
		if fail {
			st.setFail(errors.New("database down"))
		}
		flushed := make(chan error)
		go func() { flushed <- tr.Flush(ctx) }()
		<-st.entered
		// While the flush writes: an older use of A (a slower call), a
		// newer one of B.
		tr.Record([]string{arnA}, "Decrypt", t0.Add(time.Second), "ev-a1", "req-a1")
		tr.Record([]string{arnB}, "Sign", t0.Add(3*time.Second), "ev-b3", "req-b3")
		for arn, want := range map[string]string{arnA: "req-a2", arnB: "req-b3"} {
			if u, err := tr.Get(ctx, arn); err != nil || u.RequestID != want {
				t.Fatalf("fail=%v: Get(%s) during the flush = %+v, %v; want %s", fail, arn, u, err, want)
			}
		}
		close(st.release)
		if err := <-flushed; (err != nil) != fail {
			t.Fatalf("fail=%v: Flush = %v", fail, err)
		}
		st.setFail(nil)
		st.release = make(chan struct{})
		close(st.release)
		go func() { <-st.entered }()
		if err := tr.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		for id, want := range map[string]string{idA: "req-a2", "0987dcba-09fe-87dc-65ba-ab0987654321": "req-b3"} {
			if u, err := st.LastUse(ctx, accnt, region, id); err != nil || u.RequestID != want {
				t.Errorf("fail=%v: stored use of %s = %+v, %v; want %s", fail, id, u, err, want)
			}
		}
		if len(tr.uses) != 0 || tr.flushing != nil {
			t.Errorf("fail=%v: after the flushes %d uses in memory, flushing %v", fail, len(tr.uses), tr.flushing)
		}
	}
}

// TestEncodedAtRecord: Record encodes the use of a key new since the last
// flush, with the account and Region strings shared between uses; a
// later use of the key leaves the encoding to the flush, which journals
// the later use; an ARN that names no key is not encoded and not
// journaled.
func TestEncodedAtRecord(t *testing.T) {
	ctx := context.Background()
	st := newFakeStore()
	tr := newTracker(st)
	tr.running = true // flushed by the test only
	const notAKey = "arn:aws:kms:us-east-1:111122223333:alias/x"
	// Each ARN its own string, as each request builds its own.
	a1, b1 := strings.Clone(arnA), strings.Clone(arnB)
	tr.Record([]string{a1, b1, notAKey}, "ReEncrypt", t0, "ev-1", "req-1")
	ea, eb := tr.uses[arnA], tr.uses[arnB]
	if !ea.encoded || !eb.encoded || tr.uses[notAKey].encoded {
		t.Fatalf("encoded after Record: %v, %v, %v; want true, true, false", ea.encoded, eb.encoded, tr.uses[notAKey].encoded)
	}
	if unsafe.StringData(ea.account) != unsafe.StringData(eb.account) || unsafe.StringData(ea.region) != unsafe.StringData(eb.region) {
		t.Error("two uses of one account and Region do not share their strings")
	}
	tr.Record([]string{strings.Clone(arnA)}, "Sign", t0.Add(time.Second), "ev-2", "req-2")
	if ea.encoded {
		t.Error("a later use of a key left its earlier encoding")
	}
	if err := tr.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := st.batches[0]; len(got) != 2 {
		t.Fatalf("flush journaled %d uses, want 2 (the ARN naming no key dropped)", len(got))
	}
	for arn, want := range map[string]string{arnA: "req-2", arnB: "req-1"} {
		account, region, id, _ := split(arn)
		u, err := st.LastUse(ctx, account, region, id)
		if err != nil || u.RequestID != want {
			t.Errorf("%s: stored %+v, %v; want %s", arn, u, err, want)
		}
	}
}
