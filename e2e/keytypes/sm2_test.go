package keytypes

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/emmansun/gmsm/sm2"
	"github.com/emmansun/gmsm/sm3"
	"github.com/emmansun/gmsm/smx509"
)

// china is the Region of the SM2 tests: SM2 keys exist only in cn- Regions.
const china = "cn-north-1"

// cn runs the aws CLI in the China Region; see ok.
func (e *env) cn(args ...string) map[string]any {
	e.t.Helper()
	return e.ok(append([]string{"--region", china}, args...)...)
}

// sm2Public fetches an SM2 key's SPKI with get-public-key and returns it
// as PEM for openssl and as the key gmsm checks with.
func (e *env) sm2Public(id, name string) (pem string, pub *ecdsa.PublicKey) {
	e.t.Helper()
	pk := e.cn("kms", "get-public-key", "--key-id", id)
	if pk["KeySpec"] != "SM2" {
		e.t.Fatalf("get-public-key: KeySpec %v", pk["KeySpec"])
	}
	der := blob(e.t, pk, "PublicKey")
	pem = filepath.Join(e.dir, name+".pem")
	e.openssl("pkey", "-pubin", "-inform", "DER", "-in", e.file(name+".der", der), "-out", pem)
	p, err := smx509.ParsePKIXPublicKey(der)
	if err != nil {
		e.t.Fatalf("gmsm cannot parse the SPKI: %v", err)
	}
	pub, ok := p.(*ecdsa.PublicKey)
	if !ok || !sm2.IsSM2PublicKey(pub) {
		e.t.Fatalf("get-public-key returned a %T, not an SM2 key", p)
	}
	return pem, pub
}

