package keystore

// Several kmsd nodes on one database (MULTINODE.md §4.7, §7.5): the
// controller alone changes a store's connection — it connects CONNECTING
// stores (kmsuser login, password rotation with its intent recorded first)
// and completes disconnects — while every node logs in to each CONNECTED
// store's backing itself, once per connection generation (Store.Gen), and
// logs out when the store leaves CONNECTED.
//
// Each node publishes, per store, whether it may be logged in: a node row
// (keystorenode/<store>/<node>). It says so, in a transaction that checks
// the store is still CONNECTED at that generation, before it logs in, and
// says it is not once it has logged out. A disconnect becomes
// DISCONNECTED only in a transaction that finds no live node's row saying
// it may be logged in; a node whose node lease expired is not waited for
// (its process, and with it its logins, is gone — or paused, and it logs
// out when it runs again). A connect of a CloudHSM store waits likewise
// for the other nodes' rows, and fails USER_LOGGED_IN if one stays logged
// in.
//
// One node with no controller (Config.Serve nil) is its own controller
// and behaves as kmsd always has.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/kmsd/kmsd/internal/storage"
)

// rowPrefix holds the node rows: rowPrefix + store id + "/" + node id.
const rowPrefix = "keystorenode/"

func rowPath(id, node string) string { return rowPrefix + id + "/" + node }

// row is a node's word about one store.
type row struct {
	Node string `json:"node"`
	// Gen is the connection generation it logged in to.
	Gen int64 `json:"gen,omitempty"`
	// LoggedIn: the node may be logged in to the store's backing.
	LoggedIn bool `json:"loggedIn"`
}

func putRow(ctx context.Context, tx storage.Tx, id, node string, gen int64, in bool) error {
	b, err := json.Marshal(row{Node: node, Gen: gen, LoggedIn: in})
	if err != nil {
		return err
	}
	return tx.Put(ctx, rowPath(id, node), b)
}

// rows reads the node rows of store id in tx.
func rows(ctx context.Context, tx storage.Reader, id string) ([]row, error) {
	entries, err := tx.List(ctx, rowPrefix+id+"/", "", 0)
	if err != nil {
		return nil, err
	}
	out := make([]row, 0, len(entries))
	for _, e := range entries {
		var r row
		if err := json.Unmarshal(e.Value, &r); err != nil {
			return nil, fmt.Errorf("keystore: decode %s: %w", e.Key, err)
		}
		out = append(out, r)
	}
	return out, nil
}

func deleteRows(ctx context.Context, tx storage.Tx, id string) error {
	entries, err := tx.List(ctx, rowPrefix+id+"/", "", 0)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := tx.Delete(ctx, e.Key); err != nil {
			return err
		}
	}
	return nil
}

// loadRows reads which stores this node's rows say it may be logged in
// to: a node that restarts logs out of those that are no longer CONNECTED
// (its logins died with its process; its rows must say so).
func (m *Manager) loadRows(ctx context.Context) error {
	entries, err := m.store.List(ctx, rowPrefix, "", 0)
	if err != nil {
		return fmt.Errorf("keystore: load node rows: %w", err)
	}
	for _, e := range entries {
		rest := strings.TrimPrefix(e.Key, rowPrefix)
		id, node, ok := strings.Cut(rest, "/")
		if !ok || node != m.cfg.NodeID {
			continue
		}
		var r row
		if err := json.Unmarshal(e.Value, &r); err != nil {
			return fmt.Errorf("keystore: decode %s: %w", e.Key, err)
		}
		if r.LoggedIn {
			m.rowIn[id] = true
		}
	}
	return nil
}

// markLoggedIn says, before this node logs in to CONNECTED store cur, that
// it may be logged in; errSkip if the store left CONNECTED or changed
// generation meanwhile.
func (m *Manager) markLoggedIn(ctx context.Context, cur *Store) error {
	err := m.store.Update(nodeCtx(ctx), func(tx storage.Tx) error {
		st, err := getStore(ctx, tx, cur.ID)
		if err != nil {
			return err
		}
		if st.State != Connected || st.Gen != cur.Gen {
			return callerError{errSkip}
		}
		return putRow(ctx, tx, cur.ID, m.cfg.NodeID, cur.Gen, true)
	})
	if err != nil {
		return storeError(cur.ID, err)
	}
	m.mu.Lock()
	m.rowIn[cur.ID] = true
	m.mu.Unlock()
	return nil
}

// unmarkLoggedIn says this node is logged out of store st.
func (m *Manager) unmarkLoggedIn(st *Store) {
	err := m.store.Update(m.ctx, func(tx storage.Tx) error {
		if _, err := tx.Get(m.ctx, recordPath(st.ID)); errors.Is(err, storage.ErrNotFound) {
			return nil // deleted, rows with it
		}
		return putRow(m.ctx, tx, st.ID, m.cfg.NodeID, st.Gen, false)
	})
	if err != nil {
		if m.ctx.Err() == nil {
			m.log.Warn("keystore: node row", "store", st.ID, "err", err)
		}
		return
	}
	m.mu.Lock()
	delete(m.rowIn, st.ID)
	m.mu.Unlock()
}

