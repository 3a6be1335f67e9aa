// Package keytypes holds the end-to-end tests of asymmetric and HMAC keys:
// they start the real kmsd, drive it with the real aws CLI v2, the Go SDK
// and boto3, and check its signatures, ciphertexts and shared secrets
// offline — with OpenSSL, and where OpenSSL 3.0 has no implementation
// (ML-DSA, Ed25519ph) with independent Go libraries, and with Python's
// cryptography package — using only the public key kmsd returned.
package keytypes

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	smithyhttp "github.com/aws/smithy-go/transport/http"
	"github.com/cloudflare/circl/sign/mldsa/mldsa65"
	"github.com/kmsd/kmsd/e2e/e2etest"
)

const (
	awsCLI = "/usr/bin/aws" // Debian's aws CLI v2
	region = "us-east-1"
)

var kmsdBin string

func TestMain(m *testing.M) {
	e2etest.Main(m, map[string]*string{"kmsd": &kmsdBin})
}

type env struct {
	t   *testing.T
	k   *e2etest.KMSD
	dir string // scratch files for openssl
}

func start(t *testing.T) *env {
	t.Helper()
	for _, tool := range []string{awsCLI, "openssl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is required: %v", tool, err)
		}
	}
	tmp := t.TempDir()
	k := e2etest.StartKMSD(t, e2etest.KMSDConfig{Bin: kmsdBin, Env: []string{"PATH=" + os.Getenv("PATH"), "HOME=" + tmp}})
	return &env{t: t, k: k, dir: t.TempDir()}
}

// aws runs the aws CLI v2 with kmsd's administrator profile and returns
// its exit code, stdout and stderr.
func (e *env) aws(args ...string) (int, string, string) {
	e.t.Helper()
	cmd := exec.Command(awsCLI, append([]string{"--endpoint-url", e.k.Endpoint, "--output", "json"}, args...)...)
	cmd.Env = append(e.k.CLIEnv(region), "HOME="+e.dir, "AWS_MAX_ATTEMPTS=1")
	return e2etest.RunCmd(e.t, cmd)
}

func (e *env) ok(args ...string) map[string]any {
	e.t.Helper()
	code, out, errOut := e.aws(args...)
	if code != 0 {
		e.t.Fatalf("aws %s: exit %d: %s", strings.Join(args, " "), code, errOut)
	}
	var v map[string]any
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		e.t.Fatalf("aws %s: output %q: %v", strings.Join(args, " "), out, err)
	}
	return v
}

// fails runs a call that must fail with exception name.
func (e *env) fails(name string, args ...string) {
	e.t.Helper()
	code, _, errOut := e.aws(args...)
	if code != 254 || !strings.Contains(errOut, "("+name+")") {
		e.t.Fatalf("aws %s: exit %d, stderr %q; want exit 254 and %s", strings.Join(args, " "), code, errOut, name)
	}
}

func (e *env) file(name string, data []byte) string {
	e.t.Helper()
	p := filepath.Join(e.dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		e.t.Fatal(err)
	}
	return p
}

