package keystore

import (
	"sync"
	"testing"
	"time"
)

// fakeClock is a clock the test moves by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// allowN counts how many of n requests store id is allowed.
func allowN(q *Quota, id string, n int) int {
	ok := 0
	for range n {
		if q.Allow(id) {
			ok++
		}
	}
	return ok
}

// TestQuota: a store takes a burst of one second's worth of requests, then
// rps a second as the clock moves; stores do not share buckets; an idle
// store never saves more than one second's worth; rps 0 is no limit.
func TestQuota(t *testing.T) {
	clk := &fakeClock{t: time.Date(2026, 12, 4, 20, 0, 0, 0, time.UTC)}
	q := NewQuota(20, clk.now)
	const a, b = "cks-aaaaaaaaaaaaaaaaa", "cks-bbbbbbbbbbbbbbbbb"
	steps := []struct {
		name    string
		advance time.Duration
		id      string
		ask     int
		want    int
	}{
		{"burst of one second's worth", 0, a, 25, 20},
		{"empty bucket, clock still", 0, a, 1, 0},
		{"another store has its own bucket", 0, b, 20, 20},
		{"half a second refills half", 500 * time.Millisecond, a, 20, 10},
		{"a fraction of a token is not a token", 40 * time.Millisecond, a, 1, 0},
		{"fractions add up", 10 * time.Millisecond, a, 2, 1},
		{"an idle minute saves one second's worth", time.Minute, a, 100, 20},
		{"the clock going back takes nothing and gives nothing", -time.Second, a, 1, 0},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			clk.add(s.advance)
			if got := allowN(q, s.id, s.ask); got != s.want {
				t.Fatalf("allowed %d of %d, want %d", got, s.ask, s.want)
			}
		})
	}
	t.Run("refusals are counted", func(t *testing.T) {
		got := map[string]uint64{}
		q.Each(func(id string, n uint64) { got[id] = n })
		// a: 5 + 1 + 10 + 1 + 1 + 80 + 1 refused in the steps above; b: none.
		if got[a] != 99 || got[b] != 0 {
			t.Fatalf("refused: %v", got)
		}
	})
	t.Run("forget drops the bucket", func(t *testing.T) {
		q.Forget(b)
		if got := allowN(q, b, 30); got != 20 {
			t.Fatalf("a forgotten store's new bucket allowed %d, want 20", got)
		}
	})
	t.Run("rps 0 is no limit", func(t *testing.T) {
		var none *Quota = NewQuota(0, clk.now)
		if none != nil || allowN(none, a, 10000) != 10000 || none.RPS() != 0 {
			t.Fatal("a zero quota limits")
		}
		none.Forget(a)
		none.Each(func(string, uint64) { t.Fatal("a zero quota has buckets") })
	})
	t.Run("default clock", func(t *testing.T) {
		if q := NewQuota(DefaultRPS, nil); q.RPS() != 1800 || allowN(q, a, 1800) != 1800 {
			t.Fatalf("default quota: rps %d", q.RPS())
		}
	})
}

// TestQuotaConcurrent: concurrent callers of one store share its bucket
// exactly (run with -race).
func TestQuotaConcurrent(t *testing.T) {
	clk := &fakeClock{t: time.Unix(0, 0)}
	q := NewQuota(1000, clk.now)
	var wg sync.WaitGroup
	var mu sync.Mutex
	total := 0
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := allowN(q, "cks-ccccccccccccccccc", 500)
			mu.Lock()
			total += n
			mu.Unlock()
		}()
	}
	wg.Wait()
	if total != 1000 {
		t.Fatalf("8×500 concurrent requests: %d allowed, want 1000", total)
	}
}

// TestQuotaAllocs: after a store's first request, Allow allocates nothing.
func TestQuotaAllocs(t *testing.T) {
	q := NewQuota(DefaultRPS, nil)
	id := "cks-ddddddddddddddddd"
	q.Allow(id)
	if n := testing.AllocsPerRun(1000, func() { q.Allow(id) }); n != 0 {
		t.Fatalf("Allow allocates %v times a call", n)
	}
}

