package kms

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"encoding/asn1"
	"slices"
	"strings"
	"testing"

	"github.com/emmansun/gmsm/sm2"
	"github.com/emmansun/gmsm/sm3"
	"github.com/emmansun/gmsm/smx509"
	"github.com/kmsd/kmsd/internal/kmsapi"
)

// china is the fixture's caller in cn-north-1, where SM2 keys exist.
func (f *fixture) china() *Caller {
	c := *f.caller
	c.Region = "cn-north-1"
	return &c
}

func (f *fixture) createSM2(t *testing.T, usage string) *kmsapi.KeyMetadata {
	t.Helper()
	spec := "SM2"
	out, err := f.svc.CreateKey(context.Background(), f.china(), &kmsapi.CreateKeyRequest{KeySpec: &spec, KeyUsage: &usage})
	if err != nil {
		t.Fatalf("CreateKey(SM2, %s): %v", usage, err)
	}
	return out.KeyMetadata
}

// sm2PublicKey fetches an SM2 key's SPKI with GetPublicKey and parses it
// with gmsm, as a user verifying offline would.
func (f *fixture) sm2PublicKey(t *testing.T, id *string) ([]byte, *ecdsa.PublicKey) {
	t.Helper()
	out, err := f.svc.GetPublicKey(context.Background(), f.china(), &kmsapi.GetPublicKeyRequest{KeyId: id})
	if err != nil {
		t.Fatalf("GetPublicKey: %v", err)
	}
	p, err := smx509.ParsePKIXPublicKey(out.PublicKey)
	if err != nil {
		t.Fatalf("gmsm cannot parse the SPKI: %v", err)
	}
	pub, ok := p.(*ecdsa.PublicKey)
	if !ok || !sm2.IsSM2PublicKey(pub) {
		t.Fatalf("GetPublicKey returned a %T, not an SM2 key", p)
	}
	return out.PublicKey, pub
}

// TestSM2CreateKey creates SM2 keys of the three usages in a China Region
// (spec §2.1): the algorithm lists, and GetPublicKey's SPKI with
// id-ecPublicKey and the SM2 curve (spec §2.2).
func TestSM2CreateKey(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	type lists struct{ enc, sig, agree []string }
	for _, tc := range []struct {
		usage string
		want  lists
	}{
		{"ENCRYPT_DECRYPT", lists{enc: []string{"SM2PKE"}}},
		{"SIGN_VERIFY", lists{sig: []string{"SM2DSA"}}},
		{"KEY_AGREEMENT", lists{agree: []string{"ECDH"}}},
	} {
		t.Run(tc.usage, func(t *testing.T) {
			m := f.createSM2(t, tc.usage)
			got := lists{m.EncryptionAlgorithms, m.SigningAlgorithms, m.KeyAgreementAlgorithms}
			if !slices.Equal(got.enc, tc.want.enc) || !slices.Equal(got.sig, tc.want.sig) || !slices.Equal(got.agree, tc.want.agree) || m.MacAlgorithms != nil {
				t.Errorf("algorithm lists = %+v, want %+v", got, tc.want)
			}
			if *m.KeySpec != "SM2" || *m.CustomerMasterKeySpec != "SM2" || *m.KeyState != "Enabled" || *m.Origin != "AWS_KMS" {
				t.Errorf("metadata %+v", m)
			}
			pk, err := f.svc.GetPublicKey(ctx, f.china(), &kmsapi.GetPublicKeyRequest{KeyId: m.KeyId})
			if err != nil {
				t.Fatal(err)
			}
			var info struct {
				Alg struct {
					OID   asn1.ObjectIdentifier
					Curve asn1.ObjectIdentifier
				}
				Key asn1.BitString
			}
			if rest, err := asn1.Unmarshal(pk.PublicKey, &info); err != nil || len(rest) != 0 {
				t.Fatalf("SPKI: %v", err)
			}
			if !info.Alg.OID.Equal(asn1.ObjectIdentifier{1, 2, 840, 10045, 2, 1}) || !info.Alg.Curve.Equal(asn1.ObjectIdentifier{1, 2, 156, 10197, 1, 301}) ||
				len(info.Key.Bytes) != 65 || info.Key.Bytes[0] != 4 {
				t.Errorf("SPKI algorithm %v, curve %v, %d-byte key", info.Alg.OID, info.Alg.Curve, len(info.Key.Bytes))
			}
			if *pk.KeySpec != "SM2" || *pk.KeyUsage != tc.usage || !slices.Equal(pk.SigningAlgorithms, tc.want.sig) ||
				!slices.Equal(pk.EncryptionAlgorithms, tc.want.enc) || !slices.Equal(pk.KeyAgreementAlgorithms, tc.want.agree) {
				t.Errorf("GetPublicKey %+v", pk)
			}
		})
	}
	// The key's ARN is in the aws-cn partition, and the key lives in its
	// China Region only.
	m := f.createSM2(t, "SIGN_VERIFY")
	if want := "arn:aws-cn:kms:cn-north-1:111122223333:key/" + *m.KeyId; *m.Arn != want {
		t.Errorf("Arn = %s, want %s", *m.Arn, want)
	}
	d, err := f.svc.DescribeKey(ctx, f.china(), &kmsapi.DescribeKeyRequest{KeyId: m.Arn})
	if err != nil || *d.KeyMetadata.Arn != *m.Arn {
		t.Errorf("DescribeKey by its aws-cn ARN: %v", err)
	}
	_, err = f.svc.DescribeKey(ctx, f.caller, &kmsapi.DescribeKeyRequest{KeyId: m.KeyId})
	wantException(t, err, "NotFoundException")
}

