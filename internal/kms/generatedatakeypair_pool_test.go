package kms

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/pairpool"
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
		{"pooled", []Option{WithPairPool(map[string]pairpool.Stock{"RSA_2048": {Size: 2}})}, 2},
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

// TestGenerateDataKeyPairBatch: by default the first request of an EC
// spec makes a batch and stocks all but its own pair, before it answers;
// the next requests take from the stock, each a different pair; a pool
// size of 0 turns batches off too.
func TestGenerateDataKeyPairBatch(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	sym := f.createKey(t)
	spec := "ECC_NIST_P256"
	seen := map[string]bool{}
	for i := range pairBatch[spec] + 1 {
		c := *f.caller
		c.Resources = nil
		out, err := f.svc.GenerateDataKeyPair(ctx, &c, &kmsapi.GenerateDataKeyPairRequest{KeyId: &sym, KeyPairSpec: &spec})
		if err != nil {
			t.Fatal(err)
		}
		if seen[string(out.PrivateKeyPlaintext)] {
			t.Fatalf("request %d: a private key handed out twice", i)
		}
		seen[string(out.PrivateKeyPlaintext)] = true
		// Request 0 made a batch; requests 1..batch-1 took its pairs;
		// request batch found the stock empty and made the next.
		want := pairBatch[spec] - 1 - i
		if i == pairBatch[spec] {
			want = pairBatch[spec] - 1
		}
		if n := f.svc.pairs.Len(spec); n != want {
			t.Fatalf("after request %d: stock %d, want %d", i, n, want)
		}
	}
	if m := PairPool(0); len(m) != 0 {
		t.Fatalf("PairPool(0) = %v, want no pooled spec", m)
	}
}
