package server

import (
	"fmt"
	"log/slog"
	"maps"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/controller"
	"github.com/kmsd/kmsd/internal/keystore"
)

// TestQuotaShareClaim: a node claims of each store the lowest demand it
// published since the oldest of its records the other live nodes split by
// (their Counts name it), so that none counts it for less than it claims;
// a node of an older version (no Counts) is taken to have split by a
// record at most a heartbeat old; one that split by no record of it, or by
// one it no longer remembers, makes it claim nothing.
func TestQuotaShareClaim(t *testing.T) {
	const a, b = "cks-aaaaaaaaaaaaaaaaa", "cks-bbbbbbbbbbbbbbbbb"
	t1, t2, t3 := time.Unix(1, 0), time.Unix(2, 0), time.Unix(3, 0)
	published := []published{
		{t1, map[string]float64{a: 100}},
		{t2, map[string]float64{a: 300, b: 50}},
		{t3, map[string]float64{a: 200, b: 80}},
	}
	counts := func(at time.Time) controller.Node {
		return controller.Node{ID: fmt.Sprint("p", at.Unix()), Counts: map[string]time.Time{"self": at, "p": {}}}
	}
	cases := []struct {
		name  string
		nodes []controller.Node
		want  map[string]float64
	}{
		{"alone: the last published", nil, map[string]float64{a: 200, b: 80}},
		{"its own record is no other's", []controller.Node{{ID: "self", Counts: map[string]time.Time{"self": t1}}}, map[string]float64{a: 200, b: 80}},
		{"split by the last", []controller.Node{counts(t3)}, map[string]float64{a: 200, b: 80}},
		{"split by the one before: the lower since", []controller.Node{counts(t2)}, map[string]float64{a: 200, b: 50}},
		{"the oldest split by counts", []controller.Node{counts(t3), counts(t1)}, map[string]float64{a: 100}},
		{"an older version: a heartbeat old", []controller.Node{{ID: "old"}}, map[string]float64{a: 200, b: 50}},
		{"split by no record of it", []controller.Node{counts(t3), counts(time.Time{})}, map[string]float64{}},
		{"split by one forgotten", []controller.Node{counts(time.Unix(0, 1))}, map[string]float64{}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := quotaShare{self: "self", published: published, nodes: c.nodes, n: 1 + len(c.nodes)}
			if got := s.claim(); !maps.Equal(got, c.want) {
				t.Errorf("claim %v, want %v", got, c.want)
			}
		})
	}
	s := quotaShare{self: "self", published: published[:1], nodes: []controller.Node{{ID: "old"}}}
	if got := s.claim(); len(got) != 0 {
		t.Errorf("first published, an older version beside: claim %v, want nothing (claimed from the next heartbeat)", got)
	}
}

// simNode is one node of a simulated cluster: its quota and the quota
// callbacks newController gives its controller, and what its controller's
// heartbeat keeps (controller.Controller.heartbeat): the live node set it
// last applied (Node.Counts) and, between the steps of one heartbeat, the
// live set and records it read.
type simNode struct {
	id     string
	quota  *keystore.Quota
	share  *quotaShare
	live   func(int)
	peers  func([]controller.Node, int)
	legacy bool // an older version: publishes no Counts
	rate   int  // requests offered a step

	leased bool
	counts map[string]time.Time
	step   int // next step of its heartbeat
	at     time.Time
	demand map[string]float64
	ls     []string
	recs   []controller.Node
}

// simCluster is nodes on one simulated database: node leases and records,
// a clock that moves a tenth of a second a step.
type simCluster struct {
	now     time.Time
	nodes   []*simNode
	records map[string]controller.Node
}

func (c *simCluster) add(id string, legacy bool, rate int) *simNode {
	q := keystore.NewQuota(1000, func() time.Time { return c.now })
	n := &simNode{id: id, quota: q, share: &quotaShare{}, legacy: legacy, rate: rate}
	n.share.start(id, true) // a node on PostgreSQL
	n.share.use(q)
	n.live, n.peers = quotaCallbacks(1000, n.share, slog.New(slog.DiscardHandler))
	c.nodes = append(c.nodes, n)
	return n
}

func (c *simCluster) write(n *simNode) {
	r := controller.Node{ID: n.id, Heartbeat: n.at, StoreDemand: n.demand}
	if !n.legacy {
		r.Counts = n.counts
	}
	c.records[n.id] = r
}

