//go:build cgo

package hsm

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"slices"

	p11 "github.com/miekg/pkcs11"

	"github.com/kmsd/kmsd/internal/ecbgcm"
	"github.com/kmsd/kmsd/internal/kwp"
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

// What kmsd found of a module's C_UnwrapKey: whether the key it creates
// takes the template's CKA_SENSITIVE=true and CKA_EXTRACTABLE=false.
// openCryptoki 3.8's software token ignores both (the copy is readable by
// the crypto user); SoftHSM2 honours them.
const (
	unwrapUnknown = iota
	unwrapHonours
	unwrapIgnores
)

// unwrapFinding is what kmsd knows of the module's C_UnwrapKey.
func (m *module) unwrapFinding() int {
	m.mechMu.Lock()
	defer m.mechMu.Unlock()
	return m.unwrapTmpl
}

// setUnwrapFinding records f; the first finding that the module ignores
// the template is logged, once (no material in it).
func (m *module) setUnwrapFinding(f int) {
	m.mechMu.Lock()
	defer m.mechMu.Unlock()
	if f == unwrapIgnores && m.unwrapTmpl != unwrapIgnores {
		slog.Warn("hsm: the module's C_UnwrapKey ignores the template's CKA_SENSITIVE/CKA_EXTRACTABLE; key copies are unwrapped in kmsd's memory with the cluster's masking key and created protected (C_CreateObject)", "module", m.path)
	}
	m.unwrapTmpl = f
}

// protected reports whether key k is sensitive and not extractable.
func (m *module) protected(h p11.SessionHandle, k p11.ObjectHandle) (bool, error) {
	attrs, err := m.ctx.GetAttributeValue(h, k, []*p11.Attribute{
		p11.NewAttribute(p11.CKA_SENSITIVE, nil),
		p11.NewAttribute(p11.CKA_EXTRACTABLE, nil),
	})
	if err != nil {
		return false, err
	}
	isTrue := func(v []byte) bool { return len(v) == 1 && v[0] == 1 }
	return isTrue(attrs[0].Value) && !isTrue(attrs[1].Value), nil
}

// sessionTemplate is aesTemplate for a session object (CKA_TOKEN=false):
// one that never reaches the token's storage nor another process.
func sessionTemplate(keyLabel string, extractable bool) []*p11.Attribute {
	tmpl := aesTemplate(keyLabel, extractable)
	for i, a := range tmpl {
		if a.Type == p11.CKA_TOKEN {
			tmpl[i] = p11.NewAttribute(p11.CKA_TOKEN, false)
		}
	}
	return tmpl
}

// unwrapHonoured reports whether the module's C_UnwrapKey honours the
// template's CKA_SENSITIVE=true and CKA_EXTRACTABLE=false, finding out
// once per module with a throw-away key: generated as a session object,
// wrapped under mk, unwrapped into another session object, checked, and
// both destroyed. No key of the cluster takes part.
func (m *module) unwrapHonoured(h p11.SessionHandle, mk p11.ObjectHandle) (bool, error) {
	switch m.unwrapFinding() {
	case unwrapHonours:
		return true, nil
	case unwrapIgnores:
		return false, nil
	}
	g, err := m.ctx.GenerateKey(h, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_KEY_GEN, nil)},
		append(sessionTemplate("kmsd-unwrap-probe", true), p11.NewAttribute(p11.CKA_VALUE_LEN, 32)))
	if err != nil {
		return false, err
	}
	defer m.ctx.DestroyObject(h, g)
	w, err := m.wrap(h, mk, g)
	if err != nil {
		return false, err
	}
	u, err := m.unwrap(h, mk, w, sessionTemplate("kmsd-unwrap-probe", false))
	if err != nil {
		return false, err
	}
	defer m.ctx.DestroyObject(h, u)
	ok, err := m.protected(h, u)
	if err != nil {
		return false, err
	}
	if ok {
		m.setUnwrapFinding(unwrapHonours)
	} else {
		m.setUnwrapFinding(unwrapIgnores)
	}
	return ok, nil
}