func (e *env) openssl(args ...string) {
	e.t.Helper()
	out, err := exec.Command("openssl", args...).CombinedOutput()
	if err != nil {
		e.t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func blob(t *testing.T, v map[string]any, member string) []byte {
	t.Helper()
	s, _ := v[member].(string)
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b) == 0 {
		t.Fatalf("%s: %q is not base64: %v", member, s, err)
	}
	return b
}

// key creates a key and fetches its public key, as DER and as the PEM
// openssl makes of it.
func (e *env) key(spec, usage string) (id string, der []byte, pem string) {
	e.t.Helper()
	md := e.ok("kms", "create-key", "--key-spec", spec, "--key-usage", usage)["KeyMetadata"].(map[string]any)
	id = md["KeyId"].(string)
	if usage != "SIGN_VERIFY" {
		return id, nil, ""
	}
	pk := e.ok("kms", "get-public-key", "--key-id", id)
	if pk["KeySpec"] != spec || pk["KeyUsage"] != usage {
		e.t.Fatalf("get-public-key: KeySpec %v, KeyUsage %v", pk["KeySpec"], pk["KeyUsage"])
	}
	der = blob(e.t, pk, "PublicKey")
	if strings.HasPrefix(spec, "ML_DSA") { // OpenSSL 3.0 does not know ML-DSA
		return id, der, ""
	}
	pem = filepath.Join(e.dir, spec+".pem")
	e.openssl("pkey", "-pubin", "-inform", "DER", "-in", e.file(spec+".der", der), "-out", pem)
	return id, der, pem
}

func (e *env) sign(id, alg, messageType, msgFile string) []byte {
	e.t.Helper()
	out := e.ok("kms", "sign", "--key-id", id, "--message", "fileb://"+msgFile, "--message-type", messageType, "--signing-algorithm", alg)
	if out["SigningAlgorithm"] != alg || !strings.HasSuffix(out["KeyId"].(string), id) {
		e.t.Fatalf("sign answered %v", out)
	}
	return blob(e.t, out, "Signature")
}

// TestSignaturesVerifyWithOpenSSL signs with every signing algorithm
// through the aws CLI and verifies each signature offline.
func TestSignaturesVerifyWithOpenSSL(t *testing.T) {
	e := start(t)
	msg := []byte("kmsd e2e: a message signed by KMS and checked by OpenSSL\n")
	msgFile := e.file("msg", msg)
	d256, d384, d512 := sha256.Sum256(msg), sha512.Sum384(msg), sha512.Sum512(msg)

	type check struct {
		alg, mt, in string // in: the file given as --message
		verify      func(sig string)
	}
	dgst := func(pem, hash string, opts ...string) func(string) {
		return func(sig string) {
			e.openssl(append(append([]string{"dgst", "-" + hash}, opts...), "-verify", pem, "-signature", sig, msgFile)...)
		}
	}
	digestVerify := func(pem, hash, digest string, opts ...string) func(string) {
		return func(sig string) {
			e.openssl(append([]string{"pkeyutl", "-verify", "-pubin", "-inkey", pem, "-in", digest, "-sigfile", sig, "-pkeyopt", "digest:" + hash}, opts...)...)
		}
	}
	pss := func(n string) []string {
		return []string{"-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:" + n}
	}
	f256, f384, f512 := e.file("d256", d256[:]), e.file("d384", d384[:]), e.file("d512", d512[:])

	rsaID, _, rsaPEM := e.key("RSA_2048", "SIGN_VERIFY")
	p256, _, p256PEM := e.key("ECC_NIST_P256", "SIGN_VERIFY")
	p384, _, p384PEM := e.key("ECC_NIST_P384", "SIGN_VERIFY")
	p521, _, p521PEM := e.key("ECC_NIST_P521", "SIGN_VERIFY")
	k1, _, k1PEM := e.key("ECC_SECG_P256K1", "SIGN_VERIFY")
	ed, edDER, edPEM := e.key("ECC_NIST_EDWARDS25519", "SIGN_VERIFY")
	ml, mlDER, _ := e.key("ML_DSA_65", "SIGN_VERIFY")

	for _, tc := range []struct {
		name string
		id   string
		c    check
	}{
		{"rsa pkcs1 sha256", rsaID, check{"RSASSA_PKCS1_V1_5_SHA_256", "RAW", msgFile, dgst(rsaPEM, "sha256")}},
		{"rsa pkcs1 sha384", rsaID, check{"RSASSA_PKCS1_V1_5_SHA_384", "RAW", msgFile, dgst(rsaPEM, "sha384")}},
		{"rsa pkcs1 sha512", rsaID, check{"RSASSA_PKCS1_V1_5_SHA_512", "RAW", msgFile, dgst(rsaPEM, "sha512")}},
		{"rsa pkcs1 sha256 digest", rsaID, check{"RSASSA_PKCS1_V1_5_SHA_256", "DIGEST", f256, digestVerify(rsaPEM, "sha256", f256)}},
		// The salt length is fixed to the hash length, not auto-detected.
		{"rsa pss sha256", rsaID, check{"RSASSA_PSS_SHA_256", "RAW", msgFile, dgst(rsaPEM, "sha256", pss("32")...)}},
		{"rsa pss sha384", rsaID, check{"RSASSA_PSS_SHA_384", "RAW", msgFile, dgst(rsaPEM, "sha384", pss("48")...)}},
		{"rsa pss sha512", rsaID, check{"RSASSA_PSS_SHA_512", "RAW", msgFile, dgst(rsaPEM, "sha512", pss("64")...)}},
		{"rsa pss sha512 digest", rsaID, check{"RSASSA_PSS_SHA_512", "DIGEST", f512,
			digestVerify(rsaPEM, "sha512", f512, "-pkeyopt", "rsa_padding_mode:pss", "-pkeyopt", "rsa_pss_saltlen:64")}},
		{"ecdsa p256", p256, check{"ECDSA_SHA_256", "RAW", msgFile, dgst(p256PEM, "sha256")}},
		{"ecdsa p256 digest", p256, check{"ECDSA_SHA_256", "DIGEST", f256, digestVerify(p256PEM, "sha256", f256)}},
		{"ecdsa p384", p384, check{"ECDSA_SHA_384", "RAW", msgFile, dgst(p384PEM, "sha384")}},
		{"ecdsa p384 digest", p384, check{"ECDSA_SHA_384", "DIGEST", f384, digestVerify(p384PEM, "sha384", f384)}},
		{"ecdsa p521", p521, check{"ECDSA_SHA_512", "RAW", msgFile, dgst(p521PEM, "sha512")}},
		{"ecdsa secp256k1", k1, check{"ECDSA_SHA_256", "RAW", msgFile, dgst(k1PEM, "sha256")}},
		{"ecdsa secp256k1 digest", k1, check{"ECDSA_SHA_256", "DIGEST", f256, digestVerify(k1PEM, "sha256", f256)}},
		{"ed25519", ed, check{"ED25519_SHA_512", "RAW", msgFile, func(sig string) {
			e.openssl("pkeyutl", "-verify", "-pubin", "-inkey", edPEM, "-rawin", "-in", msgFile, "-sigfile", sig)
		}}},
		// OpenSSL 3.0 has no Ed25519ph instance: crypto/ed25519 checks it,
		// with the key parsed from the DER get-public-key returned.
		{"ed25519ph", ed, check{"ED25519_PH_SHA_512", "DIGEST", f512, func(sig string) {
			pub, err := x509.ParsePKIXPublicKey(edDER)
			if err != nil {
				t.Fatal(err)
			}
			s, _ := os.ReadFile(sig)
			ph := sha512.Sum512(d512[:])
			if err := ed25519.VerifyWithOptions(pub.(ed25519.PublicKey), ph[:], s, &ed25519.Options{Hash: crypto.SHA512}); err != nil {
				t.Fatalf("Ed25519ph signature: %v", err)
			}
		}}},
		// OpenSSL 3.0 has no ML-DSA: circl checks it (FIPS 204, empty
		// context), with the key taken from the SPKI.
		{"ml-dsa-65", ml, check{"ML_DSA_SHAKE_256", "RAW", msgFile, func(sig string) {
			var info struct {
				Alg struct{ OID asn1.ObjectIdentifier }
				Key asn1.BitString
			}
			if _, err := asn1.Unmarshal(mlDER, &info); err != nil || !info.Alg.OID.Equal(asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 3, 18}) {
				t.Fatalf("ML-DSA-65 SPKI: %v, OID %v", err, info.Alg.OID)
			}
			var pub mldsa65.PublicKey
			if err := pub.UnmarshalBinary(info.Key.RightAlign()); err != nil {
				t.Fatal(err)
			}
			s, _ := os.ReadFile(sig)
			if !mldsa65.Verify(&pub, msg, nil, s) {
				t.Fatal("ML-DSA-65 signature does not verify")
			}
		}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sig := e.file(strings.ReplaceAll(tc.name, " ", "_")+".sig", e.sign(tc.id, tc.c.alg, tc.c.mt, tc.c.in))
			tc.c.verify(sig)
		})
	}

	t.Run("verify and its refusals", func(t *testing.T) {
		sig := e.sign(p256, "ECDSA_SHA_256", "RAW", msgFile)
		sigFile := e.file("p256.sig", sig)
		v := e.ok("kms", "verify", "--key-id", p256, "--message", "fileb://"+f256, "--message-type", "DIGEST",
			"--signature", "fileb://"+sigFile, "--signing-algorithm", "ECDSA_SHA_256")
		if v["SignatureValid"] != true {
			t.Fatalf("verify of a RAW signature as DIGEST: %v", v)
		}
		e.fails("KMSInvalidSignatureException", "kms", "verify", "--key-id", p256, "--message", "fileb://"+f384,
			"--signature", "fileb://"+sigFile, "--signing-algorithm", "ECDSA_SHA_256")
		e.fails("ValidationException", "kms", "sign", "--key-id", p256, "--message", "fileb://"+f384,
			"--message-type", "DIGEST", "--signing-algorithm", "ECDSA_SHA_256")
		e.fails("InvalidKeyUsageException", "kms", "sign", "--key-id", p256, "--message", "fileb://"+msgFile,
			"--signing-algorithm", "RSASSA_PSS_SHA_256")
	})
}

