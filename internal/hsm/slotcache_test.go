//go:build cgo

package hsm

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// lookup is findSlot as the module's callers run it, under m.mu.
func lookup(m *module, label string) (uint, error) {
	m.life.RLock()
	defer m.life.RUnlock()
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.findSlot(label)
}

func serialOf(t *testing.T, m *module, slot uint) string {
	t.Helper()
	ti, err := m.ctx.GetTokenInfo(slot)
	if err != nil {
		t.Fatal(err)
	}
	return ti.SerialNumber
}

// TestFindSlotCache: findSlot takes the slot where it last found a label
// only while that slot still holds that very token (initialised, same
// label, same serial); a token deleted, re-created under its label, or
// replaced in its slot by another, and slots renumbered by a
// re-initialisation, are found (or not) as a full search would.
func TestFindSlotCache(t *testing.T) {
	ctx := context.Background()
	m := softhsmModule(t)
	a, b := uniqueLabel("cache-a"), uniqueLabel("cache-b")
	for _, l := range []string{a, b} {
		if err := m.InitToken(ctx, l, "sopin1234", FreeSlots{}); err != nil {
			t.Fatal(err)
		}
	}
	sa, err := lookup(m, a)
	if err != nil {
		t.Fatal(err)
	}
	sb, err := lookup(m, b)
	if err != nil {
		t.Fatal(err)
	}
	if sa == sb {
		t.Fatalf("%s and %s both in slot %d", a, b, sa)
	}
	if got := m.slots[a]; got.slot != sa || got.serial != serialOf(t, m, sa) {
		t.Fatalf("cache for %s: %+v, want slot %d serial %s", a, got, sa, serialOf(t, m, sa))
	}

	t.Run("cached slot now holds another token", func(t *testing.T) {
		m.mu.Lock()
		m.slots[a] = slotSeen{slot: sb, serial: serialOf(t, m, sb)}
		m.mu.Unlock()
		if s, err := lookup(m, a); err != nil || s != sa {
			t.Fatalf("findSlot(%s) with the cache pointing at %s's slot: %d, %v; want %d", a, b, s, err, sa)
		}
	})
	t.Run("cached slot holds the label under another serial", func(t *testing.T) {
		// As when a token is deleted and re-created under its label in
		// the same slot: the search runs again and remembers the new
		// serial.
		m.mu.Lock()
		m.slots[a] = slotSeen{slot: sa, serial: "0000000000000000"}
		m.mu.Unlock()
		if s, err := lookup(m, a); err != nil || s != sa {
			t.Fatalf("findSlot(%s): %d, %v; want %d", a, s, err, sa)
		}
		if got := m.slots[a].serial; got != serialOf(t, m, sa) {
			t.Fatalf("cached serial %s, want %s", got, serialOf(t, m, sa))
		}
	})
	t.Run("slots renumbered", func(t *testing.T) {
		// A re-initialisation replaces the cache with the slots it lists
		// (initLocked); a stale entry that survived it (a slot number now
		// naming nothing) still finds the token.
		if err := m.Reload(ctx); err != nil {
			t.Fatal(err)
		}
		for l, c := range m.slots {
			if ti, err := m.ctx.GetTokenInfo(c.slot); err != nil || strings.TrimRight(ti.Label, " \x00") != l || ti.SerialNumber != c.serial {
				t.Fatalf("cache after a re-initialisation: %s at %+v, where the token is %q %q (%v)", l, c, ti.Label, ti.SerialNumber, err)
			}
		}
		m.mu.Lock()
		m.slots[a] = slotSeen{slot: 1<<31 - 7, serial: "x"}
		m.mu.Unlock()
		s, err := lookup(m, a)
		if err != nil {
			t.Fatal(err)
		}
		if ser := serialOf(t, m, s); ser != m.slots[a].serial {
			t.Fatalf("slot %d holds serial %s, cache says %+v", s, ser, m.slots[a])
		}
		sa = s
	})
	t.Run("deleted by another process", func(t *testing.T) {
		util(t, "--delete-token", "--token", a)
		if s, err := lookup(m, a); !errors.Is(err, ErrUnreachable) {
			t.Fatalf("findSlot(%s) after its deletion: slot %d, %v; want ErrUnreachable", a, s, err)
		}
		if _, ok := m.slots[a]; ok {
			t.Fatalf("a deleted token's slot is still cached: %+v", m.slots[a])
		}
		if _, err := lookup(m, b); err != nil {
			t.Fatalf("the other token: %v", err)
		}
	})
	t.Run("re-created under its label", func(t *testing.T) {
		old := sa
		util(t, "--init-token", "--free", "--label", a, "--so-pin", "sopin5678", "--pin", "userpin1")
		time.Sleep(2 * probeReinitEvery)
		// Seen once the library is re-initialised (Refresh), and then
		// it is the new token: its SO PIN is the new one.
		if err := m.Refresh(ctx, a); err != nil {
			t.Fatal(err)
		}
		s, err := lookup(m, a)
		if err != nil {
			t.Fatal(err)
		}
		if ok, err := m.UserPINInitialized(ctx, a); err != nil || !ok {
			t.Fatalf("re-created %s: user PIN initialised %v, %v", a, ok, err)
		}
		if err := m.SetSOPIN(ctx, a, "sopin5678", "sopin5678"); err != nil {
			t.Fatalf("SO login with the re-created token's PIN: %v", err)
		}
		if err := m.SetSOPIN(ctx, a, "sopin1234", "sopin1234"); !errors.Is(err, ErrInvalidCredentials) {
			t.Fatalf("SO login with the deleted token's PIN: %v, want ErrInvalidCredentials", err)
		}
		t.Logf("slot %d before, %d after re-creation", old, s)
	})
	for _, l := range []string{a, b} {
		m.DeleteToken(ctx, l)
	}
}

// BenchmarkFindSlot is the token lookup alone among benchTokens tokens:
// search, every slot asked (what findSlot did before the cache), against
// cached, one C_GetTokenInfo on the remembered slot.
func BenchmarkFindSlot(b *testing.B) {
	m := benchModule(b)
	labels := withTokens(b, m, benchTokens)
	for _, c := range []struct {
		name string
		find func(string) (uint, error)
	}{{"search", m.searchSlot}, {"cached", m.findSlot}} {
		b.Run(c.name, func(b *testing.B) {
			m.mu.Lock()
			defer m.mu.Unlock()
			for i := 0; i < b.N; i++ {
				if _, err := c.find(labels[i%len(labels)]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
