package keystore

import (
	"context"
	"errors"
	"time"

	"github.com/kmsd/kmsd/internal/xks/xksclient"
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
// DEGRADED, or the XKS proxy down, timing out or reporting every external
// key manager UNAVAILABLE — failing it would turn an outage of the backing
// into a FAILED store that only a disconnect and a connect repair, which
// AWS never does: a store stays CONNECTED while its cluster or proxy is
// broken, and its keys' operations fail one by one (spec §6.2). So such a
// store stays CONNECTED and tries again by itself until the backing
// answers. Meanwhile a CloudHSM store is not logged in (its keys answer
// KMSInvalidStateException); an external store's keys call the proxy as
// they always do, so they answer the proxy's unavailability
// (KMSInvalidStateException, spec §10.7) and work again as soon as it is
// back. A backing that answers but refuses (the password changed, the user
// is locked out, the proxy rejects the credential or the URI path, its TLS
// certificate is not trusted, …) fails the store with that code, as a
// connect does — on the controller. Another node leaves the store's state
// to the controller and tries again by itself unless the refusal counts
// towards kmsuser's lockout (retriesRefusal).

// resumeRetry is Config.ResumeRetry's default.
const resumeRetry = 5 * time.Second

// refusedRetryMax bounds the wait between a node's logins that its backing
// refused for a reason a login may outlast (retriesRefusal).
const refusedRetryMax = time.Minute

// retriesRefusal reports whether a node other than the controller tries
// its login to st again after the backing refused it with code. The
// controller is logged in with the same password, so the refusal says
// something passing about this node's login — a SoftHSM2 token file read
// while another process rewrote it looks like a token without kmsuser
// (USER_NOT_FOUND), a human's session USER_LOGGED_IN. Only the refusals
// that kmsuser's lockout counts are not repeated with the same password
// (INVALID_CREDENTIALS, and USER_LOCKED_OUT, which the next wrong one
// caused): the controller decides those. An external store's login is a
// health check through its proxy, which locks nothing out.
func retriesRefusal(st *Store, code string) bool {
	return st.Type != TypeCloudHSM || (code != CodeInvalidCredentials && code != CodeUserLockedOut)
}

// refusedDelay is the wait before the next login of a node whose last n
// logins in a row were refused: ResumeRetry doubled each time, up to
// refusedRetryMax.
func refusedDelay(every time.Duration, n int) time.Duration {
	d := every
	for i := 1; i < n && d < refusedRetryMax; i++ {
		d *= 2
	}
	return min(d, refusedRetryMax)
}

// unreachable reports whether code says the backing could not be reached
// rather than that it refused the store.
func unreachable(st *Store, code string) bool {
	switch st.Type {
	case TypeCloudHSM:
		return code == CodeNetworkErrors || code == CodeInsufficientCloudHSMHSMs
	case TypeExternal:
		// Not reached, no answer in time (or 429/503), or a connection
		// that broke after it was made (spec §8.1, §8.3, §10.7).
		return code == xksclient.CodeNotReachable || code == xksclient.CodeTimedOut || code == xksclient.CodeNetworkErrors
	}
	return false
}

// followLogin logs this node in to CONNECTED store id's backing with its
// current password (for an external store: a GetHealthStatus through its
// proxy), without rotating it, once per connection generation: after this
// node started, or when another node (the controller) connected it. The
// node's row says it may be logged in before it logs in, so that a
// disconnect committed meanwhile waits for its logout (nodes.go).
// Unreachable, it tries again later; refused, the controller fails the
// store with the code, another node leaves it to the controller and does
// not try that record's password again when the refusal counts towards
// kmsuser's lockout (a wrong password), and otherwise tries again, less
// and less often (retriesRefusal).
func (m *Manager) followLogin(ctx context.Context, id string) {
	again := false
	defer func() {
		if !again {
			m.mu.Lock()
			delete(m.following, id)
			m.mu.Unlock()
		}
	}()
	release, ok := m.turn(ctx)
	if !ok {
		return
	}
	defer release()
	m.mu.RLock()
	cur, ok := m.stores[id]
	gen, in := m.local[id]
	m.mu.RUnlock()
	if !ok || cur.State != Connected || (in && gen == cur.Gen) {
		m.forgetRefusals(id)
		return
	}
	b, ok := m.cfg.Backings[cur.Type]
	if !ok {
		return
	}
	retry := func() {
		again = true
		m.start(ctx, id, m.cfg.ResumeRetry, m.followLogin, nil)
	}
	if err := m.markLoggedIn(ctx, cur); errors.Is(err, errSkip) {
		return
	} else if err != nil {
		m.log.Warn("keystore: node row", "store", id, "err", err)
		retry()
		return
	}
	secret, err := m.Password(cur)
	if err != nil {
		m.log.Error("keystore: resumed store", "store", id, "err", err)
		return
	}
	defer clear(secret)
	// Rotations whose outcome was never recorded: try their passwords
	// first, newest first, and keep the one that logs in.
	for _, sealed := range pending(cur) {
		p, err := m.barrier.Open(nextPath(id), sealed)
		if err != nil {
			continue
		}
		if _, err := b.Connect(ctx, cur, p, nil); err == nil {
			m.loggedIn(ctx, b, cur, p)
			clear(p)
			return
		}
		clear(p)
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
		retry()
	default:
		m.forgetResumed(id)
		m.unmarkLoggedIn(cur)
		if !m.leading() {
			// The controller decides the store's state.
			m.mu.Lock()
			if !retriesRefusal(cur, c) {
				delete(m.refusedTries, id)
				m.refused[id] = cur.Rev
				m.mu.Unlock()
				m.log.Warn("keystore: resumed store refused by its backing", "store", id, "code", c, "err", err,
					"next", "left to the controller")
				return
			}
			m.refusedTries[id]++
			n := m.refusedTries[id]
			m.mu.Unlock()
			d := refusedDelay(m.cfg.ResumeRetry, n)
			m.log.Warn("keystore: resumed store refused by its backing", "store", id, "code", c, "err", err,
				"next", "trying again", "refusals", n, "in", d.String())
			// Sooner if this node becomes the controller, which decides
			// the store's state at once.
			again = true
			m.start(ctx, id, 0, func(ctx context.Context, id string) {
				if m.waitOrLead(ctx, d) {
					m.followLogin(ctx, id)
				}
			}, nil)
			return
		}
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

// loggedIn records that CONNECTED store cur is logged in on this node
// (with password pw when that is a pending rotation's), or undoes the
// login when the store was disconnected meanwhile.
func (m *Manager) loggedIn(ctx context.Context, b Backing, cur *Store, pw []byte) {
	m.setLocal(cur.ID, cur.Gen, true)
	err := m.set(ctx, cur.ID, func(st *Store) error {
		if st.State != Connected {
			return errSkip
		}
		if pw != nil {
			sealed, err := m.sealPassword(cur.ID, pw)
			if err != nil {
				return err
			}
			st.Password = sealed
			settled(st)
		}
		return nil
	})
	m.forgetResumed(cur.ID)
	m.forgetRefusals(cur.ID)
	if err != nil {
		m.logoutLocal(cur)
		if !errors.Is(err, errSkip) {
			m.log.Error("keystore: resumed store", "store", cur.ID, "err", err)
		}
		return
	}
	m.log.Info("keystore: resumed store logged in to its backing again", "store", cur.ID, "gen", cur.Gen)
	if m.cfg.Serve == nil || m.leading() {
		// The connect's outcome is the controller's to report; the other
		// nodes' logins are their own business.
		m.report(cur, Connected, "")
	}
}

func (m *Manager) forgetResumed(id string) {
	m.mu.Lock()
	delete(m.unreachableLogged, id)
	m.mu.Unlock()
}

// forgetRefusals ends store id's run of refused logins (logged in, or the
// store is no longer one this node logs in to).
func (m *Manager) forgetRefusals(id string) {
	m.mu.Lock()
	delete(m.refusedTries, id)
	m.mu.Unlock()
}