// beat runs node n's heartbeat's next step, as the controller orders
// them: take the lease and compute the demand of this heartbeat, read the
// live leases, read their records, then apply them (LiveNodes, Peers) and
// write the record, with the nodes just counted. Other nodes' steps may
// come between any two.
func (c *simCluster) beat(n *simNode) {
	switch n.step {
	case 0:
		n.leased = true
		n.at = c.now
		n.demand = n.share.demand(n.at)
	case 1:
		n.ls = nil
		for _, m := range c.nodes {
			if m.leased {
				n.ls = append(n.ls, m.id)
			}
		}
		slices.Sort(n.ls)
	case 2:
		n.recs = nil
		for _, id := range n.ls {
			if r, ok := c.records[id]; ok {
				n.recs = append(n.recs, r)
			}
		}
	case 3:
		n.live(len(n.ls))
		n.peers(n.recs, len(n.ls))
		n.counts = map[string]time.Time{}
		for _, id := range n.ls {
			n.counts[id] = time.Time{}
		}
		for _, r := range n.recs {
			n.counts[r.ID] = r.Heartbeat
		}
		c.write(n)
	}
	n.step = (n.step + 1) % 4
}

// TestQuotaJoinNeverOvershoots: a node joining two others, its
// heartbeats' steps interleaved with theirs in random orders and at
// random paces, never makes
// the nodes' shares of a store add up to more than the quota — neither of
// a store all of them are asked for (split by demand) nor of one nobody
// asks for (equal shares) — not before its first heartbeat, not at it,
// not until the others have counted it. It holds its quota until they
// have, and then takes its share: a third of the idle store's. Also when
// one of the others is an older version that publishes no Counts.
func TestQuotaJoinNeverOvershoots(t *testing.T) {
	const busy, idle = "cks-aaaaaaaaaaaaaaaaa", "cks-bbbbbbbbbbbbbbbbb"
	for _, legacy := range []bool{false, true} {
		var worstAll float64
		for seed := range uint64(200) {
			rnd := rand.New(rand.NewPCG(seed, 1))
			c := &simCluster{now: time.Unix(1e9, 0), records: map[string]controller.Node{}}
			a, b := c.add("a", false, 30), c.add("b", legacy, 10)
			// a and b run alone for a while: counted by each other.
			for range 40 {
				c.tick(rnd, !legacy, a, b)
			}
			if a.quota.Held() || b.quota.Held() {
				t.Fatalf("seed %d: a held %v, b held %v after about 10 heartbeats together", seed, a.quota.Held(), b.quota.Held())
			}
			j := c.add("j", false, 20)
			var heldFor int
			var worst float64
			for i := range 200 {
				c.tick(rnd, !legacy, a, b, j)
				for _, id := range []string{busy, idle} {
					var sum float64
					var each []string
					for _, n := range c.nodes {
						sum += n.quota.StoreShare(id)
						each = append(each, fmt.Sprintf("%s=%.4f held=%v", n.id, n.quota.StoreShare(id), n.quota.Held()))
					}
					if id == busy {
						worst = max(worst, sum)
					}
					if sum > 1+1e-9 {
						t.Fatalf("legacy %v, seed %d, step %d: the shares of %s add up to %.4f > 1: %s",
							legacy, seed, i, id, sum, strings.Join(each, " "))
					}
				}
				if j.quota.Held() {
					heldFor = i + 1
				}
			}
			if j.quota.Held() {
				t.Fatalf("legacy %v, seed %d: the joiner still holds its quota after about 50 heartbeats", legacy, seed)
			}
			if s := j.quota.StoreShare(idle); math.Abs(s-1.0/3) > 1e-9 {
				t.Errorf("legacy %v, seed %d: the joiner's share of an idle store %v, want 1/3", legacy, seed, s)
			}
			if seed == 0 {
				t.Logf("legacy %v, seed 0: the joiner held its quota for %d steps (%.1f heartbeats)", legacy, heldFor, float64(heldFor)/4)
			}
			if worst > worstAll {
				worstAll = worst
			}
		}
		t.Logf("legacy %v: the shares of the busy store added up to at most %.6f", legacy, worstAll)
	}
}

// tick moves the clock a tenth of a second, offers each node its rate of
// requests to the busy store, and runs in a random order one heartbeat
// step of each node, or if drift, up to two (as many as a random draw
// says, so that their heartbeats drift apart).
func (c *simCluster) tick(rnd *rand.Rand, drift bool, nodes ...*simNode) {
	c.now = c.now.Add(100 * time.Millisecond)
	for _, n := range nodes {
		for range n.rate {
			n.quota.Allow("cks-aaaaaaaaaaaaaaaaa")
		}
	}
	var order []*simNode
	for _, n := range nodes {
		k := 1
		if drift {
			k = rnd.IntN(3)
		}
		for range k {
			order = append(order, n)
		}
	}
	rnd.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
	for _, n := range order {
		c.beat(n)
	}
}
