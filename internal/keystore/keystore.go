package keystore

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kmsd/kmsd/internal/barrier"
	"github.com/kmsd/kmsd/internal/hsm"
	"github.com/kmsd/kmsd/internal/storage"
)

// Store is the record of one custom key store. Records handed out by the
// Manager are copies; change a store through the Manager.
type Store struct {
	ID          string    `json:"id"` // cks- + 17 hex digits
	Account     string    `json:"account"`
	Region      string    `json:"region"`
	Name        string    `json:"name"`
	Type        string    `json:"type"`
	Created     time.Time `json:"created"`
	ClusterID   string    `json:"clusterId,omitempty"`
	TrustAnchor string    `json:"trustAnchor,omitempty"`
	// ClusterCert identifies the cluster's backup lineage (clusters
	// restored from one backup share it).
	ClusterCert string `json:"clusterCert,omitempty"`
	// Password is kmsuser's password, sealed under passwordPath. Pending
	// are the passwords connects were rotating to (each sealed under
	// nextPath), oldest first, recorded before the rotation and kept until
	// its outcome is, so that neither a crash nor a paused connector whose
	// rotation lands after another's ever loses the password
	// (MULTINODE.md §4.7): a connect tries them, newest first, before
	// rotating. Next is the single pending password of records written
	// before Pending, read as its first element.
	Password  []byte   `json:"password,omitempty"`
	Pending   [][]byte `json:"pending,omitempty"`
	Next      []byte   `json:"next,omitempty"`
	State     State    `json:"state"`
	ErrorCode string   `json:"errorCode,omitempty"`
	// XKS is the proxy configuration of an external key store (its secret
	// is Password, sealed like kmsuser's).
	XKS *XKSConfig `json:"xks,omitempty"`
	// Rev counts the record's writes, so that a node never replaces the
	// record it holds with an older one (install).
	Rev int64 `json:"rev,omitempty"`
	// Gen is the connection generation: one more at every connect that
	// succeeds. A node logs in to a CONNECTED store's backing once per
	// generation (nodes.go).
	Gen int64 `json:"gen,omitempty"`
}

func recordPath(id string) string   { return "keystore/" + id }
func passwordPath(id string) string { return recordPath(id) + "/password" }
func nextPath(id string) string     { return recordPath(id) + "/next" }

// maxPending bounds the pending passwords kept and tried: far below the
// five failed logins that lock CloudHSM's kmsuser out.
const maxPending = 3

// pending returns st's pending passwords, sealed, newest first.
func pending(st *Store) [][]byte {
	var out [][]byte
	for i := len(st.Pending) - 1; i >= 0 && len(out) < maxPending; i-- {
		out = append(out, st.Pending[i])
	}
	if len(st.Next) > 0 && len(out) < maxPending {
		out = append(out, st.Next)
	}
	return out
}

// addPending records sealed as the newest pending password of st.
func addPending(st *Store, sealed []byte) {
	if len(st.Next) > 0 {
		st.Pending = append([][]byte{st.Next}, st.Pending...)
		st.Next = nil
	}
	st.Pending = append(st.Pending, sealed)
	if len(st.Pending) > maxPending {
		st.Pending = st.Pending[len(st.Pending)-maxPending:]
	}
}

// settled records that st's password is known again: nothing pending.
func settled(st *Store) { st.Pending, st.Next = nil, nil }

// Backing is what connecting means for one store type.
type Backing interface {
	// Connect makes the connection to st's backing store with secret (the
	// stored password) and, if the backing rotates it, leaves next as the
	// new one. It returns whether it rotated; a failure is a *ConnectError
	// carrying the ConnectionErrorCode (any other error: INTERNAL_ERROR).
	Connect(ctx context.Context, st *Store, secret, next []byte) (rotated bool, err error)
	// Disconnect ends the connection; the backing store is otherwise left
	// as it is.
	Disconnect(ctx context.Context, st *Store) error
}

// Checker is a Backing's optional synchronous check at ConnectCustomKeyStore
// (spec §5.2: some problems fail the call and leave the store DISCONNECTED).
type Checker interface {
	CheckConnect(ctx context.Context, st *Store) error
}

