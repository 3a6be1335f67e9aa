package kms

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/keystore"
	"github.com/kmsd/kmsd/internal/kmsapi"
)

// TestStoreQuota: the request quota of custom key stores (spec §11) on the
// service's clock. One store's keys share its bucket across Encrypt,
// Decrypt, GenerateDataKey*, ReEncrypt and GenerateRandom; when it is empty
// they get ThrottlingException (AWS's text, HTTP 400) without reaching the
// HSM, while another store's keys and plain keys go on; time refills it; a
// dry run and a key-state refusal take nothing.
func TestStoreQuota(t *testing.T) {
	ctx := context.Background()
	f, m, h, _ := newStoreFixture(t)
	hc := &countingHSM{HSMKeys: h}
	f.svc.SetKeyStores(m, &fakeClusters{}, hc)
	f.svc.SetStoreQuota(keystore.NewQuota(4, f.clock.now))
	origin := "AWS_CLOUDHSM"
	var stores, keyIDs []string
	for _, name := range []string{"a", "b"} {
		id := f.createStore(t, name, "cluster-"+name+"aaaaaaaaaa")
		if _, err := f.svc.ConnectCustomKeyStore(ctx, f.caller, &kmsapi.ConnectCustomKeyStoreRequest{CustomKeyStoreId: &id}); err != nil {
			t.Fatal(err)
		}
		m.Wait()
		out, err := f.svc.CreateKey(ctx, f.caller, &kmsapi.CreateKeyRequest{Origin: &origin, CustomKeyStoreId: &id})
		if err != nil {
			t.Fatal(err)
		}
		stores, keyIDs = append(stores, id), append(keyIDs, *out.KeyMetadata.KeyId)
	}
	a, b := keyIDs[0], keyIDs[1]
	plain := f.createKey(t)
	pt := []byte("quota")
	encrypt := func(id string) error {
		_, err := f.svc.Encrypt(ctx, f.caller, &kmsapi.EncryptRequest{KeyId: &id, Plaintext: pt})
		return err
	}

	// Store a's four requests of this second: every kind of call counts.
	enc, err := f.svc.Encrypt(ctx, f.caller, &kmsapi.EncryptRequest{KeyId: &a, Plaintext: pt})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.Decrypt(ctx, f.caller, &kmsapi.DecryptRequest{CiphertextBlob: enc.CiphertextBlob}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.GenerateDataKey(ctx, f.caller, &kmsapi.GenerateDataKeyRequest{KeyId: &a, NumberOfBytes: kmsapi.Int32(32)}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.GenerateRandom(ctx, f.caller, &kmsapi.GenerateRandomRequest{CustomKeyStoreId: &stores[0], NumberOfBytes: kmsapi.Int32(8)}); err != nil {
		t.Fatal(err)
	}
	// Neither a dry run nor a key the store cannot serve takes a request.
	yes := true
	_, err = f.svc.Encrypt(ctx, f.caller, &kmsapi.EncryptRequest{KeyId: &a, Plaintext: pt, DryRun: &yes})
	wantException(t, err, "DryRunOperationException")

	hsmCalls := hc.n.Load()
	tests := []struct {
		name string
		call func() error
		want string // "" for success
	}{
		{"Encrypt", func() error { return encrypt(a) }, "ThrottlingException"},
		{"Decrypt", func() error {
			_, err := f.svc.Decrypt(ctx, f.caller, &kmsapi.DecryptRequest{CiphertextBlob: enc.CiphertextBlob})
			return err
		}, "ThrottlingException"},
		{"GenerateDataKeyWithoutPlaintext", func() error {
			_, err := f.svc.GenerateDataKeyWithoutPlaintext(ctx, f.caller, &kmsapi.GenerateDataKeyWithoutPlaintextRequest{KeyId: &a, NumberOfBytes: kmsapi.Int32(16)})
			return err
		}, "ThrottlingException"},
		{"ReEncrypt out of the store", func() error {
			_, err := f.svc.ReEncrypt(ctx, f.caller, &kmsapi.ReEncryptRequest{CiphertextBlob: enc.CiphertextBlob, DestinationKeyId: &plain})
			return err
		}, "ThrottlingException"},
		{"GenerateRandom in the store", func() error {
			_, err := f.svc.GenerateRandom(ctx, f.caller, &kmsapi.GenerateRandomRequest{CustomKeyStoreId: &stores[0], NumberOfBytes: kmsapi.Int32(8)})
			return err
		}, "ThrottlingException"},
		{"another store's key", func() error { return encrypt(b) }, ""},
		{"a plain key", func() error { return encrypt(plain) }, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			wantException(t, err, tc.want)
			var e *kmsapi.Exception
			errors.As(err, &e)
			if e.Message != "You have exceeded the rate at which you may call KMS. Reduce the frequency of your calls." {
				t.Fatalf("message %q", e.Message)
			}
			if kmsapi.Status(e.Name) != 400 {
				t.Fatalf("HTTP status %d, want 400", kmsapi.Status(e.Name))
			}
		})
	}
	if hc.n.Load() != hsmCalls+1 { // store b's Encrypt only
		t.Fatal("a throttled request reached the HSM")
	}

	// A quarter of a second later the store has one request again.
	f.clock.advance(250 * time.Millisecond)
	if err := encrypt(a); err != nil {
		t.Fatalf("after a refill: %v", err)
	}
	wantException(t, encrypt(a), "ThrottlingException")

	// Without a quota (--custom-key-store-rps 0) nothing is refused.
	f.svc.SetStoreQuota(nil)
	for range 20 {
		if err := encrypt(a); err != nil {
			t.Fatal(err)
		}
	}
}

// countingHSM counts the cryptographic calls that reach the HSM.
type countingHSM struct {
	HSMKeys
	n atomic.Int32
}

func (c *countingHSM) Encrypt(ctx context.Context, clusterID, label string, pt, aad []byte) ([]byte, []byte, error) {
	c.n.Add(1)
	return c.HSMKeys.Encrypt(ctx, clusterID, label, pt, aad)
}

func (c *countingHSM) Decrypt(ctx context.Context, clusterID, label string, iv, ct, aad []byte) ([]byte, error) {
	c.n.Add(1)
	return c.HSMKeys.Decrypt(ctx, clusterID, label, iv, ct, aad)
}

func (c *countingHSM) GenerateRandom(ctx context.Context, clusterID string, n int) ([]byte, error) {
	c.n.Add(1)
	return c.HSMKeys.GenerateRandom(ctx, clusterID, n)
}
