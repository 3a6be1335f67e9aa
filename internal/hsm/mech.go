//go:build cgo

package hsm

import (
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"slices"

	p11 "github.com/miekg/pkcs11"

	"github.com/kmsd/kmsd/internal/ecbgcm"
)

// What PKCS#11 modules differ in, and how kmsd meets each. SoftHSM2 has
// every mechanism kmsd prefers; openCryptoki's software token (3.8, as
// Debian ships it) has neither CKM_AES_GCM nor the AES key-wrap mechanisms
// and takes PINs of 4 to 8 bytes only.

// mechSet is what one slot's token offers of the mechanisms kmsd prefers.
type mechSet struct {
	gcm bool // CKM_AES_GCM; else GCM is composed from CKM_AES_ECB (ecbgcm)
	kwp bool // CKM_AES_KEY_WRAP_PAD; else keys are wrapped with CKM_AES_CBC_PAD
}

// mechsOf returns (and remembers) what slot's token offers. A module that
// cannot list its mechanisms is taken to offer both.
func (m *module) mechsOf(slot uint) mechSet {
	m.mechMu.Lock()
	defer m.mechMu.Unlock()
	if ms, ok := m.mechs[slot]; ok {
		return ms
	}
	list, err := m.ctx.GetMechanismList(slot)
	if err != nil {
		return mechSet{gcm: true, kwp: true}
	}
	has := func(t uint) bool {
		return slices.ContainsFunc(list, func(x *p11.Mechanism) bool { return x.Mechanism == t })
	}
	ms := mechSet{gcm: has(p11.CKM_AES_GCM), kwp: has(p11.CKM_AES_KEY_WRAP_PAD)}
	if !ms.gcm {
		// Said once per slot: the operator of a real HSM must know the
		// key stays in it but GCM's keystream and hash subkey do not.
		slog.Warn("hsm: the token has no CKM_AES_GCM; AES-GCM is composed from CKM_AES_ECB, so its keystream and hash subkey pass through kmsd's memory (the key stays in the token)", "slot", slot)
	}
	if m.mechs == nil {
		m.mechs = map[uint]mechSet{}
	}
	m.mechs[slot] = ms
	return ms
}

// sessionMechs is mechsOf for the token of session h.
func (m *module) sessionMechs(h p11.SessionHandle) (mechSet, error) {
	si, err := m.ctx.GetSessionInfo(h)
	if err != nil {
		return mechSet{}, err
	}
	return m.mechsOf(si.SlotID), nil
}

// gcm runs AES-GCM with key k: CKM_AES_GCM when the token has it, else GCM
// composed from CKM_AES_ECB — the key stays in the token, the keystream and
// the hash subkey pass through kmsd's memory.
func (m *module) gcm(h p11.SessionHandle, k p11.ObjectHandle, iv, in, aad []byte, encrypt bool) ([]byte, error) {
	ms, err := m.sessionMechs(h)
	if err != nil {
		return nil, err
	}
	if !ms.gcm {
		ecb := func(blocks []byte) ([]byte, error) {
			if err := m.ctx.EncryptInit(h, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_ECB, nil)}, k); err != nil {
				return nil, err
			}
			return m.ctx.Encrypt(h, blocks)
		}
		if encrypt {
			return ecbgcm.Seal(ecb, iv, in, aad)
		}
		out, err := ecbgcm.Open(ecb, iv, in, aad)
		if errors.Is(err, ecbgcm.ErrOpen) {
			// What a token's own GCM answers for a tag that does not match.
			return nil, p11.Error(p11.CKR_ENCRYPTED_DATA_INVALID)
		}
		return out, err
	}
	params := p11.NewGCMParams(iv, aad, 128)
	defer params.Free()
	mech := []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_GCM, params)}
	if encrypt {
		if err := m.ctx.EncryptInit(h, mech, k); err != nil {
			return nil, err
		}
		return m.ctx.Encrypt(h, in)
	}
	if err := m.ctx.DecryptInit(h, mech, k); err != nil {
		return nil, err
	}
	return m.ctx.Decrypt(h, in)
}

