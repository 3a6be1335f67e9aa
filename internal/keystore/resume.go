package keystore

import (
	"context"
	"errors"
	"time"
)

// A store that was CONNECTED when kmsd stopped is connected again when it
// starts. If its backing cannot be reached then — every HSM of its cluster
// down or DEGRADED — failing it would turn an outage of the HSMs into a
// FAILED store that only a disconnect and a connect repair, which AWS never
// does: a store stays CONNECTED while its cluster is broken, and its keys'
// operations fail one by one (spec §6.2). So such a store stays CONNECTED,
// not logged in (its keys answer KMSInvalidStateException), and logs in by
// itself once the backing answers again. A backing that answers but refuses
// (the password changed, the user is locked out, …) fails it with that code,
// as a connect does.

// resumeRetry is Config.ResumeRetry's default.
const resumeRetry = 5 * time.Second

// unreachable reports whether code says the backing could not be reached
// rather than that it refused the store.
func unreachable(st *Store, code string) bool {
	return st.Type == TypeCloudHSM && (code == CodeNetworkErrors || code == CodeInsufficientCloudHSMHSMs)
}

// keepResumed handles a failed connect of a resumed store: when the backing
// was unreachable the store goes back to CONNECTED and a retry is
// scheduled, and keepResumed reports true; otherwise the connect fails as
// any does.
func (m *Manager) keepResumed(ctx context.Context, cur *Store, code string, err error) bool {
	m.mu.RLock()
	resumed := m.resumed[cur.ID]
	m.mu.RUnlock()
	if !resumed || !unreachable(cur, code) {
		return false
	}
	if m.set(ctx, cur.ID, func(st *Store) error {
		if st.State != Connecting {
			return errSkip
		}
		st.State, st.ErrorCode = Connected, ""
		return nil
	}) != nil {
		return false
	}
	m.log.Warn("keystore: resumed CONNECTED, but the backing cannot be reached; retrying", "store", cur.ID, "code", code, "err", err,
		"every", m.cfg.ResumeRetry.String())
	m.start(cur.ID, m.cfg.ResumeRetry, m.retryResumed)
	return true
}

// retryResumed logs a resumed store in to its backing, without rotating
// its password; unreachable again, it tries later.
func (m *Manager) retryResumed(ctx context.Context, id string) {
	m.mu.RLock()
	cur, ok := m.stores[id]
	resumed := m.resumed[id]
	m.mu.RUnlock()
	if !ok || !resumed || cur.State != Connected {
		m.forgetResumed(id)
		return
	}
	b, ok := m.cfg.Backings[cur.Type]
	if !ok {
		return
	}
	secret, err := m.Password(cur)
	if err != nil {
		m.log.Error("keystore: resumed store", "store", id, "err", err)
		return
	}
	defer clear(secret)
	if len(cur.Next) > 0 {
		// A rotation whose outcome was never recorded: try its password
		// first, and keep it when it is the one.
		if pending, err := m.barrier.Open(nextPath(id), cur.Next); err == nil {
			if _, err := b.Connect(ctx, cur, pending, nil); err == nil {
				m.loggedIn(ctx, b, cur, pending)
				clear(pending)
				return
			}
			clear(pending)
		}
	}
	_, err = b.Connect(ctx, cur, secret, nil)
	switch c := code(err); {
	case err == nil:
		m.loggedIn(ctx, b, cur, nil)
	case unreachable(cur, c):
		m.start(id, m.cfg.ResumeRetry, m.retryResumed)
	default:
		m.forgetResumed(id)
		m.log.Warn("keystore: resumed store refused by its backing", "store", id, "code", c, "err", err)
		if m.set(ctx, id, func(st *Store) error {
			if st.State != Connected {
				return errSkip
			}
			st.State, st.ErrorCode = Failed, c
			return nil
		}) == nil {
			m.report(cur, Failed, c)
		}
	}
}

// loggedIn records that resumed store cur is logged in again (with
// password pw when that is a pending rotation's), or undoes the login when
// the store was disconnected meanwhile.
func (m *Manager) loggedIn(ctx context.Context, b Backing, cur *Store, pw []byte) {
	err := m.set(ctx, cur.ID, func(st *Store) error {
		if st.State != Connected {
			return errSkip
		}
		if pw != nil {
			sealed, err := m.sealPassword(cur.ID, pw)
			if err != nil {
				return err
			}
			st.Password, st.Next = sealed, nil
		}
		return nil
	})
	m.forgetResumed(cur.ID)
	if err != nil {
		b.Disconnect(ctx, cur)
		if !errors.Is(err, errSkip) {
			m.log.Error("keystore: resumed store", "store", cur.ID, "err", err)
		}
		return
	}
	m.log.Info("keystore: resumed store logged in to its backing again", "store", cur.ID)
	m.report(cur, Connected, "")
}

func (m *Manager) forgetResumed(id string) {
	m.mu.Lock()
	delete(m.resumed, id)
	m.mu.Unlock()
}
