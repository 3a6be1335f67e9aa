package keystore

import (
	"context"
	"testing"
	"time"
)

// TestGuardCluster: the guard reports the CONNECTED or CONNECTING store of
// the cluster asked about, and no store of it starts connecting while the
// guarded step runs.
func TestGuardCluster(t *testing.T) {
	ctx := context.Background()
	const acct, reg = "111122223333", "us-east-1"
	s, b := open(t, t.TempDir())
	f := &fakeBacking{block: make(chan struct{})}
	m := newManager(t, s, b, f)
	busy := create(t, m, "busy", "cluster-aaaaaaaaaaa")
	idle := create(t, m, "idle", "cluster-bbbbbbbbbbb")
	if err := m.Connect(ctx, acct, reg, busy.ID); err != nil { // CONNECTING until f.block is closed
		t.Fatal(err)
	}
	guard := func(cluster string) (string, string) {
		var id, state string
		if err := m.GuardCluster(ctx, cluster, func(storeID, st string) error { id, state = storeID, st; return nil }); err != nil {
			t.Fatal(err)
		}
		return id, state
	}
	tests := []struct {
		name, cluster, wantID, wantState string
	}{
		{"connecting store", "cluster-aaaaaaaaaaa", busy.ID, "CONNECTING"},
		{"disconnected store", "cluster-bbbbbbbbbbb", "", ""},
		{"no store", "cluster-zzzzzzzzzzz", "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if id, st := guard(tc.cluster); id != tc.wantID || st != tc.wantState {
				t.Fatalf("guard = %q %q, want %q %q", id, st, tc.wantID, tc.wantState)
			}
		})
	}
	close(f.block)
	m.Wait()
	if id, st := guard("cluster-aaaaaaaaaaa"); id != busy.ID || st != "CONNECTED" {
		t.Fatalf("after connecting: guard = %q %q", id, st)
	}

	t.Run("no connect starts during the guarded step", func(t *testing.T) {
		connected := make(chan error, 1)
		err := m.GuardCluster(ctx, "cluster-bbbbbbbbbbb", func(storeID, st string) error {
			go func() { connected <- m.Connect(ctx, acct, reg, idle.ID) }()
			time.Sleep(50 * time.Millisecond)
			if got := state(t, m, idle.ID).State; got != Disconnected {
				t.Errorf("store became %s during the guarded step", got)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := <-connected; err != nil {
			t.Fatal(err)
		}
		m.Wait()
		if got := state(t, m, idle.ID).State; got != Connected {
			t.Fatalf("after the guarded step: %s", got)
		}
	})
}
