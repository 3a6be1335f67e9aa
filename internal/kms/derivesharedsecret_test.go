package kms

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"testing"

	"github.com/kmsd/kmsd/internal/kmsapi"
)

// TestDeriveSharedSecret checks the secret equals crypto/ecdh's with the
// peer's private key and the KMS public key, on every NIST curve, and
// that two KMS keys agree (spec §5.6).
func TestDeriveSharedSecret(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	ecdhAlg := "ECDH"
	for _, tc := range []struct {
		spec  string
		curve ecdh.Curve
		size  int
	}{
		{"ECC_NIST_P256", ecdh.P256(), 32}, {"ECC_NIST_P384", ecdh.P384(), 48}, {"ECC_NIST_P521", ecdh.P521(), 66},
	} {
		t.Run(tc.spec, func(t *testing.T) {
			m := f.createSpec(t, tc.spec, "KEY_AGREEMENT")
			pk, err := f.svc.GetPublicKey(ctx, f.caller, &kmsapi.GetPublicKeyRequest{KeyId: m.KeyId})
			if err != nil {
				t.Fatal(err)
			}
			peer, err := tc.curve.GenerateKey(rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			peerDER, err := x509.MarshalPKIXPublicKey(peer.PublicKey())
			if err != nil {
				t.Fatal(err)
			}
			out, err := f.svc.DeriveSharedSecret(ctx, f.caller, &kmsapi.DeriveSharedSecretRequest{KeyId: m.KeyId, KeyAgreementAlgorithm: &ecdhAlg, PublicKey: peerDER})
			if err != nil {
				t.Fatal(err)
			}
			kmsPub, err := x509.ParsePKIXPublicKey(pk.PublicKey)
			if err != nil {
				t.Fatal(err)
			}
			kmsECDH, err := kmsPub.(*ecdsa.PublicKey).ECDH()
			if err != nil {
				t.Fatal(err)
			}
			want, err := peer.ECDH(kmsECDH)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out.SharedSecret, want) || len(want) != tc.size || *out.KeyOrigin != "AWS_KMS" || *out.KeyId != *m.Arn {
				t.Fatalf("SharedSecret %x (%d bytes), want %x; KeyOrigin %s", out.SharedSecret, len(out.SharedSecret), want, *out.KeyOrigin)
			}
			other := f.createSpec(t, tc.spec, "KEY_AGREEMENT")
			opk, err := f.svc.GetPublicKey(ctx, f.caller, &kmsapi.GetPublicKeyRequest{KeyId: other.KeyId})
			if err != nil {
				t.Fatal(err)
			}
			a, err1 := f.svc.DeriveSharedSecret(ctx, f.caller, &kmsapi.DeriveSharedSecretRequest{KeyId: m.KeyId, KeyAgreementAlgorithm: &ecdhAlg, PublicKey: opk.PublicKey})
			b, err2 := f.svc.DeriveSharedSecret(ctx, f.caller, &kmsapi.DeriveSharedSecretRequest{KeyId: other.KeyId, KeyAgreementAlgorithm: &ecdhAlg, PublicKey: pk.PublicKey})
			if err1 != nil || err2 != nil || !bytes.Equal(a.SharedSecret, b.SharedSecret) {
				t.Fatalf("two KMS keys disagree: %v, %v", err1, err2)
			}
		})
	}
}

func TestDeriveSharedSecretRefusals(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	ecdhAlg := "ECDH"
	p256 := f.createSpec(t, "ECC_NIST_P256", "KEY_AGREEMENT")
	signing := f.createSpec(t, "ECC_NIST_P256", "SIGN_VERIFY")
	p384 := f.createSpec(t, "ECC_NIST_P384", "KEY_AGREEMENT")
	p384Pub, err := f.svc.GetPublicKey(ctx, f.caller, &kmsapi.GetPublicKeyRequest{KeyId: p384.KeyId})
	if err != nil {
		t.Fatal(err)
	}
	p256Peer, err := f.svc.GetPublicKey(ctx, f.caller, &kmsapi.GetPublicKeyRequest{KeyId: signing.KeyId})
	if err != nil {
		t.Fatal(err)
	}
	dry := true
	for _, tc := range []struct {
		name string
		in   kmsapi.DeriveSharedSecretRequest
		exc  string
		msg  string
	}{
		{"signing key", kmsapi.DeriveSharedSecretRequest{KeyId: signing.KeyId, PublicKey: p384Pub.PublicKey},
			"InvalidKeyUsageException", *signing.Arn + " key usage is SIGN_VERIFY which is not valid for DeriveSharedSecret."},
		{"garbage public key", kmsapi.DeriveSharedSecretRequest{KeyId: p256.KeyId, PublicKey: []byte("not a key")},
			"ValidationException", ""},
		{"peer on another curve", kmsapi.DeriveSharedSecretRequest{KeyId: p256.KeyId, PublicKey: p384Pub.PublicKey},
			"ValidationException", "The PublicKey is not a valid public key of the key spec ECC_NIST_P256."},
		{"dry run", kmsapi.DeriveSharedSecretRequest{KeyId: p256.KeyId, PublicKey: p256Peer.PublicKey, DryRun: &dry},
			"DryRunOperationException", "The request would have succeeded, but the DryRun option is set."},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.in.KeyAgreementAlgorithm = &ecdhAlg
			_, err := f.svc.DeriveSharedSecret(ctx, f.caller, &tc.in)
			wantMessage(t, err, tc.exc, tc.msg)
		})
	}
}
