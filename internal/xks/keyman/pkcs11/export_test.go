//go:build cgo

package pkcs11

import "context"

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
