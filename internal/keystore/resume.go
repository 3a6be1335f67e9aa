package keystore

import (
	"context"
	"errors"
	"time"
)

// A store that was CONNECTED when kmsd stopped is logged in to its backing
// again when it starts, with its current password: it stays CONNECTED, its
// record is not written and its password is not rotated. A restart is not
// a connect: with several kmsd processes on one database another one may
// be using the store, logged in with that password, and a rotation
// (C_SetPIN) or a CONNECTED→CONNECTING flip by a restarting process would
// pull the store from under it.
//
// If its backing cannot be reached then — every HSM of its cluster down or
// DEGRADED — failing it would turn an outage of the HSMs into a FAILED
// store that only a disconnect and a connect repair, which AWS never does:
// a store stays CONNECTED while its cluster is broken, and its keys'
// operations fail one by one (spec §6.2). So such a store stays CONNECTED,
// not logged in (its keys answer KMSInvalidStateException), and logs in by
// itself once the backing answers again. A backing that answers but
// refuses (the password changed, the user is locked out, …) fails it with
// that code, as a connect does.

// resumeRetry is Config.ResumeRetry's default.
const resumeRetry = 5 * time.Second

// unreachable reports whether code says the backing could not be reached
// rather than that it refused the store.
func unreachable(st *Store, code string) bool {
	return st.Type == TypeCloudHSM && (code == CodeNetworkErrors || code == CodeInsufficientCloudHSMHSMs)
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
		m.mu.Lock()
		first := !m.unreachableLogged[id]
		m.unreachableLogged[id] = true
		m.mu.Unlock()
		if first {
			m.log.Warn("keystore: resumed CONNECTED, but the backing cannot be reached; retrying", "store", id, "code", c, "err", err,
				"every", m.cfg.ResumeRetry.String())
		}
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
	delete(m.unreachableLogged, id)
	m.mu.Unlock()
}
