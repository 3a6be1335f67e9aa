//go:build cgo

package pkcs11

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	p11 "github.com/miekg/pkcs11"

	"github.com/kmsd/kmsd/internal/xks/keyman"
)

// Available reports whether this build can use PKCS#11.
const Available = true

// A PKCS#11 library has process-wide state (C_Initialize / C_Finalize), so managers
// on the same module share one initialised context, counted here.
var (
	modMu   sync.Mutex
	modules = map[string]*module{}
)

type module struct {
	ctx  *p11.Ctx
	refs int // guarded by modMu

	// life is held shared by every PKCS#11 call and exclusively by reinit, since
	// C_Finalize must not run under a call in progress.
	life  sync.RWMutex
	epoch atomic.Uint64 // counts reinits; sessions of an older epoch are gone

	reinitMu   sync.Mutex
	lastReinit time.Time // guarded by reinitMu
}

// reinitEvery spaces out re-initialisations of a module while a token is missing.
const reinitEvery = time.Second

// reinitWait bounds how long reinit waits for calls in progress to finish.
const reinitWait = 100 * time.Millisecond

// reinit finalises and initialises the module again (C_Finalize, C_Initialize): a
// module may scan its tokens only then. SoftHSM2 does: a deleted token stays in
// C_GetSlotList with C_GetTokenInfo failing and C_FindObjects finding nothing, and a
// token initialised later, even with the same label, appears (in a new slot) only
// after C_Initialize. Every session on the module ends, those of other managers
// too; they notice the new epoch and open new ones. It runs at most once per
// reinitEvery and not while a call is stuck in the module, and reports whether it
// ran.
func (mod *module) reinit(log *slog.Logger, force bool) bool {
	mod.reinitMu.Lock()
	defer mod.reinitMu.Unlock()
	if !force && time.Since(mod.lastReinit) < reinitEvery {
		return false
	}
	mod.lastReinit = time.Now()
	deadline := time.Now().Add(reinitWait)
	for !mod.life.TryLock() {
		if time.Now().After(deadline) {
			log.Warn("pkcs11: not re-initialising the module: calls still in progress")
			return false
		}
		time.Sleep(time.Millisecond)
	}
	defer mod.life.Unlock()
	mod.epoch.Add(1)
	mod.ctx.Finalize()
	if err := mod.ctx.Initialize(); err != nil && !isCode(err, p11.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
		// Calls fail with CKR_CRYPTOKI_NOT_INITIALIZED until the next reinit.
		log.Error("pkcs11: C_Initialize after C_Finalize failed", "err", err)
	}
	return true
}

func (mod *module) refsNow() int {
	modMu.Lock()
	defer modMu.Unlock()
	return mod.refs
}

func acquireModule(path string) (*module, error) {
	modMu.Lock()
	defer modMu.Unlock()
	if m, ok := modules[path]; ok {
		m.refs++
		return m, nil
	}
	ctx := p11.New(path)
	if ctx == nil {
		return nil, fmt.Errorf("pkcs11: cannot load module %s", path)
	}
	if err := ctx.Initialize(); err != nil && !isCode(err, p11.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
		ctx.Destroy()
		return nil, fmt.Errorf("pkcs11: C_Initialize: %w", err)
	}
	m := &module{ctx: ctx, refs: 1}
	modules[path] = m
	return m, nil
}

func releaseModule(path string) {
	modMu.Lock()
	defer modMu.Unlock()
	m, ok := modules[path]
	if !ok {
		return
	}
	if m.refs--; m.refs == 0 {
		m.life.Lock()
		defer m.life.Unlock()
		m.ctx.Finalize()
		m.ctx.Destroy()
		delete(modules, path)
	}
}

func isCode(err error, code uint) bool {
	var e p11.Error
	return errors.As(err, &e) && uint(e) == code
}

func code(err error) (uint, bool) {
	var e p11.Error
	if errors.As(err, &e) {
		return uint(e), true
	}
	return 0, false
}

type session struct {
	h      p11.SessionHandle
	gen    uint64 // the manager's generation when opened
	epoch  uint64 // the module's epoch when opened
	slot   uint
	serial string // of the token the session is on
}

type cachedKey struct {
	h   p11.ObjectHandle // the token object
	cp  *keyCopy         // its session-object copy, nil if none (copies.go)
	key keyman.Key
	gen uint64
	at  time.Time
}

