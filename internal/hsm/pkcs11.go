//go:build cgo

package hsm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"time"

	p11 "github.com/miekg/pkcs11"
)

// Available reports whether this build can use PKCS#11.
const Available = true

// A PKCS#11 library has process-wide state (C_Initialize reads, for
// SoftHSM2, SOFTHSM2_CONF once), so one module path is loaded once per
// process and shared.
var (
	modMu   sync.Mutex
	modules = map[string]*module{}
)

// module is the tokens of one PKCS#11 library.
type module struct {
	path string
	ctx  *p11.Ctx
	refs int
	now  func() time.Time

	// life is held shared around every call into the library and
	// exclusively by reinit, which finalises and initialises it again.
	life       sync.RWMutex
	lastReinit time.Time // under life, held exclusively

	// initialize is the library's C_Initialize (ctx.Initialize); tests
	// wrap it to act between the library's finalisation and its scan.
	initialize func() error
	// getTokenInfo is the library's C_GetTokenInfo (ctx.GetTokenInfo);
	// tests wrap it to act around one call (tokenInfo).
	getTokenInfo func(slot uint) (p11.TokenInfo, error)

	mu     sync.Mutex
	tokens map[string]*token // by label, while found
	pins   map[string]string // user PIN of each token this process logged in to
	// slots is where findSlot last found each label's token, with the
	// token's serial number: one C_GetTokenInfo on that slot confirms it
	// (see findSlot); under mu.
	slots map[string]slotSeen
	// known is the labels of the tokens the last initialisation listed,
	// and of those findSlot found since: the tokens a re-initialisation
	// must list again (initLocked); under mu.
	known map[string]bool

	mechMu     sync.Mutex
	mechs      map[uint]mechSet // what each slot's token offers (mech.go)
	unwrapTmpl int              // whether C_UnwrapKey honours its template (mech.go)

	// serial, when set, serialises the library's operations (see
	// serialModule); ops is the lock, taken before mu.
	serial bool
	ops    sync.Mutex
	// current is, in a serial library, the token whose user the
	// library's one login belongs to (see holdLoginLocked); under mu.
	current string
}

// serialModule reports whether the library described by info crashes when
// it runs operations from several threads at once. openCryptoki's
// software token (3.8, Debian's; C_GetInfo's manufacturer IBM) does,
// although it accepts CKF_OS_LOCKING_OK: concurrent Decrypts in separate
// sessions of one process end in SIGSEGV inside C_EncryptInit within a
// second (e2e/hsm TestBench at concurrency 4 showed it on every run, with
// a lock per token as well as without). kmsd therefore runs one
// operation at a time in such a library.
//
// Its user login is per process, too, not per token: after C_Login on one
// slot's token, C_Login on another's answers CKR_USER_ALREADY_LOGGED_IN
// without looking at the PIN, and the objects then created on the second
// token are encrypted under the first token's master key — no other
// process can read them (pkcs11-tool's C_GetAttributeValue(CKA_CLASS)
// answers CKR_ATTRIBUTE_SENSITIVE), nor this one after a restart. So in
// such a library kmsd keeps one token logged in at a time
// (holdLoginLocked): before an operation on another token it logs the
// library out and that token's user in.
func serialModule(info p11.Info) bool {
	return strings.TrimSpace(info.ManufacturerID) == "IBM"
}

// token is one found token: its slot, an anchor session that holds the
// user's login (PKCS#11 logs a token out when its last session closes) and
// idle sessions.
type token struct {
	slot   uint
	anchor p11.SessionHandle
	logged bool
	idle   []p11.SessionHandle
}

const maxIdle = 8

// reinitEvery bounds how often a key operation re-initialises a module to
// look for a token that went away: a token gone for good must not cost the
// module's other tokens their sessions on every call. The health probe
// (Refresh), which runs once per probe interval, may re-initialise more
// often, down to probeReinitEvery, so that a token that returns is seen
// within an interval however short the interval is.
const (
	reinitEvery      = time.Second
	probeReinitEvery = 50 * time.Millisecond
)

// errLost: the token went away under a call (its slot stopped answering).
var errLost = fmt.Errorf("%w: the token went away", ErrUnreachable)

func openTokens(path string) (tokens, error) {
	modMu.Lock()
	defer modMu.Unlock()
	if m, ok := modules[path]; ok {
		m.refs++
		return m, nil
	}
	ctx := p11.New(path)
	if ctx == nil {
		return nil, fmt.Errorf("%w: cannot load PKCS#11 module %s", ErrUnavailable, path)
	}
	if err := ctx.Initialize(); err != nil && !isCode(err, p11.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
		ctx.Destroy()
		return nil, fmt.Errorf("%w: C_Initialize of %s: %v", ErrUnavailable, path, err)
	}
	m := &module{path: path, ctx: ctx, refs: 1, now: time.Now,
		initialize: func() error { return ctx.Initialize() }, getTokenInfo: ctx.GetTokenInfo, known: map[string]bool{},
		tokens: map[string]*token{}, pins: map[string]string{}, slots: map[string]slotSeen{}}
	if info, err := ctx.GetInfo(); err == nil {
		m.serial = serialModule(info)
	}
	modules[path] = m
	return m, nil
}

func (m *module) Close() error {
	modMu.Lock()
	defer modMu.Unlock()
	if m.refs--; m.refs > 0 {
		return nil
	}
	delete(modules, m.path)
	m.life.Lock()
	defer m.life.Unlock()
	m.mu.Lock()
	for l := range m.tokens {
		m.dropLocked(l)
	}
	m.mu.Unlock()
	m.ctx.Finalize()
	m.ctx.Destroy()
	return nil
}

func isCode(err error, code uint) bool {
	var e p11.Error
	return errors.As(err, &e) && uint(e) == code
}

