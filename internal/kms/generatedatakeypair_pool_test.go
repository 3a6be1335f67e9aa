package kms

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/kmsapi"
)

// TestGenerateDataKeyPairPool: RSA pairs come from the pool once it has
// filled, every response carries a different pair even under concurrent
// callers (run with -race), and a Service without a pool still answers.
func TestGenerateDataKeyPairPool(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []Option
		pool int
	}{
		{"pooled", []Option{WithPairPool(map[string]int{"RSA_2048": 2})}, 2},
		{"no pool", []Option{WithPairPool(nil)}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			f.svc = New(f.cat, tc.opts...)
			t.Cleanup(f.svc.Close)
			ctx := context.Background()
			sym := f.createKey(t)
			spec := "RSA_2048"
			call := func() []byte {
				c := *f.caller // a Caller belongs to one request
				c.Resources = nil
				out, err := f.svc.GenerateDataKeyPairWithoutPlaintext(ctx, &c, &kmsapi.GenerateDataKeyPairWithoutPlaintextRequest{KeyId: &sym, KeyPairSpec: &spec})
				if err != nil {
					t.Error(err)
					return nil
				}
				return out.PublicKey
			}
			seen := map[string]bool{string(call()): true}
			if tc.pool > 0 {
				for deadline := time.Now().Add(30 * time.Second); f.svc.pairs.Len(spec) < tc.pool; time.Sleep(5 * time.Millisecond) {
					if time.Now().After(deadline) {
						t.Fatal("the pool never filled after the first request")
					}
				}
			} else if f.svc.pairs.Len(spec) != 0 {
				t.Fatal("a Service without a pool pooled pairs")
			}
			var mu sync.Mutex
			var wg sync.WaitGroup
			for range 6 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					pub := call()
					mu.Lock()
					defer mu.Unlock()
					if seen[string(pub)] {
						t.Errorf("public key handed out twice")
					}
					seen[string(pub)] = true
				}()
			}
			wg.Wait()
		})
	}
}