// unwrapProtected creates key keyLabel (aesTemplate(keyLabel, false)) from
// wrap's output under the token's masking key mk, and makes sure the
// token holds it sensitive and not extractable.
//
// Where the module honours C_UnwrapKey's template, the key is unwrapped
// in the token, as always, and checked: a module that unwraps it readable
// after all has the copy destroyed and is taken to ignore the template
// from then on. Where it does not (openCryptoki 3.8), kmsd unwraps the
// wrapped form in its own memory with masking, the material of mk
// (createFromWrapped).
func (m *module) unwrapProtected(h p11.SessionHandle, mk p11.ObjectHandle, keyLabel string, wrapped, masking []byte) error {
	honoured, err := m.unwrapHonoured(h, mk)
	if err != nil {
		return err
	}
	if honoured {
		k, err := m.unwrap(h, mk, wrapped, aesTemplate(keyLabel, false))
		if err != nil {
			return err
		}
		ok, err := m.protected(h, k)
		if err == nil && ok {
			return nil
		}
		if derr := m.ctx.DestroyObject(h, k); derr != nil {
			return fmt.Errorf("hsm: destroy the key copy %s the module unwrapped unprotected: %w", keyLabel, derr)
		}
		if err != nil {
			return err
		}
		m.setUnwrapFinding(unwrapIgnores)
	}
	return m.createFromWrapped(h, keyLabel, wrapped, masking)
}

// createFromWrapped creates key keyLabel with the protected template
// (C_CreateObject) from its wrapped form, opened in kmsd's memory with
// masking, and clears the plaintext. A module that does not honour the
// protective attributes at unwrap (or when set later: openCryptoki 3.8
// then loses the key's value when it reloads the object) keeps them on a
// created object, as it keeps the masking key's.
func (m *module) createFromWrapped(h p11.SessionHandle, keyLabel string, wrapped, masking []byte) error {
	ms, err := m.sessionMechs(h)
	if err != nil {
		return err
	}
	value, err := openWrapped(ms, masking, wrapped)
	if err != nil {
		return err
	}
	defer clear(value)
	k, err := m.ctx.CreateObject(h, append(aesTemplate(keyLabel, false), p11.NewAttribute(p11.CKA_VALUE, value)))
	if err != nil {
		return err
	}
	if ok, err := m.protected(h, k); err != nil || !ok {
		m.ctx.DestroyObject(h, k)
		if err == nil {
			err = fmt.Errorf("hsm: the module created key %s readable despite the template", keyLabel)
		}
		return err
	}
	return nil
}

// errWrapped: a wrapped key that does not open under the masking key.
var errWrapped = errors.New("hsm: the wrapped key does not open under the cluster's masking key")

// openWrapped is unwrap in kmsd's memory: the key material inside wrap's
// output, under masking (the masking key's material). With ms.kwp the form
// is CKM_AES_KEY_WRAP_PAD's (RFC 5649, internal/kwp); else CKM_AES_CBC_PAD's
// (PKCS#7 padding) after a 16-byte IV. Only an AES key (16, 24 or 32
// bytes) is accepted. The caller clears the result.
func openWrapped(ms mechSet, masking, wrapped []byte) ([]byte, error) {
	var value []byte
	if ms.kwp {
		v, err := kwp.Unwrap(masking, wrapped)
		if err != nil {
			return nil, errWrapped
		}
		value = v
	} else {
		b, err := aes.NewCipher(masking)
		if err != nil {
			return nil, fmt.Errorf("hsm: masking key: %w", err)
		}
		if len(wrapped) < 32 || len(wrapped)%aes.BlockSize != 0 {
			return nil, errWrapped
		}
		buf := make([]byte, len(wrapped)-aes.BlockSize)
		cipher.NewCBCDecrypter(b, wrapped[:aes.BlockSize]).CryptBlocks(buf, wrapped[aes.BlockSize:])
		// PKCS#7: the last byte n (1 to 16) and n bytes of it, checked
		// over the whole last block without an early exit.
		n := int(buf[len(buf)-1])
		good := subtle.ConstantTimeLessOrEq(1, n) & subtle.ConstantTimeLessOrEq(n, aes.BlockSize)
		last := buf[len(buf)-aes.BlockSize:]
		for i := range last {
			inPad := subtle.ConstantTimeLessOrEq(aes.BlockSize-n, i)
			good &= subtle.ConstantTimeSelect(inPad, subtle.ConstantTimeByteEq(last[i], byte(n)), 1)
		}
		if good != 1 {
			clear(buf)
			return nil, errWrapped
		}
		value = buf[:len(buf)-n]
	}
	switch len(value) {
	case 16, 24, 32:
		return value, nil
	}
	clear(value)
	return nil, errWrapped
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
	ti, err := m.tokenInfo(slot)
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
	ti, err := m.tokenInfo(slot)
	return err == nil && ti.Flags&p11.CKF_USER_PIN_LOCKED != 0
}