// TestSM2SignVerify covers SM2DSA (spec §5.1, §5.2): RAW is signed as
// SM3(Z_A ‖ M) with the default ID, so a kmsd signature verifies offline
// with gmsm and the GetPublicKey key; DIGEST takes that e as computed by
// the caller; either message type verifies the other's signature.
func TestSM2SignVerify(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	cn := f.china()
	m := f.createSM2(t, "SIGN_VERIFY")
	_, pub := f.sm2PublicKey(t, m.KeyId)
	msg := []byte("SM2DSA over a RAW message")
	za, err := sm2.CalculateZA(pub, []byte("1234567812345678"))
	if err != nil {
		t.Fatal(err)
	}
	h := sm3.New()
	h.Write(za)
	h.Write(msg)
	e := h.Sum(nil)
	alg, raw, digest := "SM2DSA", "RAW", "DIGEST"
	forms := map[string][]byte{raw: msg, digest: e}
	for mt, input := range forms {
		t.Run(mt, func(t *testing.T) {
			out, err := f.svc.Sign(ctx, cn, &kmsapi.SignRequest{KeyId: m.KeyId, Message: input, MessageType: &mt, SigningAlgorithm: &alg})
			if err != nil {
				t.Fatalf("Sign: %v", err)
			}
			if *out.KeyId != *m.Arn || *out.SigningAlgorithm != alg {
				t.Errorf("Sign answered %s, %s", *out.KeyId, *out.SigningAlgorithm)
			}
			if !sm2.VerifyASN1WithSM2(pub, nil, msg, out.Signature) || !sm2.VerifyASN1(pub, e, out.Signature) {
				t.Fatal("the signature does not verify offline with gmsm")
			}
			for vmt, vin := range forms {
				vr, err := f.svc.Verify(ctx, cn, &kmsapi.VerifyRequest{KeyId: m.KeyId, Message: vin, MessageType: &vmt, Signature: out.Signature, SigningAlgorithm: &alg})
				if err != nil || !*vr.SignatureValid {
					t.Fatalf("Verify as %s: %v", vmt, err)
				}
			}
			bad := bytes.Clone(input)
			bad[0] ^= 1
			_, err = f.svc.Verify(ctx, cn, &kmsapi.VerifyRequest{KeyId: m.KeyId, Message: bad, MessageType: &mt, Signature: out.Signature, SigningAlgorithm: &alg})
			wantMessage(t, err, "KMSInvalidSignatureException", "")
			_, err = f.svc.Verify(ctx, cn, &kmsapi.VerifyRequest{KeyId: m.KeyId, Message: input, MessageType: &mt, Signature: out.Signature[1:], SigningAlgorithm: &alg})
			wantMessage(t, err, "KMSInvalidSignatureException", "")
		})
	}
	// A signature under another SM2 key does not verify.
	other := f.createSM2(t, "SIGN_VERIFY")
	sig, err := f.svc.Sign(ctx, cn, &kmsapi.SignRequest{KeyId: other.KeyId, Message: msg, SigningAlgorithm: &alg})
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.svc.Verify(ctx, cn, &kmsapi.VerifyRequest{KeyId: m.KeyId, Message: msg, Signature: sig.Signature, SigningAlgorithm: &alg})
	wantMessage(t, err, "KMSInvalidSignatureException", "")

	for _, tc := range []struct {
		name, alg, mt string
		msg           []byte
		exc, text     string
	}{
		{"digest of 31 bytes", "SM2DSA", digest, e[:31], "ValidationException", "Digest is invalid length for algorithm SM2DSA."},
		{"ecdsa on an sm2 key", "ECDSA_SHA_256", raw, msg, "InvalidKeyUsageException", "Algorithm ECDSA_SHA_256 is incompatible with key spec SM2."},
		{"external mu", "SM2DSA", "EXTERNAL_MU", make([]byte, 64), "ValidationException", "MessageType EXTERNAL_MU is valid only with signing algorithm ML_DSA_SHAKE_256."},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := f.svc.Sign(ctx, cn, &kmsapi.SignRequest{KeyId: m.KeyId, Message: tc.msg, MessageType: &tc.mt, SigningAlgorithm: &tc.alg})
			wantMessage(t, err, tc.exc, tc.text)
		})
	}
	enc := f.createSM2(t, "ENCRYPT_DECRYPT")
	_, err = f.svc.Sign(ctx, cn, &kmsapi.SignRequest{KeyId: enc.KeyId, Message: msg, SigningAlgorithm: &alg})
	wantMessage(t, err, "InvalidKeyUsageException", *enc.Arn+" key usage is ENCRYPT_DECRYPT which is not valid for Sign.")
	// Outside China SM2DSA does not exist (spec §2.3); inside, it is an
	// algorithm other specs do not take.
	p256 := f.createSpec(t, "ECC_NIST_P256", "SIGN_VERIFY")
	_, err = f.svc.Sign(ctx, f.caller, &kmsapi.SignRequest{KeyId: p256.KeyId, Message: msg, SigningAlgorithm: &alg})
	wantMessage(t, err, "UnsupportedOperationException", "SM2DSA is not supported in this Region.")
	spec, usage := "ECC_NIST_P256", "SIGN_VERIFY"
	cnP256, err := f.svc.CreateKey(ctx, cn, &kmsapi.CreateKeyRequest{KeySpec: &spec, KeyUsage: &usage})
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.svc.Verify(ctx, cn, &kmsapi.VerifyRequest{KeyId: cnP256.KeyMetadata.KeyId, Message: msg, Signature: []byte{1}, SigningAlgorithm: &alg})
	wantMessage(t, err, "InvalidKeyUsageException", "Algorithm SM2DSA is incompatible with key spec ECC_NIST_P256.")
}

