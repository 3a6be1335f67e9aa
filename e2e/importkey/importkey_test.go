// Package importkey holds the end-to-end tests of imported key material
// (BYOK): they start the real kmsd and import material the way AWS's
// Developer Guide tells users to — the real aws CLI v2 for the API, OpenSSL
// for the material and its wrapping (RSA-OAEP, and AES key wrap with
// padding for RSA_AES_KEY_WRAP_*) — then prove the key works with that
// very material: OpenSSL verifies signatures and recomputes MACs with the
// original key. boto3 (with Python's cryptography as the wrapper) runs the
// flow once more, and a crash test kills kmsd in the middle of imports.
package importkey

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmsd/kmsd/e2e/e2etest"
)

const (
	awsCLI = "/usr/bin/aws" // Debian's aws CLI v2 (2.9.19)
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

func start(t *testing.T, args ...string) *env {
	t.Helper()
	for _, tool := range []string{awsCLI, "openssl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is required: %v", tool, err)
		}
	}
	tmp := t.TempDir()
	k := e2etest.StartKMSD(t, e2etest.KMSDConfig{Bin: kmsdBin, Env: []string{"PATH=" + os.Getenv("PATH"), "HOME=" + tmp}, Args: args})
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
	v := map[string]any{}
	if strings.TrimSpace(out) == "" {
		return v // import-key-material of the old CLI prints nothing
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		e.t.Fatalf("aws %s: output %q: %v", strings.Join(args, " "), out, err)
	}
	return v
}

// fails runs a call that must fail with exception name; it returns the
// CLI's error output.
func (e *env) fails(name string, args ...string) string {
	e.t.Helper()
	code, _, errOut := e.aws(args...)
	if code != 254 || !strings.Contains(errOut, "("+name+")") {
		e.t.Fatalf("aws %s: exit %d, stderr %q; want exit 254 and %s", strings.Join(args, " "), code, errOut, name)
	}
	return errOut
}

func (e *env) path(name string) string { return filepath.Join(e.dir, name) }

func (e *env) file(name string, data []byte) string {
	e.t.Helper()
	p := e.path(name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		e.t.Fatal(err)
	}
	return p
}

func (e *env) read(name string) []byte {
	e.t.Helper()
	b, err := os.ReadFile(e.path(name))
	if err != nil {
		e.t.Fatal(err)
	}
	return b
}

