package kms

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/asn1"
	"testing"

	"github.com/cloudflare/circl/sign/mldsa/mldsa65"
	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	secpecdsa "github.com/decred/dcrd/dcrec/secp256k1/v4/ecdsa"
	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/kmsapi"
)

func hashOf(h crypto.Hash, m []byte) []byte {
	d := h.New()
	d.Write(m)
	return d.Sum(nil)
}

// offlineVerify checks a kmsd signature with libraries alone, from the
// SubjectPublicKeyInfo GetPublicKey returned: input is the message for
// RAW algorithms that hash internally, else the digest.
func offlineVerify(t *testing.T, spec string, spki []byte, alg string, msg, sig []byte) bool {
	t.Helper()
	a, _ := keys.Signing(alg)
	switch spec {
	case "ECC_SECG_P256K1":
		var info struct {
			Alg asn1.RawValue
			Key asn1.BitString
		}
		if _, err := asn1.Unmarshal(spki, &info); err != nil {
			t.Fatal(err)
		}
		p, err := secp256k1.ParsePubKey(info.Key.RightAlign())
		if err != nil {
			t.Fatal(err)
		}
		s, err := secpecdsa.ParseDERSignature(sig)
		return err == nil && s.Verify(hashOf(a.Hash, msg), p)
	case "ML_DSA_65":
		var info struct {
			Alg asn1.RawValue
			Key asn1.BitString
		}
		if _, err := asn1.Unmarshal(spki, &info); err != nil {
			t.Fatal(err)
		}
		var p mldsa65.PublicKey
		if err := p.UnmarshalBinary(info.Key.RightAlign()); err != nil {
			t.Fatal(err)
		}
		return mldsa65.Verify(&p, msg, nil, sig)
	}
	pub, err := x509.ParsePKIXPublicKey(spki)
	if err != nil {
		t.Fatalf("ParsePKIXPublicKey: %v", err)
	}
	switch p := pub.(type) {
	case *rsa.PublicKey:
		if a.Scheme == keys.PSS {
			// The salt is fixed to the hash length, not merely detected.
			return rsa.VerifyPSS(p, a.Hash, hashOf(a.Hash, msg), sig, &rsa.PSSOptions{SaltLength: a.Hash.Size()}) == nil
		}
		return rsa.VerifyPKCS1v15(p, a.Hash, hashOf(a.Hash, msg), sig) == nil
	case *ecdsa.PublicKey:
		return ecdsa.VerifyASN1(p, hashOf(a.Hash, msg), sig)
	case ed25519.PublicKey:
		if a.Scheme == keys.Ed25519ph {
			// msg is the 64-byte DIGEST given to KMS.
			return ed25519.VerifyWithOptions(p, hashOf(crypto.SHA512, msg), sig, &ed25519.Options{Hash: crypto.SHA512}) == nil
		}
		return ed25519.Verify(p, msg, sig)
	}
	t.Fatalf("unexpected public key %T", pub)
	return false
}

