package hsm

import (
	"context"
	"strings"
	"testing"

	"github.com/kmsd/kmsd/internal/hsmapi"
)

// TestFreeSlots: CreateHsm takes a token only from Config.FreeSlots.Slots
// (an HSM finding none there is DEGRADED, with the reason), and with a
// FactorySOPIN it initialises the token with that PIN and changes it to the
// cluster's at once: the cluster activates (an SO login with its own PIN)
// and serves kmsuser.
func TestFreeSlots(t *testing.T) {
	ctx := context.Background()
	t.Run("no free slot in the pool", func(t *testing.T) {
		s := newService(t, func(c *Config) { c.FreeSlots.Slots = []uint{1 << 30} })
		out, err := s.CreateCluster(ctx, caller, &hsmapi.CreateClusterRequest{HsmType: str("hsm2m.medium"), SubnetIds: []string{"subnet-0123456789abcdef0"}})
		if err != nil {
			t.Fatal(err)
		}
		id := *out.Cluster.ClusterId
		waitState(t, s, id, ClusterUninitialized)
		if _, err := s.CreateHsm(ctx, caller, &hsmapi.CreateHsmRequest{ClusterId: &id, AvailabilityZone: str("us-east-1a")}); err != nil {
			t.Fatal(err)
		}
		c := waitState(t, s, id, ClusterUninitialized)
		if h := c.Hsms[0]; *h.State != HSMDegraded || !strings.Contains(*h.StateMessage, "none of the module's slots [1073741824] has a free token") {
			t.Fatalf("HSM %s: %s %q, want DEGRADED for want of a free pool slot", *h.HsmId, *h.State, *h.StateMessage)
		}
	})
	t.Run("factory SO PIN", func(t *testing.T) {
		s := newService(t, func(c *Config) { c.FreeSlots.FactorySOPIN = "factory1" })
		id := activeCluster(t, s, 2)
		if err := s.Login(ctx, caller, id, "kmsuser", RoleCryptoUser, "kmspass1", "test"); err != nil {
			t.Fatal(err)
		}
		if err := s.Logout(ctx, caller, id, "kmsuser", RoleCryptoUser, "test"); err != nil {
			t.Fatal(err)
		}
	})
}
