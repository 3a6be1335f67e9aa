//go:build cgo

package pkcs11

import (
	"sync"
	"time"

	p11 "github.com/miekg/pkcs11"
)

// Session-object copies of token keys.
//
// Every operation on a token object may make a module check that object's backing
// store: SoftHSM2 opens, locks, reads and closes the key's file on each
// C_EncryptInit and C_DecryptInit, about 70µs of a ~165µs Encrypt. A session
// object (CKA_TOKEN false) lives in the module's memory, so when a key is resolved
// the manager makes one with C_CopyObject and runs the cryptography with it until
// the cache entry is refreshed. The copy keeps every attribute of the token key but
// CKA_TOKEN (CKA_SENSITIVE, CKA_EXTRACTABLE, CKA_PRIVATE, usage): key material
// never leaves the token. A key that cannot be copied (CKA_COPYABLE false, a module
// without C_CopyObject, no room for another session) is used as the token object,
// as before.
//
// A session object is destroyed when the session that made it closes and is visible
// to the application's other sessions. The copies are therefore made in an owner
// session of their own, opened per generation and module epoch (the pool's sessions
// come and go, and closing one must not take keys with it) and never handed out.
// Object handles may be reused by a module once destroyed, so neither a copy nor
// its owner session is destroyed while an operation holds it: each counts its
// users, and a retired copy (replaced at a refresh, forgotten, swept) or owner
// (replaced after a reset, or found dead) goes when its last user is done.
//
// What changes, hence Config.SessionKeyCopies (off unless set; xks-proxy sets it unless
// its configuration says session_key_copies = false): the token checks a
// key's CKA_ENCRYPT / CKA_DECRYPT, and notices its deletion, when the copy is made
// rather than on every operation, so such a change takes effect at the next
// refresh, within KeyCacheTTL, as it already did for the usage Describe reports. A
// token that restarts ends its sessions, the owner with its copies too, so
// operations fail at once as before; but SoftHSM2 keeps serving the session objects
// of a token deleted under it (softhsm2-util --delete-token, the tests' restart)
// until the next refresh fails to find the key or the token. The manager holds one
// session more than PoolSize, and one session object per key used in the last
// 2*KeyCacheTTL.

// owner is a session that holds copies and is never used for operations.
type owner struct {
	h          p11.SessionHandle
	gen, epoch uint64

	// mu serialises calls on h and guards the fields below and those of its
	// copies. Lock order: Manager.ownMu, then mu.
	mu      sync.Mutex
	users   int  // operations running with one of its copies
	retired bool // makes no more copies; closes when users reaches 0
	closed  bool
}

// keyCopy is a session-object copy of a token key, made in own.
type keyCopy struct {
	h       p11.ObjectHandle
	own     *owner
	users   int  // guarded by own.mu
	retired bool // guarded by own.mu; destroyed when users reaches 0
	gone    bool // guarded by own.mu
}

// The functions below call the module, so they run with m.mod.life read-held.

// ownerFor returns the owner session for s's generation and epoch, opening it on
// first use. It returns nil for a session older than the current owner or when no
// session can be opened.
func (m *Manager) ownerFor(s *session) *owner {
	m.ownMu.Lock()
	defer m.ownMu.Unlock()
	o := m.own
	if o != nil {
		if o.gen == s.gen && o.epoch == s.epoch {
			o.mu.Lock()
			ok := !o.retired
			o.mu.Unlock()
			if ok {
				return o
			}
		} else if s.gen < o.gen || s.gen == o.gen && s.epoch < o.epoch {
			return nil
		}
	}
	if s.epoch != m.mod.epoch.Load() {
		return nil
	}
	// Session objects may be made in a read-only session; some tokens allow
	// fewer read/write ones. The login is the application's, so this session
	// shares s's.
	h, err := m.ctx.OpenSession(s.slot, p11.CKF_SERIAL_SESSION)
	if err != nil {
		m.cfg.Logger.Debug("pkcs11: no session for key copies; using token objects", "err", err)
		return nil
	}
	if o != nil {
		m.retireOwner(o)
	}
	m.own = &owner{h: h, gen: s.gen, epoch: s.epoch}
	return m.own
}

// retireOwner stops o making copies and closes it once no operation uses them.
func (m *Manager) retireOwner(o *owner) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.retired = true
	if o.users == 0 {
		m.closeOwner(o)
	}
}