// TestSignVerifyEveryAlgorithm signs with every signing algorithm of every
// spec, RAW and DIGEST, verifies offline and with Verify (also across
// message types), and checks a tampered message fails.
func TestSignVerifyEveryAlgorithm(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	msg := []byte("a message kmsd signs")
	for _, spec := range []string{"RSA_2048", "ECC_NIST_P256", "ECC_NIST_P384", "ECC_NIST_P521",
		"ECC_SECG_P256K1", "ECC_NIST_EDWARDS25519", "ML_DSA_65"} {
		m := f.createSpec(t, spec, "SIGN_VERIFY")
		pk, err := f.svc.GetPublicKey(ctx, f.caller, &kmsapi.GetPublicKeyRequest{KeyId: m.KeyId})
		if err != nil {
			t.Fatalf("GetPublicKey %s: %v", spec, err)
		}
		info, _ := keys.Spec(spec)
		for _, alg := range info.Signing {
			a, _ := keys.Signing(alg)
			// input is the Message sent, base what offlineVerify takes.
			type form struct {
				mt          string
				input, base []byte
			}
			var forms []form
			if a.Raw {
				forms = append(forms, form{"RAW", msg, msg})
			}
			if a.DigestLen != 0 && a.Scheme != keys.Ed25519ph {
				forms = append(forms, form{"DIGEST", hashOf(a.Hash, msg), msg})
			}
			if a.Scheme == keys.Ed25519ph {
				d := hashOf(crypto.SHA512, msg)
				forms = append(forms, form{"DIGEST", d, d})
			}
			for _, fm := range forms {
				t.Run(spec+"/"+alg+"/"+fm.mt, func(t *testing.T) {
					out, err := f.svc.Sign(ctx, f.caller, &kmsapi.SignRequest{KeyId: m.KeyId, Message: fm.input, MessageType: &fm.mt, SigningAlgorithm: &alg})
					if err != nil {
						t.Fatalf("Sign: %v", err)
					}
					if *out.KeyId != *m.Arn || *out.SigningAlgorithm != alg {
						t.Errorf("Sign answered KeyId %s, SigningAlgorithm %s", *out.KeyId, *out.SigningAlgorithm)
					}
					if !offlineVerify(t, spec, pk.PublicKey, alg, fm.base, out.Signature) {
						t.Fatal("the signature does not verify offline")
					}
					for _, v := range forms { // every message type verifies
						vr, err := f.svc.Verify(ctx, f.caller, &kmsapi.VerifyRequest{KeyId: m.KeyId, Message: v.input, MessageType: &v.mt, Signature: out.Signature, SigningAlgorithm: &alg})
						if err != nil || !*vr.SignatureValid {
							t.Fatalf("Verify as %s: %+v, %v", v.mt, vr, err)
						}
					}
					bad := bytes.Clone(fm.input)
					bad[0] ^= 1
					_, err = f.svc.Verify(ctx, f.caller, &kmsapi.VerifyRequest{KeyId: m.KeyId, Message: bad, MessageType: &fm.mt, Signature: out.Signature, SigningAlgorithm: &alg})
					wantMessage(t, err, "KMSInvalidSignatureException", "")
					_, err = f.svc.Verify(ctx, f.caller, &kmsapi.VerifyRequest{KeyId: m.KeyId, Message: fm.input, MessageType: &fm.mt, Signature: out.Signature[:len(out.Signature)-1], SigningAlgorithm: &alg})
					wantMessage(t, err, "KMSInvalidSignatureException", "")
				})
			}
		}
	}
}

