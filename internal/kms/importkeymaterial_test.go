package kms

import (
	"bytes"
	"context"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"errors"
	"hash"
	"strings"
	"testing"
	"time"

	"filippo.io/mldsa"
	mldsax509 "filippo.io/mldsa/x509"
	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/kwp"
	"github.com/kmsd/kmsd/internal/material"
)

func (f *fixture) createExternal(t *testing.T, spec, usage string) string {
	t.Helper()
	in := &kmsapi.CreateKeyRequest{Origin: kmsapi.String("EXTERNAL"), KeySpec: &spec}
	if usage != "" {
		in.KeyUsage = &usage
	}
	out, err := f.svc.CreateKey(context.Background(), f.caller, in)
	if err != nil {
		t.Fatal(err)
	}
	return *out.KeyMetadata.KeyId
}

func (f *fixture) params(t *testing.T, id, alg, spec string) *kmsapi.GetParametersForImportResponse {
	t.Helper()
	out, err := f.svc.GetParametersForImport(context.Background(), f.caller, &kmsapi.GetParametersForImportRequest{
		KeyId: &id, WrappingAlgorithm: &alg, WrappingKeySpec: &spec})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// wrapMaterial wraps material for a wrapping public key as a caller does
// (spec §7.3), with the standard library's RSA-OAEP and a fresh AES key.
func wrapMaterial(t *testing.T, public []byte, alg string, m []byte) []byte {
	t.Helper()
	pk, err := x509.ParsePKIXPublicKey(public)
	if err != nil {
		t.Fatal(err)
	}
	pub := pk.(*rsa.PublicKey)
	h := sha256.New()
	if strings.HasSuffix(alg, "SHA_1") {
		h = sha1.New()
	}
	if strings.HasPrefix(alg, "RSAES_OAEP") {
		ct, err := rsa.EncryptOAEP(h, rand.Reader, pub, m, nil)
		if err != nil {
			t.Fatal(err)
		}
		return ct
	}
	kek := make([]byte, 32)
	rand.Read(kek)
	head, err := rsa.EncryptOAEP(h, rand.Reader, pub, kek, nil)
	if err != nil {
		t.Fatal(err)
	}
	tail, err := kwp.Wrap(kek, m)
	if err != nil {
		t.Fatal(err)
	}
	return append(head, tail...)
}

type importOpts struct {
	model, importType, mid, desc *string
	validTo                      *time.Time
}

// doImport gets parameters, wraps m and imports it (by default with
// KEY_MATERIAL_DOES_NOT_EXPIRE).
func (f *fixture) doImport(t *testing.T, id string, m []byte, o importOpts) (*kmsapi.ImportKeyMaterialResponse, error) {
	t.Helper()
	alg := "RSA_AES_KEY_WRAP_SHA_256"
	p := f.params(t, id, alg, "RSA_2048")
	in := &kmsapi.ImportKeyMaterialRequest{KeyId: &id, ImportToken: p.ImportToken, EncryptedKeyMaterial: wrapMaterial(t, p.PublicKey, alg, m),
		ExpirationModel: o.model, ImportType: o.importType, KeyMaterialId: o.mid, KeyMaterialDescription: o.desc}
	if o.validTo != nil {
		in.ValidTo = kmsapi.NewTime(*o.validTo)
	} else if o.model == nil {
		in.ExpirationModel = kmsapi.String("KEY_MATERIAL_DOES_NOT_EXPIRE")
	}
	return f.svc.ImportKeyMaterial(context.Background(), f.caller, in)
}

func (f *fixture) mustImport(t *testing.T, id string, m []byte, o importOpts) *kmsapi.ImportKeyMaterialResponse {
	t.Helper()
	out, err := f.doImport(t, id, m, o)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (f *fixture) describe(t *testing.T, id string) *kmsapi.KeyMetadata {
	t.Helper()
	out, err := f.svc.DescribeKey(context.Background(), f.caller, &kmsapi.DescribeKeyRequest{KeyId: &id})
	if err != nil {
		t.Fatal(err)
	}
	return out.KeyMetadata
}

func random(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// TestCreateKeyExternal: Origin EXTERNAL works for every key spec × usage
// of spec §2.1 and gives a key waiting for its material (§17.2).
func TestCreateKeyExternal(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	for _, tc := range []struct{ spec, usage string }{
		{"SYMMETRIC_DEFAULT", ""}, {"HMAC_224", "GENERATE_VERIFY_MAC"}, {"HMAC_512", "GENERATE_VERIFY_MAC"},
		{"RSA_2048", "ENCRYPT_DECRYPT"}, {"RSA_4096", "SIGN_VERIFY"}, {"ECC_NIST_P256", "SIGN_VERIFY"},
		{"ECC_NIST_P384", "KEY_AGREEMENT"}, {"ECC_NIST_P521", "SIGN_VERIFY"}, {"ECC_SECG_P256K1", "SIGN_VERIFY"},
		{"ECC_NIST_EDWARDS25519", "SIGN_VERIFY"}, {"ML_DSA_65", "SIGN_VERIFY"},
	} {
		t.Run(tc.spec+"/"+tc.usage, func(t *testing.T) {
			id := f.createExternal(t, tc.spec, tc.usage)
			m := f.describe(t, id)
			if *m.KeyState != "PendingImport" || *m.Enabled || *m.Origin != "EXTERNAL" {
				t.Fatalf("state %s enabled %v origin %s", *m.KeyState, *m.Enabled, *m.Origin)
			}
			if m.ExpirationModel != nil || m.ValidTo != nil || m.CurrentKeyMaterialId != nil {
				t.Fatalf("ExpirationModel %v, CurrentKeyMaterialId %v before any import", m.ExpirationModel, m.CurrentKeyMaterialId)
			}
			if len(m.EncryptionAlgorithms)+len(m.SigningAlgorithms)+len(m.MacAlgorithms)+len(m.KeyAgreementAlgorithms) == 0 {
				t.Fatal("no algorithm list")
			}
			_, err := f.svc.Encrypt(ctx, f.caller, &kmsapi.EncryptRequest{KeyId: &id, Plaintext: []byte("x")})
			if tc.spec == "SYMMETRIC_DEFAULT" {
				wantMessage(t, err, "KMSInvalidStateException", *m.Arn+" is pending import.")
			} else if err == nil {
				t.Fatal("Encrypt worked on a key without material")
			}
		})
	}
	t.Run("custom key store", func(t *testing.T) {
		_, err := f.svc.CreateKey(ctx, f.caller, &kmsapi.CreateKeyRequest{Origin: kmsapi.String("EXTERNAL"), CustomKeyStoreId: kmsapi.String("cks-1234567890abcdef0")})
		wantException(t, err, "UnsupportedOperationException")
	})
}

// TestGetParametersForImport: the checks of spec §7.2 in order, and the
// parameters: a fresh RSA public key of the spec, valid 24 hours.
func TestGetParametersForImport(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	ext := f.createExternal(t, "SYMMETRIC_DEFAULT", "")
	kmsKey := f.createKey(t)
	get := func(c *Caller, id, alg, spec string) (*kmsapi.GetParametersForImportResponse, error) {
		return f.svc.GetParametersForImport(ctx, c, &kmsapi.GetParametersForImportRequest{KeyId: &id, WrappingAlgorithm: &alg, WrappingKeySpec: &spec})
	}
	china := &Caller{Account: f.caller.Account, Region: "cn-north-1", ARN: f.caller.ARN}
	for _, tc := range []struct {
		name, id, alg, spec string
		c                   *Caller
		exc                 string
		msg                 string
	}{
		{name: "PKCS1 v1.5 withdrawn", id: ext, alg: "RSAES_PKCS1_V1_5", spec: "RSA_2048", exc: "ValidationException"},
		{name: "SM2PKE outside China", id: ext, alg: "SM2PKE", spec: "SM2", exc: "UnsupportedOperationException", msg: "SM2PKE is not supported in this Region."},
		{name: "SM2 spec outside China", id: ext, alg: "RSAES_OAEP_SHA_256", spec: "SM2", exc: "UnsupportedOperationException", msg: "SM2 is not supported in this Region."},
		{name: "SM2PKE with RSA", id: ext, alg: "SM2PKE", spec: "RSA_2048", c: china, exc: "ValidationException"},
		{name: "RSA with SM2", id: ext, alg: "RSAES_OAEP_SHA_1", spec: "SM2", c: china, exc: "ValidationException"},
		{name: "alias", id: "alias/x", alg: "RSAES_OAEP_SHA_256", spec: "RSA_2048", exc: "NotFoundException", msg: "Invalid keyId 'alias/x'"},
		{name: "AWS_KMS key", id: kmsKey, alg: "RSAES_OAEP_SHA_256", spec: "RSA_2048", exc: "UnsupportedOperationException",
			msg: keys.KeyARN("us-east-1", f.caller.Account, kmsKey) + " origin is AWS_KMS which is not valid for this operation."},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.c
			if c == nil {
				c = f.caller
			}
			_, err := get(c, tc.id, tc.alg, tc.spec)
			if tc.msg != "" {
				wantMessage(t, err, tc.exc, tc.msg)
			} else {
				wantException(t, err, tc.exc)
			}
		})
	}
	t.Run("every algorithm and size", func(t *testing.T) {
		seen := map[string]bool{}
		for _, alg := range []string{"RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256", "RSA_AES_KEY_WRAP_SHA_1", "RSA_AES_KEY_WRAP_SHA_256"} {
			for _, spec := range []string{"RSA_2048", "RSA_3072", "RSA_4096"} {
				if spec != "RSA_2048" && alg != "RSA_AES_KEY_WRAP_SHA_256" {
					continue // large pairs are slow to make; one of each size is enough
				}
				out, err := get(f.caller, ext, alg, spec)
				if err != nil {
					t.Fatal(err)
				}
				if *out.KeyId != keys.KeyARN("us-east-1", f.caller.Account, ext) {
					t.Fatalf("KeyId %s", *out.KeyId)
				}
				if got := out.ParametersValidTo.Sub(f.clock.now()); got != 24*time.Hour {
					t.Fatalf("ParametersValidTo - now = %v", got)
				}
				pk, err := x509.ParsePKIXPublicKey(out.PublicKey)
				if err != nil {
					t.Fatal(err)
				}
				if bits := pk.(*rsa.PublicKey).N.BitLen(); spec != "RSA_"+itoa(bits) {
					t.Fatalf("%s: %d-bit key", spec, bits)
				}
				if seen[string(out.PublicKey)] {
					t.Fatal("a wrapping public key was handed out twice")
				}
				seen[string(out.PublicKey)] = true
				if len(out.ImportToken) > 6144 {
					t.Fatalf("token of %d bytes", len(out.ImportToken))
				}
			}
		}
	})
	t.Run("states", func(t *testing.T) {
		id := f.createExternal(t, "SYMMETRIC_DEFAULT", "")
		f.mustImport(t, id, random(32), importOpts{}) // Enabled
		if _, err := f.svc.DisableKey(ctx, f.caller, &kmsapi.DisableKeyRequest{KeyId: &id}); err != nil {
			t.Fatal(err)
		}
		if _, err := get(f.caller, id, "RSAES_OAEP_SHA_256", "RSA_2048"); err != nil {
			t.Fatalf("Disabled: %v", err)
		}
		if _, err := f.svc.ScheduleKeyDeletion(ctx, f.caller, &kmsapi.ScheduleKeyDeletionRequest{KeyId: &id}); err != nil {
			t.Fatal(err)
		}
		_, err := get(f.caller, id, "RSAES_OAEP_SHA_256", "RSA_2048")
		wantMessage(t, err, "KMSInvalidStateException", keys.KeyARN("us-east-1", f.caller.Account, id)+" is pending deletion.")
	})
	t.Run("SM2 in China", func(t *testing.T) {
		out, err := f.svc.CreateKey(ctx, china, &kmsapi.CreateKeyRequest{Origin: kmsapi.String("EXTERNAL")})
		if err != nil {
			t.Fatal(err)
		}
		p, err := get(china, *out.KeyMetadata.KeyId, "SM2PKE", "SM2")
		if err != nil {
			t.Fatal(err)
		}
		m := random(16) // SM4-sized symmetric material in China
		wrapped, err := material.Encrypt("SM2", p.PublicKey, "SM2PKE", m, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.svc.ImportKeyMaterial(ctx, china, &kmsapi.ImportKeyMaterialRequest{KeyId: out.KeyMetadata.KeyId, ImportToken: p.ImportToken,
			EncryptedKeyMaterial: wrapped, ExpirationModel: kmsapi.String("KEY_MATERIAL_DOES_NOT_EXPIRE")}); err != nil {
			t.Fatal(err)
		}
	})
}

// TestImportKeyMaterialChecks: each check row of spec §7.4 and §17.10.
func TestImportKeyMaterialChecks(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	sym := f.createExternal(t, "SYMMETRIC_DEFAULT", "")
	other := f.createExternal(t, "SYMMETRIC_DEFAULT", "")
	rsaKey := f.createExternal(t, "RSA_2048", "SIGN_VERIFY")
	kmsKey := f.createKey(t)
	arn := func(id string) string { return keys.KeyARN("us-east-1", f.caller.Account, id) }
	p := f.params(t, sym, "RSAES_OAEP_SHA_256", "RSA_2048")
	good := wrapMaterial(t, p.PublicKey, "RSAES_OAEP_SHA_256", random(32))
	never := kmsapi.String("KEY_MATERIAL_DOES_NOT_EXPIRE")
	now := f.clock.now()
	at := func(d time.Duration) *kmsapi.Time { return kmsapi.NewTime(now.Add(d)) }
	req := func(mod func(r *kmsapi.ImportKeyMaterialRequest)) *kmsapi.ImportKeyMaterialRequest {
		r := &kmsapi.ImportKeyMaterialRequest{KeyId: kmsapi.String(sym), ImportToken: p.ImportToken, EncryptedKeyMaterial: good, ExpirationModel: never}
		if mod != nil {
			mod(r)
		}
		return r
	}
	for _, tc := range []struct {
		name string
		mod  func(r *kmsapi.ImportKeyMaterialRequest)
		exc  string
		msg  string
	}{
		{"no ExpirationModel, no ValidTo", func(r *kmsapi.ImportKeyMaterialRequest) { r.ExpirationModel = nil },
			"ValidationException", "A validTo date must be set if the ExpirationModel is KEY_MATERIAL_EXPIRES"},
		{"EXPIRES without ValidTo", func(r *kmsapi.ImportKeyMaterialRequest) { r.ExpirationModel = kmsapi.String("KEY_MATERIAL_EXPIRES") },
			"ValidationException", "A validTo date must be set if the ExpirationModel is KEY_MATERIAL_EXPIRES"},
		{"ValidTo with DOES_NOT_EXPIRE", func(r *kmsapi.ImportKeyMaterialRequest) { r.ValidTo = at(time.Hour) }, "ValidationException", ""},
		{"ValidTo in the past", func(r *kmsapi.ImportKeyMaterialRequest) { r.ExpirationModel, r.ValidTo = nil, at(-time.Second) }, "ValidationException", ""},
		{"ValidTo now", func(r *kmsapi.ImportKeyMaterialRequest) { r.ExpirationModel, r.ValidTo = nil, at(0) }, "ValidationException", ""},
		{"ValidTo 366 days ahead", func(r *kmsapi.ImportKeyMaterialRequest) { r.ExpirationModel, r.ValidTo = nil, at(366*24*time.Hour) }, "ValidationException", ""},
		{"KeyMaterialId with NEW", func(r *kmsapi.ImportKeyMaterialRequest) {
			r.ImportType, r.KeyMaterialId = kmsapi.String("NEW_KEY_MATERIAL"), kmsapi.String(strings.Repeat("a", 64))
		}, "ValidationException", ""},
		{"alias", func(r *kmsapi.ImportKeyMaterialRequest) { r.KeyId = kmsapi.String("alias/x") }, "NotFoundException", "Invalid keyId 'alias/x'"},
		{"AWS_KMS key", func(r *kmsapi.ImportKeyMaterialRequest) { r.KeyId = &kmsKey },
			"UnsupportedOperationException", arn(kmsKey) + " origin is AWS_KMS which is not valid for this operation."},
		{"ImportType on an asymmetric key", func(r *kmsapi.ImportKeyMaterialRequest) {
			r.KeyId, r.ImportType = &rsaKey, kmsapi.String("NEW_KEY_MATERIAL")
		}, "ValidationException", ""},
		{"description on an asymmetric key", func(r *kmsapi.ImportKeyMaterialRequest) {
			r.KeyId, r.KeyMaterialDescription = &rsaKey, kmsapi.String("d")
		}, "ValidationException", ""},
		{"random token", func(r *kmsapi.ImportKeyMaterialRequest) { r.ImportToken = random(1500) }, "InvalidImportTokenException", ""},
		{"token of another key", func(r *kmsapi.ImportKeyMaterialRequest) { r.KeyId = &other }, "InvalidImportTokenException", ""},
		{"tampered token", func(r *kmsapi.ImportKeyMaterialRequest) {
			r.ImportToken = bytes.Clone(p.ImportToken)
			r.ImportToken[40] ^= 1
		}, "InvalidImportTokenException", ""},
		{"short wrapped material", func(r *kmsapi.ImportKeyMaterialRequest) { r.EncryptedKeyMaterial = good[:255] },
			"ValidationException", "Invalid encrypted key size."},
		{"long wrapped material", func(r *kmsapi.ImportKeyMaterialRequest) { r.EncryptedKeyMaterial = append(bytes.Clone(good), 0) },
			"ValidationException", "Invalid encrypted key size."},
		{"wrapped under another call's key", func(r *kmsapi.ImportKeyMaterialRequest) {
			q := f.params(t, sym, "RSAES_OAEP_SHA_256", "RSA_2048")
			r.EncryptedKeyMaterial = wrapMaterial(t, q.PublicKey, "RSAES_OAEP_SHA_256", random(32))
		}, "InvalidCiphertextException", ""},
		{"wrapped with the other OAEP hash", func(r *kmsapi.ImportKeyMaterialRequest) {
			r.EncryptedKeyMaterial = wrapMaterial(t, p.PublicKey, "RSAES_OAEP_SHA_1", random(32))
		}, "InvalidCiphertextException", ""},
		{"31 bytes", func(r *kmsapi.ImportKeyMaterialRequest) {
			r.EncryptedKeyMaterial = wrapMaterial(t, p.PublicKey, "RSAES_OAEP_SHA_256", random(31))
		}, "IncorrectKeyMaterialException", ""},
		{"33 bytes", func(r *kmsapi.ImportKeyMaterialRequest) {
			r.EncryptedKeyMaterial = wrapMaterial(t, p.PublicKey, "RSAES_OAEP_SHA_256", random(33))
		}, "IncorrectKeyMaterialException", ""},
		{"first import with a KeyMaterialId that is not the material's", func(r *kmsapi.ImportKeyMaterialRequest) {
			r.KeyMaterialId = kmsapi.String(strings.Repeat("0", 64))
		}, "IncorrectKeyMaterialException", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := f.svc.ImportKeyMaterial(ctx, f.caller, req(tc.mod))
			if tc.msg != "" {
				wantMessage(t, err, tc.exc, tc.msg)
			} else {
				wantException(t, err, tc.exc)
			}
		})
	}
	t.Run("RSA_AES with a bad KWP part", func(t *testing.T) {
		q := f.params(t, sym, "RSA_AES_KEY_WRAP_SHA_256", "RSA_2048")
		w := wrapMaterial(t, q.PublicKey, "RSA_AES_KEY_WRAP_SHA_256", random(32))
		w[len(w)-1] ^= 1
		_, err := f.svc.ImportKeyMaterial(ctx, f.caller, req(func(r *kmsapi.ImportKeyMaterialRequest) { r.ImportToken, r.EncryptedKeyMaterial = q.ImportToken, w }))
		wantException(t, err, "InvalidCiphertextException")
		_, err = f.svc.ImportKeyMaterial(ctx, f.caller, req(func(r *kmsapi.ImportKeyMaterialRequest) {
			r.ImportToken, r.EncryptedKeyMaterial = q.ImportToken, w[:256+20]
		}))
		wantMessage(t, err, "ValidationException", "Invalid encrypted key size.")
	})
	t.Run("token reused, then expired", func(t *testing.T) {
		id := f.createExternal(t, "SYMMETRIC_DEFAULT", "")
		q := f.params(t, id, "RSAES_OAEP_SHA_1", "RSA_2048")
		m := random(32)
		for range 2 {
			if _, err := f.svc.ImportKeyMaterial(ctx, f.caller, req(func(r *kmsapi.ImportKeyMaterialRequest) {
				r.KeyId, r.ImportToken, r.EncryptedKeyMaterial = &id, q.ImportToken, wrapMaterial(t, q.PublicKey, "RSAES_OAEP_SHA_1", m)
			})); err != nil {
				t.Fatal(err)
			}
		}
		f.clock.advance(24*time.Hour - time.Second)
		if _, err := f.svc.ImportKeyMaterial(ctx, f.caller, req(func(r *kmsapi.ImportKeyMaterialRequest) {
			r.KeyId, r.ImportToken, r.EncryptedKeyMaterial = &id, q.ImportToken, wrapMaterial(t, q.PublicKey, "RSAES_OAEP_SHA_1", m)
		})); err != nil {
			t.Fatalf("token 1 s before its end: %v", err)
		}
		f.clock.advance(time.Second)
		_, err := f.svc.ImportKeyMaterial(ctx, f.caller, req(func(r *kmsapi.ImportKeyMaterialRequest) {
			r.KeyId, r.ImportToken, r.EncryptedKeyMaterial = &id, q.ImportToken, wrapMaterial(t, q.PublicKey, "RSAES_OAEP_SHA_1", m)
		}))
		wantException(t, err, "ExpiredImportTokenException")
	})
	t.Run("pending deletion", func(t *testing.T) {
		id := f.createExternal(t, "SYMMETRIC_DEFAULT", "")
		q := f.params(t, id, "RSAES_OAEP_SHA_256", "RSA_2048")
		if _, err := f.svc.ScheduleKeyDeletion(ctx, f.caller, &kmsapi.ScheduleKeyDeletionRequest{KeyId: &id}); err != nil {
			t.Fatal(err)
		}
		_, err := f.svc.ImportKeyMaterial(ctx, f.caller, req(func(r *kmsapi.ImportKeyMaterialRequest) {
			r.KeyId, r.ImportToken, r.EncryptedKeyMaterial = &id, q.ImportToken, wrapMaterial(t, q.PublicKey, "RSAES_OAEP_SHA_256", random(32))
		}))
		wantMessage(t, err, "KMSInvalidStateException", arn(id)+" is pending deletion.")
	})
}

func pkcs8(t *testing.T, k any) []byte {
	t.Helper()
	b, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestImportEverySpec: material of every spec, wrapped by every algorithm
// that can carry it, imports; the key then works with that very material
// (§17.10): symmetric ciphertexts round-trip, signatures verify offline
// with the original key, the public key is byte-identical, MACs equal
// crypto/hmac's.
func TestImportEverySpec(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecKeys := map[string]*ecdsa.PrivateKey{}
	for spec, c := range map[string]func() (*ecdsa.PrivateKey, error){
		"ECC_NIST_P256": func() (*ecdsa.PrivateKey, error) { return ecdsa.GenerateKey(elliptic.P256(), rand.Reader) },
		"ECC_NIST_P384": func() (*ecdsa.PrivateKey, error) { return ecdsa.GenerateKey(elliptic.P384(), rand.Reader) },
		"ECC_NIST_P521": func() (*ecdsa.PrivateKey, error) { return ecdsa.GenerateKey(elliptic.P521(), rand.Reader) },
	} {
		k, err := c()
		if err != nil {
			t.Fatal(err)
		}
		ecKeys[spec] = k
	}
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	algs := []string{"RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256", "RSA_AES_KEY_WRAP_SHA_1", "RSA_AES_KEY_WRAP_SHA_256"}
	for _, alg := range algs {
		t.Run("SYMMETRIC_DEFAULT/"+alg, func(t *testing.T) {
			id := f.createExternal(t, "SYMMETRIC_DEFAULT", "")
			m := random(32)
			p := f.params(t, id, alg, "RSA_2048")
			out, err := f.svc.ImportKeyMaterial(ctx, f.caller, &kmsapi.ImportKeyMaterialRequest{KeyId: &id, ImportToken: p.ImportToken,
				EncryptedKeyMaterial: wrapMaterial(t, p.PublicKey, alg, m), ExpirationModel: kmsapi.String("KEY_MATERIAL_DOES_NOT_EXPIRE")})
			if err != nil {
				t.Fatal(err)
			}
			if want := f.cat.MaterialID(id, m); out.KeyMaterialId == nil || *out.KeyMaterialId != want {
				t.Fatalf("KeyMaterialId %v, want %s", out.KeyMaterialId, want)
			}
			md := f.describe(t, id)
			if *md.KeyState != "Enabled" || *md.ExpirationModel != "KEY_MATERIAL_DOES_NOT_EXPIRE" || md.ValidTo != nil {
				t.Fatalf("after import: %s %v %v", *md.KeyState, md.ExpirationModel, md.ValidTo)
			}
			blob := f.encrypt(t, id, []byte("hello"), nil)
			if pt, err := f.decrypt(blob, nil); err != nil || string(pt) != "hello" {
				t.Fatalf("decrypt %q %v", pt, err)
			}
		})
	}
	for _, spec := range []string{"HMAC_224", "HMAC_256", "HMAC_384", "HMAC_512"} {
		t.Run(spec, func(t *testing.T) {
			id := f.createExternal(t, spec, "GENERATE_VERIFY_MAC")
			h := map[string]func() hash.Hash{"HMAC_224": sha256.New224, "HMAC_256": sha256.New, "HMAC_384": sha512.New384, "HMAC_512": sha512.New}[spec]
			m := random(h().Size())
			out := f.mustImport(t, id, m, importOpts{})
			if out.KeyMaterialId != nil {
				t.Fatal("KeyMaterialId for an HMAC key")
			}
			alg := "HMAC_SHA_" + strings.TrimPrefix(spec, "HMAC_")
			got, err := f.svc.GenerateMac(ctx, f.caller, &kmsapi.GenerateMacRequest{KeyId: &id, MacAlgorithm: &alg, Message: []byte("msg")})
			if err != nil {
				t.Fatal(err)
			}
			mac := hmac.New(h, m)
			mac.Write([]byte("msg"))
			if !bytes.Equal(got.Mac, mac.Sum(nil)) {
				t.Fatal("MAC differs from crypto/hmac's over the imported key")
			}
			_, err = f.doImport(t, id, random(len(m)), importOpts{})
			wantException(t, err, "IncorrectKeyMaterialException")
			_, err = f.doImport(t, f.createExternal(t, spec, "GENERATE_VERIFY_MAC"), random(h().Size()-1), importOpts{})
			wantException(t, err, "IncorrectKeyMaterialException")
		})
	}
	for _, tc := range []struct {
		spec, usage, alg string
		key              crypto.Signer
		wrap             []string
	}{
		{"RSA_2048", "SIGN_VERIFY", "RSASSA_PSS_SHA_256", rsaKey, algs[2:]},
		{"ECC_NIST_P256", "SIGN_VERIFY", "ECDSA_SHA_256", ecKeys["ECC_NIST_P256"], algs},
		{"ECC_NIST_P384", "KEY_AGREEMENT", "", ecKeys["ECC_NIST_P384"], algs[2:]},
		{"ECC_NIST_P521", "SIGN_VERIFY", "ECDSA_SHA_512", ecKeys["ECC_NIST_P521"], algs[2:]},
		{"ECC_NIST_EDWARDS25519", "SIGN_VERIFY", "ED25519_SHA_512", edKey, algs},
	} {
		for _, wrap := range tc.wrap {
			t.Run(tc.spec+"/"+wrap, func(t *testing.T) {
				id := f.createExternal(t, tc.spec, tc.usage)
				der := pkcs8(t, tc.key)
				p := f.params(t, id, wrap, "RSA_2048")
				if _, err := f.svc.ImportKeyMaterial(ctx, f.caller, &kmsapi.ImportKeyMaterialRequest{KeyId: &id, ImportToken: p.ImportToken,
					EncryptedKeyMaterial: wrapMaterial(t, p.PublicKey, wrap, der), ExpirationModel: kmsapi.String("KEY_MATERIAL_DOES_NOT_EXPIRE")}); err != nil {
					t.Fatal(err)
				}
				pub, err := f.svc.GetPublicKey(ctx, f.caller, &kmsapi.GetPublicKeyRequest{KeyId: &id})
				if err != nil {
					t.Fatal(err)
				}
				want, _ := x509.MarshalPKIXPublicKey(tc.key.Public())
				if !bytes.Equal(pub.PublicKey, want) {
					t.Fatal("GetPublicKey differs from the imported key's SPKI")
				}
				if tc.alg != "" {
					msg := []byte("signed by imported material")
					s, err := f.svc.Sign(ctx, f.caller, &kmsapi.SignRequest{KeyId: &id, Message: msg, SigningAlgorithm: &tc.alg})
					if err != nil {
						t.Fatal(err)
					}
					if !verifyOffline(tc.key.Public(), tc.alg, msg, s.Signature) {
						t.Fatal("signature does not verify with the original key")
					}
				}
				// A different key of the same spec is refused; the same
				// key again is accepted.
				_, err = f.doImport(t, id, der[:len(der)-1], importOpts{})
				wantException(t, err, "IncorrectKeyMaterialException")
				f.mustImport(t, id, der, importOpts{})
			})
		}
	}
	t.Run("RSA material under RSAES_OAEP is too big to wrap", func(t *testing.T) {
		id := f.createExternal(t, "RSA_2048", "ENCRYPT_DECRYPT")
		p := f.params(t, id, "RSAES_OAEP_SHA_256", "RSA_2048")
		_, err := f.svc.ImportKeyMaterial(ctx, f.caller, &kmsapi.ImportKeyMaterialRequest{KeyId: &id, ImportToken: p.ImportToken,
			EncryptedKeyMaterial: random(256), ExpirationModel: kmsapi.String("KEY_MATERIAL_DOES_NOT_EXPIRE")})
		wantException(t, err, "InvalidCiphertextException")
	})
	t.Run("wrong curve and size", func(t *testing.T) {
		_, err := f.doImport(t, f.createExternal(t, "ECC_NIST_P384", "SIGN_VERIFY"), pkcs8(t, ecKeys["ECC_NIST_P256"]), importOpts{})
		wantException(t, err, "IncorrectKeyMaterialException")
		_, err = f.doImport(t, f.createExternal(t, "RSA_3072", "SIGN_VERIFY"), pkcs8(t, rsaKey), importOpts{})
		wantException(t, err, "IncorrectKeyMaterialException")
		_, err = f.doImport(t, f.createExternal(t, "ECC_NIST_P256", "SIGN_VERIFY"), pkcs8(t, rsaKey), importOpts{})
		wantException(t, err, "IncorrectKeyMaterialException")
	})
	t.Run("RSA decrypt with imported material", func(t *testing.T) {
		id := f.createExternal(t, "RSA_2048", "ENCRYPT_DECRYPT")
		f.mustImport(t, id, pkcs8(t, rsaKey), importOpts{})
		ct, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, &rsaKey.PublicKey, []byte("offline"), nil)
		if err != nil {
			t.Fatal(err)
		}
		out, err := f.svc.Decrypt(ctx, f.caller, &kmsapi.DecryptRequest{KeyId: &id, CiphertextBlob: ct, EncryptionAlgorithm: kmsapi.String("RSAES_OAEP_SHA_256")})
		if err != nil || string(out.Plaintext) != "offline" {
			t.Fatalf("Decrypt: %v", err)
		}
	})
}

func verifyOffline(pub crypto.PublicKey, alg string, msg, sig []byte) bool {
	switch p := pub.(type) {
	case *rsa.PublicKey:
		d := sha256.Sum256(msg)
		return rsa.VerifyPSS(p, crypto.SHA256, d[:], sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash}) == nil
	case *ecdsa.PublicKey:
		a, _ := keys.Signing(alg)
		h := a.Hash.New()
		h.Write(msg)
		return ecdsa.VerifyASN1(p, h.Sum(nil), sig)
	case ed25519.PublicKey:
		return ed25519.Verify(p, msg, sig)
	}
	return false
}

