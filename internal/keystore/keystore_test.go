package keystore

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/barrier"
	"github.com/kmsd/kmsd/internal/hsm"
	"github.com/kmsd/kmsd/internal/storage"
	"github.com/kmsd/kmsd/internal/storage/sqlite"
)

// TestValidity is spec §6.3, row by row.
func TestValidity(t *testing.T) {
	states := []State{Disconnected, Connecting, Connected, Failed, Disconnecting}
	table := []struct {
		op   Op
		want [5]bool // in the order of states
	}{
		{OpConnect, [5]bool{true, true, true, false, false}},
		{OpDisconnect, [5]bool{false, true, true, true, false}},
		{OpUpdateLive, [5]bool{true, false, true, false, false}},
		{OpUpdate, [5]bool{true, false, false, false, false}},
		{OpDelete, [5]bool{true, false, false, false, false}},
		{OpCreateKey, [5]bool{false, false, true, false, false}},
		{OpCrypto, [5]bool{false, false, true, false, false}},
		{OpGenerateRandom, [5]bool{false, false, true, false, false}},
		{OpDescribe, [5]bool{true, true, true, true, true}},
	}
	for _, row := range table {
		for i, st := range states {
			t.Run(row.op.String()+"/"+string(st), func(t *testing.T) {
				if got := st.Allows(row.op); got != row.want[i] {
					t.Fatalf("%s in %s: allowed %v, want %v", row.op, st, got, row.want[i])
				}
			})
		}
	}
}

// fakeBacking records connects; fail, when set, is the error of Connect.
type fakeBacking struct {
	mu        sync.Mutex
	fail      error
	secrets   []string
	connected map[string]bool
	block     chan struct{} // when not nil, Connect waits for it
	// guarded: Connect checks the context's act guard before it rotates,
	// as hsm.Service.RotatePassword does before C_SetPIN.
	guarded     bool
	disconnects int
	rotations   int // Connect calls given a next password
	// holdDisconnect, when not nil, is what Disconnect waits for.
	holdDisconnect chan struct{}
}