// Config configures a Manager.
type Config struct {
	// Backings by store type (TypeCloudHSM, TypeExternal).
	Backings map[string]Backing
	// ConnectDelay is how long a store at least stays CONNECTING or
	// DISCONNECTING, so clients can observe the transient states.
	ConnectDelay time.Duration
	// Limit is the number of stores per account and Region; 10 when zero.
	Limit int
	// OnConnectResult, if set, is told the outcome of every asynchronous
	// connect: CONNECTED, or FAILED with its ConnectionErrorCode (the
	// server records these as audit events).
	OnConnectResult func(st Store, state, code string)
	// Connectors is how many stores connect at once (DefaultConnectors
	// when zero); more wait, CONNECTING, for their turn. Many stores
	// connecting at once — TLS handshakes with their proxies, logins to
	// their HSMs and password rotations, the records written — would
	// otherwise take the CPU from the requests kmsd serves meanwhile
	// (e2e/xks TestStoresAtScale on two CPUs: 100 stores at once raised
	// plain-key Encrypt's p99 2.2–2.3× unlimited, 1.4–1.8× at 4 at once,
	// 1.3× at 2, and took 1.2–2.2 s, 1.4–2.4 s and 2.4–2.9 s to settle —
	// while every connect's writes still queued behind the
	// ConnectCustomKeyStore calls' for one lock; see DefaultConnectors).
	Connectors int
	// ResumeRetry is how often a store that was CONNECTED when kmsd
	// stopped, and whose backing could not be reached when it started
	// again, tries to log in once more (resumeRetry when zero).
	ResumeRetry time.Duration
	Now         func() time.Time
	Rand        io.Reader
	Logger      *slog.Logger

	// NodeID names this node among those sharing the database ("local"
	// when empty): its logins are published under it (nodes.go).
	NodeID string
	// Serve, when set, runs fn whenever this node is the controller, with
	// a context that ends with the controller's term and whose writes are
	// fenced by its lease (controller.Controller.Serve over a store
	// wrapped by controller.Fence); the manager's controller work —
	// connects, password rotations, completing disconnects — runs only
	// there. When nil the manager is its own controller (one node).
	Serve func(ctx context.Context, fn func(ctx context.Context))
	// LiveNodes lists the nodes that hold a live node lease; a disconnect
	// waits for each of them to log out. nil: this node only.
	LiveNodes func(ctx context.Context) ([]string, error)
	// ActUntil, when set, tells until when a controller context's lease
	// lets it act (its local deadline); a password rotation does not start
	// unless rotateMargin remains.
	ActUntil func(ctx context.Context) (time.Time, bool)
	// Failpoint, when set, is called at the named points of the
	// controller's connect and disconnect (fault-injection tests make the
	// process exit there).
	Failpoint func(name string)
}

// DefaultConnectors is Config.Connectors when zero: one per two CPUs
// (GOMAXPROCS), at least one, so that stores connecting at once keep at
// most about half the CPUs busy and the requests kmsd serves meanwhile
// keep the rest. One per CPU sufficed while the connector's writes queued
// behind every ConnectCustomKeyStore call's for one lock (Manager.wmu),
// each write decoding every store record: that paced a mass connect (100
// stores settled in 2.1–3.2 s on two CPUs, Encrypt p99 1.3–1.6× idle).
// The controller's writes no longer take that lock and read one record,
// so only the connectors' number paces them: at one per CPU the 100
// stores settled in ~0.9 s on a quiet two-CPU host with plain-key
// Encrypt's p99 2.6–2.9× idle meanwhile.
func DefaultConnectors() int { return max(1, runtime.GOMAXPROCS(0)/2) }

// maxTurn is how long a connect holds its turn at most: one that takes
// longer (a backing that hangs) keeps running, but lets the next store
// connect.
var maxTurn = 5 * time.Second

// Manager keeps the custom key stores of a kmsd process and runs their
// connector: the asynchronous half of connect and disconnect.
type Manager struct {
	cfg     Config
	store   storage.Store
	barrier *barrier.Barrier
	log     *slog.Logger

	ctx    context.Context // ends at Close
	cancel context.CancelFunc
	wg     tasks // the steps in progress

	connectors chan struct{} // a token per connect in progress

	wmu    sync.Mutex // serialises writes (names and clusters stay unique)
	mu     sync.RWMutex
	stores map[string]*Store
	// unreachableLogged marks the CONNECTED stores whose backing this node
	// could not reach to log in, once that was logged (resume.go).
	unreachableLogged map[string]bool

	// This node's side of the stores (nodes.go), under mu: local holds the
	// generation of each store this node is logged in to; rowIn the stores
	// whose node row says it may be; following the stores with a login or
	// logout of this node in progress; refused the Rev of the record whose
	// password the backing refused to this node (not tried again);
	// refusedTries how many logins in a row the backing refused for a
	// reason a login may outlast (tried again, resume.go).
	local        map[string]int64
	rowIn        map[string]bool
	following    map[string]bool
	refused      map[string]int64
	refusedTries map[string]int

	// The controller's side: ctlCtx is the current term's context (nil:
	// not the controller), led a channel closed when this node takes
	// control (replaced when its term ends), running the stores with a
	// controller step scheduled or in progress, ctlWG those steps.
	ctlMu   sync.Mutex
	ctlCtx  context.Context
	led     chan struct{}
	running map[string]bool
	ctlWG   sync.WaitGroup

	ctlKick, nodeKick chan struct{}
	loops             sync.WaitGroup // the control and follow loops

	// rotations counts the kmsuser password rotations (C_SetPIN) this
	// process made (Rotations).
	rotations atomic.Int64
}

// Rotations is how many times this process changed a key store's kmsuser
// password on its cluster (C_SetPIN at connect), for metrics and tests:
// only the controller rotates, and a controller paused past its lease
// must not once it runs again.
func (m *Manager) Rotations() int64 { return m.rotations.Load() }