// TestMac checks that VerifyMac accepts GenerateMac's output and rejects
// it with one byte flipped, through the aws CLI.
func TestMac(t *testing.T) {
	e := start(t)
	id, _, _ := e.key("HMAC_256", "GENERATE_VERIFY_MAC")
	msgFile := e.file("msg", []byte("kmsd e2e: a message to authenticate"))
	mac := blob(t, e.ok("kms", "generate-mac", "--key-id", id, "--message", "fileb://"+msgFile, "--mac-algorithm", "HMAC_SHA_256"), "Mac")
	if len(mac) != 32 {
		t.Fatalf("MAC of %d bytes, want 32", len(mac))
	}
	v := e.ok("kms", "verify-mac", "--key-id", id, "--message", "fileb://"+msgFile, "--mac-algorithm", "HMAC_SHA_256",
		"--mac", "fileb://"+e.file("mac", mac))
	if v["MacValid"] != true {
		t.Fatalf("verify-mac: %v", v)
	}
	mac[5] ^= 0x80
	e.fails("KMSInvalidMacException", "kms", "verify-mac", "--key-id", id, "--message", "fileb://"+msgFile,
		"--mac-algorithm", "HMAC_SHA_256", "--mac", "fileb://"+e.file("bad", mac))
	e.fails("InvalidKeyUsageException", "kms", "generate-mac", "--key-id", id, "--message", "fileb://"+msgFile,
		"--mac-algorithm", "HMAC_SHA_512")
}