// TestDeleteAndReimport: DeleteImportedKeyMaterial (spec §7.7), then the
// same bytes again bring back the old ciphertexts, and other bytes are
// refused.
func TestDeleteAndReimport(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	id := f.createExternal(t, "SYMMETRIC_DEFAULT", "")
	arn := keys.KeyARN("us-east-1", f.caller.Account, id)
	del := func(mid *string) (*kmsapi.DeleteImportedKeyMaterialResponse, error) {
		return f.svc.DeleteImportedKeyMaterial(ctx, f.caller, &kmsapi.DeleteImportedKeyMaterialRequest{KeyId: &id, KeyMaterialId: mid})
	}
	if out, err := del(nil); err != nil || out.KeyMaterialId != nil {
		t.Fatalf("delete before any import: %v %v", out, err)
	}
	m := random(32)
	imp := f.mustImport(t, id, m, importOpts{desc: kmsapi.String("first material")})
	blob := f.encrypt(t, id, []byte("kept"), nil)
	out, err := del(nil)
	if err != nil {
		t.Fatal(err)
	}
	if *out.KeyId != arn || *out.KeyMaterialId != *imp.KeyMaterialId {
		t.Fatalf("delete answered %s %s", *out.KeyId, *out.KeyMaterialId)
	}
	md := f.describe(t, id)
	if *md.KeyState != "PendingImport" || md.ExpirationModel != nil || md.ValidTo != nil {
		t.Fatalf("after delete: %s %v", *md.KeyState, md.ExpirationModel)
	}
	if md.CurrentKeyMaterialId == nil || *md.CurrentKeyMaterialId != *imp.KeyMaterialId {
		t.Fatalf("CurrentKeyMaterialId after delete: %v, want it kept (spec §7.7)", md.CurrentKeyMaterialId)
	}
	_, err = f.decrypt(blob, nil)
	wantMessage(t, err, "KMSInvalidStateException", arn+" is pending import.")
	_, err = f.svc.Encrypt(ctx, f.caller, &kmsapi.EncryptRequest{KeyId: &id, Plaintext: []byte("x")})
	wantMessage(t, err, "KMSInvalidStateException", arn+" is pending import.")
	if _, err := del(nil); err != nil {
		t.Fatalf("delete while PendingImport: %v", err)
	}
	_, err = del(kmsapi.String(strings.Repeat("0", 64)))
	wantException(t, err, "NotFoundException")

	_, err = f.doImport(t, id, random(32), importOpts{})
	wantException(t, err, "IncorrectKeyMaterialException")
	_, err = f.doImport(t, id, m, importOpts{importType: kmsapi.String("NEW_KEY_MATERIAL")})
	wantException(t, err, "IncorrectKeyMaterialException") // already the key's
	again := f.mustImport(t, id, m, importOpts{mid: imp.KeyMaterialId})
	if *again.KeyMaterialId != *imp.KeyMaterialId {
		t.Fatal("KeyMaterialId changed on re-import of the same bytes")
	}
	if pt, err := f.decrypt(blob, nil); err != nil || string(pt) != "kept" {
		t.Fatalf("old ciphertext after re-import: %q %v", pt, err)
	}
	rot, err := f.svc.ListKeyRotations(ctx, f.caller, &kmsapi.ListKeyRotationsRequest{KeyId: &id, IncludeKeyMaterial: kmsapi.String("ALL_KEY_MATERIAL")})
	if err != nil || len(rot.Rotations) != 1 || *rot.Rotations[0].KeyMaterialDescription != "first material" {
		t.Fatalf("description not kept across re-import: %+v %v", rot, err)
	}
	// Re-importing while imported changes the expiration settings.
	validTo := f.clock.now().Add(48 * time.Hour).Truncate(time.Second)
	f.mustImport(t, id, m, importOpts{validTo: &validTo})
	if md := f.describe(t, id); *md.ExpirationModel != "KEY_MATERIAL_EXPIRES" || !md.ValidTo.Equal(validTo) {
		t.Fatalf("after re-import with ValidTo: %v %v", *md.ExpirationModel, md.ValidTo)
	}
	// On a key pending deletion the state stays.
	if _, err := f.svc.ScheduleKeyDeletion(ctx, f.caller, &kmsapi.ScheduleKeyDeletionRequest{KeyId: &id}); err != nil {
		t.Fatal(err)
	}
	if _, err := del(nil); err != nil {
		t.Fatal(err)
	}
	if md := f.describe(t, id); *md.KeyState != "PendingDeletion" {
		t.Fatalf("state %s", *md.KeyState)
	}
	if _, err := f.svc.CancelKeyDeletion(ctx, f.caller, &kmsapi.CancelKeyDeletionRequest{KeyId: &id}); err != nil {
		t.Fatal(err)
	}
	if md := f.describe(t, id); *md.KeyState != "PendingImport" {
		t.Fatalf("cancelled deletion of a key without material: %s", *md.KeyState)
	}
	_, err = f.svc.DeleteImportedKeyMaterial(ctx, f.caller, &kmsapi.DeleteImportedKeyMaterialRequest{KeyId: kmsapi.String("alias/x")})
	wantMessage(t, err, "NotFoundException", "Invalid keyId 'alias/x'")
	kmsKey := f.createKey(t)
	_, err = f.svc.DeleteImportedKeyMaterial(ctx, f.caller, &kmsapi.DeleteImportedKeyMaterialRequest{KeyId: &kmsKey})
	wantMessage(t, err, "UnsupportedOperationException", keys.KeyARN("us-east-1", f.caller.Account, kmsKey)+" origin is AWS_KMS which is not valid for this operation.")
}