// New loads the stores kept in store and resumes their connections:
// CONNECTING stores are connected, CONNECTED ones logged in to their
// backing again with their current password and left CONNECTED (their
// record is not written), DISCONNECTING ones finish disconnecting, so none
// stays in a transient state.
func New(ctx context.Context, store storage.Store, b *barrier.Barrier, cfg Config) (*Manager, error) {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	if cfg.Limit == 0 {
		cfg.Limit = 10
	}
	if cfg.ResumeRetry <= 0 {
		cfg.ResumeRetry = resumeRetry
	}
	if cfg.Connectors <= 0 {
		cfg.Connectors = DefaultConnectors()
	}
	if cfg.NodeID == "" {
		cfg.NodeID = "local"
	}
	m := &Manager{cfg: cfg, store: store, barrier: b, log: cfg.Logger, stores: map[string]*Store{},
		unreachableLogged: map[string]bool{}, connectors: make(chan struct{}, cfg.Connectors),
		local: map[string]int64{}, rowIn: map[string]bool{}, following: map[string]bool{}, refused: map[string]int64{}, refusedTries: map[string]int{},
		led:     make(chan struct{}),
		running: map[string]bool{}, ctlKick: make(chan struct{}, 1), nodeKick: make(chan struct{}, 1)}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	entries, err := store.List(ctx, "keystore/", "", 0)
	if err != nil {
		return nil, fmt.Errorf("keystore: load: %w", err)
	}
	for _, e := range entries {
		st := new(Store)
		if err := json.Unmarshal(e.Value, st); err != nil {
			return nil, fmt.Errorf("keystore: decode %s: %w", e.Key, err)
		}
		m.stores[st.ID] = st
	}
	if err := m.loadRows(ctx); err != nil {
		return nil, err
	}
	// This node logs in to the CONNECTED stores again as they are — no
	// write, no new password (resume.go): other nodes may be using them,
	// logged in with that password — and out of the others (nodes.go).
	m.reconcile()
	m.loops.Add(2)
	go func() { defer m.loops.Done(); m.follow() }()
	if cfg.Serve == nil {
		// Its own controller: CONNECTING stores are connected and
		// DISCONNECTING ones finish disconnecting from here on.
		m.takeControl(m.ctx)
		go func() { defer m.loops.Done(); m.controlLoop(m.ctx) }()
	} else {
		go func() { defer m.loops.Done(); cfg.Serve(m.ctx, m.control) }()
	}
	return m, nil
}

// Close stops the connector.
func (m *Manager) Close() {
	m.cancel()
	m.loops.Wait()
	m.wg.Wait()
}

// Wait blocks until the connector has nothing in progress (tests).
func (m *Manager) Wait() { m.wg.Wait() }

// tasks counts the steps in progress. Unlike a sync.WaitGroup it may be
// added to while waited on: the control and follow loops start steps at
// any time, and Wait returns once none is left.
type tasks struct {
	mu   sync.Mutex
	cond *sync.Cond
	n    int
}

func (t *tasks) Add(d int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.n += d
	if t.n == 0 && t.cond != nil {
		t.cond.Broadcast()
	}
}

func (t *tasks) Done() { t.Add(-1) }

func (t *tasks) Wait() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.cond == nil {
		t.cond = sync.NewCond(&t.mu)
	}
	for t.n > 0 {
		t.cond.Wait()
	}
}

func clone(st *Store) *Store {
	c := *st
	c.Password = bytes.Clone(st.Password)
	c.Next = bytes.Clone(st.Next)
	c.Pending = make([][]byte, len(st.Pending))
	for i, p := range st.Pending {
		c.Pending[i] = bytes.Clone(p)
	}
	if st.XKS != nil {
		x := *st.XKS
		c.XKS = &x
	}
	return &c
}

// Get returns store id of account and region.
func (m *Manager) Get(account, region, id string) (*Store, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	st, ok := m.stores[id]
	if !ok || st.Account != account || st.Region != region {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return clone(st), nil
}

// GetFresh is Get read from the database (getFresh), for a caller that
// decides on a store's state before it changes the store.
func (m *Manager) GetFresh(ctx context.Context, account, region, id string) (*Store, error) {
	return m.getFresh(ctx, account, region, id)
}

// getFresh is Get read from the database, for the operations that change
// a store: they decide on the record as stored now, not as this node's
// change feed last brought it. (A Connect that found a store CONNECTED in
// a stale copy answered success as a no-op although another node had
// disconnected it: not linearizable, MULTINODE §4.2.) The record read is
// installed.
func (m *Manager) getFresh(ctx context.Context, account, region, id string) (*Store, error) {
	db, err := getStore(ctx, m.store, id)
	if err != nil {
		var ce callerError
		if errors.As(err, &ce) {
			return nil, ce.err
		}
		return nil, err
	}
	m.install(db)
	if db.Account != account || db.Region != region {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return clone(db), nil
}

// List returns the stores of account and region in creation order.
func (m *Manager) List(account, region string) []*Store {
	m.mu.RLock()
	var out []*Store
	for _, st := range m.stores {
		if st.Account == account && st.Region == region {
			out = append(out, clone(st))
		}
	}
	m.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return storeLess(out[i], out[j]) })
	return out
}

// ListFresh is List for DescribeCustomKeyStores, a control-plane read: the
// stores as the database has them now, so that every node answers alike —
// a store made or deleted through another node a moment ago, whose change
// this node's feed has not brought yet, is listed (or not) as it is
// (MULTINODE.md §4.7). What it reads is installed in the cache (a newer
// record held is kept there, by Rev); a store it no longer finds is left
// to the change feed to drop, so that a create committed after the read
// began is never dropped from the cache by it.
func (m *Manager) ListFresh(ctx context.Context, account, region string) ([]*Store, error) {
	out, err := listStores(ctx, m.store, account, region)
	if err != nil {
		return nil, fmt.Errorf("keystore: list: %w", err)
	}
	for i, st := range out {
		m.install(st)
		out[i] = clone(st)
	}
	sort.Slice(out, func(i, j int) bool { return storeLess(out[i], out[j]) })
	return out, nil
}

