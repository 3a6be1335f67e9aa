package server

import (
	"maps"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/keystore"
)

// TestQuotaShareClaim: a node counts for itself the lower of its last two
// published demands, so a rising demand is claimed a heartbeat late and a
// falling one at once; a store first asked for is claimed from the next
// heartbeat.
func TestQuotaShareClaim(t *testing.T) {
	now := time.Unix(0, 0)
	q := keystore.NewQuota(1000, func() time.Time { return now })
	var s quotaShare
	s.use(q)
	beat := func(ask map[string]int) map[string]float64 {
		for id, n := range ask {
			for range n {
				q.Allow(id)
			}
		}
		now = now.Add(time.Second)
		s.demand()
		return s.claim()
	}
	const a, b = "cks-aaaaaaaaaaaaaaaaa", "cks-bbbbbbbbbbbbbbbbb"
	steps := []struct {
		name string
		ask  map[string]int
		want map[string]float64
	}{
		{"first asked: claimed from the next heartbeat", map[string]int{a: 200}, map[string]float64{a: 0}},
		{"rising: the lower, older demand", map[string]int{a: 200}, map[string]float64{a: 100}},
		{"steady", map[string]int{a: 150, b: 100}, map[string]float64{a: 150, b: 0}},
		{"falling: the lower, newer demand", map[string]int{a: 50, b: 100}, map[string]float64{a: 100, b: 50}},
	}
	for _, st := range steps {
		if got := beat(st.ask); !maps.Equal(got, st.want) {
			t.Fatalf("%s: claim %v, want %v", st.name, got, st.want)
		}
	}
}
