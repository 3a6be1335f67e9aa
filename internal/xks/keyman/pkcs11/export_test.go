//go:build cgo

package pkcs11

import (
	"context"

	p11 "github.com/miekg/pkcs11"
)

// SimulateRestart closes every session the application has on the token, which
// also logs it out, as a token restart would.
func SimulateRestart(m *Manager) error {
	m.mu.Lock()
	slot := m.slot
	m.mu.Unlock()
	return m.ctx.CloseAllSessions(slot)
}

// Call runs fn through the manager's session handling, as its operations do.
func Call(ctx context.Context, m *Manager, fn func() error) error {
	return m.do(ctx, "", func(*session) error { return fn() })
}

// KeyHandles reports the cached token object of key id and its session-object copy
// (0 if none).
func KeyHandles(m *Manager, id string) (token, copied uint, ok bool) {
	m.cacheMu.RLock()
	defer m.cacheMu.RUnlock()
	c, ok := m.cache[id]
	if !ok {
		return 0, 0, false
	}
	if c.cp != nil {
		copied = uint(c.cp.h)
	}
	return uint(c.h), copied, true
}

// Forget drops key id from the cache, as a stale handle does.
func Forget(m *Manager, id string) { m.forget(id) }

// SessionKeys counts the session objects labelled label the application sees.
func SessionKeys(m *Manager, label string) (int, error) {
	var n int
	err := m.do(context.Background(), "", func(s *session) error {
		tmpl := []*p11.Attribute{
			p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
			p11.NewAttribute(p11.CKA_LABEL, label),
			p11.NewAttribute(p11.CKA_TOKEN, false),
		}
		if err := m.ctx.FindObjectsInit(s.h, tmpl); err != nil {
			return err
		}
		hs, _, err := m.ctx.FindObjects(s.h, 100)
		m.ctx.FindObjectsFinal(s.h)
		n = len(hs)
		return err
	})
	return n, err
}

// AddUncopyableKey generates an AES-256 token key with CKA_COPYABLE false.
func AddUncopyableKey(m *Manager, label string) error {
	return m.do(context.Background(), "", func(s *session) error {
		_, err := m.ctx.GenerateKey(s.h, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_KEY_GEN, nil)},
			[]*p11.Attribute{
				p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
				p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_AES),
				p11.NewAttribute(p11.CKA_VALUE_LEN, 32),
				p11.NewAttribute(p11.CKA_TOKEN, true),
				p11.NewAttribute(p11.CKA_PRIVATE, true),
				p11.NewAttribute(p11.CKA_LABEL, label),
				p11.NewAttribute(p11.CKA_ENCRYPT, true),
				p11.NewAttribute(p11.CKA_DECRYPT, true),
				p11.NewAttribute(p11.CKA_SENSITIVE, true),
				p11.NewAttribute(p11.CKA_EXTRACTABLE, false),
				p11.NewAttribute(p11.CKA_COPYABLE, false),
			})
		return err
	})
}

// DeleteKey destroys the token key labelled label.
func DeleteKey(m *Manager, label string) error {
	return m.do(context.Background(), "", func(s *session) error {
		h, err := m.find(s, label, true)
		if err != nil {
			return err
		}
		return m.ctx.DestroyObject(s.h, h)
	})
}

// SetKeyUsage sets CKA_ENCRYPT and CKA_DECRYPT of the token key labelled label.
func SetKeyUsage(m *Manager, label string, encrypt, decrypt bool) error {
	return m.do(context.Background(), "", func(s *session) error {
		h, err := m.find(s, label, true)
		if err != nil {
			return err
		}
		return m.ctx.SetAttributeValue(s.h, h, []*p11.Attribute{
			p11.NewAttribute(p11.CKA_ENCRYPT, encrypt), p11.NewAttribute(p11.CKA_DECRYPT, decrypt)})
	})
}