// Manager is a keyman.Manager over one PKCS#11 token.
type Manager struct {
	cfg Config
	mod *module
	ctx *p11.Ctx // mod.ctx

	sem  chan struct{} // one token per open session, bounds the pool
	idle chan *session // sessions ready for use

	mu    sync.Mutex // guards slot, gen, epoch, lost and token metadata during resets
	slot  uint
	gen   uint64
	epoch uint64 // the module's epoch when slot was found
	lost  bool   // the token was not found at the last reset
	token p11.TokenInfo

	cacheMu   sync.RWMutex
	cache     map[string]*cachedKey
	lastSweep time.Time // guarded by cacheMu

	ownMu  sync.Mutex  // guards own
	own    *owner      // the session holding key copies (copies.go)
	noCopy atomic.Bool // the module has no C_CopyObject
	noGCM  atomic.Bool // the token lacks CKM_AES_GCM: composedGCM (mech.go)

	overruns    atomic.Int64 // calls still running past their caller's deadline
	lastOverrun atomic.Int64 // unix nanoseconds when the last overrun call returned
}

var _ keyman.Manager = (*Manager)(nil)

// Open loads the module, finds the token by label and logs in once to prove the PIN.
func Open(cfg Config) (*Manager, error) {
	cfg.defaults()
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	if cfg.Module == "" || cfg.TokenLabel == "" {
		return nil, errors.New("pkcs11: module and token label are required")
	}
	mod, err := acquireModule(cfg.Module)
	if err != nil {
		return nil, err
	}
	m := &Manager{cfg: cfg, mod: mod, ctx: mod.ctx, sem: make(chan struct{}, cfg.PoolSize),
		idle: make(chan *session, cfg.PoolSize), cache: map[string]*cachedKey{}}
	m.mu.Lock()
	err = m.findSlot()
	if err != nil && mod.refsNow() > 1 && mod.reinit(cfg.Logger, true) {
		// Another manager initialised the module before the token was made.
		err = m.findSlot()
	}
	m.mu.Unlock()
	if err != nil {
		releaseModule(cfg.Module)
		return nil, err
	}
	s, err := m.get(context.Background())
	if err != nil {
		releaseModule(cfg.Module)
		return nil, err
	}
	m.put(s)
	if m.noGCM.Load() {
		cfg.Logger.Warn("pkcs11: the token has no CKM_AES_GCM; GCM is composed from CKM_AES_ECB (the key stays in the token, the keystream passes through the proxy's memory)",
			"token", cfg.TokenLabel)
	}
	cfg.Logger.Info("pkcs11: key manager open", "token", cfg.TokenLabel, "slot", m.slot, "session_pool_size", cfg.PoolSize,
		"key_cache_ttl", cfg.KeyCacheTTL.String(), "session_key_copies", cfg.SessionKeyCopies && cfg.KeyCacheTTL > 0)
	return m, nil
}

// findSlot locates the token by label, holding m.mu. A token whose C_GetTokenInfo
// fails is not there (SoftHSM2 keeps deleted tokens in the slot list).
func (m *Manager) findSlot() error {
	m.mod.life.RLock()
	defer m.mod.life.RUnlock()
	slots, err := m.ctx.GetSlotList(true)
	if err != nil {
		return fmt.Errorf("pkcs11: C_GetSlotList: %w", err)
	}
	for _, s := range slots {
		ti, err := m.ctx.GetTokenInfo(s)
		if err != nil {
			continue
		}
		if strings.TrimRight(ti.Label, " \x00") == m.cfg.TokenLabel {
			m.slot, m.token, m.epoch, m.lost = s, ti, m.mod.epoch.Load(), false
			m.noGCM.Store(!hasGCM(m.ctx, s))
			return nil
		}
	}
	return fmt.Errorf("%w: no token labelled %q", keyman.ErrUnavailable, m.cfg.TokenLabel)
}

