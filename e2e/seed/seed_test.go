// Package seed holds the end-to-end tests of kmsd's seed file (--seed) and
// of the emulator's reset endpoints: the real kmsd binary, driven by the
// real aws CLI v2, with ciphertexts and MACs computed in the test with
// Go's crypto from the material the file fixes.
package seed

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/kmsd/kmsd/e2e/e2etest"
)

const (
	awsCLI  = "/usr/bin/aws" // Debian's aws CLI v2 (2.9.19)
	account = "111122223333"
)

var kmsdBin, proxyBin string

func TestMain(m *testing.M) {
	e2etest.Main(m, map[string]*string{"kmsd": &kmsdBin, "xks-proxy": &proxyBin})
}

type env struct {
	t      *testing.T
	k      *e2etest.KMSD
	region string
	home   string
	// emulator: fake credentials instead of the administrator profile.
	emulator bool
}

func start(t *testing.T, dataDir, region string, args ...string) *env {
	t.Helper()
	return startEnv(t, dataDir, region, nil, args...)
}

// startEnv starts kmsd with env added to its environment.
func startEnv(t *testing.T, dataDir, region string, extra []string, args ...string) *env {
	t.Helper()
	if _, err := exec.LookPath(awsCLI); err != nil {
		t.Fatalf("%s is required: %v", awsCLI, err)
	}
	home := t.TempDir()
	k := e2etest.StartKMSD(t, e2etest.KMSDConfig{Bin: kmsdBin, DataDir: dataDir,
		Env: append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + home}, extra...), Args: append([]string{"--default-region", region}, args...)})
	e := &env{t: t, k: k, region: region, home: home}
	for _, a := range args {
		e.emulator = e.emulator || a == "emulator"
	}
	return e
}

// aws runs the aws CLI v2 against kmsd and returns its exit code, stdout
// and stderr.
func (e *env) aws(args ...string) (int, string, string) {
	e.t.Helper()
	cmd := exec.Command(awsCLI, append([]string{"--endpoint-url", e.k.Endpoint, "--output", "json"}, args...)...)
	cmd.Env = append(e.k.CLIEnv(e.region), "HOME="+e.home, "AWS_MAX_ATTEMPTS=1")
	if e.emulator {
		// Fake credentials, as emulator users have, and no profile.
		cmd.Env = append(withoutProfile(cmd.Env), "AWS_ACCESS_KEY_ID=test", "AWS_SECRET_ACCESS_KEY=test")
	}
	return e2etest.RunCmd(e.t, cmd)
}

