//go:build cgo

package pkcs11

// SimulateRestart closes every session the application has on the token, which
// also logs it out, as a token restart would.
func SimulateRestart(m *Manager) error {
	m.mu.Lock()
	slot := m.slot
	m.mu.Unlock()
	return m.ctx.CloseAllSessions(slot)
}