// install makes st, read from or written to the database, the record
// this process holds, unless it holds a newer one (a higher Rev). A new
// state or connection generation wakes the control and follow loops.
func (m *Manager) install(st *Store) {
	m.mu.Lock()
	cur, ok := m.stores[st.ID]
	if !ok || st.Rev >= cur.Rev {
		m.stores[st.ID] = st
	}
	changed := !ok || (st.Rev >= cur.Rev && (cur.State != st.State || cur.Gen != st.Gen))
	m.mu.Unlock()
	if changed {
		m.kick()
	}
}

// set applies fn to a copy of store id, read in the transaction that
// stores the result; an error from fn changes nothing. fn may run more
// than once (storage.Store.Update) and must keep no state between runs.
func (m *Manager) set(ctx context.Context, id string, fn func(st *Store) error) error {
	m.wmu.Lock()
	defer m.wmu.Unlock()
	return m.setLocked(ctx, id, fn)
}

func (m *Manager) setLocked(ctx context.Context, id string, fn func(st *Store) error) error {
	return m.updateWith(ctx, id, fn, nil)
}

// update is set whose fn also sees every other store of the record's
// account and Region as the same transaction reads them, for the
// uniqueness rules (names, clusters, proxies), which then hold across
// nodes. Only the changes those rules concern use it: reading the peers
// decodes every store record, and a connect's writes — a hundred stores
// connecting at once — have no rule to check against them.
func (m *Manager) update(ctx context.Context, id string, fn func(st *Store, others []*Store) error) error {
	return m.write(ctx, id, true, fn, nil)
}

// updateWith is set (without its lock) whose also, when not nil, runs in
// the same transaction after fn, with the record as it will be stored, to
// read and write other records (node rows); an error from it changes
// nothing.
func (m *Manager) updateWith(ctx context.Context, id string, fn func(st *Store) error,
	also func(tx storage.Tx, next *Store) error) error {
	return m.write(ctx, id, false, func(st *Store, _ []*Store) error { return fn(st) }, also)
}

// write is update (peers true) or updateWith (peers false: fn is given no
// other stores).
func (m *Manager) write(ctx context.Context, id string, peers bool, fn func(st *Store, others []*Store) error,
	also func(tx storage.Tx, next *Store) error) error {
	var next *Store
	err := m.store.Update(ctx, func(tx storage.Tx) error {
		cur, err := getStore(ctx, tx, id)
		if err != nil {
			return err
		}
		var others []*Store
		if peers {
			if others, err = listStores(ctx, tx, cur.Account, cur.Region); err != nil {
				return err
			}
			others = slices.DeleteFunc(others, func(o *Store) bool { return o.ID == id })
		}
		next = clone(cur)
		if err := fn(next, others); err != nil {
			return callerError{err}
		}
		if also != nil {
			if err := also(tx, next); err != nil {
				return callerError{err}
			}
		}
		was, err := json.Marshal(cur)
		if err != nil {
			return err
		}
		b, err := json.Marshal(next)
		if err != nil {
			return err
		}
		if bytes.Equal(b, was) {
			return nil // nothing changed: no write, no new Rev
		}
		next.Rev = cur.Rev + 1
		if b, err = json.Marshal(next); err != nil {
			return err
		}
		return tx.Put(ctx, recordPath(id), b)
	})
	if err != nil {
		return storeError(id, err)
	}
	m.install(next)
	return nil
}

// getStore reads store id in tx.
func getStore(ctx context.Context, tx storage.Reader, id string) (*Store, error) {
	b, err := tx.Get(ctx, recordPath(id))
	if errors.Is(err, storage.ErrNotFound) {
		return nil, callerError{fmt.Errorf("%w: %s", ErrNotFound, id)}
	}
	if err != nil {
		return nil, err
	}
	st := new(Store)
	if err := json.Unmarshal(b, st); err != nil {
		return nil, fmt.Errorf("keystore: decode %s: %w", id, err)
	}
	return st, nil
}

// listStores reads the stores of account and region in tx.
func listStores(ctx context.Context, tx storage.Reader, account, region string) ([]*Store, error) {
	entries, err := tx.List(ctx, "keystore/", "", 0)
	if err != nil {
		return nil, err
	}
	var out []*Store
	for _, e := range entries {
		st := new(Store)
		if err := json.Unmarshal(e.Value, st); err != nil {
			return nil, fmt.Errorf("keystore: decode %s: %w", e.Key, err)
		}
		if st.Account == account && st.Region == region {
			out = append(out, st)
		}
	}
	return out, nil
}

// callerError carries an error that is the caller's answer (a state or
// uniqueness rule, or fn's own) out of storage.Update unchanged.
type callerError struct{ err error }

func (e callerError) Error() string { return e.err.Error() }