func (f *fakeBacking) Connect(ctx context.Context, st *Store, secret, next []byte) (bool, error) {
	if f.block != nil {
		<-f.block
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.secrets = append(f.secrets, string(secret))
	if next != nil && f.guarded {
		if err := hsm.ActGuard(ctx); err != nil {
			return false, err
		}
	}
	if next != nil {
		f.rotations++
	}
	if f.fail != nil {
		return false, f.fail
	}
	if f.connected == nil {
		f.connected = map[string]bool{}
	}
	f.connected[st.ID] = true
	return next != nil, nil
}

func (f *fakeBacking) Disconnect(ctx context.Context, st *Store) error {
	f.mu.Lock()
	hold := f.holdDisconnect
	f.mu.Unlock()
	if hold != nil {
		select {
		case <-hold:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.connected, st.ID)
	f.disconnects++
	return nil
}

func open(t *testing.T, dir string) (storage.Store, *barrier.Barrier) {
	t.Helper()
	s, err := sqlite.Open(context.Background(), filepath.Join(dir, "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	b, err := barrier.New(make([]byte, 32))
	if err != nil {
		t.Fatal(err)
	}
	return s, b
}

func newManager(t *testing.T, s storage.Store, b *barrier.Barrier, f *fakeBacking) *Manager {
	t.Helper()
	m, err := New(context.Background(), s, b, Config{Backings: map[string]Backing{TypeCloudHSM: f}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m
}

func create(t *testing.T, m *Manager, name, cluster string) *Store {
	t.Helper()
	st, err := m.Create(context.Background(), &Store{Account: "111122223333", Region: "us-east-1", Name: name, Type: TypeCloudHSM,
		ClusterID: cluster, TrustAnchor: "anchor", ClusterCert: "cert-" + cluster}, "kmsPswd1")
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func state(t *testing.T, m *Manager, id string) *Store {
	t.Helper()
	st, err := m.Get("111122223333", "us-east-1", id)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestConnectLifecycle(t *testing.T) {
	ctx := context.Background()
	s, b := open(t, t.TempDir())
	f := &fakeBacking{}
	m := newManager(t, s, b, f)
	st := create(t, m, "one", "cluster-aaaaaaaaaaa")
	if len(st.ID) != 21 || st.ID[:4] != "cks-" || st.State != Disconnected {
		t.Fatalf("created %+v", st)
	}
	const acct, reg = "111122223333", "us-east-1"
	if err := m.Disconnect(ctx, acct, reg, st.ID); !errors.Is(err, ErrInvalidState) {
		t.Fatalf("disconnect DISCONNECTED: %v", err)
	}
	if err := m.Connect(ctx, acct, reg, st.ID); err != nil {
		t.Fatal(err)
	}
	m.Wait()
	got := state(t, m, st.ID)
	if got.State != Connected || got.ErrorCode != "" || len(got.Next) != 0 {
		t.Fatalf("after connect: %+v", got)
	}
	// The password was rotated: the next connect uses the new one.
	pw, _ := m.Password(got)
	if string(pw) == "kmsPswd1" || f.secrets[0] != "kmsPswd1" {
		t.Fatalf("password not rotated: %q, connect used %q", pw, f.secrets)
	}
	if err := m.Connect(ctx, acct, reg, st.ID); err != nil { // no-op
		t.Fatal(err)
	}
	if err := m.Delete(ctx, acct, reg, st.ID, nil); !errors.Is(err, ErrInvalidState) {
		t.Fatalf("delete CONNECTED: %v", err)
	}
	if err := m.Update(ctx, acct, reg, st.ID, Update{Password: ptr("kmsPswd2")}); !errors.Is(err, ErrInvalidState) {
		t.Fatalf("password update while CONNECTED: %v", err)
	}
	if err := m.Update(ctx, acct, reg, st.ID, Update{Name: ptr("renamed")}); err != nil {
		t.Fatalf("rename while CONNECTED: %v", err)
	}
	if err := m.Disconnect(ctx, acct, reg, st.ID); err != nil {
		t.Fatal(err)
	}
	m.Wait()
	if got := state(t, m, st.ID); got.State != Disconnected || f.connected[st.ID] {
		t.Fatalf("after disconnect: %+v", got)
	}

	// A failed connect records the backing's code; FAILED refuses connect
	// and accepts disconnect, which clears the code.
	f.fail = &ConnectError{Code: CodeInvalidCredentials, Err: errors.New("wrong")}
	if err := m.Connect(ctx, acct, reg, st.ID); err != nil {
		t.Fatal(err)
	}
	m.Wait()
	if got := state(t, m, st.ID); got.State != Failed || got.ErrorCode != CodeInvalidCredentials {
		t.Fatalf("after failed connect: %+v", got)
	}
	if err := m.Connect(ctx, acct, reg, st.ID); !errors.Is(err, ErrInvalidState) {
		t.Fatalf("connect FAILED: %v", err)
	}
	f.fail = errors.New("anything")
	m.Disconnect(ctx, acct, reg, st.ID)
	m.Wait()
	if got := state(t, m, st.ID); got.State != Disconnected || got.ErrorCode != "" {
		t.Fatalf("after disconnect of FAILED: %+v", got)
	}
	m.Connect(ctx, acct, reg, st.ID)
	m.Wait()
	if got := state(t, m, st.ID); got.ErrorCode != CodeInternalError {
		t.Fatalf("untyped backing error: %+v", got)
	}
	m.Disconnect(ctx, acct, reg, st.ID)
	m.Wait()
	if err := m.Delete(ctx, acct, reg, st.ID, &KeyCheck{Before: func(context.Context, string) (bool, error) { return true, nil }}); !errors.Is(err, ErrHasKeys) {
		t.Fatalf("delete with keys: %v", err)
	}
	if err := m.Delete(ctx, acct, reg, st.ID, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Get(acct, reg, st.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after delete: %v", err)
	}
}

func TestCreateRules(t *testing.T) {
	ctx := context.Background()
	s, b := open(t, t.TempDir())
	m := newManager(t, s, b, &fakeBacking{})
	st := create(t, m, "one", "cluster-aaaaaaaaaaa")
	// Identical values: the same store.
	if again := create(t, m, "one", "cluster-aaaaaaaaaaa"); again.ID != st.ID {
		t.Fatalf("identical create made %s, want %s", again.ID, st.ID)
	}
	base := Store{Account: "111122223333", Region: "us-east-1", Type: TypeCloudHSM, TrustAnchor: "anchor"}
	for _, tc := range []struct {
		name, store, cluster, cert, pw string
		want                           error
	}{
		{"other password", "one", "cluster-aaaaaaaaaaa", "cert-cluster-aaaaaaaaaaa", "kmsPswd2", ErrNameInUse},
		{"same name", "one", "cluster-bbbbbbbbbbb", "b", "kmsPswd1", ErrNameInUse},
		{"same cluster", "two", "cluster-aaaaaaaaaaa", "x", "kmsPswd1", ErrClusterInUse},
		{"backup-related cluster", "two", "cluster-ccccccccccc", "cert-cluster-aaaaaaaaaaa", "kmsPswd1", ErrClusterInUse},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := base
			in.Name, in.ClusterID, in.ClusterCert = tc.store, tc.cluster, tc.cert
			if _, err := m.Create(ctx, &in, tc.pw); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
	// Another account may use the same name.
	other := base
	other.Account, other.Name, other.ClusterID = "444455556666", "one", "cluster-aaaaaaaaaaa"
	if _, err := m.Create(ctx, &other, "kmsPswd1"); err != nil {
		t.Fatal(err)
	}
}

// TestResume: a kmsd stopped while a store was CONNECTING finishes the
// connect at the next start; CONNECTED stores reconnect.
func TestResume(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, b := open(t, dir)
	f := &fakeBacking{block: make(chan struct{})}
	m, err := New(ctx, s, b, Config{Backings: map[string]Backing{TypeCloudHSM: f}, ConnectDelay: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	one := create(t, m, "one", "cluster-aaaaaaaaaaa")
	m.Connect(ctx, one.Account, one.Region, one.ID)
	m.Close() // the connector never ran
	if got := state(t, m, one.ID); got.State != Connecting {
		t.Fatalf("before restart: %+v", got)
	}
	close(f.block)
	f.block = nil
	m2 := newManager(t, s, b, f)
	m2.Wait()
	if got := state(t, m2, one.ID); got.State != Connected {
		t.Fatalf("after restart: %+v", got)
	}
	m2.Close()
	m3 := newManager(t, s, b, f)
	m3.Wait()
	if got := state(t, m3, one.ID); got.State != Connected || len(f.secrets) != 2 {
		t.Fatalf("after second restart: %+v, connects %d", got, len(f.secrets))
	}
}

func ptr(s string) *string { return &s }

// TestConnectResultsReported checks that every asynchronous connect
// outcome reaches OnConnectResult (the server audits them): CONNECTED,
// and FAILED with its code.
func TestConnectResultsReported(t *testing.T) {
	ctx := context.Background()
	s, b := open(t, t.TempDir())
	f := &fakeBacking{}
	var mu sync.Mutex
	var got []string
	m, err := New(ctx, s, b, Config{Backings: map[string]Backing{TypeCloudHSM: f}, OnConnectResult: func(st Store, state, code string) {
		mu.Lock()
		got = append(got, st.Name+":"+state+":"+code)
		mu.Unlock()
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	st := create(t, m, "audited", "cluster-bbbbbbbbbbb")
	const acct, reg = "111122223333", "us-east-1"
	m.Connect(ctx, acct, reg, st.ID)
	m.Wait()
	m.Disconnect(ctx, acct, reg, st.ID)
	m.Wait()
	f.fail = &ConnectError{Code: CodeUserLockedOut, Err: errors.New("locked")}
	m.Connect(ctx, acct, reg, st.ID)
	m.Wait()
	mu.Lock()
	defer mu.Unlock()
	want := []string{"audited:CONNECTED:", "audited:FAILED:USER_LOCKED_OUT"}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("reported %q, want %q", got, want)
	}
}