// tokenInfo is C_GetTokenInfo of slot, asked again up to twice, a
// millisecond apart, when SoftHSM2 answers CKR_GENERAL_ERROR. SoftHSM2
// 2.6.1 rewrites a token's token.object on every C_Login in any process,
// truncating and unlocking the file before it writes it (see initLocked),
// and a C_GetTokenInfo that reads the file in that window fails
// CKR_GENERAL_ERROR: 31 of 112,889 calls while another process logged in
// every ~9 ms, each a key operation failed "no token labelled", "the
// token went away" or CKR_GENERAL_ERROR. Asked again at once 13 of 18
// answered, a millisecond later 18 of 18. C_GetTokenInfo changes nothing,
// so asking again is always safe; other libraries' errors are returned
// as they are. Callers may hold m.mu.
func (m *module) tokenInfo(slot uint) (p11.TokenInfo, error) {
	ti, err := m.getTokenInfo(slot)
	for i := 0; i < tokenInfoRetries && isCode(err, p11.CKR_GENERAL_ERROR) && m.CachesPINs(); i++ {
		time.Sleep(time.Millisecond)
		ti, err = m.getTokenInfo(slot)
	}
	return ti, err
}

// tokenInfoRetries is how many times tokenInfo asks again.
const tokenInfoRetries = 2

// mapErr turns a PKCS#11 error into this package's sentinels, keeping the
// PKCS#11 text as the cause.
func mapErr(err error) error {
	var e p11.Error
	if !errors.As(err, &e) {
		return err
	}
	switch uint(e) {
	case p11.CKR_PIN_INCORRECT, p11.CKR_PIN_INVALID, p11.CKR_PIN_LEN_RANGE:
		return fmt.Errorf("%w: %v", ErrInvalidCredentials, err)
	case p11.CKR_PIN_LOCKED:
		return fmt.Errorf("%w: %v", ErrPINLocked, err)
	case p11.CKR_USER_NOT_LOGGED_IN:
		return fmt.Errorf("%w: %v", ErrNotLoggedIn, err)
	case p11.CKR_USER_PIN_NOT_INITIALIZED:
		return fmt.Errorf("%w: %v", ErrUserNotFound, err)
	case p11.CKR_TOKEN_NOT_PRESENT, p11.CKR_DEVICE_REMOVED, p11.CKR_SLOT_ID_INVALID,
		p11.CKR_TOKEN_NOT_RECOGNIZED, p11.CKR_DEVICE_ERROR, p11.CKR_CRYPTOKI_NOT_INITIALIZED:
		return fmt.Errorf("%w: %v", ErrUnreachable, err)
	}
	return fmt.Errorf("hsm: %w", err)
}

// retryable reports whether err means the session or the token changed
// under us (a token that went away and came back), so that the token is
// found again and the call retried once.
func retryable(err error) bool {
	var e p11.Error
	if !errors.As(err, &e) {
		return false
	}
	switch uint(e) {
	case p11.CKR_SESSION_HANDLE_INVALID, p11.CKR_SESSION_CLOSED, p11.CKR_TOKEN_NOT_PRESENT,
		p11.CKR_DEVICE_REMOVED, p11.CKR_SLOT_ID_INVALID, p11.CKR_TOKEN_NOT_RECOGNIZED,
		p11.CKR_DEVICE_ERROR, p11.CKR_OBJECT_HANDLE_INVALID, p11.CKR_KEY_HANDLE_INVALID,
		p11.CKR_USER_NOT_LOGGED_IN:
		return true
	}
	return false
}

// slotSeen is the slot a label's token was found in, and its serial.
type slotSeen struct {
	slot   uint
	serial string
}

// findSlot returns the slot of the initialised token labelled label.
// Callers hold m.mu.
//
// A full search asks every slot for its token's info (C_GetSlotList, then
// C_GetTokenInfo per slot) — with many tokens, a noticeable share of a
// burst of logins. So the slot and serial number where label was last
// found are remembered, and the token there is taken when one
// C_GetTokenInfo shows it still initialised, still labelled label and
// still with that serial; otherwise (the token was deleted, re-created —
// SoftHSM2 gives a new token a new serial — or the slots renumbered after
// a re-initialisation) the slots are searched again. A cached slot never
// yields a token that a full search would not: only a token with the
// label is taken, and only the very token found before.
func (m *module) findSlot(label string) (uint, error) {
	if c, ok := m.slots[label]; ok {
		ti, err := m.tokenInfo(c.slot)
		if err == nil && ti.Flags&p11.CKF_TOKEN_INITIALIZED != 0 &&
			strings.TrimRight(ti.Label, " \x00") == label && ti.SerialNumber == c.serial {
			m.known[label] = true
			return c.slot, nil
		}
		delete(m.slots, label)
	}
	return m.searchSlot(label)
}

// searchSlot is findSlot's full search; it remembers what it finds.
func (m *module) searchSlot(label string) (uint, error) {
	var slot uint
	found := false
	err := m.scanLocked(func(s uint, l string, ti p11.TokenInfo) bool {
		if l != label {
			return true
		}
		m.slots[label] = slotSeen{slot: s, serial: ti.SerialNumber}
		m.known[label] = true
		slot, found = s, true
		return false
	})
	if err != nil {
		return 0, mapErr(err)
	}
	if !found {
		return 0, fmt.Errorf("%w: no token labelled %q", ErrUnreachable, label)
	}
	return slot, nil
}

// scanLocked calls fn with each initialised token the library lists, in
// slot order, with its label, until fn returns false. A slot whose token
// does not answer is passed over. Callers hold m.mu.
func (m *module) scanLocked(fn func(slot uint, label string, ti p11.TokenInfo) bool) error {
	slots, err := m.ctx.GetSlotList(true)
	if err != nil {
		return err
	}
	for _, s := range slots {
		ti, err := m.tokenInfo(s)
		if err != nil || ti.Flags&p11.CKF_TOKEN_INITIALIZED == 0 {
			continue
		}
		if !fn(s, strings.TrimRight(ti.Label, " \x00"), ti) {
			return nil
		}
	}
	return nil
}