func BenchmarkQuotaAllow(b *testing.B) {
	q := NewQuota(1<<30, nil)
	id := "cks-eeeeeeeeeeeeeeeee"
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			q.Allow(id)
		}
	})
}

// TestQuotaShare: with a share of 1/3 (three nodes) a store's bucket
// holds and refills a third of the quota; a grown share refills at the
// higher rate, a shrunk one caps the saved tokens at once.
func TestQuotaShare(t *testing.T) {
	clk := &fakeClock{t: time.Date(2026, 12, 4, 20, 0, 0, 0, time.UTC)}
	q := NewQuota(1800, clk.now)
	q.SetShare(1.0 / 3)
	const a = "cks-aaaaaaaaaaaaaaaaa"
	if got := allowN(q, a, 1000); got != 600 {
		t.Errorf("burst with a third: %d, want 600", got)
	}
	clk.add(time.Second)
	if got := allowN(q, a, 1000); got != 600 {
		t.Errorf("one second with a third: %d, want 600", got)
	}
	q.SetShare(0.5)
	clk.add(time.Second)
	if got := allowN(q, a, 1000); got != 900 {
		t.Errorf("one second with a half: %d, want 900", got)
	}
	clk.add(time.Second)
	q.SetShare(0.25)
	if got := allowN(q, a, 1000); got != 450 {
		t.Errorf("a full bucket after the share shrank to a quarter: %d, want 450", got)
	}
	for _, bad := range []float64{0, -1, 1.5} {
		q.SetShare(bad)
		if q.Share() != 0.25 {
			t.Errorf("SetShare(%v) changed the share to %v", bad, q.Share())
		}
	}
}

// TestDemandShares: a store's quota is split by the live nodes' demand,
// every node keeping a tenth of its equal share; the shares of one store
// add up to 1; a store nobody asks for is left to the equal share.
func TestDemandShares(t *testing.T) {
	const s1, s2 = "cks-11111111111111111", "cks-22222222222222222"
	demand := map[string]map[string]float64{
		"a": {s1: 900, s2: 10},
		"b": {s1: 100},
		"c": nil, // live, asked nothing
	}
	sum := map[string]float64{}
	got := map[string]map[string]float64{}
	for _, n := range []string{"a", "b", "c"} {
		got[n] = DemandShares(n, 3, demand)
		for id, s := range got[n] {
			sum[id] += s
		}
	}
	near := func(a, b float64) bool { return a-b < 1e-9 && b-a < 1e-9 }
	floor := 0.1 / 3
	cases := []struct {
		name      string
		node, id  string
		want      float64
		wantFound bool
	}{
		{"the busiest node takes most", "a", s1, floor + 0.9*0.9, true},
		{"a smaller demand, a smaller share", "b", s1, floor + 0.9*0.1, true},
		{"a node asked nothing keeps the floor", "c", s1, floor, true},
		{"the only node asking takes all but the floors", "a", s2, floor + 0.9, true},
		{"others keep the floor", "b", s2, floor, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, ok := got[c.node][c.id]
			if ok != c.wantFound || !near(s, c.want) {
				t.Fatalf("%s's share of %s: %v (found %v), want %v", c.node, c.id, s, ok, c.want)
			}
		})
	}
	for id, s := range sum {
		if !near(s, 1) {
			t.Errorf("shares of %s add up to %v, want 1", id, s)
		}
	}
	if _, ok := got["a"]["cks-33333333333333333"]; ok {
		t.Error("a store nobody asks for has a share")
	}
	if s := DemandShares("a", 1, map[string]map[string]float64{"a": {s1: 3}}); s[s1] != 1 {
		t.Errorf("a node alone: share %v, want exactly 1", s[s1])
	}
	if DemandShares("a", 0, demand) != nil {
		t.Error("no live nodes: shares")
	}
}

