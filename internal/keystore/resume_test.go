package keystore

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/barrier"
	"github.com/kmsd/kmsd/internal/storage"
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

// TestRestartLeavesStoreAlone: a kmsd process starting on a database in
// which a store is CONNECTED — a restart, or a second node while the first
// is using the store — logs in with the stored password and changes
// nothing: the store is never seen CONNECTING, its record (state,
// password) stays byte for byte the same, and no new password is tried.
func TestRestartLeavesStoreAlone(t *testing.T) {
	ctx := context.Background()
	s, b := open(t, t.TempDir())
	f := &fakeBacking{}
	first := newManager(t, s, b, f)
	st := create(t, first, "one", "cluster-aaaaaaaaaaa")
	if err := first.Connect(ctx, st.Account, st.Region, st.ID); err != nil {
		t.Fatal(err)
	}
	waitState(t, first, st.ID, Connected, "")
	before, err := s.Get(ctx, recordPath(st.ID))
	if err != nil {
		t.Fatal(err)
	}
	pw, err := first.Password(state(t, first, st.ID))
	if err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	connects, rotations := len(f.secrets), f.rotations
	f.mu.Unlock()
	if rotations != 1 {
		t.Fatalf("the connect rotated %d times, want 1", rotations)
	}

	// A second process starts over the same database; the first is still
	// running and still has the store.
	second := newManager(t, s, b, f)
	if got := state(t, second, st.ID); got.State != Connected {
		t.Fatalf("the second process sees the store %s as it starts", got.State)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(2 * time.Millisecond) {
		f.mu.Lock()
		n := len(f.secrets)
		f.mu.Unlock()
		if n > connects {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the second process never logged in to the store's backing")
		}
	}
	second.Close() // waits for its connector
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.rotations != rotations {
		t.Errorf("the second process rotated the password (%d rotations, want %d)", f.rotations, rotations)
	}
	if got := f.secrets[len(f.secrets)-1]; got != string(pw) {
		t.Error("the second process logged in with another password than the stored one")
	}
	after, err := s.Get(ctx, recordPath(st.ID))
	if err != nil {
		t.Fatal(err)
	}
	if string(after) != string(before) {
		t.Errorf("the second process rewrote the store's record:\n%s\nwas\n%s", after, before)
	}
	if got := state(t, first, st.ID); got.State != Connected {
		t.Errorf("the first process sees the store %s", got.State)
	}
}

// TestResumeExternalThroughOutage: an external key store CONNECTED when
// kmsd stopped, whose proxy is down (or too slow, or drops the connection)
// when it starts again, stays CONNECTED and health-checks the proxy again
// by itself until it answers; a proxy that answers but refuses fails the
// store with the true code.
func TestResumeExternalThroughOutage(t *testing.T) {
	ctx := context.Background()
	s, b := open(t, t.TempDir())
	f := &fakeBacking{}
	cfg := Config{Backings: map[string]Backing{TypeExternal: f}, ResumeRetry: 10 * time.Millisecond}
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
	st, err := m.Create(ctx, &Store{Account: "111122223333", Region: "us-east-1", Name: "ext", Type: TypeExternal,
		XKS: &XKSConfig{Connectivity: XKSPublic, Endpoint: "https://proxy.example", Path: "/kms/xks/v1", AccessKeyID: "AKIDAAAAAAAAAAAAAAAA"}},
		"PleaseReplaceThisWithSomeSecretOfLength43To64")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Connect(ctx, st.Account, st.Region, st.ID); err != nil {
		t.Fatal(err)
	}
	waitState(t, m, st.ID, Connected, "")
	m.Close()

	for _, down := range []string{"XKS_PROXY_NOT_REACHABLE", "XKS_PROXY_TIMED_OUT", "NETWORK_ERRORS"} {
		f.setFail(&ConnectError{Code: down})
		delete(f.connected, st.ID)
		m = restart()
		waitState(t, m, st.ID, Connected, "")
		time.Sleep(50 * time.Millisecond) // a few retries
		if f.isConnected(st.ID) || state(t, m, st.ID).State != Connected {
			t.Fatalf("%s: resumed through the outage: %+v", down, state(t, m, st.ID))
		}
		f.setFail(nil)
		for deadline := time.Now().Add(10 * time.Second); !f.isConnected(st.ID); time.Sleep(2 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: the resumed store never checked its proxy again", down)
			}
		}
		waitState(t, m, st.ID, Connected, "")
		m.Close()
	}

	// Down at the start, then answering with a refusal: FAILED, its code.
	for _, refusal := range []string{"XKS_PROXY_INVALID_CONFIGURATION", "INVALID_CREDENTIALS", "XKS_PROXY_INVALID_TLS_CONFIGURATION"} {
		f.setFail(&ConnectError{Code: "XKS_PROXY_NOT_REACHABLE"})
		m = restart()
		waitState(t, m, st.ID, Connected, "")
		f.setFail(&ConnectError{Code: refusal})
		waitState(t, m, st.ID, Failed, refusal)
		if err := m.Disconnect(ctx, st.Account, st.Region, st.ID); err != nil {
			t.Fatal(err)
		}
		waitState(t, m, st.ID, Disconnected, "")
		f.setFail(nil)
		if err := m.Connect(ctx, st.Account, st.Region, st.ID); err != nil {
			t.Fatal(err)
		}
		waitState(t, m, st.ID, Connected, "")
		m.Close()
	}
	// Refusing already at the start: FAILED at once.
	f.setFail(&ConnectError{Code: "XKS_PROXY_ACCESS_DENIED"})
	m = restart()
	waitState(t, m, st.ID, Failed, "XKS_PROXY_ACCESS_DENIED")
}