// tokenLocked finds label's token (again, after a drop), restoring the
// user's login when this process had logged in. Callers hold m.mu.
func (m *module) tokenLocked(label string) (*token, error) {
	if t, ok := m.tokens[label]; ok {
		return t, nil
	}
	slot, err := m.findSlot(label)
	if err != nil {
		return nil, err
	}
	t := &token{slot: slot}
	if pin, ok := m.pins[label]; ok {
		h, err := m.ctx.OpenSession(slot, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
		if err != nil {
			return nil, mapErr(err)
		}
		if err := m.ctx.Login(h, p11.CKU_USER, pin); err != nil && !isCode(err, p11.CKR_USER_ALREADY_LOGGED_IN) {
			// The PIN changed behind our back: stay logged out.
			m.ctx.CloseSession(h)
			delete(m.pins, label)
		} else {
			t.anchor, t.logged = h, true
			if err == nil && m.serial {
				m.current = label // a real login (not another token's)
			}
		}
	}
	m.tokens[label] = t
	return t, nil
}

// dropLocked forgets label's token and closes its sessions (which logs the
// token out in this process).
func (m *module) dropLocked(label string) {
	t, ok := m.tokens[label]
	if !ok {
		return
	}
	if m.current == label {
		m.current = "" // whether closing its sessions ends the login is the library's business
	}
	for _, h := range t.idle {
		m.ctx.CloseSession(h)
	}
	if t.logged {
		m.ctx.CloseSession(t.anchor)
	}
	delete(m.tokens, label)
}

// aliveLocked reports whether label's token answers: its known slot, or
// else a slot scan, shows it initialised. Callers hold m.mu.
func (m *module) aliveLocked(label string) bool {
	if t, ok := m.tokens[label]; ok {
		ti, err := m.tokenInfo(t.slot)
		if err == nil && ti.Flags&p11.CKF_TOKEN_INITIALIZED != 0 && strings.TrimRight(ti.Label, " \x00") == label {
			return true
		}
		m.dropLocked(label)
	}
	_, err := m.findSlot(label)
	return err == nil
}

// reinit finalises and initialises the library again (C_Finalize,
// C_Initialize): that is when a PKCS#11 library scans its tokens anew, so
// a token that went away and came back is found only then — SoftHSM2, for
// one, marks a vanished token invalid for good and shows no token that
// appears later. Every token's sessions end; tokenLocked logs the user in
// again from pins. It runs at most once per every, and reports whether
// label's token answers afterwards. An initialisation that misses a token
// the last one listed is repeated after a short pause (initLocked):
// SoftHSM2 misses a token whose token.object another process is
// rewriting, and the rate limit would otherwise leave it missing for up
// to every.
func (m *module) reinit(label string, every time.Duration) bool {
	m.life.Lock()
	defer m.life.Unlock()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.aliveLocked(label) { // re-initialised by another caller meanwhile
		return true
	}
	return m.reinitLocked(label, every)
}

// reinitLocked is reinit's work, whether or not label's token answers.
// Callers hold m.life exclusively and m.mu.
func (m *module) reinitLocked(label string, every time.Duration) bool {
	now := m.now()
	if now.Sub(m.lastReinit) < every {
		return false
	}
	m.lastReinit = now
	if err := m.initLocked(); err != nil {
		return false // calls fail CKR_CRYPTOKI_NOT_INITIALIZED until the next reinit
	}
	_, err := m.findSlot(label)
	return err == nil
}

// initLocked finalises and initialises the library (C_Finalize,
// C_Initialize), ending every token's sessions, and makes sure the new
// initialisation lists every token known before (known): while one is
// missing, the library is initialised again after a pause of
// initPauses[i], up to len(initPauses) times.
//
// SoftHSM2 2.6.1 leaves out of an initialisation a token whose
// token.object another process is rewriting at that moment, and lists it
// again only at the next C_Initialize: its writer truncates the file and
// releases its lock before it writes the new content (strace of
// pkcs11-tool --login: ftruncate(fd, 0), fcntl(F_UNLCK), write(fd, 320
// bytes)), and every process's C_Login rewrites token.object (its flags)
// — another kmsd node on a shared token directory, an operator's
// pkcs11-tool. With another process logging in every ~9 ms, 33 of 1070
// initialisations lost the token, and every key operation on it then
// failed until the next re-initialisation, up to reinitEvery later (issue
// #16; most likely e2e/hsm TestDeclaredCluster's "no token labelled"). An
// initialisation at once after the losing one lost it too (7 of 7); one
// 0.5 ms later found it in every case seen, within 1.2 ms of the loss. A
// token really gone costs these initialisations and pauses (7 ms) once:
// the next re-initialisation no longer expects it. Callers hold m.life
// exclusively and m.mu.
func (m *module) initLocked() error {
	want := m.known
	for i := 0; ; i++ {
		for l := range m.tokens {
			m.dropLocked(l)
		}
		m.current = ""
		clear(m.slots) // slot numbers may change (SoftHSM2 numbers its tokens at C_Initialize)
		m.ctx.Finalize()
		if err := m.initialize(); err != nil && !isCode(err, p11.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
			return err
		}
		m.known = m.listedLocked()
		missing := false
		for l := range want {
			missing = missing || !m.known[l]
		}
		if !missing || i == len(initPauses) {
			return nil
		}
		time.Sleep(initPauses[i])
	}
}

// initPauses are initLocked's pauses before it initialises the library
// again for a token it missed.
var initPauses = []time.Duration{time.Millisecond, 2 * time.Millisecond, 4 * time.Millisecond}

// listedLocked returns the labels of the initialised tokens the library
// lists, and remembers the slot of each (findSlot's cache): the first
// slot with that label, the one searchSlot would find. Callers hold m.mu.
func (m *module) listedLocked() map[string]bool {
	listed := map[string]bool{}
	// A listing that fails lists nothing: every known token is missed.
	_ = m.scanLocked(func(s uint, l string, ti p11.TokenInfo) bool {
		if !listed[l] {
			listed[l] = true
			m.slots[l] = slotSeen{slot: s, serial: ti.SerialNumber}
		}
		return true
	})
	return listed
}

// Reload finalises and initialises the library again (C_Finalize,
// C_Initialize) at once, whatever its tokens' state and however recently it
// was done, so that it reads every token's PINs anew (pinStale). For a
// login refused with a password kmsd knows another node has just set,
// where freshPINs' rate limit might leave the stale view in place.
func (m *module) Reload(ctx context.Context) error {
	m.life.Lock()
	defer m.life.Unlock()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.lastReinit = m.now()
	return mapErr(m.initLocked())
}

// CachesPINs reports whether the library keeps a token's PINs as it first
// read them (SoftHSM2; see freshPINs).
func (m *module) CachesPINs() bool { return strings.Contains(m.path, "softhsm") }

// pinStale reports whether err may come from this process's stale view
// of label's PINs: SoftHSM2 reads a token's PIN blobs when the module is
// initialised, so a PIN set (C_InitPIN, C_SetPIN) by another process —
// another kmsd node on a shared token directory — is seen only after a
// re-initialisation. (Its objects it does re-read.)
func pinStale(err error) bool {
	return errors.Is(err, ErrInvalidCredentials) || errors.Is(err, ErrUserNotFound)
}

// freshPINs runs fn and, when it fails as a stale view of PINs would,
// re-initialises the library (at most every probeReinitEvery) and runs it
// once more. A wrong PIN costs a re-initialisation; kmsd's failed-login
// limit keeps those few.
//
// A token read without its user (ErrUserNotFound) after that is asked up
// to loginRetries more times, each after a re-initialisation
// probeReinitEvery later: the re-initialisation may itself have read
// token.object while another process rewrote it — SoftHSM2 2.6.1
// truncates the file before writing it on every C_Login and C_SetPIN in
// any process — which reads as a token without a user PIN. Three nodes on
// one token directory met this: one resumed its login while another
// logged in and the controller rotated kmsuser's password, and its store
// was left without a login. A token that really has no user costs those
// re-initialisations.
func (m *module) freshPINs(label string, fn func() error) error {
	err := fn()
	if !pinStale(err) || !strings.Contains(m.path, "softhsm") {
		// Only SoftHSM2 keeps such a view; openCryptoki shares its
		// tokens' state between processes itself (pkcsslotd).
		return err
	}
	for i := 0; ; i++ {
		if i > 0 {
			time.Sleep(probeReinitEvery)
		}
		m.life.Lock()
		m.mu.Lock()
		again := m.reinitLocked(label, probeReinitEvery)
		m.mu.Unlock()
		m.life.Unlock()
		if !again {
			return err
		}
		err = fn()
		if !errors.Is(err, ErrUserNotFound) || i == loginRetries {
			return err
		}
	}
}

// loginRetries is how many more times freshPINs asks a token read
// without its user.
const loginRetries = 2

// shared runs fn holding the library's life shared.
func (m *module) shared(fn func() error) error {
	m.life.RLock()
	defer m.life.RUnlock()
	return fn()
}

// live runs fn (shared); when fn finds label's token unreachable, the
// library is re-initialised (reinit, at most once per every) and fn runs
// once more, so that a token that went away and came back is picked up
// without a restart.
func (m *module) live(ctx context.Context, label string, every time.Duration, fn func() error) error {
	err := m.shared(fn)
	if errors.Is(err, ErrUnreachable) && ctx.Err() == nil && m.reinit(label, every) {
		err = m.shared(fn)
	}
	return err
}

// Refresh finds label's token again, re-initialising the library if it
// went away; ErrUnreachable when it is still not there.
func (m *module) Refresh(ctx context.Context, label string) error {
	return m.live(ctx, label, probeReinitEvery, func() error {
		m.mu.Lock()
		defer m.mu.Unlock()
		if !m.aliveLocked(label) {
			return fmt.Errorf("%w: no token labelled %q", ErrUnreachable, label)
		}
		return nil
	})
}

// with runs fn on a pooled read-write session of label's token. If the
// session or the token went away, the token is found again — re-
// initialising the library if need be — and fn retried, so a token that
// comes back is picked up.
func (m *module) with(ctx context.Context, label string, fn func(h p11.SessionHandle) error) error {
	return m.live(ctx, label, reinitEvery, func() error { return m.with1(ctx, label, fn) })
}

func (m *module) with1(ctx context.Context, label string, fn func(h p11.SessionHandle) error) error {
	var err error
	for attempt := 0; attempt < 2; attempt++ {
		if e := ctx.Err(); e != nil {
			return fmt.Errorf("%w: %v", ErrUnreachable, e)
		}
		var t *token
		var h p11.SessionHandle
		if m.serial {
			m.ops.Lock()
		}
		m.mu.Lock()
		t, err = m.tokenLocked(label)
		if err == nil {
			if n := len(t.idle); n > 0 {
				h, t.idle = t.idle[n-1], t.idle[:n-1]
			} else if h, err = m.ctx.OpenSession(t.slot, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION); err != nil {
				m.dropLocked(label)
			}
		}
		if err == nil {
			if err = m.holdLoginLocked(label, t); err != nil {
				m.ctx.CloseSession(h)
				m.dropLocked(label)
			}
		}
		m.mu.Unlock()
		if err != nil {
			if m.serial {
				m.ops.Unlock()
			}
			if attempt == 0 && retryable(err) {
				continue
			}
			return mapErr(err)
		}
		err = fn(h)
		m.mu.Lock()
		if err != nil {
			// A vanished token answers some calls as if it were empty
			// (no such key): ask its slot whether it is still there.
			if ti, e := m.tokenInfo(t.slot); e != nil || strings.TrimRight(ti.Label, " \x00") != label {
				m.ctx.CloseSession(h)
				m.dropLocked(label)
				m.mu.Unlock()
				if m.serial {
					m.ops.Unlock()
				}
				return fmt.Errorf("%w (%v)", errLost, err)
			}
		}
		switch {
		case err != nil && retryable(err) && !isCode(err, p11.CKR_USER_NOT_LOGGED_IN):
			m.ctx.CloseSession(h)
			m.dropLocked(label)
		case m.tokens[label] == t && len(t.idle) < maxIdle:
			t.idle = append(t.idle, h)
		default:
			m.ctx.CloseSession(h)
		}
		m.mu.Unlock()
		if m.serial {
			m.ops.Unlock()
		}
		if err == nil || !retryable(err) || isCode(err, p11.CKR_USER_NOT_LOGGED_IN) {
			break
		}
	}
	if err != nil {
		return mapErr(err)
	}
	return nil
}

// holdLoginLocked makes, in a serial library (whose one user login is the
// process's, see serialModule), the library's login label's user's
// before an operation on label's token: the library is logged out (of
// whichever token) and label's user logged in with the PIN this process
// logged in with. A token this process is not logged in to is left as it
// is (public operations). Other libraries keep a login per token; nothing
// to do. Callers hold m.ops and m.mu.
func (m *module) holdLoginLocked(label string, t *token) error {
	if !m.serial || !t.logged || m.current == label {
		return nil
	}
	pin, ok := m.pins[label]
	if !ok {
		return nil
	}
	m.current = ""
	m.ctx.Logout(t.anchor) // whichever token the login was for
	if err := m.ctx.Login(t.anchor, p11.CKU_USER, pin); err != nil {
		return err
	}
	m.current = label
	return nil
}

// logoutAllLocked ends, in a serial library, the library's one user login
// (whichever token it is for), so that a login or an SO session that
// follows is a real one. Callers hold m.ops and m.mu.
func (m *module) logoutAllLocked() {
	if !m.serial {
		return
	}
	for _, t := range m.tokens {
		if t.logged {
			m.ctx.Logout(t.anchor)
			break
		}
	}
	m.current = ""
}

func (m *module) InitToken(ctx context.Context, label, soPIN string, free FreeSlots) error {
	if m.serial {
		// openCryptoki 3.8's C_InitToken crashes (SIGSEGV) in a process
		// that has another slot's token objects loaded (a user logged in,
		// a key made): CreateHsm of a cluster's third HSM did, every
		// time. A fresh C_Initialize loads none, so the library is
		// re-initialised first, with no operation in flight (life held
		// exclusively); every token's sessions end and tokenLocked logs
		// the user in again from pins, as after reinit.
		m.life.Lock()
		defer m.life.Unlock()
		m.mu.Lock()
		for l := range m.tokens {
			m.dropLocked(l)
		}
		m.current = ""
		clear(m.slots)
		m.ctx.Finalize()
		err := m.ctx.Initialize()
		m.mu.Unlock()
		if err != nil && !isCode(err, p11.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
			return mapErr(err)
		}
	} else {
		m.life.RLock()
		defer m.life.RUnlock()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, err := m.findSlot(label); err == nil {
		return fmt.Errorf("%w: a token labelled %q exists", ErrInvalidRequest, label)
	}
	slots, err := m.ctx.GetSlotList(true)
	if err != nil {
		return mapErr(err)
	}
	for _, s := range slots {
		if len(free.Slots) > 0 && !slices.Contains(free.Slots, s) {
			continue
		}
		ti, err := m.tokenInfo(s)
		if err != nil || ti.Flags&p11.CKF_TOKEN_INITIALIZED != 0 {
			continue
		}
		so := fitPIN(soPIN, ti.MaxPinLen)
		if free.FactorySOPIN == "" {
			return mapErr(m.ctx.InitToken(s, so, label))
		}
		if err := m.ctx.InitToken(s, free.FactorySOPIN, label); err != nil {
			return mapErr(err)
		}
		return mapErr(m.setFactorySOPIN(s, free.FactorySOPIN, so))
	}
	if len(free.Slots) > 0 {
		return fmt.Errorf("%w: none of the module's slots %v has a free token for a new HSM", ErrUnreachable, free.Slots)
	}
	return fmt.Errorf("%w: the module has no free slot for a new token", ErrUnreachable)
}

// setFactorySOPIN changes the SO PIN of slot's token from factory to so.
// Callers hold m.mu.
func (m *module) setFactorySOPIN(slot uint, factory, so string) error {
	h, err := m.ctx.OpenSession(slot, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
	if err != nil {
		return err
	}
	defer m.ctx.CloseSession(h)
	if err := m.ctx.Login(h, p11.CKU_SO, factory); err != nil {
		return err
	}
	defer m.ctx.Logout(h)
	return m.ctx.SetPIN(h, factory, so)
}

// DeleteToken removes a SoftHSM2 token with softhsm2-util, which deletes its
// directory; the module notices at its next slot scan. Tokens of other
// modules are left alone (an HSM is not ours to erase).
func (m *module) DeleteToken(ctx context.Context, label string) error {
	m.life.RLock()
	m.mu.Lock()
	m.dropLocked(label)
	delete(m.pins, label)
	delete(m.slots, label)
	delete(m.known, label) // gone on purpose: a re-initialisation need not look for it twice
	m.mu.Unlock()
	m.life.RUnlock()
	if !strings.Contains(m.path, "softhsm") {
		return nil
	}
	util, err := exec.LookPath("softhsm2-util")
	if err != nil {
		return fmt.Errorf("hsm: delete token %s: softhsm2-util not found", label)
	}
	cmd := exec.CommandContext(ctx, util, "--delete-token", "--token", label)
	cmd.Env = os.Environ()
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("hsm: softhsm2-util --delete-token %s: %v: %s", label, err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (m *module) Present(ctx context.Context, label string) error {
	m.life.RLock()
	defer m.life.RUnlock()
	m.mu.Lock()
	defer m.mu.Unlock()
	_, err := m.findSlot(label)
	if err != nil {
		m.dropLocked(label)
	}
	return err
}

// soSession runs fn in a fresh session logged in as the SO; the user must
// not be logged in at the same time, so a user login of this process is
// suspended around it and restored afterwards.
func (m *module) soSession(ctx context.Context, label, soPIN string, fn func(h p11.SessionHandle) error) error {
	m.life.RLock()
	defer m.life.RUnlock()
	if m.serial {
		m.ops.Lock()
		defer m.ops.Unlock()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.logoutAllLocked()
	pin, wasLogged := m.pins[label]
	m.dropLocked(label)
	slot, err := m.findSlot(label)
	if err != nil {
		return err
	}
	h, err := m.ctx.OpenSession(slot, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
	if err != nil {
		return mapErr(err)
	}
	err = m.ctx.Login(h, p11.CKU_SO, soPIN)
	if err == nil {
		err = fn(h)
		m.ctx.Logout(h)
	}
	m.ctx.CloseSession(h)
	if wasLogged {
		m.pins[label] = pin
	}
	if err != nil {
		return mapErr(err)
	}
	return nil
}

// seen finds label's token, re-initialising the library (at most every
// probeReinitEvery) when it is not there: SoftHSM2 lists the tokens of its
// directory at C_Initialize, so a token another process created since —
// another kmsd node on a shared token directory (Config.TokenDir) — is
// found only after a re-initialisation. The SO's calls (activating a
// cluster, creating a user) may be the first this process makes on such a
// token; key operations and logins re-initialise through live.
func (m *module) seen(ctx context.Context, label string) error {
	err := m.shared(func() error {
		m.mu.Lock()
		defer m.mu.Unlock()
		_, err := m.findSlot(label)
		return err
	})
	if errors.Is(err, ErrUnreachable) && ctx.Err() == nil && m.reinit(label, probeReinitEvery) {
		err = nil
	}
	return err
}

func (m *module) SetSOPIN(ctx context.Context, label, oldPIN, newPIN string) error {
	if err := m.seen(ctx, label); err != nil {
		return err
	}
	oldPIN, newPIN = m.fitPIN(label, oldPIN), m.fitPIN(label, newPIN)
	return m.freshPINs(label, func() error {
		return m.soSession(ctx, label, oldPIN, func(h p11.SessionHandle) error {
			return m.ctx.SetPIN(h, oldPIN, newPIN)
		})
	})
}

func (m *module) InitUserPIN(ctx context.Context, label, soPIN, pin string) error {
	if err := m.seen(ctx, label); err != nil {
		return err
	}
	soPIN, pin = m.fitPIN(label, soPIN), m.fitPIN(label, pin)
	err := m.freshPINs(label, func() error {
		return m.soSession(ctx, label, soPIN, func(h p11.SessionHandle) error {
			return m.ctx.InitPIN(h, pin)
		})
	})
	if err == nil {
		m.mu.Lock()
		if _, ok := m.pins[label]; ok {
			m.pins[label] = pin
			m.dropLocked(label) // log in again with the new PIN
		}
		m.mu.Unlock()
	}
	return err
}

func (m *module) UserPINInitialized(ctx context.Context, label string) (bool, error) {
	if err := m.seen(ctx, label); err != nil {
		return false, err
	}
	m.life.RLock()
	defer m.life.RUnlock()
	m.mu.Lock()
	defer m.mu.Unlock()
	slot, err := m.findSlot(label)
	if err != nil {
		return false, err
	}
	ti, err := m.tokenInfo(slot)
	if err != nil {
		return false, mapErr(err)
	}
	return ti.Flags&p11.CKF_USER_PIN_INITIALIZED != 0, nil
}

func (m *module) SetUserPIN(ctx context.Context, label, oldPIN, newPIN string) error {
	oldPIN, newPIN = m.fitPIN(label, oldPIN), m.fitPIN(label, newPIN)
	if m.userLocked(label) {
		return fmt.Errorf("%w: token %s", ErrPINLocked, label)
	}
	err := m.freshPINs(label, func() error {
		return m.with(ctx, label, func(h p11.SessionHandle) error {
			return m.ctx.SetPIN(h, oldPIN, newPIN)
		})
	})
	if err == nil {
		m.mu.Lock()
		if _, ok := m.pins[label]; ok {
			m.pins[label] = newPIN
		}
		m.mu.Unlock()
	}
	return err
}

func (m *module) Login(ctx context.Context, label, pin string) error {
	pin = m.fitPIN(label, pin)
	return m.freshPINs(label, func() error {
		return m.live(ctx, label, reinitEvery, func() error { return m.login(label, pin) })
	})
}

func (m *module) login(label, pin string) error {
	if m.serial {
		m.ops.Lock()
		defer m.ops.Unlock()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.tokens[label]; ok && !m.aliveLocked(label) {
		return fmt.Errorf("%w: token %s", errLost, label)
	}
	t, err := m.tokenLocked(label)
	if err != nil {
		return err
	}
	if m.serial {
		// The library's one login may be another token's, and then
		// C_Login answers CKR_USER_ALREADY_LOGGED_IN without checking
		// the PIN: log the library out and the user in for real. A
		// wrong PIN leaves the token's earlier login to be restored
		// (holdLoginLocked) with the PIN it had.
		m.logoutAllLocked()
		h, fresh := t.anchor, !t.logged
		if fresh {
			if h, err = m.ctx.OpenSession(t.slot, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION); err != nil {
				m.dropLocked(label)
				return mapErr(err)
			}
		}
		m.ctx.Logout(h)
		if err := m.ctx.Login(h, p11.CKU_USER, pin); err != nil {
			if fresh {
				m.ctx.CloseSession(h)
			}
			return mapErr(err)
		}
		t.anchor, t.logged = h, true
		m.pins[label] = pin
		m.current = label
		return nil
	}
	if t.logged {
		// Already logged in (C_Login would answer
		// CKR_USER_ALREADY_LOGGED_IN without looking at the PIN): check
		// the PIN with C_SetPIN(pin, pin), which verifies the old PIN.
		h, err := m.ctx.OpenSession(t.slot, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
		if err != nil {
			m.dropLocked(label)
			return mapErr(err)
		}
		defer m.ctx.CloseSession(h)
		if err := m.ctx.SetPIN(h, pin, pin); err != nil {
			return mapErr(err)
		}
		m.pins[label] = pin
		return nil
	}
	h, err := m.ctx.OpenSession(t.slot, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
	if err != nil {
		m.dropLocked(label)
		return mapErr(err)
	}
	if err := m.ctx.Login(h, p11.CKU_USER, pin); err != nil && !isCode(err, p11.CKR_USER_ALREADY_LOGGED_IN) {
		m.ctx.CloseSession(h)
		return mapErr(err)
	}
	t.anchor, t.logged = h, true
	m.pins[label] = pin
	return nil
}

func (m *module) Logout(ctx context.Context, label string) error {
	m.life.RLock()
	defer m.life.RUnlock()
	if m.serial {
		m.ops.Lock()
		defer m.ops.Unlock()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if t, ok := m.tokens[label]; ok && t.logged && (!m.serial || m.current == label) {
		m.ctx.Logout(t.anchor)
	}
	if m.current == label {
		m.current = ""
	}
	delete(m.pins, label)
	m.dropLocked(label)
	return nil
}

// findKey returns the token's secret keys labelled keyLabel.
func (m *module) findKey(h p11.SessionHandle, keyLabel string) ([]p11.ObjectHandle, error) {
	tmpl := []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
		p11.NewAttribute(p11.CKA_TOKEN, true),
		p11.NewAttribute(p11.CKA_LABEL, keyLabel),
	}
	if err := m.ctx.FindObjectsInit(h, tmpl); err != nil {
		return nil, err
	}
	hs, _, err := m.ctx.FindObjects(h, 16)
	if ferr := m.ctx.FindObjectsFinal(h); err == nil {
		err = ferr
	}
	return hs, err
}

func (m *module) oneKey(h p11.SessionHandle, keyLabel string) (p11.ObjectHandle, error) {
	hs, err := m.findKey(h, keyLabel)
	if err != nil {
		return 0, err
	}
	if len(hs) == 0 {
		return 0, fmt.Errorf("%w: no key labelled %q", ErrKeyNotFound, keyLabel)
	}
	return hs[0], nil
}

// requireLogin reports ErrNotLoggedIn unless this process holds the user's
// login on label (public sessions would otherwise silently see no private
// objects).
func (m *module) requireLogin(label string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.pins[label]; !ok {
		return fmt.Errorf("%w: token %s", ErrNotLoggedIn, label)
	}
	return nil
}

func aesTemplate(keyLabel string, extractable bool) []*p11.Attribute {
	return []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
		p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_AES),
		p11.NewAttribute(p11.CKA_TOKEN, true),
		p11.NewAttribute(p11.CKA_PRIVATE, true),
		p11.NewAttribute(p11.CKA_SENSITIVE, true),
		p11.NewAttribute(p11.CKA_EXTRACTABLE, extractable),
		p11.NewAttribute(p11.CKA_ENCRYPT, true),
		p11.NewAttribute(p11.CKA_DECRYPT, true),
		p11.NewAttribute(p11.CKA_WRAP, false),
		p11.NewAttribute(p11.CKA_UNWRAP, false),
		p11.NewAttribute(p11.CKA_LABEL, keyLabel),
	}
}

func (m *module) ImportMasking(ctx context.Context, label string, material []byte) error {
	if err := m.requireLogin(label); err != nil {
		return err
	}
	return m.with(ctx, label, func(h p11.SessionHandle) error {
		hs, err := m.findKey(h, maskingLabel)
		if err != nil || len(hs) > 0 {
			return err
		}
		_, err = m.ctx.CreateObject(h, []*p11.Attribute{
			p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
			p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_AES),
			p11.NewAttribute(p11.CKA_TOKEN, true),
			p11.NewAttribute(p11.CKA_PRIVATE, true),
			p11.NewAttribute(p11.CKA_SENSITIVE, true),
			p11.NewAttribute(p11.CKA_EXTRACTABLE, false),
			p11.NewAttribute(p11.CKA_ENCRYPT, false),
			p11.NewAttribute(p11.CKA_DECRYPT, false),
			p11.NewAttribute(p11.CKA_WRAP, true),
			p11.NewAttribute(p11.CKA_UNWRAP, true),
			p11.NewAttribute(p11.CKA_LABEL, maskingLabel),
			p11.NewAttribute(p11.CKA_VALUE, material),
		})
		return err
	})
}

func (m *module) GenerateKey(ctx context.Context, label, keyLabel string, masking []byte) ([]byte, error) {
	if err := m.requireLogin(label); err != nil {
		return nil, err
	}
	var wrapped []byte
	err := m.with(ctx, label, func(h p11.SessionHandle) error {
		mk, err := m.oneKey(h, maskingLabel)
		if err != nil {
			return err
		}
		honoured, err := m.unwrapHonoured(h, mk)
		if err != nil {
			return err
		}
		if !honoured {
			// A module that does not honour the protective attributes
			// at unwrap does not keep them when set later either
			// (openCryptoki 3.8 loses the value of a key whose
			// CKA_EXTRACTABLE was cleared when it reloads it): the key
			// is generated as a session object, wrapped, destroyed,
			// and created protected from its wrapped form, as its
			// copies on the other HSMs are.
			g, err := m.ctx.GenerateKey(h, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_KEY_GEN, nil)},
				append(sessionTemplate(keyLabel, true), p11.NewAttribute(p11.CKA_VALUE_LEN, 32)))
			if err != nil {
				return err
			}
			w, err := m.wrap(h, mk, g)
			if derr := m.ctx.DestroyObject(h, g); err == nil {
				err = derr
			}
			if err == nil {
				err = m.createFromWrapped(h, keyLabel, w, masking)
			}
			if err != nil {
				return err
			}
			wrapped = w
			return nil
		}
		// Generated extractable only so that it can be wrapped under the
		// masking key for the other HSMs, then made non-extractable at
		// once (PKCS#11 allows only that direction), and read back.
		tmpl := append(aesTemplate(keyLabel, true), p11.NewAttribute(p11.CKA_VALUE_LEN, 32))
		k, err := m.ctx.GenerateKey(h, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_KEY_GEN, nil)}, tmpl)
		if err != nil {
			return err
		}
		w, err := m.wrap(h, mk, k)
		if err == nil {
			err = m.ctx.SetAttributeValue(h, k, []*p11.Attribute{p11.NewAttribute(p11.CKA_EXTRACTABLE, false)})
		}
		if err == nil {
			var ok bool
			if ok, err = m.protected(h, k); err == nil && !ok {
				err = fmt.Errorf("hsm: the module left key %s readable despite the template", keyLabel)
			}
		}
		if err != nil {
			m.ctx.DestroyObject(h, k)
			return err
		}
		wrapped = w
		return nil
	})
	return wrapped, err
}

func (m *module) UnwrapKey(ctx context.Context, label, keyLabel string, wrapped, masking []byte) error {
	if err := m.requireLogin(label); err != nil {
		return err
	}
	return m.with(ctx, label, func(h p11.SessionHandle) error {
		hs, err := m.findKey(h, keyLabel)
		if err != nil || len(hs) > 0 {
			return err
		}
		mk, err := m.oneKey(h, maskingLabel)
		if err != nil {
			return err
		}
		return m.unwrapProtected(h, mk, keyLabel, wrapped, masking)
	})
}

func (m *module) HasKey(ctx context.Context, label, keyLabel string) (bool, error) {
	if err := m.requireLogin(label); err != nil {
		return false, err
	}
	var found bool
	err := m.with(ctx, label, func(h p11.SessionHandle) error {
		hs, err := m.findKey(h, keyLabel)
		found = len(hs) > 0
		if err == nil && !found {
			err = m.check(h) // a vanished token shows no objects
		}
		return err
	})
	return found, err
}

func (m *module) DestroyKey(ctx context.Context, label, keyLabel string) error {
	if err := m.requireLogin(label); err != nil {
		return err
	}
	return m.with(ctx, label, func(h p11.SessionHandle) error {
		hs, err := m.findKey(h, keyLabel)
		if err != nil {
			return err
		}
		if len(hs) == 0 {
			return fmt.Errorf("%w: no key labelled %q", ErrKeyNotFound, keyLabel)
		}
		for _, k := range hs {
			if err := m.ctx.DestroyObject(h, k); err != nil {
				return err
			}
		}
		return nil
	})
}

func (m *module) ListKeys(ctx context.Context, label string) ([]string, error) {
	if err := m.requireLogin(label); err != nil {
		return nil, err
	}
	var out []string
	err := m.with(ctx, label, func(h p11.SessionHandle) error {
		out = out[:0]
		tmpl := []*p11.Attribute{
			p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
			p11.NewAttribute(p11.CKA_TOKEN, true),
		}
		if err := m.ctx.FindObjectsInit(h, tmpl); err != nil {
			return err
		}
		defer m.ctx.FindObjectsFinal(h)
		for {
			hs, _, err := m.ctx.FindObjects(h, 64)
			if err != nil {
				return err
			}
			if len(hs) == 0 {
				return m.check(h) // a vanished token shows no objects
			}
			for _, o := range hs {
				attrs, err := m.ctx.GetAttributeValue(h, o, []*p11.Attribute{p11.NewAttribute(p11.CKA_LABEL, nil)})
				if err != nil {
					return err
				}
				if l := string(attrs[0].Value); l != maskingLabel {
					out = append(out, l)
				}
			}
		}
	})
	return out, err
}

// check asks the token of session h whether it is still there.
func (m *module) check(h p11.SessionHandle) error {
	si, err := m.ctx.GetSessionInfo(h)
	if err == nil {
		_, err = m.tokenInfo(si.SlotID)
	}
	return err
}

func (m *module) crypt(ctx context.Context, label, keyLabel string, iv, in, aad []byte, encrypt bool) ([]byte, error) {
	if err := m.requireLogin(label); err != nil {
		return nil, err
	}
	var out []byte
	err := m.with(ctx, label, func(h p11.SessionHandle) error {
		k, err := m.oneKey(h, keyLabel)
		if err != nil {
			return err
		}
		out, err = m.gcm(h, k, iv, in, aad, encrypt)
		return err
	})
	return out, err
}

func (m *module) Encrypt(ctx context.Context, label, keyLabel string, iv, plaintext, aad []byte) ([]byte, error) {
	return m.crypt(ctx, label, keyLabel, iv, plaintext, aad, true)
}

func (m *module) Decrypt(ctx context.Context, label, keyLabel string, iv, ciphertext, aad []byte) ([]byte, error) {
	return m.crypt(ctx, label, keyLabel, iv, ciphertext, aad, false)
}

func (m *module) Random(ctx context.Context, label string, n int) ([]byte, error) {
	var out []byte
	err := m.with(ctx, label, func(h p11.SessionHandle) error {
		var err error
		out, err = m.ctx.GenerateRandom(h, n)
		return err
	})
	return out, err
}
