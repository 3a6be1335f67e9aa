package kms

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/kmsd/kmsd/internal/kmsapi"
)

// TestDecodedKeysFollowRecords drives GenerateMac, Sign and Verify from
// several goroutines while the keys' records are replaced (run with
// -race): the decoded keys the catalog keeps give the same MAC and valid
// signatures throughout, a disabled key refuses before any of them is
// used, and the key works again once enabled.
func TestDecodedKeysFollowRecords(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	create := func(spec, usage string) string {
		out, err := f.svc.CreateKey(ctx, f.caller, &kmsapi.CreateKeyRequest{KeySpec: &spec, KeyUsage: &usage})
		if err != nil {
			t.Fatal(err)
		}
		return *out.KeyMetadata.KeyId
	}
	macID, signID := create("HMAC_256", "GENERATE_VERIFY_MAC"), create("ECC_NIST_P256", "SIGN_VERIFY")
	msg, macAlg, signAlg := []byte("message"), kmsapi.String("HMAC_SHA_256"), kmsapi.String("ECDSA_SHA_256")
	// A Caller belongs to one request: each call gets its own copy.
	caller := func() *Caller { c := *f.caller; c.Resources = nil; return &c }
	mac := func() ([]byte, error) {
		out, err := f.svc.GenerateMac(ctx, caller(), &kmsapi.GenerateMacRequest{KeyId: &macID, Message: msg, MacAlgorithm: macAlg})
		if err != nil {
			return nil, err
		}
		return out.Mac, nil
	}
	signVerify := func() error {
		out, err := f.svc.Sign(ctx, caller(), &kmsapi.SignRequest{KeyId: &signID, Message: msg, SigningAlgorithm: signAlg})
		if err != nil {
			return err
		}
		_, err = f.svc.Verify(ctx, caller(), &kmsapi.VerifyRequest{KeyId: &signID, Message: msg, SigningAlgorithm: signAlg, Signature: out.Signature})
		return err
	}
	want, err := mac()
	if err != nil {
		t.Fatal(err)
	}

	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 25; i++ {
				if got, err := mac(); err != nil || !bytes.Equal(got, want) {
					t.Errorf("GenerateMac = %x, %v; want %x", got, err, want)
					return
				}
				if err := signVerify(); err != nil {
					t.Errorf("Sign and Verify: %v", err)
					return
				}
			}
		}()
	}
	for i := 0; i < 25; i++ {
		for _, id := range []string{macID, signID} {
			d := fmt.Sprint("description ", i)
			if _, err := f.svc.UpdateKeyDescription(ctx, caller(), &kmsapi.UpdateKeyDescriptionRequest{KeyId: &id, Description: &d}); err != nil {
				t.Fatal(err)
			}
		}
	}
	wg.Wait()

	for _, id := range []string{macID, signID} {
		if _, err := f.svc.DisableKey(ctx, f.caller, &kmsapi.DisableKeyRequest{KeyId: &id}); err != nil {
			t.Fatal(err)
		}
	}
	var e *kmsapi.Exception
	if _, err := mac(); !errors.As(err, &e) || e.Name != "DisabledException" {
		t.Fatalf("GenerateMac with a disabled key: %v, want DisabledException", err)
	}
	if err := signVerify(); !errors.As(err, &e) || e.Name != "DisabledException" {
		t.Fatalf("Sign with a disabled key: %v, want DisabledException", err)
	}
	for _, id := range []string{macID, signID} {
		if _, err := f.svc.EnableKey(ctx, f.caller, &kmsapi.EnableKeyRequest{KeyId: &id}); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := mac(); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("GenerateMac after EnableKey = %x, %v; want %x", got, err, want)
	}
	if err := signVerify(); err != nil {
		t.Fatalf("Sign after EnableKey: %v", err)
	}
}