// storeError is what a write of store id returns for err from
// storage.Update.
func storeError(id string, err error) error {
	var ce callerError
	if errors.As(err, &ce) {
		return ce.err
	}
	return fmt.Errorf("keystore: store %s: %w", id, err)
}

// Seal seals a store secret (kmsuser's password) for the record path.
func (m *Manager) sealPassword(id string, pw []byte) ([]byte, error) {
	return m.barrier.Seal(passwordPath(id), pw)
}

// Password opens store st's sealed password.
func (m *Manager) Password(st *Store) ([]byte, error) {
	if len(st.Password) == 0 {
		return nil, errors.New("keystore: no password for " + st.ID)
	}
	return m.barrier.Open(passwordPath(st.ID), st.Password)
}

// newID returns "cks-" and 17 lowercase hex digits.
func (m *Manager) newID() (string, error) {
	b := make([]byte, 9)
	if _, err := io.ReadFull(m.cfg.Rand, b); err != nil {
		return "", err
	}
	return "cks-" + hex.EncodeToString(b)[:17], nil
}

// Create adds a store (DISCONNECTED) from st's account, region, name,
// type and type-specific settings, with password sealed. A CloudHSM store
// whose values all equal those of an existing DISCONNECTED store is not
// created again: that store is returned (spec §5.1, idempotent retry).
func (m *Manager) Create(ctx context.Context, st *Store, password string) (*Store, error) {
	m.wmu.Lock()
	defer m.wmu.Unlock()
	s := clone(st)
	id, err := m.newID()
	if err != nil {
		return nil, err
	}
	s.ID, s.State, s.ErrorCode, s.Rev = id, Disconnected, "", 1
	settled(s)
	s.Created = m.cfg.Now().UTC().Truncate(time.Millisecond)
	if password != "" {
		if s.Password, err = m.sealPassword(id, []byte(password)); err != nil {
			return nil, err
		}
	}
	b, err := json.Marshal(s)
	if err != nil {
		return nil, err
	}
	// The uniqueness rules are checked in the transaction that creates the
	// record, so two nodes cannot both create a name.
	var existing *Store
	err = m.store.Update(ctx, func(tx storage.Tx) error {
		existing = nil
		others, err := listStores(ctx, tx, st.Account, st.Region)
		if err != nil {
			return err
		}
		sort.Slice(others, func(i, j int) bool { return storeLess(others[i], others[j]) })
		for _, o := range others {
			if st.Type == TypeCloudHSM && o.Type == TypeCloudHSM && o.State == Disconnected && o.Name == st.Name &&
				o.ClusterID == st.ClusterID && o.TrustAnchor == st.TrustAnchor {
				if pw, err := m.Password(o); err == nil && string(pw) == password {
					existing = o
					return nil
				}
			}
			if o.Name == st.Name {
				return callerError{fmt.Errorf("%w: %s", ErrNameInUse, st.Name)}
			}
			if err := xksConflict(st, o); err != nil {
				return callerError{err}
			}
			if st.Type == TypeCloudHSM && o.Type == TypeCloudHSM &&
				(o.ClusterID == st.ClusterID || (st.ClusterCert != "" && o.ClusterCert == st.ClusterCert)) {
				return callerError{fmt.Errorf("%w: %s backs %s", ErrClusterInUse, st.ClusterID, o.ID)}
			}
		}
		if len(others) >= m.cfg.Limit {
			return callerError{ErrLimitExceeded}
		}
		return tx.Create(ctx, recordPath(id), b)
	})
	if err != nil {
		return nil, storeError(id, err)
	}
	if existing != nil {
		m.install(existing)
		return clone(existing), nil
	}
	m.install(s)
	return clone(s), nil
}

// storeLess orders stores by creation, then id.
func storeLess(a, b *Store) bool {
	if !a.Created.Equal(b.Created) {
		return a.Created.Before(b.Created)
	}
	return a.ID < b.ID
}

// Update is a change to a store; nil members stay as they are.
type Update struct {
	Name        *string
	Password    *string
	ClusterID   *string
	ClusterCert string // the new cluster's, with ClusterID
}

// Update applies u to store id, all or nothing, under the state rules:
// a new name needs a state allowing OpUpdateLive, anything else OpUpdate.
func (m *Manager) Update(ctx context.Context, account, region, id string, u Update) error {
	m.wmu.Lock()
	defer m.wmu.Unlock()
	cur, err := m.getFresh(ctx, account, region, id)
	if err != nil {
		return err
	}
	op := OpUpdateLive
	if u.Password != nil || u.ClusterID != nil {
		op = OpUpdate
	}
	if !cur.State.Allows(op) {
		return &StateError{Op: op, State: cur.State, ID: id}
	}
	return m.update(ctx, id, func(st *Store, others []*Store) error {
		if st.State != cur.State {
			return &StateError{Op: op, State: st.State, ID: id}
		}
		if u.Name != nil && *u.Name != st.Name {
			for _, o := range others {
				if o.Name == *u.Name {
					return fmt.Errorf("%w: %s", ErrNameInUse, *u.Name)
				}
			}
		}
		if u.Name != nil {
			st.Name = *u.Name
		}
		if u.ClusterID != nil {
			st.ClusterID = *u.ClusterID
			if u.ClusterCert != "" {
				st.ClusterCert = u.ClusterCert
			}
		}
		if u.Password != nil {
			sealed, err := m.sealPassword(id, []byte(*u.Password))
			if err != nil {
				return err
			}
			st.Password = sealed
			settled(st)
		}
		return nil
	})
}