// TestImportExpiry: material expires at ValidTo — on use at once, and in
// storage by the sweep — and the same bytes bring the key back (§7.6).
func TestImportExpiry(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	id := f.createExternal(t, "SYMMETRIC_DEFAULT", "")
	keep := f.createExternal(t, "SYMMETRIC_DEFAULT", "")
	m := random(32)
	validTo := f.clock.now().Add(time.Hour)
	f.mustImport(t, id, m, importOpts{validTo: &validTo})
	f.mustImport(t, keep, random(32), importOpts{})
	blob := f.encrypt(t, id, []byte("x"), nil)
	if md := f.describe(t, id); *md.ExpirationModel != "KEY_MATERIAL_EXPIRES" || !md.ValidTo.Equal(validTo) {
		t.Fatalf("%v %v", md.ExpirationModel, md.ValidTo)
	}
	if ex, err := f.svc.SweepImports(ctx); err != nil || len(ex) != 0 {
		t.Fatalf("early sweep: %v %v", ex, err)
	}
	f.clock.advance(time.Hour)
	// Not swept yet: the key is already unusable.
	if md := f.describe(t, id); *md.KeyState != "PendingImport" || md.ExpirationModel != nil {
		t.Fatalf("expired, unswept: %s", *md.KeyState)
	}
	_, err := f.decrypt(blob, nil)
	wantException(t, err, "KMSInvalidStateException")
	ex, err := f.svc.SweepImports(ctx)
	if err != nil || len(ex) != 1 || ex[0].KeyARN != keys.KeyARN("us-east-1", f.caller.Account, id) ||
		len(ex[0].KeyMaterialIDs) != 1 || ex[0].KeyMaterialIDs[0] != f.cat.MaterialID(id, m) {
		t.Fatalf("sweep: %+v %v", ex, err)
	}
	k, err := f.cat.Key(ctx, id)
	if err != nil || k.State != "PendingImport" || k.Versions[0].Sealed != nil {
		t.Fatalf("stored after sweep: %v %v", k.State, err)
	}
	if md := f.describe(t, keep); *md.KeyState != "Enabled" {
		t.Fatal("the sweep touched a key that does not expire")
	}
	f.mustImport(t, id, m, importOpts{})
	if pt, err := f.decrypt(blob, nil); err != nil || string(pt) != "x" {
		t.Fatalf("after re-import: %v", err)
	}
}

