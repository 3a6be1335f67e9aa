package kms

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"testing"

	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/material"
)

// TestGenerateDataKeyPair checks, for every KeyPairSpec kmsd makes, that
// the public and private keys form a pair, that the encrypted private key
// decrypts (with its context only) to the plaintext one, and that two
// calls give two pairs (spec §5.5, §17.7).
func TestGenerateDataKeyPair(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	sym := f.createKey(t)
	ec := map[string]string{"purpose": "pair"}
	for _, spec := range []string{"RSA_2048", "ECC_NIST_P256", "ECC_NIST_P384", "ECC_NIST_P521", "ECC_SECG_P256K1", "ECC_NIST_EDWARDS25519"} {
		t.Run(spec, func(t *testing.T) {
			out, err := f.svc.GenerateDataKeyPair(ctx, f.caller, &kmsapi.GenerateDataKeyPairRequest{KeyId: &sym, KeyPairSpec: &spec, EncryptionContext: ec})
			if err != nil {
				t.Fatal(err)
			}
			if *out.KeyPairSpec != spec || *out.KeyId != "arn:aws:kms:us-east-1:111122223333:key/"+sym {
				t.Errorf("KeyPairSpec %s, KeyId %s", *out.KeyPairSpec, *out.KeyId)
			}
			d := sha256.Sum256([]byte("pair"))
			alg, in := "ECDSA_SHA_256", d[:]
			var opts crypto.SignerOpts = crypto.SHA256
			switch spec {
			case "RSA_2048":
				alg = "RSASSA_PKCS1_V1_5_SHA_256"
			case "ECC_NIST_EDWARDS25519":
				alg, in, opts = "ED25519_SHA_512", []byte("pair"), crypto.Hash(0)
			}
			var sig []byte
			if spec == "ECC_SECG_P256K1" {
				// x509 does not know the curve: read the scalar out of the
				// PKCS #8 ECPrivateKey and sign with it through package
				// material.
				sig, err = signSecp256k1PKCS8(out.PrivateKeyPlaintext, d[:])
			} else {
				var k any
				if k, err = x509.ParsePKCS8PrivateKey(out.PrivateKeyPlaintext); err != nil {
					t.Fatalf("PrivateKeyPlaintext is not PKCS #8: %v", err)
				}
				sig, err = k.(crypto.Signer).Sign(rand.Reader, in, opts)
			}
			if err != nil {
				t.Fatal(err)
			}
			if ok, err := material.Verify(spec, out.PublicKey, alg, in, sig); !ok || err != nil {
				t.Fatalf("the public key does not verify the private key's signature: %v", err)
			}
			pt, err := f.decrypt(out.PrivateKeyCiphertextBlob, ec)
			if err != nil || !bytes.Equal(pt, out.PrivateKeyPlaintext) {
				t.Fatalf("Decrypt of PrivateKeyCiphertextBlob: %v", err)
			}
			_, err = f.decrypt(out.PrivateKeyCiphertextBlob, nil)
			wantException(t, err, "InvalidCiphertextException")
			again, err := f.svc.GenerateDataKeyPairWithoutPlaintext(ctx, f.caller, &kmsapi.GenerateDataKeyPairWithoutPlaintextRequest{KeyId: &sym, KeyPairSpec: &spec})
			if err != nil || bytes.Equal(again.PublicKey, out.PublicKey) {
				t.Fatalf("second pair: %v (same public key: %v)", err, err == nil)
			}
		})
	}
}

// signSecp256k1PKCS8 signs digest with the secp256k1 key inside a PKCS #8
// PrivateKeyInfo holding an RFC 5915 ECPrivateKey.
func signSecp256k1PKCS8(pkcs8, digest []byte) ([]byte, error) {
	var info struct {
		Version    int
		Algorithm  pkix.AlgorithmIdentifier
		PrivateKey []byte
	}
	if _, err := asn1.Unmarshal(pkcs8, &info); err != nil {
		return nil, err
	}
	var ec struct {
		Version    int
		PrivateKey []byte
		Params     asn1.ObjectIdentifier `asn1:"optional,explicit,tag:0"`
		PublicKey  asn1.BitString        `asn1:"optional,explicit,tag:1"`
	}
	if _, err := asn1.Unmarshal(info.PrivateKey, &ec); err != nil {
		return nil, err
	}
	return material.Sign("ECC_SECG_P256K1", ec.PrivateKey, "ECDSA_SHA_256", "DIGEST", digest, rand.Reader)
}

func TestGenerateDataKeyPairRefusals(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	rsa := f.createSpec(t, "RSA_2048", "ENCRYPT_DECRYPT")
	mac := f.createSpec(t, "HMAC_256", "GENERATE_VERIFY_MAC")
	sym := f.createKey(t)
	dry := true
	for _, tc := range []struct {
		name      string
		key, spec string
		region    string
		dry       *bool
		exc, msg  string
	}{
		{"asymmetric encryption key", *rsa.KeyId, "ECC_NIST_P256", "", nil,
			"InvalidKeyUsageException", "Algorithm SYMMETRIC_DEFAULT is incompatible with key spec RSA_2048."},
		{"hmac key", *mac.KeyId, "ECC_NIST_P256", "", nil,
			"InvalidKeyUsageException", *mac.Arn + " key usage is GENERATE_VERIFY_MAC which is not valid for GenerateDataKeyPair."},
		{"sm2 outside china", sym, "SM2", "", nil,
			"UnsupportedOperationException", "SM2 is not supported in this Region."},
		{"sm2 checked before the key", "alias/none", "SM2", "", nil,
			"UnsupportedOperationException", "SM2 is not supported in this Region."},
		{"dry run", sym, "ECC_NIST_P256", "", &dry,
			"DryRunOperationException", "The request would have succeeded, but the DryRun option is set."},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := f.svc.GenerateDataKeyPair(ctx, f.caller, &kmsapi.GenerateDataKeyPairRequest{KeyId: &tc.key, KeyPairSpec: &tc.spec, DryRun: tc.dry})
			wantMessage(t, err, tc.exc, tc.msg)
		})
	}
}