// TestSignRefusals checks the exceptions and messages of Sign and Verify,
// in AWS's order: state, usage, algorithm, message (spec §1.4, §5.1).
func TestSignRefusals(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	p256 := f.createSpec(t, "ECC_NIST_P256", "SIGN_VERIFY")
	ed := f.createSpec(t, "ECC_NIST_EDWARDS25519", "SIGN_VERIFY")
	ml := f.createSpec(t, "ML_DSA_44", "SIGN_VERIFY")
	mac := f.createSpec(t, "HMAC_256", "GENERATE_VERIFY_MAC")
	agree := f.createSpec(t, "ECC_NIST_P256", "KEY_AGREEMENT")
	sym := f.createKey(t)
	off := f.createSpec(t, "ECC_NIST_P256", "SIGN_VERIFY")
	if _, err := f.svc.DisableKey(ctx, f.caller, &kmsapi.DisableKeyRequest{KeyId: off.KeyId}); err != nil {
		t.Fatal(err)
	}
	symARN := "arn:aws:kms:us-east-1:111122223333:key/" + sym
	d32, d48 := sha256.Sum256([]byte("m")), sha512.Sum384([]byte("m"))
	for _, tc := range []struct {
		name         string
		key          *string
		alg, mt      string
		msg          []byte
		verify       bool
		exc, msgWant string
	}{
		{"disabled before usage", off.KeyId, "RSASSA_PSS_SHA_256", "RAW", []byte("m"), false,
			"DisabledException", *off.Arn + " is disabled."},
		{"hmac key", mac.KeyId, "RSASSA_PSS_SHA_256", "RAW", []byte("m"), false,
			"InvalidKeyUsageException", *mac.Arn + " key usage is GENERATE_VERIFY_MAC which is not valid for Sign."},
		{"symmetric key in verify", &sym, "ECDSA_SHA_256", "RAW", []byte("m"), true,
			"InvalidKeyUsageException", symARN + " key usage is ENCRYPT_DECRYPT which is not valid for Verify."},
		{"key agreement key", agree.KeyId, "ECDSA_SHA_256", "RAW", []byte("m"), false,
			"InvalidKeyUsageException", *agree.Arn + " key usage is KEY_AGREEMENT which is not valid for Sign."},
		{"algorithm of another spec", p256.KeyId, "ECDSA_SHA_384", "RAW", []byte("m"), false,
			"InvalidKeyUsageException", "Algorithm ECDSA_SHA_384 is incompatible with key spec ECC_NIST_P256."},
		{"rsa algorithm on ed25519", ed.KeyId, "RSASSA_PKCS1_V1_5_SHA_256", "RAW", []byte("m"), true,
			"InvalidKeyUsageException", "Algorithm RSASSA_PKCS1_V1_5_SHA_256 is incompatible with key spec ECC_NIST_EDWARDS25519."},
		{"digest too long", p256.KeyId, "ECDSA_SHA_256", "DIGEST", d48[:], false,
			"ValidationException", "Digest is invalid length for algorithm ECDSA_SHA_256."},
		{"digest too short in verify", p256.KeyId, "ECDSA_SHA_256", "DIGEST", d32[:31], true,
			"ValidationException", "Digest is invalid length for algorithm ECDSA_SHA_256."},
		{"ed25519ph digest length", ed.KeyId, "ED25519_PH_SHA_512", "DIGEST", d32[:], false,
			"ValidationException", "Digest is invalid length for algorithm ED25519_PH_SHA_512."},
		{"digest with pure ed25519", ed.KeyId, "ED25519_SHA_512", "DIGEST", d32[:], false,
			"ValidationException", "MessageType DIGEST is not valid for signing algorithm ED25519_SHA_512."},
		{"raw with ed25519ph", ed.KeyId, "ED25519_PH_SHA_512", "RAW", []byte("m"), false,
			"ValidationException", "MessageType RAW is not valid for signing algorithm ED25519_PH_SHA_512. Use DIGEST."},
		{"digest with ml-dsa", ml.KeyId, "ML_DSA_SHAKE_256", "DIGEST", d32[:], false,
			"ValidationException", "MessageType DIGEST is not valid for signing algorithm ML_DSA_SHAKE_256."},
		{"external mu with ecdsa", p256.KeyId, "ECDSA_SHA_256", "EXTERNAL_MU", make([]byte, 64), false,
			"ValidationException", "MessageType EXTERNAL_MU is valid only with signing algorithm ML_DSA_SHAKE_256."},
		{"external mu of 63 bytes", ml.KeyId, "ML_DSA_SHAKE_256", "EXTERNAL_MU", make([]byte, 63), false,
			"ValidationException", "An EXTERNAL_MU message must be 64 bytes long."},
		{"external mu of 63 bytes in verify", ml.KeyId, "ML_DSA_SHAKE_256", "EXTERNAL_MU", make([]byte, 63), true,
			"ValidationException", "An EXTERNAL_MU message must be 64 bytes long."},
		{"digest with ml-dsa in verify", ml.KeyId, "ML_DSA_SHAKE_256", "DIGEST", d32[:], true,
			"ValidationException", "MessageType DIGEST is not valid for signing algorithm ML_DSA_SHAKE_256."},
		{"external mu in verify, bad signature", ml.KeyId, "ML_DSA_SHAKE_256", "EXTERNAL_MU", make([]byte, 64), true,
			"KMSInvalidSignatureException", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			if tc.verify {
				_, err = f.svc.Verify(ctx, f.caller, &kmsapi.VerifyRequest{KeyId: tc.key, Message: tc.msg, MessageType: &tc.mt, SigningAlgorithm: &tc.alg, Signature: []byte{1}})
			} else {
				_, err = f.svc.Sign(ctx, f.caller, &kmsapi.SignRequest{KeyId: tc.key, Message: tc.msg, MessageType: &tc.mt, SigningAlgorithm: &tc.alg})
			}
			wantMessage(t, err, tc.exc, tc.msgWant)
		})
	}
	t.Run("dry run", func(t *testing.T) {
		dry := true
		_, err := f.svc.Sign(ctx, f.caller, &kmsapi.SignRequest{KeyId: p256.KeyId, Message: []byte("m"), SigningAlgorithm: str("ECDSA_SHA_256"), DryRun: &dry})
		wantMessage(t, err, "DryRunOperationException", "The request would have succeeded, but the DryRun option is set.")
		_, err = f.svc.Verify(ctx, f.caller, &kmsapi.VerifyRequest{KeyId: p256.KeyId, Message: []byte("m"), SigningAlgorithm: str("ECDSA_SHA_256"), Signature: []byte{1}, DryRun: &dry})
		wantMessage(t, err, "DryRunOperationException", "The request would have succeeded, but the DryRun option is set.")
	})
}