// closeOwner closes o's session, which destroys its copies; o.mu is held.
func (m *Manager) closeOwner(o *owner) {
	if o.closed {
		return
	}
	o.closed = true
	if o.epoch == m.mod.epoch.Load() {
		m.ctx.CloseSession(o.h)
	}
}

// dropOwner retires o after a call found it or its copies gone.
func (m *Manager) dropOwner(o *owner) {
	m.ownMu.Lock()
	if m.own == o {
		m.own = nil
	}
	m.ownMu.Unlock()
	m.retireOwner(o)
}

// copyKey makes a session-object copy of token key h for s's generation, or
// returns nil to use h itself.
func (m *Manager) copyKey(s *session, h p11.ObjectHandle) *keyCopy {
	if !m.cfg.SessionKeyCopies || m.noCopy.Load() {
		return nil
	}
	o := m.ownerFor(s)
	if o == nil {
		return nil
	}
	o.mu.Lock()
	if o.retired {
		o.mu.Unlock()
		return nil
	}
	ch, err := m.ctx.CopyObject(o.h, h, []*p11.Attribute{p11.NewAttribute(p11.CKA_TOKEN, false)})
	o.mu.Unlock()
	if err == nil {
		return &keyCopy{h: ch, own: o}
	}
	m.cfg.Logger.Debug("pkcs11: C_CopyObject failed; using the token object", "err", err)
	switch {
	case classify(err) == dropSession || classify(err) == resetToken:
		// The owner session is gone: open another next time.
		m.dropOwner(o)
	case isCode(err, p11.CKR_FUNCTION_NOT_SUPPORTED):
		m.noCopy.Store(true)
	}
	return nil
}

// acquire returns the handle to run an operation with: c's copy, held until
// release, or the token object.
func (m *Manager) acquire(c *cachedKey) (p11.ObjectHandle, *keyCopy) {
	cp := c.cp
	if cp == nil {
		return c.h, nil
	}
	o := cp.own
	o.mu.Lock()
	defer o.mu.Unlock()
	if cp.retired || o.retired {
		return c.h, nil
	}
	cp.users++
	o.users++
	return cp.h, cp
}

// release ends an operation's hold on cp, destroying what was retired meanwhile.
func (m *Manager) release(cp *keyCopy) {
	o := cp.own
	o.mu.Lock()
	defer o.mu.Unlock()
	cp.users--
	o.users--
	if cp.retired && cp.users == 0 {
		m.destroyCopy(cp)
	}
	if o.retired && o.users == 0 {
		m.closeOwner(o)
	}
}

// retireCopy destroys cp once no operation uses it.
func (m *Manager) retireCopy(cp *keyCopy) {
	if cp == nil {
		return
	}
	cp.own.mu.Lock()
	defer cp.own.mu.Unlock()
	if !cp.retired {
		cp.retired = true
		if cp.users == 0 {
			m.destroyCopy(cp)
		}
	}
}

// destroyCopy destroys cp; cp.own.mu is held.
func (m *Manager) destroyCopy(cp *keyCopy) {
	o := cp.own
	if cp.gone {
		return
	}
	cp.gone = true
	if !o.closed && o.epoch == m.mod.epoch.Load() {
		m.ctx.DestroyObject(o.h, cp.h)
	}
}

// sweep drops cache entries unused for 2*KeyCacheTTL, at most once per KeyCacheTTL,
// so keys no longer used do not keep session objects in the token.
func (m *Manager) sweep() {
	ttl := m.cfg.KeyCacheTTL
	var old []*keyCopy
	m.cacheMu.Lock()
	if time.Since(m.lastSweep) >= ttl {
		m.lastSweep = time.Now()
		for id, c := range m.cache {
			if time.Since(c.at) >= 2*ttl {
				delete(m.cache, id)
				if c.cp != nil {
					old = append(old, c.cp)
				}
			}
		}
	}
	m.cacheMu.Unlock()
	for _, cp := range old {
		m.retireCopy(cp)
	}
}

// closeOwners closes the owner session at Close.
func (m *Manager) closeOwners() {
	m.mod.life.RLock()
	defer m.mod.life.RUnlock()
	m.ownMu.Lock()
	o := m.own
	m.own = nil
	m.ownMu.Unlock()
	if o != nil {
		o.mu.Lock()
		o.retired = true
		m.closeOwner(o)
		o.mu.Unlock()
	}
}