// TestImportedRotation: NEW_KEY_MATERIAL waits in PENDING_ROTATION until
// RotateKeyOnDemand (spec §7.8); both materials decrypt afterwards.
func TestImportedRotation(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	id := f.createExternal(t, "SYMMETRIC_DEFAULT", "")
	arn := keys.KeyARN("us-east-1", f.caller.Account, id)
	rotate := func() error {
		_, err := f.svc.RotateKeyOnDemand(ctx, f.caller, &kmsapi.RotateKeyOnDemandRequest{KeyId: &id})
		return err
	}
	list := func(all bool) []kmsapi.RotationsListEntry {
		in := &kmsapi.ListKeyRotationsRequest{KeyId: &id}
		if all {
			in.IncludeKeyMaterial = kmsapi.String("ALL_KEY_MATERIAL")
		}
		out, err := f.svc.ListKeyRotations(ctx, f.caller, in)
		if err != nil {
			t.Fatal(err)
		}
		return out.Rotations
	}
	wantMessage(t, rotate(), "KMSInvalidStateException", arn+" is pending import.")
	first := f.mustImport(t, id, random(32), importOpts{})
	old := f.encrypt(t, id, []byte("old"), nil)
	wantMessage(t, rotate(), "KMSInvalidStateException", "No available key material pending rotation for the key: "+arn+".")
	second := f.mustImport(t, id, random(32), importOpts{importType: kmsapi.String("NEW_KEY_MATERIAL"), desc: kmsapi.String("second")})
	_, err := f.doImport(t, id, random(32), importOpts{importType: kmsapi.String("NEW_KEY_MATERIAL")})
	var e *kmsapi.Exception
	if !errors.As(err, &e) || e.Name != "KMSInvalidStateException" ||
		!strings.HasPrefix(e.Message, "New key material (id: ") ||
		!strings.HasSuffix(e.Message, ") cannot be imported into KMS key "+id+", because another key material (id: "+*second.KeyMaterialId+") is pending rotation.") {
		t.Fatalf("second NEW import: %v", err)
	}
	if l := list(true); len(l) != 2 || *l[0].KeyMaterialState != "CURRENT" || *l[1].KeyMaterialState != "PENDING_ROTATION" || *l[1].ImportState != "IMPORTED" {
		t.Fatalf("ALL_KEY_MATERIAL before rotation: %+v", l)
	}
	if l := list(false); len(l) != 0 {
		t.Fatalf("ROTATIONS_ONLY before rotation: %d", len(l))
	}
	// The pending material encrypts nothing yet.
	k, _ := f.cat.Key(ctx, id)
	if k.Current != 1 {
		t.Fatal("NEW import changed the current material")
	}
	if md := f.describe(t, id); *md.CurrentKeyMaterialId != *first.KeyMaterialId {
		t.Fatal("CurrentKeyMaterialId changed by a NEW_KEY_MATERIAL import")
	}
	if err := rotate(); err != nil {
		t.Fatal(err)
	}
	if md := f.describe(t, id); *md.CurrentKeyMaterialId != *second.KeyMaterialId {
		t.Fatal("CurrentKeyMaterialId not the promoted material's")
	}
	gdk, err := f.svc.GenerateDataKey(ctx, f.caller, &kmsapi.GenerateDataKeyRequest{KeyId: &id, NumberOfBytes: kmsapi.Int32(16)})
	if err != nil || gdk.KeyMaterialId == nil || *gdk.KeyMaterialId != *second.KeyMaterialId {
		t.Fatalf("GenerateDataKey's KeyMaterialId after rotation: %v", err)
	}
	dec, err := f.svc.Decrypt(ctx, f.caller, &kmsapi.DecryptRequest{CiphertextBlob: old})
	if err != nil || dec.KeyMaterialId == nil || *dec.KeyMaterialId != *first.KeyMaterialId {
		t.Fatalf("Decrypt's KeyMaterialId of an old ciphertext: %v", err)
	}
	newer := f.encrypt(t, id, []byte("new"), nil)
	for blob, want := range map[*[]byte]string{&old: "old", &newer: "new"} {
		if pt, err := f.decrypt(*blob, nil); err != nil || string(pt) != want {
			t.Fatalf("decrypt %s: %v", want, err)
		}
	}
	l := list(false)
	if len(l) != 1 || *l[0].KeyMaterialId != *second.KeyMaterialId || *l[0].RotationType != "ON_DEMAND" ||
		*l[0].KeyMaterialState != "CURRENT" || *l[0].KeyMaterialDescription != "second" || *l[0].ExpirationModel != "KEY_MATERIAL_DOES_NOT_EXPIRE" {
		t.Fatalf("ROTATIONS_ONLY after rotation: %+v", l)
	}
	l = list(true)
	if len(l) != 2 || *l[0].KeyMaterialId != *first.KeyMaterialId || *l[0].KeyMaterialState != "NON_CURRENT" || l[0].RotationDate != nil {
		t.Fatalf("ALL_KEY_MATERIAL after rotation: %+v", l)
	}
	_, err = f.svc.EnableKeyRotation(ctx, f.caller, &kmsapi.EnableKeyRotationRequest{KeyId: &id})
	wantMessage(t, err, "UnsupportedOperationException", arn+" origin is EXTERNAL which is not valid for this operation.")
	st, err := f.svc.GetKeyRotationStatus(ctx, f.caller, &kmsapi.GetKeyRotationStatusRequest{KeyId: &id})
	if err != nil || *st.KeyRotationEnabled {
		t.Fatalf("GetKeyRotationStatus: %v", err)
	}
	// Deleting the non-current material makes the key unusable; deleting
	// a pending material removes it.
	if _, err := f.svc.DeleteImportedKeyMaterial(ctx, f.caller, &kmsapi.DeleteImportedKeyMaterialRequest{KeyId: &id, KeyMaterialId: first.KeyMaterialId}); err != nil {
		t.Fatal(err)
	}
	if md := f.describe(t, id); *md.KeyState != "PendingImport" {
		t.Fatalf("state %s after deleting NON_CURRENT material", *md.KeyState)
	}
	f.mustImport(t, id, random(32), importOpts{importType: kmsapi.String("NEW_KEY_MATERIAL")})
	third := list(true)[2]
	if _, err := f.svc.DeleteImportedKeyMaterial(ctx, f.caller, &kmsapi.DeleteImportedKeyMaterialRequest{KeyId: &id, KeyMaterialId: third.KeyMaterialId}); err != nil {
		t.Fatal(err)
	}
	if n := len(list(true)); n != 2 {
		t.Fatalf("%d materials after deleting the pending one", n)
	}
	hm := f.createExternal(t, "HMAC_256", "GENERATE_VERIFY_MAC")
	_, err = f.svc.ListKeyRotations(ctx, f.caller, &kmsapi.ListKeyRotationsRequest{KeyId: &hm})
	wantException(t, err, "UnsupportedOperationException")
}