// open opens a session on the current slot and makes sure the token is logged in.
// After a reset that did not find the token, it tries to find it again first.
func (m *Manager) open() (*session, error) {
	m.mu.Lock()
	ok, gen := !m.lost && m.epoch == m.mod.epoch.Load(), m.gen
	m.mu.Unlock()
	if !ok {
		m.reset(gen)
	}
	m.mu.Lock()
	s := &session{slot: m.slot, gen: m.gen, epoch: m.epoch, serial: m.token.SerialNumber}
	lost := m.lost
	m.mu.Unlock()
	if lost {
		return nil, fmt.Errorf("%w: no token labelled %q", keyman.ErrUnavailable, m.cfg.TokenLabel)
	}
	m.mod.life.RLock()
	defer m.mod.life.RUnlock()
	if s.epoch != m.mod.epoch.Load() {
		return nil, fmt.Errorf("%w: the PKCS#11 module was re-initialised", keyman.ErrUnavailable)
	}
	h, err := m.ctx.OpenSession(s.slot, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
	if err != nil {
		return nil, fmt.Errorf("pkcs11: C_OpenSession: %w", err)
	}
	if err := m.ctx.Login(h, p11.CKU_USER, m.cfg.PIN); err != nil && !isCode(err, p11.CKR_USER_ALREADY_LOGGED_IN) {
		m.ctx.CloseSession(h)
		if isCode(err, p11.CKR_PIN_INCORRECT) || isCode(err, p11.CKR_PIN_LOCKED) {
			return nil, fmt.Errorf("%w: C_Login: %v", keyman.ErrUnavailable, err)
		}
		return nil, fmt.Errorf("pkcs11: C_Login: %w", err)
	}
	s.h = h
	return s, nil
}

// get takes an idle session or opens one, waiting for room in the pool until ctx ends.
func (m *Manager) get(ctx context.Context) (*session, error) {
	select {
	case m.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: waiting for a PKCS#11 session: %v", keyman.ErrTimeout, ctx.Err())
	}
	for {
		select {
		case s := <-m.idle:
			if m.stale(s) {
				m.close(s)
				continue
			}
			return s, nil
		default:
		}
		s, err := m.open()
		if err != nil {
			<-m.sem
			return nil, err
		}
		return s, nil
	}
}

func (m *Manager) stale(s *session) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return s.gen != m.gen || s.epoch != m.mod.epoch.Load()
}

// close closes s unless the module was re-initialised since it was opened: its
// handle is void then, and may even name a newer session.
func (m *Manager) close(s *session) {
	m.mod.life.RLock()
	defer m.mod.life.RUnlock()
	if s.epoch == m.mod.epoch.Load() {
		m.ctx.CloseSession(s.h)
	}
}

// put returns a healthy session to the pool.
func (m *Manager) put(s *session) {
	if m.stale(s) {
		m.close(s)
	} else {
		m.idle <- s
	}
	<-m.sem
}

// discard closes a broken session.
func (m *Manager) discard(s *session) {
	m.close(s)
	<-m.sem
}

// gone reports whether the token s was opened on has left its slot or been replaced
// (a new serial number). Some modules answer calls on a vanished token as if it
// were empty, so errors that could mean that are checked here.
func (m *Manager) gone(s *session) bool {
	m.mod.life.RLock()
	defer m.mod.life.RUnlock()
	if s.epoch != m.mod.epoch.Load() {
		return true
	}
	ti, err := m.ctx.GetTokenInfo(s.slot)
	return err != nil || strings.TrimRight(ti.Label, " \x00") != m.cfg.TokenLabel || ti.SerialNumber != s.serial
}

// reset handles a token restart: it drops every pooled session and the key cache and
// finds the token again (its slot may have changed), re-initialising the module when
// the token is not in the slot list. Only the first caller for a given generation
// resets. While the token is missing, every session request comes here again, and
// the module is re-initialised at most once per reinitEvery.
func (m *Manager) reset(seen uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.gen != seen {
		return
	}
	m.gen++
	if !m.lost {
		m.cfg.Logger.Warn("pkcs11: resetting sessions after a token or login failure", "token", m.cfg.TokenLabel)
	}
	m.cacheMu.Lock()
	clear(m.cache)
	m.cacheMu.Unlock()
	err := m.findSlot()
	if err != nil && m.mod.reinit(m.cfg.Logger, false) {
		err = m.findSlot()
	}
	if err != nil {
		if !m.lost {
			m.cfg.Logger.Error("pkcs11: token not found after reset", "token", m.cfg.TokenLabel, "err", err)
		}
		m.lost = true
		return
	}
	m.cfg.Logger.Info("pkcs11: token found", "token", m.cfg.TokenLabel, "slot", m.slot, "serial", strings.TrimSpace(m.token.SerialNumber))
}

// outcome classifies a PKCS#11 error for retry decisions.
type outcome int