// TestSM2Encryption covers SM2PKE (spec §5.4): round trip, an offline
// ciphertext decrypts, the 1024-byte limit, the algorithm and context
// refusals, and the two decryption failures.
func TestSM2Encryption(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	cn := f.china()
	m := f.createSM2(t, "ENCRYPT_DECRYPT")
	_, pub := f.sm2PublicKey(t, m.KeyId)
	alg := "SM2PKE"
	pt := bytes.Repeat([]byte{0x3c}, 1024)
	e, err := f.svc.Encrypt(ctx, cn, &kmsapi.EncryptRequest{KeyId: m.KeyId, Plaintext: pt, EncryptionAlgorithm: &alg})
	if err != nil || *e.EncryptionAlgorithm != alg || *e.KeyId != *m.Arn {
		t.Fatalf("Encrypt: %v", err)
	}
	d, err := f.svc.Decrypt(ctx, cn, &kmsapi.DecryptRequest{KeyId: m.KeyId, CiphertextBlob: e.CiphertextBlob, EncryptionAlgorithm: &alg})
	if err != nil || !bytes.Equal(d.Plaintext, pt) || *d.EncryptionAlgorithm != alg || *d.KeyId != *m.Arn {
		t.Fatalf("Decrypt of kmsd's ciphertext: %v", err)
	}
	offline, err := sm2.EncryptASN1(rand.Reader, pub, []byte("encrypted offline"))
	if err != nil {
		t.Fatal(err)
	}
	d, err = f.svc.Decrypt(ctx, cn, &kmsapi.DecryptRequest{KeyId: m.KeyId, CiphertextBlob: offline, EncryptionAlgorithm: &alg})
	if err != nil || string(d.Plaintext) != "encrypted offline" {
		t.Fatalf("Decrypt of an offline ciphertext: %v", err)
	}
	_, err = f.svc.Encrypt(ctx, cn, &kmsapi.EncryptRequest{KeyId: m.KeyId, Plaintext: append(pt, 0), EncryptionAlgorithm: &alg})
	wantMessage(t, err, "ValidationException", "Algorithm SM2PKE and key spec SM2 cannot encrypt data larger than 1024 bytes.")
	_, err = f.svc.Encrypt(ctx, cn, &kmsapi.EncryptRequest{KeyId: m.KeyId, Plaintext: pt[:1]})
	wantMessage(t, err, "InvalidKeyUsageException", "Algorithm SYMMETRIC_DEFAULT is incompatible with key spec SM2.")
	oaep := "RSAES_OAEP_SHA_256"
	_, err = f.svc.Encrypt(ctx, cn, &kmsapi.EncryptRequest{KeyId: m.KeyId, Plaintext: pt[:1], EncryptionAlgorithm: &oaep})
	wantMessage(t, err, "InvalidKeyUsageException", "Algorithm RSAES_OAEP_SHA_256 is incompatible with key spec SM2.")
	_, err = f.svc.Decrypt(ctx, cn, &kmsapi.DecryptRequest{KeyId: m.KeyId, CiphertextBlob: offline, EncryptionAlgorithm: &oaep})
	wantMessage(t, err, "InvalidKeyUsageException", "Algorithm RSAES_OAEP_SHA_256 is incompatible with key spec SM2.")
	_, err = f.svc.Encrypt(ctx, cn, &kmsapi.EncryptRequest{KeyId: m.KeyId, Plaintext: pt[:1], EncryptionAlgorithm: &alg, EncryptionContext: map[string]string{"a": "b"}})
	wantException(t, err, "ValidationException")
	// SM2PKE outside China (spec §2.3), and with an RSA key in China.
	rsa := f.createSpec(t, "RSA_2048", "ENCRYPT_DECRYPT")
	_, err = f.svc.Encrypt(ctx, f.caller, &kmsapi.EncryptRequest{KeyId: rsa.KeyId, Plaintext: pt[:1], EncryptionAlgorithm: &alg})
	wantMessage(t, err, "UnsupportedOperationException", "SM2PKE is not supported in this Region.")
	spec, usage := "RSA_2048", "ENCRYPT_DECRYPT"
	cnRSA, err := f.svc.CreateKey(ctx, cn, &kmsapi.CreateKeyRequest{KeySpec: &spec, KeyUsage: &usage})
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.svc.Encrypt(ctx, cn, &kmsapi.EncryptRequest{KeyId: cnRSA.KeyMetadata.KeyId, Plaintext: pt[:1], EncryptionAlgorithm: &alg})
	wantMessage(t, err, "InvalidKeyUsageException", "Algorithm SM2PKE is incompatible with key spec RSA_2048.")

	tampered := bytes.Clone(offline)
	tampered[len(tampered)-1] ^= 1
	other := f.createSM2(t, "ENCRYPT_DECRYPT")
	for _, tc := range []struct {
		name string
		key  *string
		ct   []byte
		exc  string
	}{
		{"tampered", m.KeyId, tampered, "IncorrectKeyException"},
		{"another key", other.KeyId, offline, "IncorrectKeyException"},
		{"not a ciphertext", m.KeyId, []byte(strings.Repeat("x", 120)), "InvalidCiphertextException"},
		{"no key id", nil, offline, "InvalidCiphertextException"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := f.svc.Decrypt(ctx, cn, &kmsapi.DecryptRequest{KeyId: tc.key, CiphertextBlob: tc.ct, EncryptionAlgorithm: &alg})
			wantException(t, err, tc.exc)
		})
	}

	// ReEncrypt: symmetric → SM2 → symmetric, in the China Region.
	sym, err := f.svc.CreateKey(ctx, cn, &kmsapi.CreateKeyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	blob, err := f.svc.Encrypt(ctx, cn, &kmsapi.EncryptRequest{KeyId: sym.KeyMetadata.KeyId, Plaintext: []byte("across key types")})
	if err != nil {
		t.Fatal(err)
	}
	a, err := f.svc.ReEncrypt(ctx, cn, &kmsapi.ReEncryptRequest{CiphertextBlob: blob.CiphertextBlob, DestinationKeyId: m.KeyId, DestinationEncryptionAlgorithm: &alg})
	if err != nil || *a.DestinationEncryptionAlgorithm != alg {
		t.Fatalf("symmetric → SM2: %v", err)
	}
	b, err := f.svc.ReEncrypt(ctx, cn, &kmsapi.ReEncryptRequest{CiphertextBlob: a.CiphertextBlob, SourceKeyId: m.KeyId, SourceEncryptionAlgorithm: &alg,
		DestinationKeyId: sym.KeyMetadata.KeyId})
	if err != nil || *b.SourceEncryptionAlgorithm != alg {
		t.Fatalf("SM2 → symmetric: %v", err)
	}
	d, err = f.svc.Decrypt(ctx, cn, &kmsapi.DecryptRequest{CiphertextBlob: b.CiphertextBlob})
	if err != nil || string(d.Plaintext) != "across key types" {
		t.Fatalf("final Decrypt: %v", err)
	}
}