// TestSM2InChina drives SM2 keys in cn-north-1 with the aws CLI v2 and
// checks them offline: OpenSSL 3 verifies SM2DSA signatures (SM3 with the
// default distinguishing ID), gmsm and OpenSSL make SM2PKE ciphertexts
// that aws kms decrypt opens, OpenSSL reads an SM2 data key pair, and
// gmsm agrees with DeriveSharedSecret (through the Go SDK: the Debian aws
// CLI predates that operation).
func TestSM2InChina(t *testing.T) {
	e := start(t)
	e.fails("UnsupportedOperationException", "kms", "create-key", "--key-spec", "SM2", "--key-usage", "SIGN_VERIFY")

	t.Run("sign and verify", func(t *testing.T) {
		md := e.cn("kms", "create-key", "--key-spec", "SM2", "--key-usage", "SIGN_VERIFY")["KeyMetadata"].(map[string]any)
		id := md["KeyId"].(string)
		if algs, _ := md["SigningAlgorithms"].([]any); len(algs) != 1 || algs[0] != "SM2DSA" {
			t.Fatalf("SigningAlgorithms = %v", md["SigningAlgorithms"])
		}
		if arn, _ := md["Arn"].(string); !strings.HasPrefix(arn, "arn:aws-cn:kms:cn-north-1:") {
			t.Errorf("Arn %q is not in the aws-cn partition", arn)
		}
		pem, pub := e.sm2Public(id, "sm2-sign")
		msg := []byte("kmsd e2e: SM2DSA in cn-north-1, checked by OpenSSL\n")
		msgFile := e.file("sm2.msg", msg)
		za, err := sm2.CalculateZA(pub, []byte("1234567812345678"))
		if err != nil {
			t.Fatal(err)
		}
		h := sm3.New()
		h.Write(za)
		h.Write(msg)
		eFile := e.file("sm2.e", h.Sum(nil))
		for mt, in := range map[string]string{"RAW": msgFile, "DIGEST": eFile} {
			out := e.cn("kms", "sign", "--key-id", id, "--message", "fileb://"+in, "--message-type", mt, "--signing-algorithm", "SM2DSA")
			sig := blob(t, out, "Signature")
			sigFile := e.file("sm2-"+mt+".sig", sig)
			e.openssl("pkeyutl", "-verify", "-pubin", "-inkey", pem, "-rawin", "-in", msgFile, "-sigfile", sigFile,
				"-digest", "sm3", "-pkeyopt", "distid:1234567812345678")
			if !sm2.VerifyASN1WithSM2(pub, nil, msg, sig) {
				t.Fatalf("%s signature does not verify with gmsm", mt)
			}
			// Verified as the other message type.
			other := map[string]string{"RAW": eFile, "DIGEST": msgFile}[mt]
			otherMT := map[string]string{"RAW": "DIGEST", "DIGEST": "RAW"}[mt]
			v := e.cn("kms", "verify", "--key-id", id, "--message", "fileb://"+other, "--message-type", otherMT,
				"--signature", "fileb://"+sigFile, "--signing-algorithm", "SM2DSA")
			if v["SignatureValid"] != true {
				t.Fatalf("verify of a %s signature as %s: %v", mt, otherMT, v)
			}
		}
		// A signature made by OpenSSL with its own key does not verify.
		key := filepath.Join(e.dir, "openssl-sm2.pem")
		e.openssl("genpkey", "-algorithm", "SM2", "-out", key)
		foreign := filepath.Join(e.dir, "foreign.sig")
		e.openssl("pkeyutl", "-sign", "-inkey", key, "-rawin", "-in", msgFile, "-out", foreign, "-digest", "sm3", "-pkeyopt", "distid:1234567812345678")
		e.fails("KMSInvalidSignatureException", "--region", china, "kms", "verify", "--key-id", id, "--message", "fileb://"+msgFile,
			"--signature", "fileb://"+foreign, "--signing-algorithm", "SM2DSA")
		e.fails("ValidationException", "--region", china, "kms", "sign", "--key-id", id, "--message", "fileb://"+msgFile,
			"--message-type", "DIGEST", "--signing-algorithm", "SM2DSA")
	})

	t.Run("encrypt offline, decrypt in kms", func(t *testing.T) {
		md := e.cn("kms", "create-key", "--key-spec", "SM2", "--key-usage", "ENCRYPT_DECRYPT")["KeyMetadata"].(map[string]any)
		id := md["KeyId"].(string)
		pem, pub := e.sm2Public(id, "sm2-enc")
		pt := []byte("kmsd e2e: SM2PKE made offline, opened by KMS")
		gm, err := sm2.EncryptASN1(rand.Reader, pub, pt)
		if err != nil {
			t.Fatal(err)
		}
		ossl := filepath.Join(e.dir, "sm2-openssl.ct")
		e.openssl("pkeyutl", "-encrypt", "-pubin", "-inkey", pem, "-in", e.file("sm2.pt", pt), "-out", ossl)
		osslCT, err := os.ReadFile(ossl)
		if err != nil {
			t.Fatal(err)
		}
		for name, ct := range map[string][]byte{"gmsm": gm, "openssl": osslCT} {
			d := e.cn("kms", "decrypt", "--key-id", id, "--ciphertext-blob", "fileb://"+e.file(name+".ct", ct), "--encryption-algorithm", "SM2PKE")
			if got := blob(t, d, "Plaintext"); !bytes.Equal(got, pt) || d["EncryptionAlgorithm"] != "SM2PKE" {
				t.Fatalf("decrypt of %s's ciphertext = %q, %v", name, got, d["EncryptionAlgorithm"])
			}
		}
		enc := e.cn("kms", "encrypt", "--key-id", id, "--plaintext", "fileb://"+e.file("sm2.pt", pt), "--encryption-algorithm", "SM2PKE")
		ct := e.file("kms.ct", blob(t, enc, "CiphertextBlob"))
		d := e.cn("kms", "decrypt", "--key-id", id, "--ciphertext-blob", "fileb://"+ct, "--encryption-algorithm", "SM2PKE")
		if !bytes.Equal(blob(t, d, "Plaintext"), pt) {
			t.Fatal("kms encrypt → decrypt does not round-trip")
		}
		e.fails("InvalidKeyUsageException", "--region", china, "kms", "encrypt", "--key-id", id, "--plaintext", "fileb://"+e.file("sm2.pt", pt))
	})

	t.Run("data key pair", func(t *testing.T) {
		id := e.cn("kms", "create-key")["KeyMetadata"].(map[string]any)["KeyId"].(string)
		out := e.cn("kms", "generate-data-key-pair", "--key-id", id, "--key-pair-spec", "SM2")
		priv, pub := blob(t, out, "PrivateKeyPlaintext"), blob(t, out, "PublicKey")
		derived := filepath.Join(e.dir, "sm2-pair.derived")
		e.openssl("pkey", "-inform", "DER", "-in", e.file("sm2-pair.p8", priv), "-pubout", "-outform", "DER", "-out", derived)
		if got, _ := os.ReadFile(derived); !bytes.Equal(got, pub) {
			t.Fatal("OpenSSL derives another public key from the SM2 PrivateKeyPlaintext")
		}
		d := e.cn("kms", "decrypt", "--ciphertext-blob", "fileb://"+e.file("sm2-pair.ct", blob(t, out, "PrivateKeyCiphertextBlob")))
		if !bytes.Equal(blob(t, d, "Plaintext"), priv) {
			t.Fatal("decrypt of PrivateKeyCiphertextBlob differs from PrivateKeyPlaintext")
		}
		e.fails("UnsupportedOperationException", "kms", "generate-data-key-pair", "--key-id", id, "--key-pair-spec", "SM2")
	})

	t.Run("derive shared secret", func(t *testing.T) {
		c := e.sdk()
		c = kms.New(c.Options(), func(o *kms.Options) { o.Region = china })
		ctx := context.Background()
		k, err := c.CreateKey(ctx, &kms.CreateKeyInput{KeySpec: types.KeySpecSm2, KeyUsage: types.KeyUsageTypeKeyAgreement})
		if err != nil {
			t.Fatal(err)
		}
		pk, err := c.GetPublicKey(ctx, &kms.GetPublicKeyInput{KeyId: k.KeyMetadata.KeyId})
		if err != nil {
			t.Fatal(err)
		}
		p, err := smx509.ParsePKIXPublicKey(pk.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		peer, err := sm2.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		peerDER, err := smx509.MarshalPKIXPublicKey(&peer.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		out, err := c.DeriveSharedSecret(ctx, &kms.DeriveSharedSecretInput{KeyId: k.KeyMetadata.KeyId,
			KeyAgreementAlgorithm: types.KeyAgreementAlgorithmSpecEcdh, PublicKey: peerDER})
		if err != nil {
			t.Fatal(err)
		}
		kmsPub, err := sm2.PublicKeyToECDH(p.(*ecdsa.PublicKey))
		if err != nil {
			t.Fatal(err)
		}
		peerECDH, err := peer.ECDH()
		if err != nil {
			t.Fatal(err)
		}
		want, err := peerECDH.ECDH(kmsPub)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out.SharedSecret, want) || len(want) != 32 {
			t.Fatalf("SharedSecret %x, gmsm's %x", out.SharedSecret, want)
		}
	})
}