// TestImportedCiphertextsNotForgeable: spec §7.9 — the imported bytes
// neither make nor open kmsd ciphertexts, and two keys with the same bytes
// cannot open each other's.
func TestImportedCiphertextsNotForgeable(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	m := random(32)
	a := f.createExternal(t, "SYMMETRIC_DEFAULT", "")
	b := f.createExternal(t, "SYMMETRIC_DEFAULT", "")
	f.mustImport(t, a, m, importOpts{})
	f.mustImport(t, b, m, importOpts{})
	ec := map[string]string{"purpose": "test"}
	blob := f.encrypt(t, a, []byte("secret"), ec)

	_, err := f.svc.Decrypt(ctx, f.caller, &kmsapi.DecryptRequest{CiphertextBlob: blob, KeyId: &b, EncryptionContext: ec})
	wantException(t, err, "IncorrectKeyException")
	// b's header on a's ciphertext: b's working key differs, so it fails.
	moved := keys.AppendHeader(nil, b, 1)
	moved = append(moved, blob[len(keys.AppendHeader(nil, a, 1)):]...)
	_, err = f.decrypt(moved, ec)
	wantException(t, err, "InvalidCiphertextException")

	// kmsd's ciphertext does not open under the raw bytes.
	gcm := func() cipher.AEAD {
		blk, _ := aes.NewCipher(m)
		g, _ := cipher.NewGCM(blk)
		return g
	}()
	parsed, err := keys.ParseBlob(blob)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := gcm.Open(nil, parsed.Nonce, parsed.Sealed, keys.AppendAAD(nil, parsed.Header, ec)); err == nil {
		t.Fatal("a kmsd ciphertext opened with AES-GCM under the imported bytes")
	}
	// A blob made with the raw bytes in kmsd's own layout is refused.
	forged := keys.AppendHeader(nil, a, 1)
	hdr := len(forged)
	nonce := random(keys.NonceSize)
	forged = append(forged, nonce...)
	forged = gcm.Seal(forged, nonce, []byte("forged"), keys.AppendAAD(nil, forged[:hdr], ec))
	_, err = f.decrypt(forged, ec)
	wantException(t, err, "InvalidCiphertextException")
	// The working key binds key id and KeyMaterialId.
	mid := f.cat.MaterialID(a, m)
	if bytes.Equal(f.cat.WorkingKey(a, mid, m), f.cat.WorkingKey(b, f.cat.MaterialID(b, m), m)) || bytes.Equal(f.cat.WorkingKey(a, mid, m), m) {
		t.Fatal("working keys not bound to the key")
	}
	if f.cat.MaterialID(a, m) == f.cat.MaterialID(b, m) || f.cat.MaterialID(a, m) != mid {
		t.Fatal("KeyMaterialId not deterministic per key id and material")
	}
}