const (
	keep        outcome = iota // session fine; return err as is
	dropSession                // session broken; retry on another
	resetToken                 // token restarted or logged out; reset and retry
	dropKey                    // stale object handle; forget the key and retry
)

func classify(err error) outcome {
	c, ok := code(err)
	if !ok {
		return keep
	}
	switch c {
	case p11.CKR_SESSION_HANDLE_INVALID, p11.CKR_SESSION_CLOSED, p11.CKR_OPERATION_ACTIVE,
		p11.CKR_DEVICE_ERROR, p11.CKR_DEVICE_MEMORY:
		return dropSession
	case p11.CKR_TOKEN_NOT_PRESENT, p11.CKR_DEVICE_REMOVED, p11.CKR_CRYPTOKI_NOT_INITIALIZED,
		p11.CKR_SLOT_ID_INVALID, p11.CKR_TOKEN_NOT_RECOGNIZED, p11.CKR_USER_NOT_LOGGED_IN:
		return resetToken
	case p11.CKR_KEY_HANDLE_INVALID, p11.CKR_OBJECT_HANDLE_INVALID:
		return dropKey
	}
	return keep
}

// do runs fn on a pooled session, recovering once from broken sessions, token
// restarts and stale handles.
//
// fn runs in the calling goroutine. Handing it to a goroutine of its own, as an
// earlier version did, costs a scheduler hand-off per call, and with GOMAXPROCS=1
// those hand-offs kept net/http's per-request background reader queued behind every
// other runnable goroutine: connections then never drained the run queue, so a
// connection that did wait for its next request was noticed only by sysmon's netpoll
// (every 10ms) and then sat in the global run queue, which a busy P serves once per
// 61 schedules. That made the 1% tail of Decrypt at concurrency 16 10-80ms.
//
// A call cannot be abandoned while it runs in the caller's goroutine, so the manager
// watches for calls that overrun their deadline (a hanging or very slow token). From
// the first overrun until hangGrace after the last one has returned, fn runs in its
// own goroutine again, and callers get ErrTimeout at their deadline while stuck calls
// finish in the background.
func (m *Manager) do(ctx context.Context, id string, fn func(s *session) error) error {
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		if e := ctx.Err(); e != nil {
			return fmt.Errorf("%w: %v", keyman.ErrTimeout, e)
		}
		var s *session
		s, err = m.get(ctx)
		if err != nil {
			if classify(err) == resetToken {
				m.reset(m.generation())
				continue
			}
			return err
		}
		if e := ctx.Err(); e != nil {
			// The deadline passed while waiting for a session: do not start a
			// call that would count as overrunning it.
			m.put(s)
			return fmt.Errorf("%w: %v", keyman.ErrTimeout, e)
		}
		if m.hanging() {
			done := make(chan error, 1)
			go func() { done <- m.watched(ctx, s, fn) }()
			select {
			case err = <-done:
			case <-ctx.Done():
				go func() { m.finish(s, <-done, id) }()
				return fmt.Errorf("%w: PKCS#11 call: %v", keyman.ErrTimeout, ctx.Err())
			}
		} else {
			err = m.watched(ctx, s, fn)
		}
		if err != nil && !errors.Is(err, keyman.ErrKeyUsage) && m.gone(s) {
			m.discard(s)
			m.reset(s.gen)
			continue
		}
		if m.finish(s, err, id) {
			return err
		}
	}
	return fmt.Errorf("%w: %v", keyman.ErrUnavailable, err)
}

// hangGrace is how long calls keep running in goroutines of their own after the last
// call that overran its deadline has returned.
const hangGrace = 30 * time.Second

// watched runs fn, counting it in m.overruns while it runs past ctx's deadline.
func (m *Manager) watched(ctx context.Context, s *session, fn func(s *session) error) error {
	stop := context.AfterFunc(ctx, func() {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			m.overruns.Add(1)
			m.cfg.Logger.Warn("pkcs11: a call is running past its deadline; the token may hang", "token", m.cfg.TokenLabel)
		}
	})
	m.mod.life.RLock()
	var err error
	if s.epoch != m.mod.epoch.Load() {
		// The module was re-initialised since s was opened: its handle is void.
		err = p11.Error(p11.CKR_SESSION_HANDLE_INVALID)
	} else {
		err = fn(s)
	}
	m.mod.life.RUnlock()
	overran := errors.Is(ctx.Err(), context.DeadlineExceeded)
	if !stop() && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		// The callback has counted this call, or is about to: the count may
		// dip below zero briefly, which hanging treats as none.
		m.overruns.Add(-1)
		overran = true
	}
	if overran {
		m.lastOverrun.Store(time.Now().UnixNano())
	}
	return err
}

