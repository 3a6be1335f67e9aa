package kms

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"testing"

	"github.com/kmsd/kmsd/internal/kmsapi"
)

// TestMacRoundTrip generates and verifies a MAC with every HMAC spec,
// checks its length, and that the MAC is HMAC over the message with the
// key's (sealed) material.
func TestMacRoundTrip(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	msg := []byte("a message to authenticate")
	for _, tc := range []struct {
		spec, alg string
		size      int
	}{
		{"HMAC_224", "HMAC_SHA_224", 28}, {"HMAC_256", "HMAC_SHA_256", 32},
		{"HMAC_384", "HMAC_SHA_384", 48}, {"HMAC_512", "HMAC_SHA_512", 64},
	} {
		t.Run(tc.spec, func(t *testing.T) {
			m := f.createSpec(t, tc.spec, "GENERATE_VERIFY_MAC")
			out, err := f.svc.GenerateMac(ctx, f.caller, &kmsapi.GenerateMacRequest{KeyId: m.KeyId, MacAlgorithm: &tc.alg, Message: msg})
			if err != nil {
				t.Fatal(err)
			}
			if len(out.Mac) != tc.size || *out.KeyId != *m.Arn || *out.MacAlgorithm != tc.alg {
				t.Fatalf("GenerateMac = %d bytes, KeyId %s, %s", len(out.Mac), *out.KeyId, *out.MacAlgorithm)
			}
			v, err := f.svc.VerifyMac(ctx, f.caller, &kmsapi.VerifyMacRequest{KeyId: m.KeyId, MacAlgorithm: &tc.alg, Message: msg, Mac: out.Mac})
			if err != nil || !*v.MacValid || *v.KeyId != *m.Arn {
				t.Fatalf("VerifyMac = %+v, %v", v, err)
			}
			for name, bad := range map[string][]byte{
				"flipped bit": func() []byte { b := bytes.Clone(out.Mac); b[len(b)-1] ^= 1; return b }(),
				"truncated":   out.Mac[:len(out.Mac)-1],
			} {
				_, err := f.svc.VerifyMac(ctx, f.caller, &kmsapi.VerifyMacRequest{KeyId: m.KeyId, MacAlgorithm: &tc.alg, Message: msg, Mac: bad})
				if err == nil {
					t.Fatalf("%s MAC verified", name)
				}
				wantMessage(t, err, "KMSInvalidMacException", "")
			}
		})
	}
	t.Run("equals HMAC with the stored key", func(t *testing.T) {
		m := f.createSpec(t, "HMAC_256", "GENERATE_VERIFY_MAC")
		k, err := f.cat.Key(ctx, *m.KeyId)
		if err != nil {
			t.Fatal(err)
		}
		key, err := f.cat.Material(k, 1)
		if err != nil || len(key) != 32 {
			t.Fatalf("material: %d bytes, %v", len(key), err)
		}
		h := hmac.New(sha256.New, key)
		h.Write(msg)
		out, err := f.svc.GenerateMac(ctx, f.caller, &kmsapi.GenerateMacRequest{KeyId: m.KeyId, MacAlgorithm: str("HMAC_SHA_256"), Message: msg})
		if err != nil || !hmac.Equal(out.Mac, h.Sum(nil)) {
			t.Fatalf("GenerateMac differs from crypto/hmac: %v", err)
		}
	})
}

// TestMacRefusals checks spec §6's order and messages.
func TestMacRefusals(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	h256 := f.createSpec(t, "HMAC_256", "GENERATE_VERIFY_MAC")
	off := f.createSpec(t, "HMAC_512", "GENERATE_VERIFY_MAC")
	if _, err := f.svc.DisableKey(ctx, f.caller, &kmsapi.DisableKeyRequest{KeyId: off.KeyId}); err != nil {
		t.Fatal(err)
	}
	sym := f.createKey(t)
	symARN := "arn:aws:kms:us-east-1:111122223333:key/" + sym
	dry := true
	for _, tc := range []struct {
		name      string
		key, alg  string
		verify    bool
		dry       *bool
		exc, want string
	}{
		{"symmetric key", sym, "HMAC_SHA_256", false, nil,
			"InvalidKeyUsageException", symARN + " key usage is ENCRYPT_DECRYPT which is not valid for GenerateMac."},
		{"symmetric key in verify", sym, "HMAC_SHA_256", true, nil,
			"InvalidKeyUsageException", symARN + " key usage is ENCRYPT_DECRYPT which is not valid for VerifyMac."},
		{"algorithm of another spec", *h256.KeyId, "HMAC_SHA_512", false, nil,
			"InvalidKeyUsageException", "Algorithm HMAC_SHA_512 is incompatible with key spec HMAC_256."},
		{"algorithm of another spec in verify", *h256.KeyId, "HMAC_SHA_224", true, nil,
			"InvalidKeyUsageException", "Algorithm HMAC_SHA_224 is incompatible with key spec HMAC_256."},
		{"disabled before algorithm", *off.KeyId, "HMAC_SHA_256", false, nil,
			"DisabledException", *off.Arn + " is disabled."},
		{"dry run", *h256.KeyId, "HMAC_SHA_256", false, &dry,
			"DryRunOperationException", "The request would have succeeded, but the DryRun option is set."},
		{"dry run in verify", *h256.KeyId, "HMAC_SHA_256", true, &dry,
			"DryRunOperationException", "The request would have succeeded, but the DryRun option is set."},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			if tc.verify {
				_, err = f.svc.VerifyMac(ctx, f.caller, &kmsapi.VerifyMacRequest{KeyId: &tc.key, MacAlgorithm: &tc.alg, Message: []byte("m"), Mac: []byte{1}, DryRun: tc.dry})
			} else {
				_, err = f.svc.GenerateMac(ctx, f.caller, &kmsapi.GenerateMacRequest{KeyId: &tc.key, MacAlgorithm: &tc.alg, Message: []byte("m"), DryRun: tc.dry})
			}
			wantMessage(t, err, tc.exc, tc.want)
		})
	}
}