// TestRSAEncryptionWithOpenSSL encrypts with openssl and the public key
// from get-public-key, for both OAEP hashes, and decrypts with aws kms
// decrypt; and checks kmsd's own ciphertext is the modulus length.
func TestRSAEncryptionWithOpenSSL(t *testing.T) {
	e := start(t)
	md := e.ok("kms", "create-key", "--key-spec", "RSA_2048", "--key-usage", "ENCRYPT_DECRYPT")["KeyMetadata"].(map[string]any)
	id := md["KeyId"].(string)
	pk := e.ok("kms", "get-public-key", "--key-id", id)
	if algs, _ := pk["EncryptionAlgorithms"].([]any); len(algs) != 2 {
		t.Fatalf("get-public-key EncryptionAlgorithms = %v", pk["EncryptionAlgorithms"])
	}
	pem := filepath.Join(e.dir, "rsa.pem")
	e.openssl("pkey", "-pubin", "-inform", "DER", "-in", e.file("rsa.der", blob(t, pk, "PublicKey")), "-out", pem)
	pt := []byte("kmsd e2e: encrypted by OpenSSL, decrypted by KMS")
	ptFile := e.file("pt", pt)
	for alg, hash := range map[string]string{"RSAES_OAEP_SHA_1": "sha1", "RSAES_OAEP_SHA_256": "sha256"} {
		t.Run(alg, func(t *testing.T) {
			ct := filepath.Join(e.dir, alg+".ct")
			e.openssl("pkeyutl", "-encrypt", "-pubin", "-inkey", pem, "-in", ptFile, "-out", ct,
				"-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:"+hash, "-pkeyopt", "rsa_mgf1_md:"+hash)
			d := e.ok("kms", "decrypt", "--key-id", id, "--ciphertext-blob", "fileb://"+ct, "--encryption-algorithm", alg)
			if got := blob(t, d, "Plaintext"); !bytes.Equal(got, pt) || d["EncryptionAlgorithm"] != alg {
				t.Fatalf("decrypt = %q, %v", got, d["EncryptionAlgorithm"])
			}
			enc := e.ok("kms", "encrypt", "--key-id", id, "--plaintext", "fileb://"+ptFile, "--encryption-algorithm", alg)
			if n := len(blob(t, enc, "CiphertextBlob")); n != 256 {
				t.Fatalf("encrypt: %d-byte ciphertext, want 256", n)
			}
		})
	}
	e.fails("InvalidKeyUsageException", "kms", "encrypt", "--key-id", id, "--plaintext", "fileb://"+ptFile)
}