// hanging reports whether a call is overrunning its deadline or did so recently.
func (m *Manager) hanging() bool {
	if m.overruns.Load() > 0 {
		return true
	}
	last := m.lastOverrun.Load()
	return last != 0 && time.Since(time.Unix(0, last)) < hangGrace
}

// finish returns s to the pool or drops it according to err, and reports whether err
// is final (no retry).
func (m *Manager) finish(s *session, err error, id string) bool {
	switch classify(err) {
	case dropSession:
		m.discard(s)
		return false
	case resetToken:
		m.discard(s)
		m.reset(s.gen)
		return false
	case dropKey:
		m.put(s)
		m.forget(id)
		return false
	}
	m.put(s)
	return true
}

func (m *Manager) generation() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.gen
}

// forget drops key id from the cache; it runs outside m.do's calls.
func (m *Manager) forget(id string) {
	m.cacheMu.Lock()
	c := m.cache[id]
	delete(m.cache, id)
	m.cacheMu.Unlock()
	if c != nil && c.cp != nil {
		m.mod.life.RLock()
		m.retireCopy(c.cp)
		m.mod.life.RUnlock()
	}
}

// drop removes entry c of key id from the cache if it is still there, and retires
// its copy.
func (m *Manager) drop(id string, c *cachedKey) {
	m.cacheMu.Lock()
	if m.cache[id] == c {
		delete(m.cache, id)
	}
	m.cacheMu.Unlock()
	m.retireCopy(c.cp)
}

// resolve finds key id on session s, using the cache when fresh. With the cache on,
// a key found anew is copied to a session object (copies.go).
func (m *Manager) resolve(s *session, id string) (*cachedKey, error) {
	var old *cachedKey
	if m.cfg.KeyCacheTTL > 0 {
		m.cacheMu.RLock()
		c, ok := m.cache[id]
		m.cacheMu.RUnlock()
		if ok && c.gen == s.gen && time.Since(c.at) < m.cfg.KeyCacheTTL {
			return c, nil
		}
		old = c
		m.sweep()
	}
	h, err := m.find(s, id, true)
	if err == nil {
		var k keyman.Key
		if k, err = m.describe(s, h, id); err == nil {
			c := &cachedKey{h: h, key: k, gen: s.gen, at: time.Now()}
			if m.cfg.KeyCacheTTL > 0 {
				c.cp = m.copyKey(s, h)
				m.cacheMu.Lock()
				old = m.cache[id]
				m.cache[id] = c
				m.cacheMu.Unlock()
				if old != nil {
					m.retireCopy(old.cp)
				}
			}
			return c, nil
		}
	}
	if old != nil {
		// The expired entry is of no more use; its copy must not outlive
		// the key's deletion.
		m.drop(id, old)
	}
	return nil, err
}

// crypt runs an AES-GCM operation with key id, resolved as c, on its copy when it
// has one.
func (m *Manager) crypt(s *session, id string, c *cachedKey, iv, aad, in []byte, decrypt bool) ([]byte, error) {
	h, cp := m.acquire(c)
	out, err := m.gcm(s, h, iv, aad, in, decrypt)
	if cp != nil {
		m.release(cp)
		if classify(err) == dropKey {
			// The copy went with its owner session (a token restart, or every
			// session closed): copy again next time, use the token key now.
			m.dropOwner(cp.own)
			m.drop(id, c)
			out, err = m.gcm(s, c.h, iv, aad, in, decrypt)
		}
	}
	return out, err
}

// find returns the one secret key labelled label. Several keys with one label are a
// configuration error of the token, reported as such rather than picking one.
func (m *Manager) find(s *session, label string, token bool) (p11.ObjectHandle, error) {
	tmpl := []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
		p11.NewAttribute(p11.CKA_LABEL, label),
	}
	if token {
		tmpl = append(tmpl, p11.NewAttribute(p11.CKA_TOKEN, true))
	}
	if err := m.ctx.FindObjectsInit(s.h, tmpl); err != nil {
		return 0, err
	}
	hs, _, err := m.ctx.FindObjects(s.h, 2)
	if ferr := m.ctx.FindObjectsFinal(s.h); err == nil {
		err = ferr
	}
	switch {
	case err != nil:
		return 0, err
	case len(hs) == 0:
		return 0, fmt.Errorf("%w: no secret key labelled %q", keyman.ErrKeyNotFound, label)
	case len(hs) > 1:
		return 0, fmt.Errorf("pkcs11: several secret keys are labelled %q; a label must name exactly one key", label)
	}
	return hs[0], nil
}

