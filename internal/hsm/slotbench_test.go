//go:build cgo

package hsm

import (
	"context"
	"fmt"
	"testing"
)

// benchTokens is about the number of tokens in e2e/xks TestStoresAtScale's
// connect burst, whose CPU profile showed the token lookup.
const benchTokens = 60

// withTokens makes n tokens with a user PIN for a benchmark and deletes
// them afterwards; it returns their labels.
func withTokens(b *testing.B, m *module, n int) []string {
	b.Helper()
	ctx := context.Background()
	labels := make([]string, n)
	for i := range labels {
		labels[i] = uniqueLabel(fmt.Sprintf("bench%02d", i))
		if err := m.InitToken(ctx, labels[i], "sopin1234", FreeSlots{}); err != nil {
			b.Fatal(err)
		}
		if err := m.InitUserPIN(ctx, labels[i], "sopin1234", "userpin1"); err != nil {
			b.Fatal(err)
		}
	}
	b.Cleanup(func() {
		for _, l := range labels {
			m.Logout(ctx, l)
			m.DeleteToken(ctx, l)
		}
	})
	return labels
}

func benchModule(b *testing.B) *module {
	b.Helper()
	toks, err := (&Service{cfg: Config{Dir: hsmDir, Module: DefaultModule}}).tokens()
	if err != nil {
		b.Fatal(err)
	}
	return toks.(*module)
}

// BenchmarkLogin is one user login (Login: the token's lookup, C_Login)
// among benchTokens tokens, each logged in already — as when many key
// stores connect — cycling through them. It uses only the tokens
// interface, so it runs unchanged on the code before the slot cache.
func BenchmarkLogin(b *testing.B) {
	m := benchModule(b)
	labels := withTokens(b, m, benchTokens)
	ctx := context.Background()
	for _, l := range labels {
		if err := m.Login(ctx, l, "userpin1"); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := m.Login(ctx, labels[i%len(labels)], "userpin1"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReinit is a re-initialisation of the module among benchTokens
// tokens (Reload: C_Finalize, C_Initialize and, since initLocked, a scan
// of the slots it lists), alone and followed by finding every token's
// slot again, as each token's next operation does. It uses only Reload
// and findSlot, so it runs unchanged on the code before initLocked.
func BenchmarkReinit(b *testing.B) {
	m := benchModule(b)
	labels := withTokens(b, m, benchTokens)
	ctx := context.Background()
	b.Run("reload", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if err := m.Reload(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("reload+find-all", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if err := m.Reload(ctx); err != nil {
				b.Fatal(err)
			}
			for _, l := range labels {
				if _, err := lookup(m, l); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
}