// TestSM2DeriveSharedSecret checks ECDH on the SM2 curve (spec §5.6): the
// secret equals gmsm's with the peer's private key and the KMS public key,
// two KMS keys agree, and a P-256 peer is refused.
func TestSM2DeriveSharedSecret(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	cn := f.china()
	ecdhAlg := "ECDH"
	m := f.createSM2(t, "KEY_AGREEMENT")
	spki, pub := f.sm2PublicKey(t, m.KeyId)
	peer, err := sm2.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	peerDER, err := smx509.MarshalPKIXPublicKey(&peer.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	out, err := f.svc.DeriveSharedSecret(ctx, cn, &kmsapi.DeriveSharedSecretRequest{KeyId: m.KeyId, KeyAgreementAlgorithm: &ecdhAlg, PublicKey: peerDER})
	if err != nil {
		t.Fatal(err)
	}
	kmsECDH, err := sm2.PublicKeyToECDH(pub)
	if err != nil {
		t.Fatal(err)
	}
	peerECDH, err := peer.ECDH()
	if err != nil {
		t.Fatal(err)
	}
	want, err := peerECDH.ECDH(kmsECDH)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.SharedSecret, want) || len(want) != 32 || *out.KeyOrigin != "AWS_KMS" || *out.KeyId != *m.Arn || *out.KeyAgreementAlgorithm != "ECDH" {
		t.Fatalf("SharedSecret %x, want %x; %+v", out.SharedSecret, want, out)
	}
	other := f.createSM2(t, "KEY_AGREEMENT")
	ospki, _ := f.sm2PublicKey(t, other.KeyId)
	a, err1 := f.svc.DeriveSharedSecret(ctx, cn, &kmsapi.DeriveSharedSecretRequest{KeyId: m.KeyId, KeyAgreementAlgorithm: &ecdhAlg, PublicKey: ospki})
	b, err2 := f.svc.DeriveSharedSecret(ctx, cn, &kmsapi.DeriveSharedSecretRequest{KeyId: other.KeyId, KeyAgreementAlgorithm: &ecdhAlg, PublicKey: spki})
	if err1 != nil || err2 != nil || !bytes.Equal(a.SharedSecret, b.SharedSecret) {
		t.Fatalf("two SM2 keys disagree: %v, %v", err1, err2)
	}
	p256 := f.createSpec(t, "ECC_NIST_P256", "KEY_AGREEMENT")
	pk, err := f.svc.GetPublicKey(ctx, f.caller, &kmsapi.GetPublicKeyRequest{KeyId: p256.KeyId})
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.svc.DeriveSharedSecret(ctx, cn, &kmsapi.DeriveSharedSecretRequest{KeyId: m.KeyId, KeyAgreementAlgorithm: &ecdhAlg, PublicKey: pk.PublicKey})
	wantMessage(t, err, "ValidationException", "The PublicKey is not a valid public key of the key spec SM2.")
	_, err = f.svc.DeriveSharedSecret(ctx, cn, &kmsapi.DeriveSharedSecretRequest{KeyId: m.KeyId, KeyAgreementAlgorithm: &ecdhAlg, PublicKey: []byte("junk")})
	wantMessage(t, err, "ValidationException", "")
	sig := f.createSM2(t, "SIGN_VERIFY")
	_, err = f.svc.DeriveSharedSecret(ctx, cn, &kmsapi.DeriveSharedSecretRequest{KeyId: sig.KeyId, KeyAgreementAlgorithm: &ecdhAlg, PublicKey: peerDER})
	wantMessage(t, err, "InvalidKeyUsageException", *sig.Arn+" key usage is SIGN_VERIFY which is not valid for DeriveSharedSecret.")
}