// TestGetPublicKey checks the response members per usage and the
// refusals of spec §5.3.
func TestGetPublicKey(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name, spec, usage string
		oid               asn1.ObjectIdentifier
		sig, enc, agree   int
	}{
		{"p384 key agreement", "ECC_NIST_P384", "KEY_AGREEMENT", asn1.ObjectIdentifier{1, 2, 840, 10045, 2, 1}, 0, 0, 1},
		{"rsa encryption", "RSA_2048", "ENCRYPT_DECRYPT", asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 1}, 0, 2, 0},
		{"secp256k1", "ECC_SECG_P256K1", "SIGN_VERIFY", asn1.ObjectIdentifier{1, 2, 840, 10045, 2, 1}, 1, 0, 0},
		{"ed25519", "ECC_NIST_EDWARDS25519", "SIGN_VERIFY", asn1.ObjectIdentifier{1, 3, 101, 112}, 2, 0, 0},
		{"ml-dsa-44", "ML_DSA_44", "SIGN_VERIFY", asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 3, 17}, 1, 0, 0},
		{"ml-dsa-87", "ML_DSA_87", "SIGN_VERIFY", asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 3, 19}, 1, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := f.createSpec(t, tc.spec, tc.usage)
			out, err := f.svc.GetPublicKey(ctx, f.caller, &kmsapi.GetPublicKeyRequest{KeyId: m.KeyId})
			if err != nil {
				t.Fatal(err)
			}
			var info struct {
				Alg struct {
					OID    asn1.ObjectIdentifier
					Params asn1.RawValue `asn1:"optional"`
				}
				Key asn1.BitString
			}
			if rest, err := asn1.Unmarshal(out.PublicKey, &info); err != nil || len(rest) != 0 || !info.Alg.OID.Equal(tc.oid) {
				t.Errorf("SPKI algorithm %v (%v), want %v", info.Alg.OID, err, tc.oid)
			}
			if len(out.SigningAlgorithms) != tc.sig || len(out.EncryptionAlgorithms) != tc.enc || len(out.KeyAgreementAlgorithms) != tc.agree {
				t.Errorf("algorithm lists %v %v %v", out.SigningAlgorithms, out.EncryptionAlgorithms, out.KeyAgreementAlgorithms)
			}
			if *out.KeyId != *m.Arn || *out.KeySpec != tc.spec || *out.CustomerMasterKeySpec != tc.spec || *out.KeyUsage != tc.usage {
				t.Errorf("response %+v", out)
			}
		})
	}
	sym := f.createKey(t)
	_, err := f.svc.GetPublicKey(ctx, f.caller, &kmsapi.GetPublicKeyRequest{KeyId: &sym})
	wantException(t, err, "UnsupportedOperationException")
	mac := f.createSpec(t, "HMAC_224", "GENERATE_VERIFY_MAC")
	_, err = f.svc.GetPublicKey(ctx, f.caller, &kmsapi.GetPublicKeyRequest{KeyId: mac.KeyId})
	wantException(t, err, "UnsupportedOperationException")
	ec := f.createSpec(t, "ECC_NIST_P256", "SIGN_VERIFY")
	if _, err := f.svc.DisableKey(ctx, f.caller, &kmsapi.DisableKeyRequest{KeyId: ec.KeyId}); err != nil {
		t.Fatal(err)
	}
	_, err = f.svc.GetPublicKey(ctx, f.caller, &kmsapi.GetPublicKeyRequest{KeyId: ec.KeyId})
	wantMessage(t, err, "DisabledException", *ec.Arn+" is disabled.")
}