// CheckCreateKey checks, reading through tx — the transaction that writes
// a new KMS key into store want.ID (catalog.CreateKeyIf) — that the store
// is still the one the key was made for: present in want's account and
// Region, in a state that allows CreateKey (CONNECTED), of want's type and
// cluster, and not reconnected since (the same connection generation). A
// CreateKey checks want, read fresh, before it makes the key's material;
// this check makes the decision one with the write, so that a store
// disconnected or deleted through another node a moment before cannot get
// the key (with DeleteCustomKeyStore's check of keys in its own
// transaction, whichever commits second sees the other). It returns
// ErrNotFound, a *StateError for OpCreateKey, or ErrInvalidState.
func CheckCreateKey(ctx context.Context, tx storage.Reader, want *Store) error {
	st, err := getStore(ctx, tx, want.ID)
	if err != nil {
		var ce callerError
		if errors.As(err, &ce) {
			return ce.err
		}
		return err
	}
	if st.Account != want.Account || st.Region != want.Region {
		return fmt.Errorf("%w: %s", ErrNotFound, want.ID)
	}
	if !st.State.Allows(OpCreateKey) {
		return &StateError{Op: OpCreateKey, State: st.State, ID: st.ID}
	}
	if st.Type != want.Type || st.ClusterID != want.ClusterID || st.Gen != want.Gen {
		return fmt.Errorf("%w: custom key store %s was disconnected and connected again while the key was being created; retry", ErrInvalidState, st.ID)
	}
	return nil
}

// KeyCheck tells Delete whether KMS keys live in a store.
type KeyCheck struct {
	// Before answers first, outside any transaction, and may write (the
	// catalog indexes an older store there, and drops stale entries).
	Before func(ctx context.Context, id string) (bool, error)
	// In answers again in the transaction that deletes the store, reading
	// only through tx, so that a key created concurrently through another
	// node is seen here or sees the store gone (CheckCreateKey): never a
	// key left in a deleted store.
	In func(ctx context.Context, tx storage.Reader, id string) (bool, error)
}

// Delete removes a DISCONNECTED store; keys, when not nil, reports whether
// KMS keys still live in it (ErrHasKeys).
func (m *Manager) Delete(ctx context.Context, account, region, id string, keys *KeyCheck) error {
	m.wmu.Lock()
	defer m.wmu.Unlock()
	cur, err := m.getFresh(ctx, account, region, id)
	if err != nil {
		return err
	}
	if !cur.State.Allows(OpDelete) {
		return &StateError{Op: OpDelete, State: cur.State, ID: id}
	}
	if keys != nil && keys.Before != nil {
		has, err := keys.Before(ctx, id)
		if err != nil {
			return err
		}
		if has {
			return fmt.Errorf("%w: %s", ErrHasKeys, id)
		}
	}
	err = m.store.Update(ctx, func(tx storage.Tx) error {
		st, err := getStore(ctx, tx, id)
		if err != nil {
			return err
		}
		if !st.State.Allows(OpDelete) {
			return callerError{&StateError{Op: OpDelete, State: st.State, ID: id}}
		}
		if keys != nil && keys.In != nil {
			has, err := keys.In(ctx, tx, id)
			if err != nil {
				return err
			}
			if has {
				return callerError{fmt.Errorf("%w: %s", ErrHasKeys, id)}
			}
		}
		if err := deleteRows(ctx, tx, id); err != nil {
			return err
		}
		return tx.Delete(ctx, recordPath(id))
	})
	if err != nil {
		return storeError(id, err)
	}
	m.mu.Lock()
	delete(m.stores, id)
	m.mu.Unlock()
	return nil
}

// Connect starts connecting store id: from DISCONNECTED it becomes
// CONNECTING and the connector takes over; CONNECTING and CONNECTED are
// left as they are. The backing's synchronous check, if any, runs first.
func (m *Manager) Connect(ctx context.Context, account, region, id string) error {
	cur, err := m.getFresh(ctx, account, region, id)
	if err != nil {
		return err
	}
	if !cur.State.Allows(OpConnect) {
		return &StateError{Op: OpConnect, State: cur.State, ID: id}
	}
	if cur.State != Disconnected {
		return nil // no-op
	}
	b, ok := m.cfg.Backings[cur.Type]
	if !ok {
		return fmt.Errorf("keystore: no backing for %s stores", cur.Type)
	}
	if c, ok := b.(Checker); ok {
		if err := c.CheckConnect(ctx, cur); err != nil {
			return err
		}
	}
	started := false
	err = m.set(ctx, id, func(st *Store) error {
		started = false
		switch st.State {
		case Disconnected:
			st.State, st.ErrorCode, started = Connecting, "", true
			return nil
		case Connecting, Connected:
			return nil
		}
		return &StateError{Op: OpConnect, State: st.State, ID: id}
	})
	if err == nil && started {
		// At once on the controller; through the change feed on others.
		m.schedule(id, m.cfg.ConnectDelay, m.finishConnect)
	}
	return err
}