// wrap wraps key k under the masking key mk: CKM_AES_KEY_WRAP_PAD when the
// token has it, else CKM_AES_CBC_PAD under a fresh IV from the token, which
// leads the wrapped form. The form a token makes is the form its cluster's
// tokens (one module) unwrap.
func (m *module) wrap(h p11.SessionHandle, mk, k p11.ObjectHandle) ([]byte, error) {
	ms, err := m.sessionMechs(h)
	if err != nil {
		return nil, err
	}
	if ms.kwp {
		return m.ctx.WrapKey(h, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_KEY_WRAP_PAD, nil)}, mk, k)
	}
	iv, err := m.ctx.GenerateRandom(h, 16)
	if err != nil {
		return nil, err
	}
	w, err := m.ctx.WrapKey(h, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_CBC_PAD, iv)}, mk, k)
	if err != nil {
		return nil, err
	}
	return append(iv, w...), nil
}

// unwrap creates a key from wrap's output with template tmpl.
func (m *module) unwrap(h p11.SessionHandle, mk p11.ObjectHandle, wrapped []byte, tmpl []*p11.Attribute) (p11.ObjectHandle, error) {
	ms, err := m.sessionMechs(h)
	if err != nil {
		return 0, err
	}
	if ms.kwp {
		return m.ctx.UnwrapKey(h, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_KEY_WRAP_PAD, nil)}, mk, wrapped, tmpl)
	}
	if len(wrapped) < 32 {
		return 0, fmt.Errorf("hsm: a CBC-wrapped key of %d bytes", len(wrapped))
	}
	return m.ctx.UnwrapKey(h, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_CBC_PAD, wrapped[:16])}, mk, wrapped[16:], tmpl)
}

// fitPIN maps a PIN longer than label's token takes (openCryptoki's
// software token: 8 bytes) to one it takes: the first bytes of the
// unpadded base64url of its SHA-256, 6 bits a byte. Every PIN that enters
// a token passes through it, so the same password always meets the same
// PIN; a PIN that fits is left as it is, so an operator's PINs work
// unchanged. A rotated kmsuser password (32 hex digits) keeps 48 bits on
// such a token.
func (m *module) fitPIN(label, pin string) string {
	m.life.RLock()
	defer m.life.RUnlock()
	m.mu.Lock()
	defer m.mu.Unlock()
	slot, err := m.findSlot(label)
	if err != nil {
		return pin
	}
	ti, err := m.ctx.GetTokenInfo(slot)
	if err != nil {
		return pin
	}
	return fitPIN(pin, ti.MaxPinLen)
}

// fitPIN is pin, or when longer than max (0: no limit) the first max
// characters of the unpadded base64url of its SHA-256.
func fitPIN(pin string, max uint) string {
	if max == 0 || uint(len(pin)) <= max {
		return pin
	}
	sum := sha256.Sum256([]byte(pin))
	enc := base64.RawURLEncoding.EncodeToString(sum[:])
	if max > uint(len(enc)) {
		max = uint(len(enc))
	}
	return enc[:max]
}

// userLocked reports whether label's token shows its user PIN locked
// (CKF_USER_PIN_LOCKED). openCryptoki locks it after three wrong PINs yet
// still lets C_SetPIN change a locked PIN without lifting the lock, so
// SetUserPIN asks first: a locked user's PIN is reset by the SO
// (InitUserPIN), as on every module.
func (m *module) userLocked(label string) bool {
	m.life.RLock()
	defer m.life.RUnlock()
	m.mu.Lock()
	defer m.mu.Unlock()
	slot, err := m.findSlot(label)
	if err != nil {
		return false
	}
	ti, err := m.ctx.GetTokenInfo(slot)
	return err == nil && ti.Flags&p11.CKF_USER_PIN_LOCKED != 0
}