// nodeCtx is ctx without a controller lease: a node's rows are its own
// word, written whether or not it is the controller.
func nodeCtx(ctx context.Context) context.Context {
	return withoutLease{ctx}
}

// withoutLease hides every context value (the controller's lease among
// them) but keeps ctx's deadline and cancellation.
type withoutLease struct{ context.Context }

func (withoutLease) Value(any) any { return nil }

// setLocal records whether this node is logged in to store id, at gen.
func (m *Manager) setLocal(id string, gen int64, in bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if in {
		m.local[id] = gen
	} else {
		delete(m.local, id)
	}
}

// logoutLocal logs this node out of store st's backing, if it may be
// logged in, and says so in its row.
func (m *Manager) logoutLocal(st *Store) {
	m.mu.Lock()
	_, in := m.local[st.ID]
	row := m.rowIn[st.ID]
	delete(m.local, st.ID)
	m.mu.Unlock()
	if in || row {
		if b, ok := m.cfg.Backings[st.Type]; ok {
			if err := b.Disconnect(m.ctx, st); err != nil {
				m.log.Warn("keystore: disconnect", "store", st.ID, "err", err)
			}
		}
	}
	if row {
		m.unmarkLoggedIn(st)
	}
}

// liveNodes lists the nodes to wait for; this one always among them.
func (m *Manager) liveNodes(ctx context.Context) ([]string, error) {
	nodes := []string{m.cfg.NodeID}
	if m.cfg.LiveNodes != nil {
		live, err := m.cfg.LiveNodes(ctx)
		if err != nil {
			return nil, err
		}
		for _, n := range live {
			if !slices.Contains(nodes, n) {
				nodes = append(nodes, n)
			}
		}
	}
	return nodes, nil
}

// waitError says which live nodes may still be logged in.
type waitError struct{ nodes []string }

func (e *waitError) Error() string {
	return fmt.Sprintf("keystore: nodes %v may still be logged in", e.nodes)
}

// loggedInAmong returns the nodes among live whose rows of store id say
// they may be logged in, except skip.
func loggedInAmong(rs []row, live []string, skip string) []string {
	var out []string
	for _, r := range rs {
		if r.LoggedIn && r.Node != skip && slices.Contains(live, r.Node) {
			out = append(out, r.Node)
		}
	}
	slices.Sort(out)
	return out
}

// completeDisconnect records DISCONNECTED for DISCONNECTING store id if no
// live node may still be logged in (*waitError otherwise), in one
// transaction with the rows it read.
func (m *Manager) completeDisconnect(ctx context.Context, id string) error {
	live, err := m.liveNodes(ctx)
	if err != nil {
		return err
	}
	return m.updateWith(ctx, id, func(st *Store) error {
		if st.State != Disconnecting {
			return errSkip
		}
		st.State, st.ErrorCode = Disconnected, ""
		return nil
	}, func(tx storage.Tx, _ *Store) error {
		rs, err := rows(ctx, tx, id)
		if err != nil {
			return err
		}
		if in := loggedInAmong(rs, live, ""); len(in) > 0 {
			return &waitError{in}
		}
		return nil
	})
}

// loggedInWait is how long a connect waits for the other nodes to log
// out of a store before it fails USER_LOGGED_IN.
var loggedInWait = 10 * time.Second

// waitOthersLoggedOut waits until no other live node's row says it may
// be logged in to store id, or loggedInWait passes; it returns those that
// still may be.
func (m *Manager) waitOthersLoggedOut(ctx context.Context, id string) ([]string, error) {
	deadline := time.Now().Add(loggedInWait)
	for {
		live, err := m.liveNodes(ctx)
		if err != nil {
			return nil, err
		}
		rs, err := rows(ctx, m.store, id)
		if err != nil {
			return nil, err
		}
		in := loggedInAmong(rs, live, m.cfg.NodeID)
		if len(in) == 0 || time.Now().After(deadline) {
			return in, nil
		}
		select {
		case <-ctx.Done():
			return in, ctx.Err()
		case <-time.After(ackPoll):
		}
	}
}

// kick wakes the control and follow loops.
func (m *Manager) kick() {
	for _, c := range []chan struct{}{m.ctlKick, m.nodeKick} {
		select {
		case c <- struct{}{}:
		default:
		}
	}
}

// followTick is how often the follow and control loops look at every
// store even when nothing woke them.
var followTick = time.Second

// follow keeps this node's logins in step with the stores' states until
// the manager closes.
func (m *Manager) follow() {
	t := time.NewTicker(followTick)
	defer t.Stop()
	for {
		select {
		case <-m.ctx.Done():
			return
		case <-m.nodeKick:
		case <-t.C:
		}
		m.reconcile()
	}
}