// sdk is an aws-sdk-go-v2 client from kmsd's profile, for the operations
// the Debian aws CLI (2.9) predates.
func (e *env) sdk() *kms.Client {
	e.t.Helper()
	cfg, err := config.LoadDefaultConfig(context.Background(),
		config.WithSharedCredentialsFiles([]string{e.k.Creds}),
		config.WithSharedConfigFiles([]string{filepath.Join(e.dir, "no-config")}),
		config.WithSharedConfigProfile("kmsd"), config.WithRegion(region),
		config.WithRetryer(e2etest.ClosedConnRetryer))
	if err != nil {
		e.t.Fatal(err)
	}
	return kms.NewFromConfig(cfg, func(o *kms.Options) { o.BaseEndpoint = aws.String(e.k.Endpoint) })
}

// TestDeriveSharedSecretWithOpenSSL checks kmsd's ECDH secret equals
// what openssl pkeyutl -derive computes with the peer's private key and
// the KMS public key, on every NIST curve.
func TestDeriveSharedSecretWithOpenSSL(t *testing.T) {
	e := start(t)
	c := e.sdk()
	ctx := context.Background()
	for spec, curve := range map[types.KeySpec]string{
		types.KeySpecEccNistP256: "P-256", types.KeySpecEccNistP384: "P-384", types.KeySpecEccNistP521: "P-521",
	} {
		t.Run(string(spec), func(t *testing.T) {
			k, err := c.CreateKey(ctx, &kms.CreateKeyInput{KeySpec: spec, KeyUsage: types.KeyUsageTypeKeyAgreement})
			if err != nil {
				t.Fatal(err)
			}
			pk, err := c.GetPublicKey(ctx, &kms.GetPublicKeyInput{KeyId: k.KeyMetadata.KeyId})
			if err != nil {
				t.Fatal(err)
			}
			kmsPEM := filepath.Join(e.dir, curve+"-kms.pem")
			e.openssl("pkey", "-pubin", "-inform", "DER", "-in", e.file(curve+"-kms.der", pk.PublicKey), "-out", kmsPEM)
			peer, peerDER := filepath.Join(e.dir, curve+"-peer.pem"), filepath.Join(e.dir, curve+"-peer.der")
			e.openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:"+curve, "-out", peer)
			e.openssl("pkey", "-in", peer, "-pubout", "-outform", "DER", "-out", peerDER)
			der, err := os.ReadFile(peerDER)
			if err != nil {
				t.Fatal(err)
			}
			out, err := c.DeriveSharedSecret(ctx, &kms.DeriveSharedSecretInput{KeyId: k.KeyMetadata.KeyId,
				KeyAgreementAlgorithm: types.KeyAgreementAlgorithmSpecEcdh, PublicKey: der})
			if err != nil {
				t.Fatal(err)
			}
			z := filepath.Join(e.dir, curve+".z")
			e.openssl("pkeyutl", "-derive", "-inkey", peer, "-peerkey", kmsPEM, "-out", z)
			want, err := os.ReadFile(z)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out.SharedSecret, want) || out.KeyOrigin != types.OriginTypeAwsKms {
				t.Fatalf("SharedSecret %x, OpenSSL's %x; KeyOrigin %s", out.SharedSecret, want, out.KeyOrigin)
			}
		})
	}
}

// TestDataKeyPairWithOpenSSL checks that OpenSSL reads the PKCS #8
// private key of aws kms generate-data-key-pair and derives from it the
// public key returned beside it, and that decrypt returns the private key.
func TestDataKeyPairWithOpenSSL(t *testing.T) {
	e := start(t)
	md := e.ok("kms", "create-key", "--description", "wraps data key pairs")["KeyMetadata"].(map[string]any)
	id := md["KeyId"].(string)
	for _, spec := range []string{"RSA_2048", "ECC_NIST_P256", "ECC_NIST_P384", "ECC_NIST_P521", "ECC_SECG_P256K1", "ECC_NIST_EDWARDS25519"} {
		t.Run(spec, func(t *testing.T) {
			out := e.ok("kms", "generate-data-key-pair", "--key-id", id, "--key-pair-spec", spec, "--encryption-context", "pair="+spec)
			priv, pub := blob(t, out, "PrivateKeyPlaintext"), blob(t, out, "PublicKey")
			derived := filepath.Join(e.dir, spec+".derived")
			e.openssl("pkey", "-inform", "DER", "-in", e.file(spec+".p8", priv), "-pubout", "-outform", "DER", "-out", derived)
			if got, _ := os.ReadFile(derived); !bytes.Equal(got, pub) {
				t.Fatal("OpenSSL derives another public key from PrivateKeyPlaintext")
			}
			ct := e.file(spec+".ct", blob(t, out, "PrivateKeyCiphertextBlob"))
			d := e.ok("kms", "decrypt", "--ciphertext-blob", "fileb://"+ct, "--encryption-context", "pair="+spec)
			if !bytes.Equal(blob(t, d, "Plaintext"), priv) {
				t.Fatal("decrypt of PrivateKeyCiphertextBlob differs from PrivateKeyPlaintext")
			}
		})
	}
}