// Disconnect starts disconnecting store id: CONNECTED, CONNECTING and
// FAILED stores become DISCONNECTING, then DISCONNECTED with no error code.
func (m *Manager) Disconnect(ctx context.Context, account, region, id string) error {
	if _, err := m.getFresh(ctx, account, region, id); err != nil {
		return err
	}
	err := m.set(ctx, id, func(st *Store) error {
		if !st.State.Allows(OpDisconnect) {
			return &StateError{Op: OpDisconnect, State: st.State, ID: id}
		}
		st.State = Disconnecting
		return nil
	})
	if err == nil {
		m.forgetResumed(id) // the next connect is the caller's own
		m.schedule(id, m.cfg.ConnectDelay, m.finishDisconnect)
	}
	return err
}

// start runs step for store id in the background after d, with ctx,
// unless ctx ends first (the record then resumes at the next start, or
// the next controller's term); done, when not nil, runs at the end either
// way.
func (m *Manager) start(ctx context.Context, id string, d time.Duration, step func(ctx context.Context, id string), done func()) {
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		if done != nil {
			defer done()
		}
		if d > 0 {
			t := time.NewTimer(d)
			defer t.Stop()
			select {
			case <-t.C:
			case <-ctx.Done():
				return
			}
		}
		if ctx.Err() == nil {
			step(ctx, id)
		}
	}()
}

// finishConnect is the controller's connect (ctx is its term's: every
// write is fenced by its lease). It waits until no other live node is
// logged in to the store, draws the next password, records it sealed
// before the backing rotates to it (the intent), and records the outcome
// — CONNECTED with the next connection generation and this node's login,
// or FAILED with the backing's error code. Rotations whose outcome was
// never recorded (a controller killed or paused between intent and
// record) are resolved first: their passwords are tried, newest first,
// and the one that logs in is adopted. A store that left CONNECTING
// meanwhile (disconnected) is not touched, and a connection made for it
// is undone.
func (m *Manager) finishConnect(ctx context.Context, id string) {
	m.mu.RLock()
	pre, ok := m.stores[id]
	m.mu.RUnlock()
	if !ok || pre.State != Connecting {
		return
	}
	// One kmsuser login per node: another node still logged in would be
	// logged out from under by the rotation (MULTINODE.md §4.7). Waiting
	// for it needs no turn: it would hold up the other stores' connects
	// (nodes log in only to CONNECTED stores, so none logs in meanwhile).
	var others []string
	var othersErr error
	if pre.Type == TypeCloudHSM {
		if others, othersErr = m.waitOthersLoggedOut(ctx, id); ctx.Err() != nil {
			return
		}
	}
	release, ok := m.turn(ctx)
	if !ok {
		return
	}
	defer release()
	m.mu.RLock()
	cur, ok := m.stores[id]
	m.mu.RUnlock()
	if !ok || cur.State != Connecting {
		return
	}
	fail := func(code string, err error) {
		m.log.Warn("keystore: connect failed", "store", id, "code", code, "err", err)
		if m.set(ctx, id, func(st *Store) error {
			if st.State != Connecting {
				return errSkip
			}
			st.State, st.ErrorCode = Failed, code
			return nil
		}) == nil {
			m.report(cur, Failed, code)
		}
	}
	b, ok := m.cfg.Backings[cur.Type]
	if !ok {
		fail(CodeInternalError, fmt.Errorf("no backing for %s stores", cur.Type))
		return
	}
	if cur.Type == TypeCloudHSM {
		if othersErr != nil {
			fail(CodeInternalError, othersErr)
			return
		}
		if len(others) > 0 {
			fail(CodeUserLoggedIn, fmt.Errorf("nodes %v are still logged in", others))
			return
		}
	}
	secret, err := m.Password(cur)
	if err != nil {
		fail(CodeInternalError, err)
		return
	}
	defer clear(secret)
	// Rotations whose outcome was never recorded: the cluster may hold
	// any of their passwords, or the stored one.
	var adopted []byte
	for _, sealed := range pending(cur) {
		p, err := m.barrier.Open(nextPath(id), sealed)
		if err != nil {
			fail(CodeInternalError, err)
			return
		}
		if _, err := b.Connect(ctx, cur, p, nil); err == nil {
			adopted = p
			b.Disconnect(ctx, cur)
			break
		}
		clear(p)
	}
	if adopted != nil {
		defer clear(adopted)
		secret = adopted
	}
	// External key stores never rotate their credential (spec §10.5):
	// no next password, and no write to record one before the connect.
	var next, sealedNext []byte
	if cur.Type != TypeExternal {
		next = []byte(hex.EncodeToString(randomBytes(m.cfg.Rand, 16)))
		if sealedNext, err = m.barrier.Seal(nextPath(id), next); err != nil {
			fail(CodeInternalError, err)
			return
		}
	}
	m.failpoint("keystore-connect-before-intent")
	if next != nil || adopted != nil {
		// The intent, durable before the rotation; a pending password
		// that logged in becomes the password.
		if err := m.set(ctx, id, func(st *Store) error {
			if st.State != Connecting {
				return errSkip
			}
			if adopted != nil {
				sealed, err := m.sealPassword(id, adopted)
				if err != nil {
					return err
				}
				st.Password = sealed
				settled(st)
			}
			if next != nil {
				addPending(st, sealedNext)
			}
			return nil
		}); err != nil {
			if !errors.Is(err, errSkip) && ctx.Err() == nil {
				fail(CodeInternalError, err)
			}
			return
		}
	}
	m.failpoint("keystore-connect-after-intent")
	connectCtx := ctx
	if next != nil && m.cfg.ActUntil != nil {
		// C_SetPIN cannot be fenced: it starts only while the lease
		// surely lasts longer than it takes (MULTINODE.md §4.5), checked
		// here and again immediately before each C_SetPIN (the login
		// before it takes time; a pause may fall in it). The next term
		// tries again, the intent recorded.
		mayAct := func() error {
			if until, ok := m.cfg.ActUntil(ctx); ok && time.Until(until) < rotateMargin {
				return errLeaseEnding
			}
			return nil
		}
		if mayAct() != nil {
			m.log.Warn("keystore: controller lease too close to its end to rotate a password; left to the next term", "store", id)
			return
		}
		connectCtx = hsm.WithActGuard(ctx, mayAct)
	}
	// This node's login is set before the record says CONNECTED, so that
	// its follow loop does not log in a second time.
	gen := cur.Gen + 1
	rotated, err := b.Connect(connectCtx, cur, secret, next)
	if errors.Is(err, errLeaseEnding) {
		m.log.Warn("keystore: controller lease too close to its end to rotate a password; left to the next term", "store", id)
		return
	}
	if err != nil {
		fail(code(err), err)
		return
	}
	if rotated {
		m.rotations.Add(1)
		m.log.Info("keystore: kmsuser password rotated", "store", id, "cluster", cur.ClusterID)
		m.failpoint("keystore-connect-after-setpin")
	}
	m.setLocal(id, gen, true)
	err = m.updateWith(ctx, id, func(st *Store) error {
		if st.State != Connecting {
			return errSkip
		}
		if rotated {
			sealed, err := m.sealPassword(id, next)
			if err != nil {
				return err
			}
			st.Password = sealed
		}
		settled(st)
		st.State, st.ErrorCode = Connected, ""
		st.Gen = max(st.Gen, cur.Gen) + 1
		gen = st.Gen
		return nil
	}, func(tx storage.Tx, next *Store) error {
		return putRow(ctx, tx, id, m.cfg.NodeID, next.Gen, true)
	})
	if err == nil {
		m.setLocal(id, gen, true)
		m.mu.Lock()
		m.rowIn[id] = true
		m.mu.Unlock()
		m.forgetResumed(id)
		m.report(cur, Connected, "")
		m.failpoint("keystore-connect-after-record")
		return
	}
	// Disconnected meanwhile, or not recorded: undo the connection.
	m.setLocal(id, 0, false)
	b.Disconnect(ctx, cur)
	if !errors.Is(err, errSkip) && ctx.Err() == nil {
		fail(CodeInternalError, err)
	}
}