// TestSigningConditionKeys checks kms:SigningAlgorithm and kms:MessageType
// in a key policy, with MessageType RAW when the request names none
// (spec §12.1).
func TestSigningConditionKeys(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	doc := `{"Version":"2012-10-17","Statement":[
 {"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"kms:*","Resource":"*"},
 {"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:user/bob"},"Action":"kms:Sign","Resource":"*",
  "Condition":{"StringEquals":{"kms:SigningAlgorithm":"RSASSA_PSS_SHA_256","kms:MessageType":"RAW"}}}]}`
	spec, usage := "RSA_2048", "SIGN_VERIFY"
	out, err := f.svc.CreateKey(ctx, f.caller, &kmsapi.CreateKeyRequest{KeySpec: &spec, KeyUsage: &usage, Policy: &doc})
	if err != nil {
		t.Fatal(err)
	}
	bob := userCaller(t, "111122223333", "bob")
	d := sha256.Sum256([]byte("m"))
	for _, tc := range []struct {
		name, alg string
		mt        *string
		msg       []byte
		ok        bool
	}{
		{"allowed algorithm, RAW by default", "RSASSA_PSS_SHA_256", nil, []byte("m"), true},
		{"allowed algorithm, RAW named", "RSASSA_PSS_SHA_256", str("RAW"), []byte("m"), true},
		{"allowed algorithm, DIGEST", "RSASSA_PSS_SHA_256", str("DIGEST"), d[:], false},
		{"other algorithm", "RSASSA_PKCS1_V1_5_SHA_256", nil, []byte("m"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := f.svc.Sign(ctx, bob, &kmsapi.SignRequest{KeyId: out.KeyMetadata.KeyId, Message: tc.msg, MessageType: tc.mt, SigningAlgorithm: &tc.alg})
			if tc.ok && err != nil {
				t.Fatalf("Sign: %v", err)
			}
			if !tc.ok {
				wantException(t, err, "AccessDeniedException")
			}
		})
	}
}

// TestKeyStatesOfNewOperations checks spec §11.2 for a key pending
// deletion: every new operation answers KMSInvalidStateException with
// AWS's message, before its usage check.
func TestKeyStatesOfNewOperations(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	sig := f.createSpec(t, "ECC_NIST_P256", "SIGN_VERIFY")
	mac := f.createSpec(t, "HMAC_256", "GENERATE_VERIFY_MAC")
	for _, m := range []*kmsapi.KeyMetadata{sig, mac} {
		if _, err := f.svc.ScheduleKeyDeletion(ctx, f.caller, &kmsapi.ScheduleKeyDeletionRequest{KeyId: m.KeyId}); err != nil {
			t.Fatal(err)
		}
	}
	for name, call := range map[string]func() error{
		"Sign": func() error {
			_, err := f.svc.Sign(ctx, f.caller, &kmsapi.SignRequest{KeyId: sig.KeyId, Message: []byte("m"), SigningAlgorithm: str("ECDSA_SHA_256")})
			return err
		},
		"Verify with a MAC algorithm": func() error {
			_, err := f.svc.Verify(ctx, f.caller, &kmsapi.VerifyRequest{KeyId: sig.KeyId, Message: []byte("m"), Signature: []byte{1}, SigningAlgorithm: str("RSASSA_PSS_SHA_256")})
			return err
		},
		"GetPublicKey": func() error {
			_, err := f.svc.GetPublicKey(ctx, f.caller, &kmsapi.GetPublicKeyRequest{KeyId: sig.KeyId})
			return err
		},
		"GenerateMac on a signing key": func() error {
			_, err := f.svc.GenerateMac(ctx, f.caller, &kmsapi.GenerateMacRequest{KeyId: sig.KeyId, Message: []byte("m"), MacAlgorithm: str("HMAC_SHA_256")})
			return err
		},
		"VerifyMac": func() error {
			_, err := f.svc.VerifyMac(ctx, f.caller, &kmsapi.VerifyMacRequest{KeyId: mac.KeyId, Message: []byte("m"), Mac: []byte{1}, MacAlgorithm: str("HMAC_SHA_256")})
			return err
		},
	} {
		t.Run(name, func(t *testing.T) {
			arn := *sig.Arn
			if name == "VerifyMac" {
				arn = *mac.Arn
			}
			wantMessage(t, call(), "KMSInvalidStateException", arn+" is pending deletion.")
		})
	}
}
