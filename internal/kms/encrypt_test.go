package kms

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"hash"
	"testing"

	"github.com/kmsd/kmsd/internal/kmsapi"
)

// TestRSAEncryption covers spec §5.4 for every RSA size and OAEP hash:
// offline ciphertexts decrypt, kmsd's are the modulus length and round
// trip, the plaintext limit is exact, and the refusals.
func TestRSAEncryption(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	for _, tc := range []struct {
		spec    string
		modulus int
		limits  map[string]int
	}{
		{"RSA_2048", 256, map[string]int{"RSAES_OAEP_SHA_1": 214, "RSAES_OAEP_SHA_256": 190}},
		{"RSA_3072", 384, map[string]int{"RSAES_OAEP_SHA_1": 342, "RSAES_OAEP_SHA_256": 318}},
		{"RSA_4096", 512, map[string]int{"RSAES_OAEP_SHA_1": 470, "RSAES_OAEP_SHA_256": 446}},
	} {
		m := f.createSpec(t, tc.spec, "ENCRYPT_DECRYPT")
		pk, err := f.svc.GetPublicKey(ctx, f.caller, &kmsapi.GetPublicKeyRequest{KeyId: m.KeyId})
		if err != nil {
			t.Fatal(err)
		}
		pub, err := x509.ParsePKIXPublicKey(pk.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		for alg, limit := range tc.limits {
			t.Run(tc.spec+"/"+alg, func(t *testing.T) {
				var h hash.Hash = sha256.New()
				if alg == "RSAES_OAEP_SHA_1" {
					h = sha1.New()
				}
				pt := bytes.Repeat([]byte{0x5a}, limit)
				offline, err := rsa.EncryptOAEP(h, rand.Reader, pub.(*rsa.PublicKey), pt, nil)
				if err != nil {
					t.Fatal(err)
				}
				d, err := f.svc.Decrypt(ctx, f.caller, &kmsapi.DecryptRequest{KeyId: m.KeyId, CiphertextBlob: offline, EncryptionAlgorithm: &alg})
				if err != nil || !bytes.Equal(d.Plaintext, pt) || *d.EncryptionAlgorithm != alg || *d.KeyId != *m.Arn {
					t.Fatalf("Decrypt of an offline ciphertext: %v", err)
				}
				e, err := f.svc.Encrypt(ctx, f.caller, &kmsapi.EncryptRequest{KeyId: m.KeyId, Plaintext: pt, EncryptionAlgorithm: &alg})
				if err != nil || len(e.CiphertextBlob) != tc.modulus || *e.EncryptionAlgorithm != alg {
					t.Fatalf("Encrypt: %v", err)
				}
				d, err = f.svc.Decrypt(ctx, f.caller, &kmsapi.DecryptRequest{KeyId: m.KeyId, CiphertextBlob: e.CiphertextBlob, EncryptionAlgorithm: &alg})
				if err != nil || !bytes.Equal(d.Plaintext, pt) {
					t.Fatalf("Decrypt of kmsd's ciphertext: %v", err)
				}
				_, err = f.svc.Encrypt(ctx, f.caller, &kmsapi.EncryptRequest{KeyId: m.KeyId, Plaintext: append(pt, 0), EncryptionAlgorithm: &alg})
				wantMessage(t, err, "ValidationException", "Algorithm "+alg+" and key spec "+tc.spec+" cannot encrypt data larger than "+itoa(limit)+" bytes.")
				other := "RSAES_OAEP_SHA_1"
				if alg == other {
					other = "RSAES_OAEP_SHA_256"
				}
				_, err = f.svc.Decrypt(ctx, f.caller, &kmsapi.DecryptRequest{KeyId: m.KeyId, CiphertextBlob: offline, EncryptionAlgorithm: &other})
				wantMessage(t, err, "IncorrectKeyException", "The key ID in the request does not identify a CMK that can perform this operation.")
			})
		}
	}
}

func TestRSAEncryptionRefusals(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	m := f.createSpec(t, "RSA_2048", "ENCRYPT_DECRYPT")
	oaep := "RSAES_OAEP_SHA_256"
	e, err := f.svc.Encrypt(ctx, f.caller, &kmsapi.EncryptRequest{KeyId: m.KeyId, Plaintext: []byte("x"), EncryptionAlgorithm: &oaep})
	if err != nil {
		t.Fatal(err)
	}
	sym := f.createKey(t)
	symBlob := f.encrypt(t, sym, []byte("x"), nil)
	signing := f.createSpec(t, "RSA_2048", "SIGN_VERIFY")
	for _, tc := range []struct {
		name, exc, msg string
		call           func() error
	}{
		{"encrypt without an algorithm", "InvalidKeyUsageException", "Algorithm SYMMETRIC_DEFAULT is incompatible with key spec RSA_2048.", func() error {
			_, err := f.svc.Encrypt(ctx, f.caller, &kmsapi.EncryptRequest{KeyId: m.KeyId, Plaintext: []byte("x")})
			return err
		}},
		{"encrypt with a context", "ValidationException", "Encryption context is not supported for asymmetric KMS keys.", func() error {
			_, err := f.svc.Encrypt(ctx, f.caller, &kmsapi.EncryptRequest{KeyId: m.KeyId, Plaintext: []byte("x"), EncryptionAlgorithm: &oaep, EncryptionContext: map[string]string{"a": "b"}})
			return err
		}},
		{"decrypt without KeyId", "InvalidCiphertextException", "", func() error {
			_, err := f.svc.Decrypt(ctx, f.caller, &kmsapi.DecryptRequest{CiphertextBlob: e.CiphertextBlob, EncryptionAlgorithm: &oaep})
			return err
		}},
		{"decrypt with the default algorithm", "InvalidKeyUsageException", "Algorithm SYMMETRIC_DEFAULT is incompatible with key spec RSA_2048.", func() error {
			_, err := f.svc.Decrypt(ctx, f.caller, &kmsapi.DecryptRequest{KeyId: m.KeyId, CiphertextBlob: e.CiphertextBlob})
			return err
		}},
		{"decrypt a symmetric blob", "IncorrectKeyException", "The key ID in the request does not identify a CMK that can perform this operation.", func() error {
			_, err := f.svc.Decrypt(ctx, f.caller, &kmsapi.DecryptRequest{KeyId: m.KeyId, CiphertextBlob: symBlob, EncryptionAlgorithm: &oaep})
			return err
		}},
		{"decrypt a truncated ciphertext", "InvalidCiphertextException", "", func() error {
			_, err := f.svc.Decrypt(ctx, f.caller, &kmsapi.DecryptRequest{KeyId: m.KeyId, CiphertextBlob: e.CiphertextBlob[1:], EncryptionAlgorithm: &oaep})
			return err
		}},
		{"decrypt with a context", "ValidationException", "Encryption context is not supported for asymmetric KMS keys.", func() error {
			_, err := f.svc.Decrypt(ctx, f.caller, &kmsapi.DecryptRequest{KeyId: m.KeyId, CiphertextBlob: e.CiphertextBlob, EncryptionAlgorithm: &oaep, EncryptionContext: map[string]string{"a": "b"}})
			return err
		}},
		{"encrypt with a signing key", "InvalidKeyUsageException", *signing.Arn + " key usage is SIGN_VERIFY which is not valid for Encrypt.", func() error {
			_, err := f.svc.Encrypt(ctx, f.caller, &kmsapi.EncryptRequest{KeyId: signing.KeyId, Plaintext: []byte("x"), EncryptionAlgorithm: &oaep})
			return err
		}},
		{"reencrypt to a signing key", "InvalidKeyUsageException", *signing.Arn + " key usage is SIGN_VERIFY which is not valid for ReEncrypt.", func() error {
			_, err := f.svc.ReEncrypt(ctx, f.caller, &kmsapi.ReEncryptRequest{CiphertextBlob: symBlob, DestinationKeyId: signing.KeyId, DestinationEncryptionAlgorithm: &oaep})
			return err
		}},
		{"reencrypt over the destination's limit", "ValidationException", "Algorithm RSAES_OAEP_SHA_256 and key spec RSA_2048 cannot encrypt data larger than 190 bytes.", func() error {
			big := f.encrypt(t, sym, make([]byte, 191), nil)
			_, err := f.svc.ReEncrypt(ctx, f.caller, &kmsapi.ReEncryptRequest{CiphertextBlob: big, DestinationKeyId: m.KeyId, DestinationEncryptionAlgorithm: &oaep})
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) { wantMessage(t, tc.call(), tc.exc, tc.msg) })
	}
}

// TestReEncryptAcrossKeyTypes round-trips a plaintext symmetric → RSA →
// RSA → symmetric (spec §5.4).
func TestReEncryptAcrossKeyTypes(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	sym := f.createKey(t)
	r1 := f.createSpec(t, "RSA_2048", "ENCRYPT_DECRYPT")
	r2 := f.createSpec(t, "RSA_3072", "ENCRYPT_DECRYPT")
	sha1Alg, sha256Alg := "RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"
	pt := []byte("moves between key types")
	blob := f.encrypt(t, sym, pt, map[string]string{"k": "v"})
	a, err := f.svc.ReEncrypt(ctx, f.caller, &kmsapi.ReEncryptRequest{CiphertextBlob: blob, SourceEncryptionContext: map[string]string{"k": "v"},
		DestinationKeyId: r1.KeyId, DestinationEncryptionAlgorithm: &sha1Alg})
	if err != nil || len(a.CiphertextBlob) != 256 || *a.DestinationEncryptionAlgorithm != sha1Alg || *a.SourceEncryptionAlgorithm != "SYMMETRIC_DEFAULT" {
		t.Fatalf("symmetric → RSA: %+v, %v", a, err)
	}
	b, err := f.svc.ReEncrypt(ctx, f.caller, &kmsapi.ReEncryptRequest{CiphertextBlob: a.CiphertextBlob, SourceKeyId: r1.KeyId, SourceEncryptionAlgorithm: &sha1Alg,
		DestinationKeyId: r2.KeyId, DestinationEncryptionAlgorithm: &sha256Alg})
	if err != nil || len(b.CiphertextBlob) != 384 || *b.SourceKeyId != *r1.Arn || *b.KeyId != *r2.Arn {
		t.Fatalf("RSA → RSA: %+v, %v", b, err)
	}
	c, err := f.svc.ReEncrypt(ctx, f.caller, &kmsapi.ReEncryptRequest{CiphertextBlob: b.CiphertextBlob, SourceKeyId: r2.KeyId, SourceEncryptionAlgorithm: &sha256Alg,
		DestinationKeyId: &sym})
	if err != nil || *c.SourceEncryptionAlgorithm != sha256Alg || *c.DestinationEncryptionAlgorithm != "SYMMETRIC_DEFAULT" {
		t.Fatalf("RSA → symmetric: %+v, %v", c, err)
	}
	got, err := f.decrypt(c.CiphertextBlob, nil)
	if err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("final Decrypt = %q, %v", got, err)
	}
}