// TestImportOtherSpecs: secp256k1, ML-DSA and (in a China Region, wrapped
// with SM2PKE) SM2 material imports from PKCS #8 and signs as the
// original key.
func TestImportOtherSpecs(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	china := &Caller{Account: f.caller.Account, Region: "cn-north-1", ARN: "arn:aws-cn:iam::" + f.caller.Account + ":root"}
	for _, tc := range []struct {
		spec, alg string
		c         *Caller
		wrapAlg   string
	}{
		{"ECC_SECG_P256K1", "ECDSA_SHA_256", f.caller, "RSA_AES_KEY_WRAP_SHA_1"},
		{"ML_DSA_44", "ML_DSA_SHAKE_256", f.caller, "RSA_AES_KEY_WRAP_SHA_256"},
		{"SM2", "SM2DSA", china, "SM2PKE"},
	} {
		t.Run(tc.spec, func(t *testing.T) {
			var der, pub []byte
			if strings.HasPrefix(tc.spec, "ML_DSA") {
				k, err := mldsa.GenerateKey(mldsa.MLDSA44())
				if err != nil {
					t.Fatal(err)
				}
				if der, err = mldsax509.MarshalPKCS8PrivateKey(k); err != nil {
					t.Fatal(err)
				}
				if pub, err = mldsax509.MarshalPKIXPublicKey(k.PublicKey()); err != nil {
					t.Fatal(err)
				}
			} else {
				var err error
				if der, pub, err = material.GeneratePair(tc.spec, rand.Reader); err != nil {
					t.Fatal(err)
				}
			}
			spec, usage := tc.spec, "SIGN_VERIFY"
			ck, err := f.svc.CreateKey(ctx, tc.c, &kmsapi.CreateKeyRequest{Origin: kmsapi.String("EXTERNAL"), KeySpec: &spec, KeyUsage: &usage})
			if err != nil {
				t.Fatal(err)
			}
			id := ck.KeyMetadata.KeyId
			wspec := "RSA_2048"
			if tc.wrapAlg == "SM2PKE" {
				wspec = "SM2"
			}
			p, err := f.svc.GetParametersForImport(ctx, tc.c, &kmsapi.GetParametersForImportRequest{KeyId: id, WrappingAlgorithm: &tc.wrapAlg, WrappingKeySpec: &wspec})
			if err != nil {
				t.Fatal(err)
			}
			var wrapped []byte
			if tc.wrapAlg == "SM2PKE" {
				if wrapped, err = material.Encrypt("SM2", p.PublicKey, "SM2PKE", der, rand.Reader); err != nil {
					t.Fatal(err)
				}
			} else {
				wrapped = wrapMaterial(t, p.PublicKey, tc.wrapAlg, der)
			}
			if _, err := f.svc.ImportKeyMaterial(ctx, tc.c, &kmsapi.ImportKeyMaterialRequest{KeyId: id, ImportToken: p.ImportToken,
				EncryptedKeyMaterial: wrapped, ExpirationModel: kmsapi.String("KEY_MATERIAL_DOES_NOT_EXPIRE")}); err != nil {
				t.Fatal(err)
			}
			gp, err := f.svc.GetPublicKey(ctx, tc.c, &kmsapi.GetPublicKeyRequest{KeyId: id})
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(gp.PublicKey, pub) {
				t.Fatal("GetPublicKey differs from the imported key's")
			}
			msg := []byte("imported " + tc.spec)
			s, err := f.svc.Sign(ctx, tc.c, &kmsapi.SignRequest{KeyId: id, Message: msg, SigningAlgorithm: &tc.alg})
			if err != nil {
				t.Fatal(err)
			}
			v, err := f.svc.Verify(ctx, tc.c, &kmsapi.VerifyRequest{KeyId: id, Message: msg, Signature: s.Signature, SigningAlgorithm: &tc.alg})
			if err != nil || !*v.SignatureValid {
				t.Fatalf("Verify: %v", err)
			}
			if tc.spec == "ML_DSA_44" {
				pk, _ := mldsa.NewPublicKey(mldsa.MLDSA44(), pub[len(pub)-1312:])
				if mldsa.Verify(pk, msg, s.Signature, nil) != nil {
					t.Fatal("ML-DSA signature does not verify with the original public key")
				}
			}
		})
	}
}