// TestStoreShares: a store's share by demand sets its bucket's rate and
// capacity; other stores keep the equal share; Demand reports what each
// store was asked (allowed or not), smoothed, and forgets an idle store.
func TestStoreShares(t *testing.T) {
	clk := &fakeClock{t: time.Date(2026, 12, 5, 1, 0, 0, 0, time.UTC)}
	q := NewQuota(100, clk.now)
	const a, b = "cks-aaaaaaaaaaaaaaaaa", "cks-bbbbbbbbbbbbbbbbb"
	q.SetShare(0.5)
	q.SetStoreShares(map[string]float64{a: 0.8})
	if got := allowN(q, a, 200); got != 80 {
		t.Fatalf("store a with share 0.8 of 100: burst %d, want 80", got)
	}
	if got := allowN(q, b, 200); got != 50 {
		t.Fatalf("store b with the equal share 0.5: burst %d, want 50", got)
	}
	if s := q.StoreShare(a); s != 0.8 {
		t.Fatalf("StoreShare(a) = %v", s)
	}
	clk.add(2 * time.Second)
	d := q.Demand() // 200 asked of each in 2 s: 100/s, halved by smoothing from 0
	if d[a] != 50 || d[b] != 50 {
		t.Fatalf("demand %v, want 50/s each (100/s smoothed with the 0 before)", d)
	}
	clk.add(time.Second)
	allowN(q, a, 100)
	d = q.Demand()
	if d[a] != 75 || d[b] != 25 {
		t.Fatalf("demand %v, want a 75/s and b 25/s", d)
	}
	for range 20 {
		clk.add(time.Second)
		d = q.Demand()
	}
	if _, ok := d[b]; ok {
		t.Fatalf("an idle store still has demand: %v", d)
	}
	q.SetStoreShares(nil)
	if s := q.StoreShare(a); s != 0.5 {
		t.Fatalf("StoreShare(a) after the shares by demand were dropped: %v, want the equal 0.5", s)
	}
}

// TestQuotaHold: a held quota refuses every request of every store, still
// counts them as demand, and keeps the shares it was given; released, a
// store's bucket holds and refills the node's share again.
func TestQuotaHold(t *testing.T) {
	clk := &fakeClock{t: time.Date(2026, 12, 4, 20, 0, 0, 0, time.UTC)}
	q := NewQuota(1800, clk.now)
	q.SetShare(1.0 / 3)
	const a, b = "cks-aaaaaaaaaaaaaaaaa", "cks-bbbbbbbbbbbbbbbbb"
	q.SetStoreShares(map[string]float64{b: 0.5})
	if got := allowN(q, a, 100); got != 100 {
		t.Fatalf("before the hold: %d of 100, want 100", got)
	}
	q.Hold(true)
	if !q.Held() {
		t.Error("Held after Hold(true): false")
	}
	clk.add(time.Second)
	for _, id := range []string{a, b, "cks-ccccccccccccccccc"} {
		if got := allowN(q, id, 100); got != 0 {
			t.Errorf("held, store %s: %d of 100 let through, want 0", id, got)
		}
		if s := q.StoreShare(id); s != 0 {
			t.Errorf("held, store %s: share %v, want 0", id, s)
		}
	}
	clk.add(time.Second)
	if d := q.Demand(); d[a] < 50 || d[b] < 50 {
		t.Errorf("held: demand %v, want the refused requests counted", d)
	}
	q.Hold(false)
	if q.Held() || q.Share() != 1.0/3 || q.StoreShare(b) != 0.5 {
		t.Errorf("released: held %v, share %v, store share %v; want false, 1/3, 1/2", q.Held(), q.Share(), q.StoreShare(b))
	}
	if got := allowN(q, a, 1000); got != 600 {
		t.Errorf("released after a second: %d, want 600 (a full bucket of a third)", got)
	}
	clk.add(time.Second)
	if got := allowN(q, a, 1000); got != 600 {
		t.Errorf("one second after release with a third: %d, want 600", got)
	}
}