// rotateMargin is how long the controller's lease must still last for a
// password rotation to start.
const rotateMargin = time.Second

// errLeaseEnding stops a password rotation whose controller lease ends
// within rotateMargin.
var errLeaseEnding = errors.New("keystore: controller lease too close to its end to rotate a password")

// turn waits for a connector's turn (Config.Connectors) and returns its
// release, which also runs by itself after maxTurn; ok is false when the
// manager closes first.
func (m *Manager) turn(ctx context.Context) (release func(), ok bool) {
	select {
	case m.connectors <- struct{}{}:
	case <-ctx.Done():
		return nil, false
	}
	var once sync.Once
	free := func() { once.Do(func() { <-m.connectors }) }
	t := time.AfterFunc(maxTurn, free)
	return func() { t.Stop(); free() }, true
}

// finishDisconnect is the controller's disconnect: this node logs out
// and says so, and once every live node has said so (nodes.go) the store
// is DISCONNECTED. A node that died is not waited for: its logins ended
// with its process.
func (m *Manager) finishDisconnect(ctx context.Context, id string) {
	m.mu.RLock()
	cur, ok := m.stores[id]
	m.mu.RUnlock()
	if !ok || cur.State != Disconnecting {
		return
	}
	m.logoutLocal(cur)
	m.failpoint("keystore-disconnect-acks")
	var waiting []string
	for {
		err := m.completeDisconnect(ctx, id)
		var w *waitError
		switch {
		case err == nil, errors.Is(err, errSkip), ctx.Err() != nil:
			return
		case errors.As(err, &w):
			if !slices.Equal(w.nodes, waiting) {
				m.log.Info("keystore: disconnect waits for nodes to log out", "store", id, "nodes", w.nodes)
				waiting = w.nodes
			}
		default:
			m.log.Warn("keystore: disconnect", "store", id, "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(ackPoll):
		}
	}
}

// ackPoll is how often a disconnect looks for the nodes' logouts.
var ackPoll = 100 * time.Millisecond

var errSkip = errors.New("keystore: state changed meanwhile")

func randomBytes(r io.Reader, n int) []byte {
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		panic("keystore: randomness unavailable: " + err.Error())
	}
	return b
}

// report passes a connect outcome to Config.OnConnectResult.
func (m *Manager) report(st *Store, state State, code string) {
	if m.cfg.OnConnectResult != nil {
		m.cfg.OnConnectResult(*st, string(state), code)
	}
}