// TestImportIntoDisabledKey: a Disabled key takes an import and stays
// Disabled; the earliest ValidTo of its materials is the key's.
func TestImportIntoDisabledKey(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	id := f.createExternal(t, "SYMMETRIC_DEFAULT", "")
	m := random(32)
	later := f.clock.now().Add(72 * time.Hour).Truncate(time.Second)
	f.mustImport(t, id, m, importOpts{validTo: &later})
	sooner := f.clock.now().Add(48 * time.Hour).Truncate(time.Second)
	f.mustImport(t, id, random(32), importOpts{importType: kmsapi.String("NEW_KEY_MATERIAL"), validTo: &sooner})
	if _, err := f.svc.RotateKeyOnDemand(ctx, f.caller, &kmsapi.RotateKeyOnDemandRequest{KeyId: &id}); err != nil {
		t.Fatal(err)
	}
	if md := f.describe(t, id); !md.ValidTo.Equal(sooner) {
		t.Fatalf("ValidTo %v, want the earliest %v", md.ValidTo, sooner)
	}
	if _, err := f.svc.DisableKey(ctx, f.caller, &kmsapi.DisableKeyRequest{KeyId: &id}); err != nil {
		t.Fatal(err)
	}
	f.mustImport(t, id, m, importOpts{})
	if md := f.describe(t, id); *md.KeyState != "Disabled" || !md.ValidTo.Equal(sooner) {
		t.Fatalf("after import into a disabled key: %s %v", *md.KeyState, md.ValidTo)
	}
}