// reconcile starts this node's login to every CONNECTED store it is not
// logged in to at the store's generation, and its logout of every store
// that is DISCONNECTING, DISCONNECTED, FAILED or gone while it may be
// logged in.
func (m *Manager) reconcile() {
	m.ctlMu.Lock()
	running := make(map[string]bool, len(m.running))
	for id := range m.running {
		running[id] = true
	}
	// A store this node's login was refused for while another node (or
	// none yet) was controller is not tried again — unless this node is
	// the controller now, which must decide the store's state: a single
	// node's resume at start can run before it takes the lease.
	leading := m.ctlCtx != nil && m.ctlCtx.Err() == nil
	m.ctlMu.Unlock()
	type job struct {
		st    *Store
		login bool
	}
	var jobs []job
	m.mu.Lock()
	for id, st := range m.stores {
		if m.following[id] || running[id] {
			continue
		}
		gen, in := m.local[id]
		switch st.State {
		case Connected:
			if (!in || gen != st.Gen) && (leading || m.refused[id] != st.Rev) {
				jobs = append(jobs, job{clone(st), true})
				m.following[id] = true
			}
		case Disconnecting, Disconnected, Failed:
			if in || m.rowIn[id] {
				jobs = append(jobs, job{clone(st), false})
				m.following[id] = true
			}
		}
	}
	for id := range m.local {
		if _, ok := m.stores[id]; !ok && !m.following[id] {
			delete(m.local, id)
		}
	}
	m.mu.Unlock()
	for _, j := range jobs {
		if j.login {
			m.start(m.ctx, j.st.ID, 0, m.followLogin, nil)
			continue
		}
		m.start(m.ctx, j.st.ID, 0, func(context.Context, string) { m.logoutLocal(j.st) }, func() {
			m.mu.Lock()
			delete(m.following, j.st.ID)
			m.mu.Unlock()
		})
	}
}

// control is the controller's duty (Config.Serve): it runs for one term.
func (m *Manager) control(ctx context.Context) {
	m.takeControl(ctx)
	m.controlLoop(ctx)
}

// takeControl makes ctx the context of this node's controller work and
// resumes the stores left CONNECTING or DISCONNECTING (by a controller
// that stopped, or before this one started).
func (m *Manager) takeControl(ctx context.Context) {
	m.ctlMu.Lock()
	m.ctlCtx = ctx
	close(m.led)
	m.ctlMu.Unlock()
	m.scan(0)
}

// controlLoop schedules the stores' connects and disconnects as their
// records change, until ctx ends; then it waits for the steps in progress.
func (m *Manager) controlLoop(ctx context.Context) {
	defer func() {
		m.ctlMu.Lock()
		m.ctlCtx = nil
		m.led = make(chan struct{})
		m.ctlMu.Unlock()
		m.ctlWG.Wait()
	}()
	t := time.NewTicker(followTick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.ctlKick:
		case <-t.C:
		}
		m.scan(m.cfg.ConnectDelay)
	}
}

// scan schedules every CONNECTING and DISCONNECTING store's step after d.
func (m *Manager) scan(d time.Duration) {
	type step struct {
		id string
		fn func(ctx context.Context, id string)
	}
	var steps []step
	m.mu.RLock()
	for id, st := range m.stores {
		switch st.State {
		case Connecting:
			steps = append(steps, step{id, m.finishConnect})
		case Disconnecting:
			steps = append(steps, step{id, m.finishDisconnect})
		}
	}
	m.mu.RUnlock()
	for _, s := range steps {
		m.schedule(s.id, d, s.fn)
	}
}

// schedule runs the controller step fn for store id after d, if this node
// is the controller and no step of the store is scheduled already.
func (m *Manager) schedule(id string, d time.Duration, fn func(ctx context.Context, id string)) {
	m.ctlMu.Lock()
	ctx := m.ctlCtx
	if ctx == nil || ctx.Err() != nil || m.running[id] {
		m.ctlMu.Unlock()
		return
	}
	m.running[id] = true
	m.ctlWG.Add(1)
	m.ctlMu.Unlock()
	m.start(ctx, id, d, fn, func() {
		m.ctlMu.Lock()
		delete(m.running, id)
		m.ctlMu.Unlock()
		m.ctlWG.Done()
	})
}

// waitOrLead waits d, or less if this node takes control meanwhile; false
// if ctx ends first.
func (m *Manager) waitOrLead(ctx context.Context, d time.Duration) bool {
	m.ctlMu.Lock()
	led := m.led
	m.ctlMu.Unlock()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-led:
	case <-ctx.Done():
		return false
	}
	return true
}

// leading reports whether this node is the controller now.
func (m *Manager) leading() bool {
	m.ctlMu.Lock()
	defer m.ctlMu.Unlock()
	return m.ctlCtx != nil && m.ctlCtx.Err() == nil
}

func (m *Manager) failpoint(name string) {
	if m.cfg.Failpoint != nil {
		m.cfg.Failpoint(name)
	}
}

// Logins returns the stores this node is logged in to, with their
// connection generation (status, tests).
func (m *Manager) Logins() map[string]int64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := make(map[string]int64, len(m.local))
	for id, g := range m.local {
		out[id] = g
	}
	return out
}
