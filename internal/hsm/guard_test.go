package hsm

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/kmsd/kmsd/internal/hsmapi"
)

// TestStoreGuard: a cluster, and its last HSM, are not deleted while the
// guard reports a CONNECTED or CONNECTING store; other HSMs are, and
// everything is once the store is disconnected.
func TestStoreGuard(t *testing.T) {
	s := newService(t)
	ctx := context.Background()
	id := activeCluster(t, s, 2)
	hsms := waitState(t, s, id, ClusterActive).Hsms
	first, last := *hsms[0].HsmId, *hsms[1].HsmId
	const store = "cks-1234567890abcdef0"
	storeState := ""
	s.SetStoreGuard(func(ctx context.Context, clusterID string, fn func(storeID, state string) error) error {
		if clusterID != id {
			t.Errorf("guard asked about %s, want %s", clusterID, id)
		}
		if storeState == "" {
			return fn("", "")
		}
		return fn(store, storeState)
	})
	deleteHsm := func(h string) func() error {
		return func() error {
			_, err := s.DeleteHsm(ctx, caller, &hsmapi.DeleteHsmRequest{ClusterId: &id, HsmId: &h})
			return err
		}
	}
	deleteCluster := func() error {
		_, err := s.DeleteCluster(ctx, caller, &hsmapi.DeleteClusterRequest{ClusterId: &id})
		return err
	}
	steps := []struct {
		name, state string
		call        func() error
		want        string // "" success, else the start of the refusal
	}{
		{"not the last HSM, connected", "CONNECTED", deleteHsm(first), ""},
		{"last HSM, connected", "CONNECTED", deleteHsm(last),
			"HSM " + last + " is the last HSM of cluster " + id + ", the backing cluster of custom key store " + store + ", which is CONNECTED. Disconnect the custom key store"},
		{"last HSM, connecting", "CONNECTING", deleteHsm(last), "HSM " + last + " is the last HSM of cluster " + id + ", the backing cluster of custom key store " + store + ", which is CONNECTING."},
		{"cluster, connected", "CONNECTED", deleteCluster,
			"Cluster " + id + " is the backing cluster of custom key store " + store + ", which is CONNECTED. Disconnect the custom key store before deleting the cluster."},
		{"cluster, connecting", "CONNECTING", deleteCluster, "Cluster " + id + " is the backing cluster of custom key store " + store + ", which is CONNECTING."},
		{"last HSM, disconnected", "", deleteHsm(last), ""},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			storeState = st.state
			err := st.call()
			if st.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			var e *hsmapi.Exception
			if !errors.As(err, &e) || e.Name != excInvalid || !strings.HasPrefix(e.Message, st.want) {
				t.Fatalf("err %v, want %s %q", err, excInvalid, st.want)
			}
		})
	}
	if c := waitState(t, s, id, ClusterActive); len(c.Hsms) != 0 { // waits out the deletions
		t.Fatalf("HSMs left: %v", c.Hsms)
	}
	if err := deleteCluster(); err != nil {
		t.Fatalf("DeleteCluster behind a disconnected store: %v", err)
	}
	waitState(t, s, id, ClusterDeleted)
}