func (e *env) openssl(args ...string) string {
	e.t.Helper()
	out, err := exec.Command("openssl", args...).CombinedOutput()
	if err != nil {
		e.t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
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

// cliTime reads a timestamp as the aws CLI v2 prints it (ISO 8601).
func cliTime(t *testing.T, v any) time.Time {
	t.Helper()
	s, _ := v.(string)
	ts, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatalf("timestamp %v: %v", v, err)
	}
	return ts
}

// params runs get-parameters-for-import and writes the public key and
// the token as files, as AWS's guide does; it returns their names.
func (e *env) params(id, alg, spec, prefix string) (pub, token string) {
	e.t.Helper()
	out := e.ok("kms", "get-parameters-for-import", "--key-id", id, "--wrapping-algorithm", alg, "--wrapping-key-spec", spec)
	if !strings.HasSuffix(out["KeyId"].(string), ":key/"+id) {
		e.t.Fatalf("get-parameters-for-import KeyId %v", out["KeyId"])
	}
	validTo := cliTime(e.t, out["ParametersValidTo"])
	if d := time.Until(validTo); d < 23*time.Hour+59*time.Minute || d > 24*time.Hour+time.Minute {
		e.t.Fatalf("ParametersValidTo %v is not 24 h ahead", validTo)
	}
	pub = e.file(prefix+"-pub.der", blob(e.t, out, "PublicKey"))
	token = e.file(prefix+"-token.bin", blob(e.t, out, "ImportToken"))
	return pub, token
}

// oaep wraps in (a file) with RSAES-OAEP under the DER public key pub, as
// the guide's `openssl pkeyutl -encrypt` step.
func (e *env) oaep(in, pub, md, out string) string {
	e.t.Helper()
	e.openssl("pkeyutl", "-encrypt", "-in", in, "-out", e.path(out), "-inkey", pub, "-keyform", "DER", "-pubin",
		"-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:"+md, "-pkeyopt", "rsa_mgf1_md:"+md)
	return e.path(out)
}

// aesKeyWrap wraps in for RSA_AES_KEY_WRAP_SHA_*: a fresh AES-256 key
// wraps the material with `openssl enc -id-aes256-wrap-pad` and is itself
// wrapped with RSA-OAEP; the two are concatenated (AWS's guide, "RSA_AES_
// KEY_WRAP_SHA_*" with OpenSSL 3).
func (e *env) aesKeyWrap(in, pub, md, out string) string {
	e.t.Helper()
	aesKey := e.path(out + "-aes.bin")
	e.openssl("rand", "-out", aesKey, "32")
	e.openssl("enc", "-id-aes256-wrap-pad", "-K", hex.EncodeToString(e.read(out+"-aes.bin")), "-iv", "A65959A6",
		"-in", in, "-out", e.path(out+"-material-wrapped.bin"))
	e.oaep(aesKey, pub, md, out+"-aes-wrapped.bin")
	combined := append(e.read(out+"-aes-wrapped.bin"), e.read(out+"-material-wrapped.bin")...)
	return e.file(out, combined)
}

func (e *env) describe(id string) map[string]any {
	e.t.Helper()
	return e.ok("kms", "describe-key", "--key-id", id)["KeyMetadata"].(map[string]any)
}

func (e *env) createExternal(args ...string) string {
	e.t.Helper()
	md := e.ok(append([]string{"kms", "create-key", "--origin", "EXTERNAL"}, args...)...)["KeyMetadata"].(map[string]any)
	if md["KeyState"] != "PendingImport" || md["Enabled"] != false || md["Origin"] != "EXTERNAL" {
		e.t.Fatalf("create-key --origin EXTERNAL: %v", md)
	}
	if _, ok := md["ExpirationModel"]; ok {
		e.t.Fatalf("ExpirationModel before any import: %v", md)
	}
	return md["KeyId"].(string)
}

// TestBYOKWithCLIAndOpenSSL is the flow of AWS's "Importing key material"
// guide for a symmetric key, with every step checked.
func TestBYOKWithCLIAndOpenSSL(t *testing.T) {
	e := start(t)
	id := e.createExternal()
	material := e.path("material.bin")
	e.openssl("rand", "-out", material, "32")

	// Import with RSAES_OAEP_SHA_256.
	pub, token := e.params(id, "RSAES_OAEP_SHA_256", "RSA_2048", "p1")
	wrapped := e.oaep(material, pub, "sha256", "wrapped1.bin")
	e.ok("kms", "import-key-material", "--key-id", id, "--encrypted-key-material", "fileb://"+wrapped,
		"--import-token", "fileb://"+token, "--expiration-model", "KEY_MATERIAL_DOES_NOT_EXPIRE")
	md := e.describe(id)
	if md["KeyState"] != "Enabled" || md["ExpirationModel"] != "KEY_MATERIAL_DOES_NOT_EXPIRE" || md["ValidTo"] != nil {
		t.Fatalf("after import: %v", md)
	}
	pt := e.file("pt.txt", []byte("imported material works"))
	enc := e.ok("kms", "encrypt", "--key-id", id, "--plaintext", "fileb://"+pt)
	ct := e.file("ct.bin", blob(t, enc, "CiphertextBlob"))
	dec := e.ok("kms", "decrypt", "--ciphertext-blob", "fileb://"+ct)
	if got := blob(t, dec, "Plaintext"); string(got) != "imported material works" {
		t.Fatalf("decrypt: %q", got)
	}
	// The token can be used again while valid: the same material again.
	e.ok("kms", "import-key-material", "--key-id", id, "--encrypted-key-material", "fileb://"+wrapped,
		"--import-token", "fileb://"+token, "--expiration-model", "KEY_MATERIAL_DOES_NOT_EXPIRE")

	// Delete: the key waits for its material, ciphertexts do not decrypt.
	// The CLI's 2.9.19 model has no output members here: it prints nothing.
	e.ok("kms", "delete-imported-key-material", "--key-id", id)
	if md := e.describe(id); md["KeyState"] != "PendingImport" || md["ExpirationModel"] != nil {
		t.Fatalf("after delete: %v", md)
	}
	if msg := e.fails("KMSInvalidStateException", "kms", "decrypt", "--ciphertext-blob", "fileb://"+ct); !strings.Contains(msg, "is pending import.") {
		t.Fatalf("decrypt after delete: %s", msg)
	}

	// Re-import the same bytes with RSA_AES_KEY_WRAP_SHA_256 (openssl's
	// id-aes256-wrap-pad): the old ciphertext decrypts again.
	pub2, token2 := e.params(id, "RSA_AES_KEY_WRAP_SHA_256", "RSA_3072", "p2")
	wrapped2 := e.aesKeyWrap(material, pub2, "sha256", "wrapped2.bin")
	e.ok("kms", "import-key-material", "--key-id", id, "--encrypted-key-material", "fileb://"+wrapped2,
		"--import-token", "fileb://"+token2, "--expiration-model", "KEY_MATERIAL_DOES_NOT_EXPIRE")
	dec = e.ok("kms", "decrypt", "--ciphertext-blob", "fileb://"+ct)
	if got := blob(t, dec, "Plaintext"); string(got) != "imported material works" {
		t.Fatalf("decrypt after re-import: %q", got)
	}

	// Other bytes are refused, and the key keeps working.
	otherMaterial := e.path("other.bin")
	e.openssl("rand", "-out", otherMaterial, "32")
	wrapped3 := e.aesKeyWrap(otherMaterial, pub2, "sha256", "wrapped3.bin")
	e.fails("IncorrectKeyMaterialException", "kms", "import-key-material", "--key-id", id, "--encrypted-key-material", "fileb://"+wrapped3,
		"--import-token", "fileb://"+token2, "--expiration-model", "KEY_MATERIAL_DOES_NOT_EXPIRE")
	// The checks before the material: ValidTo required by default, a
	// token of another key, the AWS_KMS origin.
	if msg := e.fails("ValidationException", "kms", "import-key-material", "--key-id", id, "--encrypted-key-material", "fileb://"+wrapped2,
		"--import-token", "fileb://"+token2); !strings.Contains(msg, "A validTo date must be set if the ExpirationModel is KEY_MATERIAL_EXPIRES") {
		t.Fatalf("no ValidTo: %s", msg)
	}
	other := e.createExternal()
	e.fails("InvalidImportTokenException", "kms", "import-key-material", "--key-id", other, "--encrypted-key-material", "fileb://"+wrapped2,
		"--import-token", "fileb://"+token2, "--expiration-model", "KEY_MATERIAL_DOES_NOT_EXPIRE")
	kmsKey := e.ok("kms", "create-key")["KeyMetadata"].(map[string]any)
	if msg := e.fails("UnsupportedOperationException", "kms", "get-parameters-for-import", "--key-id", kmsKey["KeyId"].(string),
		"--wrapping-algorithm", "RSAES_OAEP_SHA_256", "--wrapping-key-spec", "RSA_2048"); !strings.Contains(msg, kmsKey["Arn"].(string)+" origin is AWS_KMS which is not valid for this operation.") {
		t.Fatalf("AWS_KMS key: %s", msg)
	}
	dec = e.ok("kms", "decrypt", "--ciphertext-blob", "fileb://"+ct)
	if got := blob(t, dec, "Plaintext"); string(got) != "imported material works" {
		t.Fatalf("decrypt after a refused import: %q", got)
	}

	// The audit log records the imports, but neither the token, the
	// wrapped material nor the material, in any encoding.
	e.k.Stop() // flushes the audit log
	log, err := os.ReadFile(filepath.Join(e.k.DataDir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(log, []byte(`"eventName":"ImportKeyMaterial"`)) || !bytes.Contains(log, []byte(`"eventName":"DeleteImportedKeyMaterial"`)) {
		t.Fatal("no ImportKeyMaterial or DeleteImportedKeyMaterial audit record")
	}
	for name, secret := range map[string][]byte{"token": e.read("p1-token.bin"), "wrapped material": e.read("wrapped1.bin"), "material": e.read("material.bin")} {
		for _, enc := range []string{base64.StdEncoding.EncodeToString(secret), hex.EncodeToString(secret), string(secret[:16])} {
			if bytes.Contains(log, []byte(enc[:min(len(enc), 24)])) {
				t.Fatalf("the audit log holds the %s", name)
			}
		}
	}
	for _, member := range []string{"importToken", "encryptedKeyMaterial"} {
		if bytes.Contains(log, []byte(`"`+member+`"`)) {
			t.Fatalf("the audit log names %s", member)
		}
	}
}

// TestExpiryBySweeper: material imported with a ValidTo a few seconds
// ahead expires; kmsd's sweeper (every second here) deletes it — its log
// says so, and the audit log has AWS's DeleteExpiredKeyMaterial event —
// and the same bytes bring the key back.
func TestExpiryBySweeper(t *testing.T) {
	e := start(t, "--sweep-interval", "1s")
	id := e.createExternal()
	material := e.path("material.bin")
	e.openssl("rand", "-out", material, "32")
	pub, token := e.params(id, "RSAES_OAEP_SHA_1", "RSA_2048", "p")
	wrapped := e.oaep(material, pub, "sha1", "wrapped.bin")
	// Far enough ahead for the CLI calls in between: each takes a second
	// or so alone, but 15 s did not cover the import and a describe in
	// CI's full -race run on 2 cores.
	validTo := time.Now().Add(45 * time.Second).UTC().Truncate(time.Second)
	e.ok("kms", "import-key-material", "--key-id", id, "--encrypted-key-material", "fileb://"+wrapped,
		"--import-token", "fileb://"+token, "--expiration-model", "KEY_MATERIAL_EXPIRES", "--valid-to", validTo.Format(time.RFC3339))
	md := e.describe(id)
	if md["ExpirationModel"] != "KEY_MATERIAL_EXPIRES" || !cliTime(t, md["ValidTo"]).Equal(validTo) {
		t.Fatalf("after import: %v", md)
	}
	ct := e.file("ct.bin", blob(t, e.ok("kms", "encrypt", "--key-id", id, "--plaintext", "fileb://"+material), "CiphertextBlob"))
	deadline := validTo.Add(30 * time.Second)
	for !strings.Contains(e.k.Log(), "imported key material expired") {
		if time.Now().After(deadline) {
			t.Fatal("the sweeper did not expire the material")
		}
		time.Sleep(200 * time.Millisecond)
	}
	if time.Now().Before(validTo) {
		t.Fatal("material expired before its ValidTo")
	}
	if md := e.describe(id); md["KeyState"] != "PendingImport" || md["ExpirationModel"] != nil || md["ValidTo"] != nil {
		t.Fatalf("after expiry: %v", md)
	}
	e.fails("KMSInvalidStateException", "kms", "decrypt", "--ciphertext-blob", "fileb://"+ct)
	e.ok("kms", "import-key-material", "--key-id", id, "--encrypted-key-material", "fileb://"+wrapped,
		"--import-token", "fileb://"+token, "--expiration-model", "KEY_MATERIAL_DOES_NOT_EXPIRE")
	if got := blob(t, e.ok("kms", "decrypt", "--ciphertext-blob", "fileb://"+ct), "Plaintext"); !bytes.Equal(got, e.read("material.bin")) {
		t.Fatal("old ciphertext after re-import")
	}
	e.k.Stop() // flushes the audit log
	log, err := os.ReadFile(filepath.Join(e.k.DataDir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(log, []byte(`"eventName":"DeleteExpiredKeyMaterial"`)) {
		t.Fatal("no DeleteExpiredKeyMaterial audit record")
	}
}

// TestImportedRSASignsForOpenSSL: an RSA private key made by OpenSSL,
// imported with RSA_AES_KEY_WRAP_SHA_256, signs through kmsd; OpenSSL
// verifies with the original key, and GetPublicKey returns its public key
// byte for byte.
func TestImportedRSASignsForOpenSSL(t *testing.T) {
	e := start(t)
	e.openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", e.path("priv.pem"))
	e.openssl("pkcs8", "-topk8", "-nocrypt", "-outform", "DER", "-in", e.path("priv.pem"), "-out", e.path("priv.der"))
	e.openssl("pkey", "-in", e.path("priv.pem"), "-pubout", "-outform", "DER", "-out", e.path("pub.der"))
	id := e.createExternal("--key-spec", "RSA_2048", "--key-usage", "SIGN_VERIFY")
	pub, token := e.params(id, "RSA_AES_KEY_WRAP_SHA_256", "RSA_4096", "p")
	wrapped := e.aesKeyWrap(e.path("priv.der"), pub, "sha256", "wrapped.bin")
	e.ok("kms", "import-key-material", "--key-id", id, "--encrypted-key-material", "fileb://"+wrapped,
		"--import-token", "fileb://"+token, "--expiration-model", "KEY_MATERIAL_DOES_NOT_EXPIRE")
	if got := blob(t, e.ok("kms", "get-public-key", "--key-id", id), "PublicKey"); !bytes.Equal(got, e.read("pub.der")) {
		t.Fatal("get-public-key differs from the imported key's public key")
	}
	msg := e.file("msg.txt", []byte("signed by a key that OpenSSL made\n"))
	for _, tc := range []struct{ alg, md string }{
		{"RSASSA_PKCS1_V1_5_SHA_256", "sha256"},
		{"RSASSA_PSS_SHA_384", "sha384"},
	} {
		out := e.ok("kms", "sign", "--key-id", id, "--message", "fileb://"+msg, "--message-type", "RAW", "--signing-algorithm", tc.alg)
		sig := e.file(tc.alg+".sig", blob(t, out, "Signature"))
		e.openssl("dgst", "-"+tc.md, "-binary", "-out", e.path(tc.alg+".dgst"), msg)
		args := []string{"pkeyutl", "-verify", "-inkey", e.path("priv.pem"), "-in", e.path(tc.alg + ".dgst"), "-sigfile", sig, "-pkeyopt", "digest:" + tc.md}
		if strings.Contains(tc.alg, "PSS") {
			args = append(args, "-pkeyopt", "rsa_padding_mode:pss", "-pkeyopt", "rsa_pss_saltlen:digest")
		}
		if out := e.openssl(args...); !strings.Contains(out, "Signature Verified Successfully") {
			t.Fatalf("%s: %s", tc.alg, out)
		}
	}
	// Another RSA key is refused: an asymmetric key has one material.
	e.openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", e.path("other.pem"))
	e.openssl("pkcs8", "-topk8", "-nocrypt", "-outform", "DER", "-in", e.path("other.pem"), "-out", e.path("other.der"))
	wrapped = e.aesKeyWrap(e.path("other.der"), pub, "sha256", "wrapped-other.bin")
	e.fails("IncorrectKeyMaterialException", "kms", "import-key-material", "--key-id", id, "--encrypted-key-material", "fileb://"+wrapped,
		"--import-token", "fileb://"+token, "--expiration-model", "KEY_MATERIAL_DOES_NOT_EXPIRE")
}

// TestImportedHMACMatchesOpenSSL: an imported HMAC key's GenerateMac is
// OpenSSL's HMAC over the same key bytes.
func TestImportedHMACMatchesOpenSSL(t *testing.T) {
	e := start(t)
	for _, tc := range []struct{ spec, alg, digest string }{
		{"HMAC_256", "HMAC_SHA_256", "SHA256"},
		{"HMAC_512", "HMAC_SHA_512", "SHA512"},
	} {
		t.Run(tc.spec, func(t *testing.T) {
			key := e.path(tc.spec + ".key")
			e.openssl("rand", "-out", key, "64")
			id := e.createExternal("--key-spec", tc.spec, "--key-usage", "GENERATE_VERIFY_MAC")
			pub, token := e.params(id, "RSAES_OAEP_SHA_256", "RSA_2048", tc.spec)
			wrapped := e.oaep(key, pub, "sha256", tc.spec+"-wrapped.bin")
			e.ok("kms", "import-key-material", "--key-id", id, "--encrypted-key-material", "fileb://"+wrapped,
				"--import-token", "fileb://"+token, "--expiration-model", "KEY_MATERIAL_DOES_NOT_EXPIRE")
			msg := e.file("mac-msg.txt", []byte("MAC me"))
			out := e.ok("kms", "generate-mac", "--key-id", id, "--mac-algorithm", tc.alg, "--message", "fileb://"+msg)
			mac := blob(t, out, "Mac")
			want := strings.TrimSpace(e.openssl("mac", "-digest", tc.digest, "-macopt", "hexkey:"+hex.EncodeToString(e.read(tc.spec+".key")), "-in", msg, "HMAC"))
			if !strings.EqualFold(hex.EncodeToString(mac), want) {
				t.Fatalf("kmsd MAC %x, openssl %s", mac, want)
			}
			e.ok("kms", "verify-mac", "--key-id", id, "--mac-algorithm", tc.alg, "--message", "fileb://"+msg, "--mac", "fileb://"+e.file("mac.bin", mac))
		})
	}
}

// TestBoto3 runs testdata/boto3_import.py: the flow once more through
// boto3, wrapping with Python's cryptography package.
func TestBoto3(t *testing.T) {
	const python = "/usr/bin/python3"
	if err := exec.Command(python, "-c", "import boto3, cryptography").Run(); err != nil {
		t.Fatalf("python3 with boto3 and cryptography (Debian python3-boto3, python3-cryptography) is required: %v", err)
	}
	e := start(t)
	script, err := filepath.Abs(filepath.Join("testdata", "boto3_import.py"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(python, script, e.k.Endpoint)
	cmd.Env = append(e.k.CLIEnv(region), "HOME="+e.dir, "PYTHONDONTWRITEBYTECODE=1", "AWS_EC2_METADATA_DISABLED=true")
	out, err := cmd.CombinedOutput()
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if err != nil || lines[len(lines)-1] != "boto3 import ok" {
		t.Fatalf("boto3_import.py: %v\n%s", err, out)
	}
}
