package keystore

import (
	"context"
	"testing"
	"time"
)

func (f *fakeBacking) setFail(err error) {
	f.mu.Lock()
	f.fail = err
	f.mu.Unlock()
}

func (f *fakeBacking) isConnected(id string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.connected[id]
}

// waitState polls store id until it is in state want with code.
func waitState(t *testing.T, m *Manager, id string, want State, code string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(2 * time.Millisecond) {
		st := state(t, m, id)
		if st.State == want && st.ErrorCode == code {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("store %s: %s %q, want %s %q", id, st.State, st.ErrorCode, want, code)
		}
	}
}

// TestResumeThroughOutage: a store CONNECTED when kmsd stopped, whose HSMs
// cannot be reached when it starts again, stays CONNECTED (as AWS keeps a
// store CONNECTED through an outage of its cluster) and logs in by itself
// once they answer; a backing that answers but refuses fails it with the
// true code; and a connect the caller asks for after a disconnect fails as
// any connect does.
func TestResumeThroughOutage(t *testing.T) {
	ctx := context.Background()
	s, b := open(t, t.TempDir())
	f := &fakeBacking{}
	cfg := Config{Backings: map[string]Backing{TypeCloudHSM: f}, ResumeRetry: 10 * time.Millisecond}
	restart := func() *Manager {
		t.Helper()
		m, err := New(ctx, s, b, cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(m.Close)
		return m
	}
	m := restart()
	st := create(t, m, "one", "cluster-aaaaaaaaaaa")
	if err := m.Connect(ctx, st.Account, st.Region, st.ID); err != nil {
		t.Fatal(err)
	}
	waitState(t, m, st.ID, Connected, "")
	m.Close()

	// The HSMs are down when kmsd starts: CONNECTED, not logged in.
	f.setFail(&ConnectError{Code: CodeInsufficientCloudHSMHSMs})
	delete(f.connected, st.ID)
	m = restart()
	waitState(t, m, st.ID, Connected, "")
	time.Sleep(50 * time.Millisecond) // a few retries
	if f.isConnected(st.ID) || state(t, m, st.ID).State != Connected {
		t.Fatalf("resumed through the outage: %+v", state(t, m, st.ID))
	}
	// They come back: logged in, still CONNECTED.
	f.setFail(nil)
	for deadline := time.Now().Add(10 * time.Second); !f.isConnected(st.ID); time.Sleep(2 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the resumed store never logged in")
		}
	}
	waitState(t, m, st.ID, Connected, "")
	m.Close()

	// Unreachable at the start, then refusing: FAILED with its code.
	f.setFail(&ConnectError{Code: CodeNetworkErrors})
	m = restart()
	waitState(t, m, st.ID, Connected, "")
	f.setFail(&ConnectError{Code: CodeInvalidCredentials})
	waitState(t, m, st.ID, Failed, CodeInvalidCredentials)

	// A connect asked for after a disconnect is the caller's: it fails.
	if err := m.Disconnect(ctx, st.Account, st.Region, st.ID); err != nil {
		t.Fatal(err)
	}
	waitState(t, m, st.ID, Disconnected, "")
	m.Close()
	f.setFail(nil)
	m = restart()
	if err := m.Connect(ctx, st.Account, st.Region, st.ID); err != nil {
		t.Fatal(err)
	}
	waitState(t, m, st.ID, Connected, "")
	m.Close()
	f.setFail(&ConnectError{Code: CodeNetworkErrors})
	m = restart()
	waitState(t, m, st.ID, Connected, "") // resumed, unreachable
	if err := m.Disconnect(ctx, st.Account, st.Region, st.ID); err != nil {
		t.Fatal(err)
	}
	waitState(t, m, st.ID, Disconnected, "")
	if err := m.Connect(ctx, st.Account, st.Region, st.ID); err != nil {
		t.Fatal(err)
	}
	waitState(t, m, st.ID, Failed, CodeNetworkErrors)
}