var usageAttrs = []struct {
	attr uint
	name string
}{
	{p11.CKA_ENCRYPT, "ENCRYPT"}, {p11.CKA_DECRYPT, "DECRYPT"}, {p11.CKA_SIGN, "SIGN"},
	{p11.CKA_VERIFY, "VERIFY"}, {p11.CKA_WRAP, "WRAP"}, {p11.CKA_UNWRAP, "UNWRAP"},
	{p11.CKA_DERIVE, "DERIVE"},
}

func ulong(b []byte) uint64 {
	switch len(b) {
	case 8:
		return binary.NativeEndian.Uint64(b)
	case 4:
		return uint64(binary.NativeEndian.Uint32(b))
	}
	return 0
}

func (m *Manager) describe(s *session, h p11.ObjectHandle, id string) (keyman.Key, error) {
	tmpl := []*p11.Attribute{p11.NewAttribute(p11.CKA_KEY_TYPE, nil), p11.NewAttribute(p11.CKA_VALUE_LEN, nil)}
	for _, u := range usageAttrs {
		tmpl = append(tmpl, p11.NewAttribute(u.attr, nil))
	}
	attrs, err := m.ctx.GetAttributeValue(s.h, h, tmpl)
	if err != nil {
		// Modules answer the whole template with an error for one attribute they
		// lack (openCryptoki keeps no CKA_VALUE_LEN on a key imported without it):
		// ask for each alone, and keep what is there.
		attrs = attrs[:0]
		for _, a := range tmpl {
			one, e := m.ctx.GetAttributeValue(s.h, h, []*p11.Attribute{a})
			if c, ok := code(e); e != nil && !(ok && (c == p11.CKR_ATTRIBUTE_TYPE_INVALID || c == p11.CKR_ATTRIBUTE_SENSITIVE)) {
				return keyman.Key{}, e
			}
			attrs = append(attrs, one...)
		}
	}
	k := keyman.Key{ID: id, Enabled: true, Usage: []string{}}
	var keyType, valueLen uint64
	for _, a := range attrs {
		switch a.Type {
		case p11.CKA_KEY_TYPE:
			keyType = ulong(a.Value)
		case p11.CKA_VALUE_LEN:
			valueLen = ulong(a.Value)
		default:
			for _, u := range usageAttrs {
				if a.Type == u.attr && len(a.Value) == 1 && a.Value[0] != 0 {
					k.Usage = append(k.Usage, u.name)
				}
			}
		}
	}
	if keyType == p11.CKK_AES {
		k.Spec = fmt.Sprintf("AES_%d", valueLen*8)
	} else {
		k.Spec = fmt.Sprintf("CKK_0x%X_%d", keyType, valueLen*8)
	}
	return k, nil
}

// Describe reads the key's type, length and usage flags. PKCS#11 keys have no
// disabled state; the proxy's configuration can disable them.
func (m *Manager) Describe(ctx context.Context, id string) (keyman.Key, error) {
	var k keyman.Key
	err := m.do(ctx, id, func(s *session) error {
		c, err := m.resolve(s, id)
		if err == nil {
			k = c.key
		}
		return err
	})
	return k, err
}

func mapCryptoErr(err error, decrypt bool) error {
	c, ok := code(err)
	if !ok {
		return err
	}
	switch c {
	case p11.CKR_KEY_FUNCTION_NOT_PERMITTED, p11.CKR_KEY_TYPE_INCONSISTENT:
		return fmt.Errorf("%w: %v", keyman.ErrKeyUsage, err)
	}
	if decrypt {
		switch c {
		// SoftHSM2 answers a wrong tag with CKR_GENERAL_ERROR, nShield with
		// CKR_FUNCTION_FAILED, PKCS#11 3.0 modules with CKR_AEAD_DECRYPT_FAILED.
		case p11.CKR_ENCRYPTED_DATA_INVALID, p11.CKR_ENCRYPTED_DATA_LEN_RANGE,
			p11.CKR_FUNCTION_FAILED, p11.CKR_GENERAL_ERROR, 0x35:
			return fmt.Errorf("%w: %v", keyman.ErrInvalidCiphertext, err)
		}
	}
	if classify(err) != keep {
		return err // let do() recover
	}
	return fmt.Errorf("%w: %v", keyman.ErrUnavailable, err)
}