// TestSDKErrors checks the Go SDK maps kmsd's answers to its typed
// errors, with status 400: DryRunOperationException for Sign, Verify and
// GenerateMac, KMSInvalidSignatureException and KMSInvalidMacException
// (spec §17.1).
func TestSDKErrors(t *testing.T) {
	e := start(t)
	c := e.sdk()
	ctx := context.Background()
	sk, err := c.CreateKey(ctx, &kms.CreateKeyInput{KeySpec: types.KeySpecEccNistP256, KeyUsage: types.KeyUsageTypeSignVerify})
	if err != nil {
		t.Fatal(err)
	}
	mk, err := c.CreateKey(ctx, &kms.CreateKeyInput{KeySpec: types.KeySpecHmac256, KeyUsage: types.KeyUsageTypeGenerateVerifyMac})
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("m")
	status400 := func(t *testing.T, err error) {
		t.Helper()
		var re *smithyhttp.ResponseError
		if !errors.As(err, &re) || re.HTTPStatusCode() != 400 {
			t.Errorf("status of %v: want 400", err)
		}
	}
	t.Run("dry run", func(t *testing.T) {
		var dry *types.DryRunOperationException
		_, err := c.Sign(ctx, &kms.SignInput{KeyId: sk.KeyMetadata.KeyId, Message: msg, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256, DryRun: aws.Bool(true)})
		if !errors.As(err, &dry) {
			t.Fatalf("Sign with DryRun: %v", err)
		}
		status400(t, err)
		_, err = c.GenerateMac(ctx, &kms.GenerateMacInput{KeyId: mk.KeyMetadata.KeyId, Message: msg, MacAlgorithm: types.MacAlgorithmSpecHmacSha256, DryRun: aws.Bool(true)})
		if !errors.As(err, &dry) {
			t.Fatalf("GenerateMac with DryRun: %v", err)
		}
	})
	t.Run("invalid signature", func(t *testing.T) {
		var bad *types.KMSInvalidSignatureException
		_, err := c.Verify(ctx, &kms.VerifyInput{KeyId: sk.KeyMetadata.KeyId, Message: msg, Signature: []byte{0x30, 0}, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
		if !errors.As(err, &bad) || bad.ErrorMessage() != "" {
			t.Fatalf("Verify of a bad signature: %v", err)
		}
		status400(t, err)
	})
	t.Run("invalid mac", func(t *testing.T) {
		var bad *types.KMSInvalidMacException
		_, err := c.VerifyMac(ctx, &kms.VerifyMacInput{KeyId: mk.KeyMetadata.KeyId, Message: msg, Mac: make([]byte, 32), MacAlgorithm: types.MacAlgorithmSpecHmacSha256})
		if !errors.As(err, &bad) || bad.ErrorMessage() != "" {
			t.Fatalf("VerifyMac of a bad MAC: %v", err)
		}
		status400(t, err)
	})
}

// TestBoto3 runs testdata/boto3_keytypes.py with Debian's python3, boto3
// and cryptography: the third client and a third offline oracle.
func TestBoto3(t *testing.T) {
	const python = "/usr/bin/python3"
	if err := exec.Command(python, "-c", "import boto3, cryptography").Run(); err != nil {
		t.Fatalf("python3 with boto3 and cryptography (Debian python3-boto3, python3-cryptography) is required: %v", err)
	}
	e := start(t)
	script, err := filepath.Abs(filepath.Join("testdata", "boto3_keytypes.py"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(python, script, e.k.Endpoint)
	cmd.Env = append(e.k.CLIEnv(region), "HOME="+e.dir, "PYTHONDONTWRITEBYTECODE=1", "AWS_EC2_METADATA_DISABLED=true")
	out, err := cmd.CombinedOutput()
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if err != nil || lines[len(lines)-1] != "boto3 keytypes ok" {
		t.Fatalf("boto3_keytypes.py: %v\n%s", err, out)
	}
}