// TestSM2DataKeyPair checks KeyPairSpec SM2 in a China Region (spec §5.5):
// PKCS #8 and SPKI of one SM2 key, and the encrypted private key opens to
// the same bytes.
func TestSM2DataKeyPair(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	cn := f.china()
	sym, err := f.svc.CreateKey(ctx, cn, &kmsapi.CreateKeyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	spec := "SM2"
	ec := map[string]string{"purpose": "sm2 pair"}
	out, err := f.svc.GenerateDataKeyPair(ctx, cn, &kmsapi.GenerateDataKeyPairRequest{KeyId: sym.KeyMetadata.KeyId, KeyPairSpec: &spec, EncryptionContext: ec})
	if err != nil {
		t.Fatalf("GenerateDataKeyPair: %v", err)
	}
	p, err := smx509.ParsePKCS8PrivateKey(out.PrivateKeyPlaintext)
	if err != nil {
		t.Fatalf("PrivateKeyPlaintext is not PKCS #8: %v", err)
	}
	priv, ok := p.(*sm2.PrivateKey)
	if !ok {
		t.Fatalf("PrivateKeyPlaintext holds a %T", p)
	}
	if want, _ := smx509.MarshalPKIXPublicKey(&priv.PublicKey); !bytes.Equal(out.PublicKey, want) || *out.KeyPairSpec != "SM2" {
		t.Error("PublicKey is not the private key's public key")
	}
	d, err := f.svc.Decrypt(ctx, cn, &kmsapi.DecryptRequest{CiphertextBlob: out.PrivateKeyCiphertextBlob, EncryptionContext: ec})
	if err != nil || !bytes.Equal(d.Plaintext, out.PrivateKeyPlaintext) {
		t.Fatalf("Decrypt of PrivateKeyCiphertextBlob: %v", err)
	}
	w, err := f.svc.GenerateDataKeyPairWithoutPlaintext(ctx, cn, &kmsapi.GenerateDataKeyPairWithoutPlaintextRequest{KeyId: sym.KeyMetadata.KeyId, KeyPairSpec: &spec})
	if err != nil || bytes.Equal(w.PublicKey, out.PublicKey) {
		t.Fatalf("GenerateDataKeyPairWithoutPlaintext: %v (or the same pair twice)", err)
	}
}