// Encrypt runs CKM_AES_GCM with a 12-byte IV drawn by the proxy and splits the tag
// the token appends.
func (m *Manager) Encrypt(ctx context.Context, id string, plaintext, aad []byte) (keyman.Sealed, error) {
	iv := make([]byte, 12)
	if _, err := io.ReadFull(m.cfg.Rand, iv); err != nil {
		return keyman.Sealed{}, fmt.Errorf("%w: random: %v", keyman.ErrUnavailable, err)
	}
	var out []byte
	err := m.do(ctx, id, func(s *session) error {
		c, err := m.resolve(s, id)
		if err != nil {
			return err
		}
		out, err = m.crypt(s, id, c, iv, aad, plaintext, false)
		return mapCryptoErr(err, false)
	})
	if err != nil {
		return keyman.Sealed{}, err
	}
	if len(out) != len(plaintext)+16 {
		return keyman.Sealed{}, fmt.Errorf("%w: token returned %d bytes for %d of plaintext", keyman.ErrUnavailable, len(out), len(plaintext))
	}
	n := len(plaintext)
	return keyman.Sealed{IV: iv, Ciphertext: out[:n:n], Tag: out[n:]}, nil
}

// Decrypt appends the tag to the ciphertext for CKM_AES_GCM.
func (m *Manager) Decrypt(ctx context.Context, id string, iv, ciphertext, tag, aad []byte) ([]byte, error) {
	in := make([]byte, 0, len(ciphertext)+len(tag))
	in = append(append(in, ciphertext...), tag...)
	var out []byte
	err := m.do(ctx, id, func(s *session) error {
		c, err := m.resolve(s, id)
		if err != nil {
			return err
		}
		out, err = m.crypt(s, id, c, iv, aad, in, true)
		return mapCryptoErr(err, true)
	})
	return out, err
}

func (m *Manager) gcm(s *session, h p11.ObjectHandle, iv, aad, in []byte, decrypt bool) ([]byte, error) {
	if m.noGCM.Load() {
		return m.composedGCM(s, h, iv, aad, in, decrypt)
	}
	params := p11.NewGCMParams(iv, aad, 128)
	defer params.Free()
	mech := []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_GCM, params)}
	if decrypt {
		if err := m.ctx.DecryptInit(s.h, mech, h); err != nil {
			return nil, err
		}
		return m.ctx.Decrypt(s.h, in)
	}
	if err := m.ctx.EncryptInit(s.h, mech, h); err != nil {
		return nil, err
	}
	return m.ctx.Encrypt(s.h, in)
}