func (e *env) ok(args ...string) map[string]any {
	e.t.Helper()
	code, out, errOut := e.aws(args...)
	if code != 0 {
		e.t.Fatalf("aws %s: exit %d: %s", strings.Join(args, " "), code, errOut)
	}
	m := map[string]any{}
	if strings.TrimSpace(out) != "" {
		if err := json.Unmarshal([]byte(out), &m); err != nil {
			e.t.Fatalf("aws %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	return m
}

// fails runs a command that must fail with the exception named.
func (e *env) fails(exception string, args ...string) {
	e.t.Helper()
	code, _, errOut := e.aws(args...)
	if code == 0 || !strings.Contains(errOut, "("+exception+")") {
		e.t.Fatalf("aws %s: exit %d, want %s: %s", strings.Join(args, " "), code, exception, errOut)
	}
}

// withoutProfile drops the administrator's profile from a CLI environment.
func withoutProfile(env []string) []string {
	var out []string
	for _, v := range env {
		if !strings.HasPrefix(v, "AWS_PROFILE=") && !strings.HasPrefix(v, "AWS_SHARED_CREDENTIALS_FILE=") &&
			!strings.HasPrefix(v, "AWS_ACCESS_KEY_ID=") && !strings.HasPrefix(v, "AWS_SECRET_ACCESS_KEY=") {
			out = append(out, v)
		}
	}
	return out
}

func write(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func fileb(t *testing.T, b []byte) string {
	return "fileb://" + write(t, "blob.bin", string(b))
}

func b64(t *testing.T, m map[string]any, field string) []byte {
	t.Helper()
	s, _ := m[field].(string)
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || s == "" {
		t.Fatalf("%s: %q is not base64: %v", field, s, err)
	}
	return b
}

// keyIDs lists the key ids of the region's keys.
func (e *env) keyIDs() []string {
	e.t.Helper()
	var ids []string
	for _, k := range e.ok("kms", "list-keys")["Keys"].([]any) {
		ids = append(ids, k.(map[string]any)["KeyId"].(string))
	}
	sort.Strings(ids)
	return ids
}

// aliases maps the customer aliases of the region to their target key.
func (e *env) aliases() map[string]string {
	e.t.Helper()
	out := map[string]string{}
	for _, a := range e.ok("kms", "list-aliases")["Aliases"].([]any) {
		m := a.(map[string]any)
		if name := m["AliasName"].(string); !strings.HasPrefix(name, "alias/aws/") {
			out[name], _ = m["TargetKeyId"].(string)
		}
	}
	return out
}

const (
	symID  = "0b7e4a3c-2f4e-4e8a-9d6b-1c2d3e4f5a6b"
	hmacID = "1c8f5b4d-3a5f-4f9b-8e7c-2d3e4f5a6b7c"
	genID  = "2d9a6c5e-4b6a-4a0c-9f8d-3e4f5a6b7c8d"
	symHex = "5cdaead27fe7da2de47945d73cd6d79e36494e73802f3cd3869f1d2cb0b5d7a9"
	macHex = "34743777217a25432a46294a404e635266556a586e3272357538782f413f4428"
)

// nativeSeed is a seed file in kmsd's own layout.
var nativeSeed = `# kmsd seed file
Keys:
  - KeyId: ` + symID + `
    Description: orders
    KeyMaterial: [` + symHex + `]
    Tags:
      - {TagKey: team, TagValue: payments}
    RotationPeriodInDays: 180
  - KeyId: ` + hmacID + `
    KeySpec: HMAC_256
    KeyUsage: GENERATE_VERIFY_MAC
    KeyMaterial: [` + macHex + `]
  - KeyId: ` + genID + `
    Description: material made by kmsd
Aliases:
  - AliasName: alias/orders
    TargetKeyId: ` + symID + `
Grants:
  - KeyId: ` + symID + `
    Name: app
    GranteePrincipal: arn:aws:iam::` + account + `:role/app
    Operations: [Encrypt, Decrypt]
    Constraints: {EncryptionContextSubset: {app: orders}}
`

// grants lists the names and ids of key id's grants.
func (e *env) grants(id string) map[string]string {
	e.t.Helper()
	out := map[string]string{}
	for _, g := range e.ok("kms", "list-grants", "--key-id", id)["Grants"].([]any) {
		m := g.(map[string]any)
		name, _ := m["Name"].(string)
		out[name] = m["GrantId"].(string)
	}
	return out
}

// TestSeedTwice starts kmsd twice with the same seed file: the first start
// creates what the file declares, with its fixed material; the second
// changes nothing, and leaves a key changed through the API as it is,
// reporting the difference.
func TestSeedTwice(t *testing.T) {
	const region = "us-east-1"
	file := write(t, "seed.yaml", nativeSeed)
	data := filepath.Join(t.TempDir(), "data")
	e := start(t, data, region, "--seed", file)

	if got, want := e.keyIDs(), []string{symID, hmacID, genID}; !sameSet(got, want) {
		t.Fatalf("keys %v, want %v", got, want)
	}
	if got := e.aliases(); got["alias/orders"] != symID || len(got) != 1 {
		t.Fatalf("aliases %v", got)
	}
	md := e.ok("kms", "describe-key", "--key-id", "alias/orders")["KeyMetadata"].(map[string]any)
	if md["Description"] != "orders" || md["KeySpec"] != "SYMMETRIC_DEFAULT" || md["KeyState"] != "Enabled" {
		t.Fatalf("describe-key: %v", md)
	}
	created := md["CreationDate"]
	tags := e.ok("kms", "list-resource-tags", "--key-id", symID)["Tags"].([]any)
	if len(tags) != 1 || tags[0].(map[string]any)["TagKey"] != "team" {
		t.Fatalf("tags %v", tags)
	}
	grants := e.grants(symID)
	if len(grants) != 1 || grants["app"] == "" {
		t.Fatalf("grants %v", grants)
	}
	rot := e.ok("kms", "get-key-rotation-status", "--key-id", symID)
	if rot["KeyRotationEnabled"] != true {
		t.Fatalf("rotation %v", rot)
	}

	// The fixed HMAC material is the key's: the MAC is the one Go computes.
	msg := []byte("seeded message")
	mac := b64(t, e.ok("kms", "generate-mac", "--key-id", hmacID, "--mac-algorithm", "HMAC_SHA_256", "--message", fileb(t, msg)), "Mac")
	want := hmac.New(sha256.New, mustHex(t, macHex))
	want.Write(msg)
	if !hmac.Equal(mac, want.Sum(nil)) {
		t.Fatalf("MAC %x, want %x", mac, want.Sum(nil))
	}
	// The symmetric key encrypts and decrypts; the blob kmsd makes is its
	// own format, opened with the fixed material by the test.
	ct := b64(t, e.ok("kms", "encrypt", "--key-id", "alias/orders", "--plaintext", fileb(t, []byte("hello")), "--encryption-context", "app=orders"), "CiphertextBlob")
	pt := b64(t, e.ok("kms", "decrypt", "--ciphertext-blob", fileb(t, ct), "--encryption-context", "app=orders"), "Plaintext")
	if string(pt) != "hello" {
		t.Fatalf("decrypt: %q", pt)
	}
	if got := openKMSDBlob(t, mustHex(t, symHex), ct, map[string]string{"app": "orders"}); string(got) != "hello" {
		t.Fatalf("the fixed material opens %q", got)
	}
	// Changed through the API, then restarted with the same file.
	e.ok("kms", "update-key-description", "--key-id", symID, "--description", "changed")
	e.k.Stop()

	e = start(t, data, region, "--seed", file)
	if got, want := e.keyIDs(), []string{symID, hmacID, genID}; !sameSet(got, want) {
		t.Fatalf("second start: keys %v, want %v", got, want)
	}
	md = e.ok("kms", "describe-key", "--key-id", symID)["KeyMetadata"].(map[string]any)
	if md["Description"] != "changed" || md["CreationDate"] != created {
		t.Fatalf("second start changed the key: %v (created %v before)", md, created)
	}
	pt = b64(t, e.ok("kms", "decrypt", "--ciphertext-blob", fileb(t, ct), "--encryption-context", "app=orders"), "Plaintext")
	if string(pt) != "hello" {
		t.Fatalf("decrypt after restart: %q", pt)
	}
	if again := e.grants(symID); len(again) != 1 || again["app"] != grants["app"] {
		t.Fatalf("grants after restart %v, before %v", again, grants)
	}
	log := e.k.Log()
	if !strings.Contains(log, "created=0 existing=5 differences=1") || !strings.Contains(log, `Description is \"changed\", the seed file says \"orders\"`) {
		t.Fatalf("second start's log lacks its report:\n%s", log)
	}
	if strings.Contains(log, symHex) || strings.Contains(log, macHex) {
		t.Fatal("key material in the log")
	}
}

// TestSeedTOML reads the same declarations from TOML.
func TestSeedTOML(t *testing.T) {
	file := write(t, "seed.toml", `
[[Keys]]
KeyId = "`+symID+`"
Description = "orders"
KeyMaterial = ["`+symHex+`"]

[[Aliases]]
AliasName = "alias/orders"
TargetKeyId = "`+symID+`"
`)
	e := start(t, "", "eu-west-1", "--seed", file)
	if got := e.aliases(); got["alias/orders"] != symID {
		t.Fatalf("aliases %v", got)
	}
	ct := b64(t, e.ok("kms", "encrypt", "--key-id", "alias/orders", "--plaintext", fileb(t, []byte("toml"))), "CiphertextBlob")
	if got := openKMSDBlob(t, mustHex(t, symHex), ct, nil); string(got) != "toml" {
		t.Fatalf("the fixed material opens %q", got)
	}
}

// openKMSDBlob opens one of kmsd's ciphertext blobs (keys/blob.go) with
// the key's material, as documented there.
func openKMSDBlob(t *testing.T, key, blob []byte, ec map[string]string) []byte {
	t.Helper()
	n := int(blob[2])
	hdr := blob[:3+n+4]
	aad := append([]byte("kmsd/blob/v1\x00"), binary.BigEndian.AppendUint32(nil, uint32(len(hdr)))...)
	aad = append(aad, hdr...)
	aad = binary.BigEndian.AppendUint32(aad, uint32(len(ec)))
	names := make([]string, 0, len(ec))
	for k := range ec {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		aad = binary.BigEndian.AppendUint32(aad, uint32(len(k)))
		aad = append(aad, k...)
		aad = binary.BigEndian.AppendUint32(aad, uint32(len(ec[k])))
		aad = append(aad, ec[k]...)
	}
	gcm := newGCM(t, key)
	pt, err := gcm.Open(nil, blob[len(hdr):len(hdr)+12], blob[len(hdr)+12:], aad)
	if err != nil {
		t.Fatalf("open kmsd blob: %v", err)
	}
	return pt
}

func newGCM(t *testing.T, key []byte) cipher.AEAD {
	t.Helper()
	b, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	g, err := cipher.NewGCM(b)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// localKMSBlob makes the ciphertext local-kms (version 3, src/cmk/
// aes_encryption.go) makes with backing key number version of key arn:
// the ARN's length and the ARN, the version little-endian, the nonce, and
// AES-GCM with the context's sorted keys and values concatenated as AAD.
func localKMSBlob(t *testing.T, arn string, version uint32, key, pt []byte, ec map[string]string) []byte {
	t.Helper()
	var aad []byte
	names := make([]string, 0, len(ec))
	for k := range ec {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		aad = append(aad, k...)
		aad = append(aad, ec[k]...)
	}
	nonce := make([]byte, 12)
	rand.Read(nonce)
	out := append([]byte{byte(len(arn))}, arn...)
	out = binary.LittleEndian.AppendUint32(out, version)
	out = append(out, nonce...)
	return newGCM(t, key).Seal(out, nonce, pt, aad)
}

// TestSeedLocalKMS starts kmsd with a seed file in local-kms's documented
// layout (its README's "Seeding file format": Keys: Symmetric: Aes with
// BackingKeys, Asymmetric: Rsa and Ecc with PrivateKeyPem, Aliases): the
// keys are usable, ciphertexts local-kms would have made with either
// backing key decrypt, and the seeded private keys are the keys' own.
func TestSeedLocalKMS(t *testing.T) {
	const (
		region = "eu-west-2" // local-kms's default Region
		aesID  = "bc436485-5092-42b8-92a3-0aa8b93536dc"
		rsaID  = "ff275b92-0def-4dfc-b0f6-87c96b26c6c7"
		eccID  = "800d5768-3fd7-4edd-a4b8-4c81c3e4c147"
		old    = "34743777217A25432A46294A404E635266556A586E3272357538782F413F4428"
		cur    = "614E645267556B58703273357638792F423F4528472B4B6250655368566D5971"
	)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rsaDER, _ := x509.MarshalPKCS8PrivateKey(rsaKey)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecDER, _ := x509.MarshalECPrivateKey(ecKey)
	indent := func(b []byte) string {
		return strings.ReplaceAll(strings.TrimSpace(string(b)), "\n", "\n          ")
	}
	file := write(t, "seed.yaml", `Keys:
  Symmetric:
    Aes:
      - Metadata:
          KeyId: `+aesID+`
          Description: "Your key description"
        BackingKeys:
          - `+old+`
          - `+cur+`
  Asymmetric:
    Rsa:
      - Metadata:
          KeyId: `+rsaID+`
          KeyUsage: SIGN_VERIFY
          Description: RSA key with 2048 bits
        PrivateKeyPem: |
          `+indent(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: rsaDER}))+`
    Ecc:
      - Metadata:
          KeyId: `+eccID+`
          KeyUsage: SIGN_VERIFY
          Description: ECC key with curve secp256r1
        PrivateKeyPem: |
          `+indent(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: ecDER}))+`

Aliases:
  - AliasName: alias/testing
    TargetKeyId: `+aesID+`
`)
	e := start(t, "", region, "--seed", file)
	if got, want := e.keyIDs(), []string{aesID, rsaID, eccID}; !sameSet(got, want) {
		t.Fatalf("keys %v, want %v", got, want)
	}
	md := e.ok("kms", "describe-key", "--key-id", "alias/testing")["KeyMetadata"].(map[string]any)
	if md["KeyId"] != aesID || md["Description"] != "Your key description" {
		t.Fatalf("describe-key: %v", md)
	}
	for _, c := range []struct {
		id, spec string
	}{{rsaID, "RSA_2048"}, {eccID, "ECC_NIST_P256"}} {
		md := e.ok("kms", "describe-key", "--key-id", c.id)["KeyMetadata"].(map[string]any)
		if md["KeySpec"] != c.spec || md["KeyUsage"] != "SIGN_VERIFY" {
			t.Fatalf("describe-key %s: %v", c.id, md)
		}
	}

	// Ciphertexts local-kms made with each backing key decrypt, with their
	// encryption context and not without it.
	arn := "arn:aws:kms:" + region + ":" + account + ":key/" + aesID
	ec := map[string]string{"purpose": "test", "app": "lkms"}
	for i, material := range []string{old, cur} {
		blob := localKMSBlob(t, arn, uint32(i), mustHex(t, material), []byte("from local-kms"), ec)
		out := e.ok("kms", "decrypt", "--ciphertext-blob", fileb(t, blob), "--encryption-context", "purpose=test,app=lkms")
		if string(b64(t, out, "Plaintext")) != "from local-kms" || out["KeyId"] != arn {
			t.Fatalf("backing key %d: decrypt %v", i, out)
		}
		e.fails("InvalidCiphertextException", "kms", "decrypt", "--ciphertext-blob", fileb(t, blob))
	}
	// kmsd's own ciphertexts use the current backing key.
	ct := b64(t, e.ok("kms", "encrypt", "--key-id", "alias/testing", "--plaintext", fileb(t, []byte("from kmsd"))), "CiphertextBlob")
	if got := openKMSDBlob(t, mustHex(t, cur), ct, nil); string(got) != "from kmsd" {
		t.Fatalf("current backing key opens %q", got)
	}
	// A local-kms blob under a key kmsd made itself does not open.
	other := e.ok("kms", "create-key")["KeyMetadata"].(map[string]any)["KeyId"].(string)
	blob := localKMSBlob(t, "arn:aws:kms:"+region+":"+account+":key/"+other, 0, mustHex(t, cur), []byte("x"), nil)
	e.fails("InvalidCiphertextException", "kms", "decrypt", "--ciphertext-blob", fileb(t, blob))

	// The seeded private keys sign: Go verifies with their public halves.
	msg := []byte("signed by a seeded key")
	digest := sha256.Sum256(msg)
	sig := b64(t, e.ok("kms", "sign", "--key-id", eccID, "--message", fileb(t, msg), "--signing-algorithm", "ECDSA_SHA_256"), "Signature")
	if !ecdsa.VerifyASN1(&ecKey.PublicKey, digest[:], sig) {
		t.Fatal("ECDSA signature does not verify with the seeded key")
	}
	sig = b64(t, e.ok("kms", "sign", "--key-id", rsaID, "--message", fileb(t, msg), "--signing-algorithm", "RSASSA_PSS_SHA_256"), "Signature")
	if err := rsa.VerifyPSS(&rsaKey.PublicKey, 5, digest[:], sig, nil); err != nil {
		t.Fatalf("RSA signature does not verify with the seeded key: %v", err)
	}
}

// TestSeedBroken: a broken seed file stops kmsd with an error naming its
// file and line, and leaves the data directory without any of the file's
// resources, also those declared before the error.
func TestSeedBroken(t *testing.T) {
	cases := []struct {
		name, seed, want string
	}{
		{"syntax", "Keys:\n  - KeyId: " + symID + "\n    Description: \"unclosed\n", "seed.yaml:3: found unexpected end of stream"},
		{"unknown field", "Keys:\n  - KeyId: " + symID + "\n  - KeyId: " + genID + "\n    KeySpek: RSA_2048\n", `seed.yaml:4: unknown field "KeySpek"`},
		{"short material", "Keys:\n  - KeyId: " + symID + "\n  - KeyId: " + genID + "\n    KeyMaterial: [abcd]\n", "seed.yaml:3: key " + genID + ": key material 1 is 2 bytes"},
		{"alias to nothing", "Keys:\n  - KeyId: " + symID + "\nAliases:\n  - AliasName: alias/x\n    TargetKeyId: " + genID + "\n", "seed.yaml:4: alias alias/x: TargetKeyId " + genID + " is no key"},
		{"grant operation", "Keys:\n  - KeyId: " + symID + "\nGrants:\n  - KeyId: " + symID + "\n    GranteePrincipal: arn:aws:iam::" + account + ":role/app\n    Operations: [Sign]\n", "seed.yaml:4: grant on " + symID + ": grant operation Sign is not valid"},
		{"user policy", "Keys:\n  - KeyId: " + symID + "\nUsers:\n  - UserName: bob\n    Policies: {p: '{\"Statement\":[]}'}\n", "seed.yaml:4: user bob: policy p:"},
		{"local-kms bad backing key", "Keys:\n  Symmetric:\n    Aes:\n      - Metadata:\n          KeyId: " + symID + "\n        BackingKeys: [" + symHex + "]\n      - Metadata:\n          KeyId: " + genID + "\n        BackingKeys: [zz]\n", "seed.yaml:7: key " + genID + ": BackingKeys[0] is not hex"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			data := filepath.Join(t.TempDir(), "data")
			file := write(t, "seed.yaml", c.seed)
			cmd := exec.Command(kmsdBin, "serve", "--listen", e2etest.FreeAddr(t), "--data-dir", data, "--seed", file)
			cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}
			done := make(chan struct{})
			var out []byte
			var err error
			go func() { out, err = cmd.CombinedOutput(); close(done) }()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				cmd.Process.Kill()
				<-done
				t.Fatalf("kmsd did not stop on a broken seed file:\n%s", out)
			}
			if err == nil || !strings.Contains(string(out), c.want) {
				t.Fatalf("kmsd: %v, output lacks %q:\n%s", err, c.want, out)
			}
			// The same data directory without the seed file: nothing of it.
			e := start(t, data, "us-east-1")
			if ids := e.keyIDs(); len(ids) != 0 {
				t.Fatalf("keys %v left by a broken seed file", ids)
			}
		})
	}
}

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func sameSet(a, b []string) bool {
	a, b = append([]string(nil), a...), append([]string(nil), b...)
	sort.Strings(a)
	sort.Strings(b)
	return strings.Join(a, ",") == strings.Join(b, ",")
}