// importIn imports m into key id in region, as the region's caller.
func (f *mrFixture) importIn(t *testing.T, region, id string, m []byte) (*kmsapi.ImportKeyMaterialResponse, error) {
	t.Helper()
	ctx := context.Background()
	p, err := f.svc.GetParametersForImport(ctx, f.in(region), &kmsapi.GetParametersForImportRequest{KeyId: &id,
		WrappingAlgorithm: kmsapi.String("RSAES_OAEP_SHA_256"), WrappingKeySpec: kmsapi.String("RSA_2048")})
	if err != nil {
		t.Fatal(err)
	}
	return f.svc.ImportKeyMaterial(ctx, f.in(region), &kmsapi.ImportKeyMaterialRequest{KeyId: &id, ImportToken: p.ImportToken,
		EncryptedKeyMaterial: wrapMaterial(t, p.PublicKey, "RSAES_OAEP_SHA_256", m), ExpirationModel: kmsapi.String("KEY_MATERIAL_DOES_NOT_EXPIRE")})
}

// TestMultiRegionImportAgrees: related multi-Region keys import the same
// material each for itself (spec §9.7) and then agree — same
// KeyMaterialId, ciphertexts of one Region decrypt in the other — since
// the id and the working key bind the key id, not the ARN. Other material
// is refused by the replica, and a token of one Region does not serve
// the other.
func TestMultiRegionImportAgrees(t *testing.T) {
	ctx := context.Background()
	f := newMRFixture(t)
	id := f.createMRK(t, &kmsapi.CreateKeyRequest{Origin: kmsapi.String("EXTERNAL")})
	m := random(32)
	one, err := f.importIn(t, east, id, m)
	if err != nil {
		t.Fatal(err)
	}
	f.replicate(t, f.svc, id, west)
	if md := f.describe(t, west, id); *md.KeyState != "PendingImport" {
		t.Fatalf("replica of an EXTERNAL key: %s", *md.KeyState)
	}
	if _, err := f.importIn(t, west, id, random(32)); err == nil {
		t.Fatal("the replica took other material than the primary's")
	} else {
		wantException(t, err, "IncorrectKeyMaterialException")
	}
	// A token of the primary's Region is not the replica's.
	p, err := f.svc.GetParametersForImport(ctx, f.in(east), &kmsapi.GetParametersForImportRequest{KeyId: &id,
		WrappingAlgorithm: kmsapi.String("RSAES_OAEP_SHA_256"), WrappingKeySpec: kmsapi.String("RSA_2048")})
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.svc.ImportKeyMaterial(ctx, f.in(west), &kmsapi.ImportKeyMaterialRequest{KeyId: &id, ImportToken: p.ImportToken,
		EncryptedKeyMaterial: wrapMaterial(t, p.PublicKey, "RSAES_OAEP_SHA_256", m), ExpirationModel: kmsapi.String("KEY_MATERIAL_DOES_NOT_EXPIRE")})
	wantException(t, err, "InvalidImportTokenException")

	two, err := f.importIn(t, west, id, m)
	if err != nil {
		t.Fatal(err)
	}
	if *two.KeyMaterialId != *one.KeyMaterialId {
		t.Fatal("related keys give the same material different KeyMaterialIds")
	}
	blob := f.encryptIn(t, east, id, []byte("across Regions"))
	f.decryptIn(t, west, &id, blob, []byte("across Regions"))
	back := f.encryptIn(t, west, id, []byte("and back"))
	f.decryptIn(t, east, nil, back, []byte("and back"))
}

// TestImportStatesOfReplicas: the import operations on a replica still
// Creating answer "is creating." (spec §11.2).
func TestImportStatesOfReplicas(t *testing.T) {
	ctx := context.Background()
	f := newMRFixture(t)
	id := f.createMRK(t, &kmsapi.CreateKeyRequest{Origin: kmsapi.String("EXTERNAL")})
	if _, err := f.importIn(t, east, id, random(32)); err != nil {
		t.Fatal(err)
	}
	f.replicate(t, f.slow, id, west)
	msg := keys.KeyARN(west, f.caller.Account, id) + " is creating."
	_, err := f.svc.GetParametersForImport(ctx, f.in(west), &kmsapi.GetParametersForImportRequest{KeyId: &id,
		WrappingAlgorithm: kmsapi.String("RSAES_OAEP_SHA_256"), WrappingKeySpec: kmsapi.String("RSA_2048")})
	wantMessage(t, err, "KMSInvalidStateException", msg)
	_, err = f.svc.ImportKeyMaterial(ctx, f.in(west), &kmsapi.ImportKeyMaterialRequest{KeyId: &id, ImportToken: random(64),
		EncryptedKeyMaterial: random(256), ExpirationModel: kmsapi.String("KEY_MATERIAL_DOES_NOT_EXPIRE")})
	wantMessage(t, err, "KMSInvalidStateException", msg)
	_, err = f.svc.DeleteImportedKeyMaterial(ctx, f.in(west), &kmsapi.DeleteImportedKeyMaterialRequest{KeyId: &id})
	wantMessage(t, err, "KMSInvalidStateException", msg)
	f.advance(t)
	if md := f.describe(t, west, id); *md.KeyState != "PendingImport" {
		t.Fatalf("replica after Creating: %s", *md.KeyState)
	}
}