// Health proves the token can do AES-GCM: with the configured health key, or with an
// ephemeral session key generated for the check and destroyed after it.
func (m *Manager) Health(ctx context.Context) keyman.Health {
	start := time.Now()
	var ti p11.TokenInfo
	err := m.do(ctx, "", func(s *session) error {
		var err error
		if ti, err = m.ctx.GetTokenInfo(s.slot); err != nil {
			return err
		}
		var h p11.ObjectHandle
		if m.cfg.HealthKeyLabel != "" {
			if h, err = m.find(s, m.cfg.HealthKeyLabel, true); err != nil {
				return err
			}
		} else {
			if h, err = m.ctx.GenerateKey(s.h, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_KEY_GEN, nil)},
				[]*p11.Attribute{
					p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
					p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_AES),
					p11.NewAttribute(p11.CKA_VALUE_LEN, 32),
					p11.NewAttribute(p11.CKA_TOKEN, false),
					p11.NewAttribute(p11.CKA_ENCRYPT, true),
					p11.NewAttribute(p11.CKA_DECRYPT, true),
					p11.NewAttribute(p11.CKA_SENSITIVE, true),
					p11.NewAttribute(p11.CKA_EXTRACTABLE, false),
					p11.NewAttribute(p11.CKA_LABEL, "xks-proxy-health-ephemeral"),
				}); err != nil {
				return err
			}
			defer m.ctx.DestroyObject(s.h, h)
		}
		probe, iv := make([]byte, 32), make([]byte, 12)
		io.ReadFull(m.cfg.Rand, probe)
		io.ReadFull(m.cfg.Rand, iv)
		ct, err := m.gcm(s, h, iv, []byte("xks-proxy health"), probe, false)
		if err != nil {
			return err
		}
		pt, err := m.gcm(s, h, iv, []byte("xks-proxy health"), ct, true)
		if err != nil {
			return err
		}
		if !bytes.Equal(pt, probe) {
			return errors.New("pkcs11: health round trip returned different bytes")
		}
		return nil
	})
	m.mu.Lock()
	tok := m.token
	m.mu.Unlock()
	if err == nil {
		tok = ti
	}
	ekm := keyman.EKM{
		ID: strings.TrimSpace(m.cfg.TokenLabel) + "/" + strings.TrimSpace(tok.SerialNumber),
		Model: fmt.Sprintf("%s fw %d.%d hw %d.%d", strings.TrimSpace(tok.Model),
			tok.FirmwareVersion.Major, tok.FirmwareVersion.Minor, tok.HardwareVersion.Major, tok.HardwareVersion.Minor),
		Status: keyman.Active,
	}
	switch {
	case err != nil:
		ekm.Status, ekm.Detail = keyman.Unavailable, err.Error()
	case time.Since(start) > 100*time.Millisecond:
		ekm.Status, ekm.Detail = keyman.Degraded, fmt.Sprintf("health round trip took %v", time.Since(start))
	}
	vendor := strings.TrimSpace(tok.ManufacturerID)
	if vendor == "" {
		vendor = "unknown PKCS#11 vendor"
	}
	return keyman.Health{Vendor: vendor, EKMs: []keyman.EKM{ekm}}
}

// Close closes the pooled sessions and the one holding key copies, and releases the
// module.
func (m *Manager) Close() error {
	m.closeOwners()
	for {
		select {
		case s := <-m.idle:
			m.close(s)
			continue
		default:
		}
		break
	}
	releaseModule(m.cfg.Module)
	return nil
}

// KeySpec describes a key for CreateKey.
type KeySpec struct {
	Label            string
	Encrypt, Decrypt bool
	Material         []byte // nil: generate a random key in the token
}

// CreateKey creates an AES-256 token key on the configured token. It exists for tests
// and provisioning; the proxy itself never creates keys.
func CreateKey(cfg Config, spec KeySpec) error {
	m, err := Open(cfg)
	if err != nil {
		return err
	}
	defer m.Close()
	return m.do(context.Background(), "", func(s *session) error {
		tmpl := []*p11.Attribute{
			p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
			p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_AES),
			p11.NewAttribute(p11.CKA_TOKEN, true),
			p11.NewAttribute(p11.CKA_PRIVATE, true),
			p11.NewAttribute(p11.CKA_LABEL, spec.Label),
			p11.NewAttribute(p11.CKA_ENCRYPT, spec.Encrypt),
			p11.NewAttribute(p11.CKA_DECRYPT, spec.Decrypt),
			p11.NewAttribute(p11.CKA_SIGN, false),
			p11.NewAttribute(p11.CKA_VERIFY, false),
			p11.NewAttribute(p11.CKA_WRAP, false),
			p11.NewAttribute(p11.CKA_UNWRAP, false),
			p11.NewAttribute(p11.CKA_SENSITIVE, true),
			p11.NewAttribute(p11.CKA_EXTRACTABLE, false),
		}
		if spec.Material != nil {
			// CKA_VALUE_LEN too: openCryptoki keeps no length of an imported key
			// unless told, and the proxy reads it for the key spec. A module that
			// refuses it (it is derived from CKA_VALUE) is asked without it.
			tmpl = append(tmpl, p11.NewAttribute(p11.CKA_VALUE, spec.Material))
			_, err := m.ctx.CreateObject(s.h, append(tmpl, p11.NewAttribute(p11.CKA_VALUE_LEN, len(spec.Material))))
			if err != nil {
				_, err = m.ctx.CreateObject(s.h, tmpl)
			}
			return err
		}
		_, err := m.ctx.GenerateKey(s.h, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_KEY_GEN, nil)},
			append(tmpl, p11.NewAttribute(p11.CKA_VALUE_LEN, 32)))
		return err
	})
}