// pinBacking is a token with one user PIN: Connect logs in with secret
// and, given next, changes the PIN to it (C_Login, C_SetPIN).
type pinBacking struct {
	mu     sync.Mutex
	pin    string
	failed int // logins refused
}

func (p *pinBacking) Connect(ctx context.Context, st *Store, secret, next []byte) (bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if string(secret) != p.pin {
		p.failed++
		return false, &ConnectError{Code: CodeInvalidCredentials}
	}
	if next != nil {
		p.pin = string(next)
	}
	return next != nil, nil
}

func (p *pinBacking) Disconnect(ctx context.Context, st *Store) error { return nil }

// TestPendingPasswords: two connectors rotated one store's password at
// once (a paused controller and its successor): the record holds the
// stored password and both intended ones, the token the older intended
// one (the paused connector's C_SetPIN landed last). The next connect
// finds it among the pending passwords, rotates from it, and the stored
// password logs in afterwards; a single pending slot would have lost it.
func TestPendingPasswords(t *testing.T) {
	ctx := context.Background()
	s, b := open(t, t.TempDir())
	tok := &pinBacking{pin: "kmsPswd1"}
	m, err := New(ctx, s, b, Config{Backings: map[string]Backing{TypeCloudHSM: tok}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	st := create(t, m, "one", "cluster-aaaaaaaaaaa")
	// The two intents, as the two connectors recorded them, and the PIN
	// the first one set.
	if err := m.set(ctx, st.ID, func(r *Store) error {
		for _, pw := range []string{"intentA", "intentB"} {
			sealed, err := b.Seal(nextPath(st.ID), []byte(pw))
			if err != nil {
				return err
			}
			addPending(r, sealed)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	tok.pin = "intentA"
	if err := m.Connect(ctx, st.Account, st.Region, st.ID); err != nil {
		t.Fatal(err)
	}
	waitState(t, m, st.ID, Connected, "")
	got := state(t, m, st.ID)
	pw, err := m.Password(got)
	if err != nil {
		t.Fatal(err)
	}
	tok.mu.Lock()
	defer tok.mu.Unlock()
	if string(pw) != tok.pin {
		t.Errorf("stored password does not log in: the token's PIN was rotated to something else")
	}
	if tok.pin == "intentA" {
		t.Errorf("not rotated on connect")
	}
	if len(got.Pending) != 0 || len(got.Next) != 0 {
		t.Errorf("pending passwords left after a recorded rotation: %d", len(got.Pending))
	}
	if tok.failed > 2 {
		t.Errorf("%d failed logins, want at most 2 (intentB, then intentA logs in)", tok.failed)
	}
}

// TestResumeRefusedBeforeLeading: a single node whose resume at start
// runs before it holds the controller lease (a previous process's lease
// not yet expired) is refused by the store's backing. While it does not
// lead it leaves the store CONNECTED to the controller and does not try
// the refused password again; once it leads it must decide the store's
// state itself: FAILED with the backing's code. Without that the store
// stayed CONNECTED for good (commit 1ade0d6).
func TestResumeRefusedBeforeLeading(t *testing.T) {
	// The password changed behind kmsd's back while it was stopped.
	s, b, f, st, logins := refusedAfterRestart(t, &ConnectError{Code: CodeInvalidCredentials, Err: errors.New("wrong password")})
	ctx := context.Background()
	lead := make(chan struct{})
	serve := func(ctx context.Context, fn func(ctx context.Context)) {
		select {
		case <-lead:
			fn(ctx)
		case <-ctx.Done():
		}
	}
	m, err := New(ctx, s, b, Config{Backings: map[string]Backing{TypeCloudHSM: f}, NodeID: "b", Serve: serve,
		ResumeRetry: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	eventually(t, "the resume's refused login", func() bool {
		m.mu.RLock()
		defer m.mu.RUnlock()
		_, refused := m.refused[st.ID]
		return refused
	})
	// Not the controller: the store is left as it is, and the refused
	// password is not tried again (kmsuser's lockout counts it).
	time.Sleep(10 * followTick)
	if got := state(t, m, st.ID); got.State != Connected || got.ErrorCode != "" {
		t.Fatalf("decided without the lease: %s %q", got.State, got.ErrorCode)
	}
	if n := logins(); n != 1 {
		t.Fatalf("%d logins before the node led, want 1", n)
	}

	// The lease is taken: the controller tries again and fails the store.
	close(lead)
	waitState(t, m, st.ID, Failed, CodeInvalidCredentials)
	if n := logins(); n != 2 {
		t.Errorf("%d logins in all, want 2 (one refused before the node led, one after)", n)
	}
}

// TestResumeRefusedRetried: a node that does not lead, whose resumed
// login the backing refuses for a reason that kmsuser's lockout does not
// count (here USER_NOT_FOUND, what SoftHSM2 answers for a token file read
// while another process rewrites it), tries again by itself, less and less
// often, and is logged in once the backing lets it — the store CONNECTED
// throughout. Before, it left the store to the controller, which was
// logged in and never changed the record, so this node answered its keys
// with errors until the store was reconnected (CI, d870649).
func TestResumeRefusedRetried(t *testing.T) {
	s, b, f, st, logins := refusedAfterRestart(t, &ConnectError{Code: CodeUserNotFound, Err: errors.New("token without its user")})
	ctx := context.Background()
	never := func(ctx context.Context, fn func(ctx context.Context)) { <-ctx.Done() }
	m, err := New(ctx, s, b, Config{Backings: map[string]Backing{TypeCloudHSM: f}, NodeID: "b", Serve: never,
		ResumeRetry: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	eventually(t, "three refused logins", func() bool { return logins() >= 3 })
	m.mu.RLock()
	_, refused := m.refused[st.ID]
	m.mu.RUnlock()
	if refused {
		t.Fatal("USER_NOT_FOUND left to the controller: this node would never log in again")
	}
	// Less and less often: 10, 20, 40, … ms apart, so 300 ms hold at most
	// about five refusals, where a fixed 10 ms would make thirty.
	n0 := logins()
	time.Sleep(300 * time.Millisecond)
	if n := logins() - n0; n > 6 {
		t.Errorf("%d refused logins in 300 ms: not backing off", n)
	}
	f.mu.Lock()
	f.fail = nil
	f.mu.Unlock()
	cur := state(t, m, st.ID)
	eventually(t, "the login once the backing lets it", func() bool {
		m.mu.RLock()
		defer m.mu.RUnlock()
		gen, in := m.local[st.ID]
		return in && gen == cur.Gen && len(m.refusedTries) == 0
	})
	if got := state(t, m, st.ID); got.State != Connected || got.ErrorCode != "" {
		t.Errorf("store %s %q, want CONNECTED throughout", got.State, got.ErrorCode)
	}
}

// TestRefusedRetryLeads: a node waiting to try its refused login again
// (here for an hour) that becomes the controller tries at once and
// decides the store's state: FAILED with the backing's code, as it did
// when refusals were not tried again (e2e/xks TestResumeRefusedBeforeLead).
func TestRefusedRetryLeads(t *testing.T) {
	s, b, f, st, logins := refusedAfterRestart(t, &ConnectError{Code: CodeUserLoggedIn, Err: errors.New("kmsuser is logged in")})
	lead := make(chan struct{})
	serve := func(ctx context.Context, fn func(ctx context.Context)) {
		select {
		case <-lead:
			fn(ctx)
		case <-ctx.Done():
		}
	}
	m, err := New(context.Background(), s, b, Config{Backings: map[string]Backing{TypeCloudHSM: f}, NodeID: "b", Serve: serve,
		ResumeRetry: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	eventually(t, "the resume's refused login", func() bool {
		m.mu.RLock()
		defer m.mu.RUnlock()
		return m.refusedTries[st.ID] == 1
	})
	if got := state(t, m, st.ID); got.State != Connected {
		t.Fatalf("decided without the lease: %s", got.State)
	}
	close(lead)
	waitState(t, m, st.ID, Failed, CodeUserLoggedIn)
	if n := logins(); n != 2 {
		t.Errorf("%d logins in all, want 2 (one refused before the node led, one after)", n)
	}
}

func TestRefusedDelay(t *testing.T) {
	for _, tc := range []struct {
		n    int
		want time.Duration
	}{{1, 5 * time.Second}, {2, 10 * time.Second}, {4, 40 * time.Second}, {5, time.Minute}, {50, time.Minute}} {
		if got := refusedDelay(5*time.Second, tc.n); got != tc.want {
			t.Errorf("refusedDelay(5s, %d) = %v, want %v", tc.n, got, tc.want)
		}
	}
	for _, tc := range []struct {
		typ, code string
		want      bool
	}{{TypeCloudHSM, CodeInvalidCredentials, false}, {TypeCloudHSM, CodeUserLockedOut, false},
		{TypeCloudHSM, CodeUserNotFound, true}, {TypeCloudHSM, CodeUserLoggedIn, true}, {TypeCloudHSM, CodeInternalError, true},
		{TypeExternal, CodeInvalidCredentials, true}} {
		if got := retriesRefusal(&Store{Type: tc.typ}, tc.code); got != tc.want {
			t.Errorf("retriesRefusal(%s, %s) = %v, want %v", tc.typ, tc.code, got, tc.want)
		}
	}
}

// refusedAfterRestart connects a store through a first manager, closes it
// and makes the backing refuse logins with fail from then on, as if the
// node restarted into a refusal. It returns the store's database and
// barrier for the next manager, the backing, the store, and a count of
// the logins tried since.
func refusedAfterRestart(t *testing.T, fail error) (storage.Store, *barrier.Barrier, *fakeBacking, *Store, func() int) {
	t.Helper()
	t.Cleanup(func(d time.Duration) func() { return func() { followTick = d } }(followTick)) // after the managers' Close, which are cleanups too
	followTick = 20 * time.Millisecond
	ctx := context.Background()
	s, b := open(t, t.TempDir())
	f := &fakeBacking{}
	m := newManager(t, s, b, f)
	st := create(t, m, "one", "cluster-aaaaaaaaaaa")
	if err := m.Connect(ctx, st.Account, st.Region, st.ID); err != nil {
		t.Fatal(err)
	}
	waitState(t, m, st.ID, Connected, "")
	m.Close()
	f.mu.Lock()
	f.fail = fail
	delete(f.connected, st.ID)
	tries := len(f.secrets)
	f.mu.Unlock()
	return s, b, f, st, func() int {
		f.mu.Lock()
		defer f.mu.Unlock()
		return len(f.secrets) - tries
	}
}
