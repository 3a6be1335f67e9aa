package kmsctl_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
)

// step is one invocation run with both clients against the same kmsd.
type step struct {
	args []string
	// norm replaces what differs between two runs of a non-deterministic
	// operation (new key ids, creation times, ciphertexts, random bytes)
	// before comparing.
	norm bool
	// noProfile runs without --profile kmsd (credential errors).
	noProfile bool
}

var (
	uuidRE = regexp.MustCompile(`[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`)
	timeRE = regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?\+00:00`)
	blobRE = regexp.MustCompile(`"(CiphertextBlob|Plaintext|Signature|PublicKey|PrivateKeyCiphertextBlob|PrivateKeyPlaintext)": "[A-Za-z0-9+/=]+"`)
)

func normalize(s string) string {
	s = uuidRE.ReplaceAllString(s, "<uuid>")
	s = timeRE.ReplaceAllString(s, "<time>")
	return blobRE.ReplaceAllString(s, `"$1": "<blob>"`)
}

// TestDifferential runs a script of invocations across kms operations,
// every output format, --query, pagination and errors with the aws CLI v2
// and with kmsctl, against one kmsd, and requires the same stdout, the
// same stderr and the same exit code.
func TestDifferential(t *testing.T) {
	requireOracle(t)
	k := startKMSD(t)
	home := t.TempDir()
	// kmsd writes its administrator's key as profile "kmsd"; both clients
	// find it through AWS_SHARED_CREDENTIALS_FILE and --profile.
	creds, err := os.ReadFile(filepath.Join(k.dataDir, "credentials"))
	if err != nil {
		t.Fatalf("kmsd wrote no credentials file: %v", err)
	}
	os.WriteFile(filepath.Join(home, "credentials"), creds, 0o600)
	os.WriteFile(filepath.Join(home, "config"), []byte("[profile kmsd]\n"), 0o600)
	env := clientEnv(home, "AWS_DEFAULT_REGION=us-east-1")
	// Bounded by go test -timeout; the machine may be shared and slow.
	ctx := t.Context()

	// Fixtures, made with kmsctl as shipped.
	mk := func(args ...string) string {
		t.Helper()
		r := runBin(ctx, kmsctlBin, env, append([]string{"--endpoint-url", k.endpoint, "--profile", "kmsd"}, args...)...)
		if r.code != 0 {
			t.Fatalf("fixture %v: rc %d: %s", args, r.code, r.stderr)
		}
		return strings.TrimSpace(r.stdout)
	}
	k1 := mk("kms", "create-key", "--description", "differential one", "--tags", "TagKey=team,TagValue=blue", "TagKey=env,TagValue=test", "--query", "KeyMetadata.KeyId", "--output", "text")
	mk("kms", "create-alias", "--alias-name", "alias/diff-one", "--target-key-id", k1)
	k2 := mk("kms", "create-key", "--description", "differential two", "--query", "KeyMetadata.KeyId", "--output", "text")
	mk("kms", "disable-key", "--key-id", k2)
	for i := 0; i < 3; i++ {
		mk("kms", "create-key", "--query", "KeyMetadata.KeyId", "--output", "text")
	}
	ct := mk("kms", "encrypt", "--key-id", k1, "--plaintext", "aGVsbG8gd29ybGQ=", "--encryption-context", "purpose=diff", "--query", "CiphertextBlob", "--output", "text")
	ctFile := filepath.Join(home, "ct.bin")
	mk("kms", "encrypt", "--key-id", k1, "--plaintext", "aGVsbG8=", "--query", "CiphertextBlob", "--output", "text")
	raw := mk("kms", "encrypt", "--key-id", k1, "--plaintext", "aGVsbG8=", "--output", "json")
	var enc struct{ CiphertextBlob string }
	json.Unmarshal([]byte(raw), &enc)
	b, _ := decodeB64(enc.CiphertextBlob)
	os.WriteFile(ctFile, b, 0o600)
	ptFile := filepath.Join(home, "pt.bin")
	os.WriteFile(ptFile, []byte{0, 1, 2, 0xff, 'x'}, 0o600)
	inJSON := filepath.Join(home, "in.json")
	os.WriteFile(inJSON, []byte(`{"KeyId": "`+k1+`"}`), 0o600)
	token := mk("kms", "list-keys", "--max-items", "1", "--page-size", "2", "--query", "NextToken", "--output", "text")

	// Asymmetric and HMAC keys. RSASSA-PKCS1-v1_5 and HMAC are
	// deterministic, so their outputs compare byte for byte; ECDSA
	// signatures and new data key pairs are random and compare normalized.
	rsaKey := mk("kms", "create-key", "--key-spec", "RSA_2048", "--key-usage", "SIGN_VERIFY", "--query", "KeyMetadata.KeyId", "--output", "text")
	eccKey := mk("kms", "create-key", "--key-spec", "ECC_NIST_P256", "--key-usage", "SIGN_VERIFY", "--query", "KeyMetadata.KeyId", "--output", "text")
	macKey := mk("kms", "create-key", "--key-spec", "HMAC_256", "--key-usage", "GENERATE_VERIFY_MAC", "--query", "KeyMetadata.KeyId", "--output", "text")
	msgFile := filepath.Join(home, "msg.bin")
	os.WriteFile(msgFile, []byte("message to sign\x00\xff"), 0o600)
	digestFile := filepath.Join(home, "digest.bin")
	os.WriteFile(digestFile, make([]byte, 32), 0o600)
	b64File := func(name, b64 string) string {
		t.Helper()
		b, err := decodeB64(b64)
		if err != nil {
			t.Fatalf("%s: %q is not base64: %v", name, b64, err)
		}
		f := filepath.Join(home, name)
		os.WriteFile(f, b, 0o600)
		return f
	}
	rsaSig := b64File("rsa.sig", mk("kms", "sign", "--key-id", rsaKey, "--message", "fileb://"+msgFile, "--signing-algorithm", "RSASSA_PKCS1_V1_5_SHA_256", "--query", "Signature", "--output", "text"))
	eccSig := b64File("ecc.sig", mk("kms", "sign", "--key-id", eccKey, "--message", "fileb://"+msgFile, "--signing-algorithm", "ECDSA_SHA_256", "--query", "Signature", "--output", "text"))
	mac := b64File("mac.bin", mk("kms", "generate-mac", "--key-id", macKey, "--message", "fileb://"+msgFile, "--mac-algorithm", "HMAC_SHA_256", "--query", "Mac", "--output", "text"))

	steps := []step{
		{args: []string{"kms", "list-keys"}},
		{args: []string{"kms", "list-keys", "--output", "text"}},
		{args: []string{"kms", "list-keys", "--output", "table"}},
		{args: []string{"kms", "list-keys", "--output", "yaml"}},
		{args: []string{"kms", "list-keys", "--output", "yaml-stream", "--page-size", "2"}},
		{args: []string{"kms", "list-keys", "--page-size", "2"}},
		{args: []string{"kms", "list-keys", "--max-items", "2"}},
		{args: []string{"kms", "list-keys", "--max-items", "2", "--output", "text"}},
		{args: []string{"kms", "list-keys", "--max-items", "1", "--page-size", "2"}},
		{args: []string{"kms", "list-keys", "--starting-token", token, "--max-items", "2"}},
		{args: []string{"kms", "list-keys", "--starting-token", token, "--page-size", "1", "--output", "text"}},
		{args: []string{"kms", "list-keys", "--no-paginate", "--limit", "2", "--query", "[Truncated, length(Keys)]"}},
		{args: []string{"kms", "list-keys", "--limit", "2", "--query", "length(Keys)"}},
		{args: []string{"kms", "list-keys", "--no-paginate", "--max-items", "2"}},
		{args: []string{"kms", "list-keys", "--query", "Keys[].KeyId | sort(@)", "--output", "text"}},
		{args: []string{"kms", "list-keys", "--query", "length(Keys)"}},
		{args: []string{"kms", "list-keys", "--output", "foo"}},
		{args: []string{"kms", "describe-key", "--key-id", k1}},
		{args: []string{"kms", "describe-key", "--key-id", k1, "--output", "text"}},
		{args: []string{"kms", "describe-key", "--key-id", k1, "--output", "table"}},
		{args: []string{"kms", "describe-key", "--key-id", k1, "--output", "table", "--color", "on"}},
		{args: []string{"kms", "describe-key", "--key-id", k1, "--output", "yaml"}},
		{args: []string{"kms", "describe-key", "--key-id", "alias/diff-one", "--query", "KeyMetadata.[KeyId,Enabled,KeyState]", "--output", "text"}},
		{args: []string{"kms", "describe-key", "--key-id", "alias/diff-one", "--query", "KeyMetadata.{Id:KeyId,State:KeyState,Usage:KeyUsage}", "--output", "table"}},
		{args: []string{"kms", "describe-key", "--key-id", k2, "--query", "KeyMetadata.{Z:Enabled,A:KeyState}"}},
		// Backtick literals that are not JSON, as AWS's documentation
		// writes them: strings to the aws CLI, and so to kmsctl.
		{args: []string{"kms", "list-aliases", "--query", "Aliases[?AliasName==`alias/diff-one`]"}},
		{args: []string{"kms", "list-aliases", "--query", "Aliases[?AliasName==`alias/diff-one`].TargetKeyId", "--output", "text"}},
		{args: []string{"kms", "list-aliases", "--query", "Aliases[?AliasName==` alias/diff-one`].AliasName | [0]", "--output", "table"}},
		{args: []string{"kms", "describe-key", "--key-id", k2, "--query", "[KeyMetadata.KeyState==`Disabled`, KeyMetadata.KeyState==`\"Enabled\"`, `true`, `alias/x`]"}},
		{args: []string{"kms", "list-keys", "--query", "Keys[?KeyId==`" + k1 + "`].KeyArn", "--output", "text"}},
		{args: []string{"kms", "describe-key", "--key-id", "alias/nope"}},
		{args: []string{"kms", "describe-key"}},
		{args: []string{"kms", "describe-key", "--key-id", k1, "--bogus", "1"}},
		{args: []string{"kms", "describe-key", "--cli-input-json", "file://" + inJSON, "--query", "KeyMetadata.Description"}},
		{args: []string{"kms", "describe-key", "--cli-input-json", "{not json"}},
		{args: []string{"kms", "list-aliases", "--key-id", k1}},
		{args: []string{"kms", "list-aliases", "--key-id", k1, "--output", "table"}},
		{args: []string{"kms", "list-resource-tags", "--key-id", k1}},
		{args: []string{"kms", "list-resource-tags", "--key-id", k1, "--output", "text"}},
		{args: []string{"kms", "list-resource-tags", "--key-id", k1, "--output", "table"}},
		{args: []string{"kms", "get-key-rotation-status", "--key-id", k1, "--output", "text"}},
		{args: []string{"kms", "get-key-policy", "--key-id", k1, "--policy-name", "default", "--output", "text"}},
		{args: []string{"kms", "list-key-policies", "--key-id", k1}},
		{args: []string{"kms", "decrypt", "--ciphertext-blob", ct, "--encryption-context", "purpose=diff", "--query", "Plaintext", "--output", "text"}},
		{args: []string{"kms", "decrypt", "--ciphertext-blob", ct, "--encryption-context", `{"purpose":"other"}`}},
		{args: []string{"kms", "decrypt", "--ciphertext-blob", "fileb://" + ctFile}},
		{args: []string{"kms", "encrypt", "--key-id", k1, "--plaintext", "aGVsbG8="}, norm: true},
		{args: []string{"kms", "encrypt", "--key-id", k1, "--plaintext", "fileb://" + ptFile, "--query", "[KeyId, EncryptionAlgorithm]"}},
		{args: []string{"kms", "encrypt", "--key-id", k1, "--plaintext", "!!"}},
		{args: []string{"kms", "encrypt", "--key-id", k1, "--plaintext", "abc"}},
		{args: []string{"kms", "encrypt", "--key-id", k1, "--plaintext", "fileb:///nonexistent/file"}},
		{args: []string{"kms", "generate-random", "--number-of-bytes", "16"}, norm: true},
		{args: []string{"kms", "generate-random", "--number-of-bytes", "0"}},
		{args: []string{"kms", "generate-random", "--number-of-bytes", "abc"}},
		{args: []string{"kms", "generate-data-key", "--key-id", k1, "--key-spec", "AES_256", "--query", "KeyId"}},
		{args: []string{"kms", "generate-data-key-without-plaintext", "--key-id", k1, "--number-of-bytes", "32"}, norm: true},
		// Sign, Verify, GetPublicKey, GenerateMac, VerifyMac and
		// GenerateDataKeyPair(WithoutPlaintext). DeriveSharedSecret is
		// left out: the oracle, Debian's aws CLI 2.9, has no
		// derive-shared-secret command.
		{args: []string{"kms", "sign", "--key-id", rsaKey, "--message", "fileb://" + msgFile, "--signing-algorithm", "RSASSA_PKCS1_V1_5_SHA_256", "--output", "text", "--query", "Signature"}},
		{args: []string{"kms", "sign", "--key-id", rsaKey, "--message", "fileb://" + msgFile, "--signing-algorithm", "RSASSA_PKCS1_V1_5_SHA_256"}},
		{args: []string{"kms", "sign", "--key-id", rsaKey, "--message", "fileb://" + digestFile, "--message-type", "DIGEST", "--signing-algorithm", "RSASSA_PKCS1_V1_5_SHA_256", "--output", "yaml"}},
		{args: []string{"kms", "sign", "--key-id", eccKey, "--message", "fileb://" + msgFile, "--signing-algorithm", "ECDSA_SHA_256"}, norm: true},
		{args: []string{"kms", "sign", "--key-id", eccKey, "--message", "bWVzc2FnZQ==", "--signing-algorithm", "ECDSA_SHA_256", "--query", "[KeyId, SigningAlgorithm]", "--output", "text"}},
		{args: []string{"kms", "sign", "--key-id", eccKey, "--message", "fileb://" + msgFile, "--signing-algorithm", "RSASSA_PSS_SHA_256"}},
		{args: []string{"kms", "sign", "--key-id", k1, "--message", "fileb://" + msgFile, "--signing-algorithm", "ECDSA_SHA_256"}},
		{args: []string{"kms", "sign", "--key-id", eccKey, "--message", "fileb://" + msgFile}},
		{args: []string{"kms", "get-public-key", "--key-id", rsaKey, "--output", "text", "--query", "PublicKey"}},
		{args: []string{"kms", "get-public-key", "--key-id", eccKey}},
		{args: []string{"kms", "get-public-key", "--key-id", eccKey, "--output", "table"}},
		{args: []string{"kms", "get-public-key", "--key-id", macKey}},
		{args: []string{"kms", "verify", "--key-id", rsaKey, "--message", "fileb://" + msgFile, "--signature", "fileb://" + rsaSig, "--signing-algorithm", "RSASSA_PKCS1_V1_5_SHA_256"}},
		{args: []string{"kms", "verify", "--key-id", eccKey, "--message", "fileb://" + msgFile, "--signature", "fileb://" + eccSig, "--signing-algorithm", "ECDSA_SHA_256", "--output", "text"}},
		{args: []string{"kms", "verify", "--key-id", eccKey, "--message", "fileb://" + digestFile, "--signature", "fileb://" + eccSig, "--signing-algorithm", "ECDSA_SHA_256"}},
		{args: []string{"kms", "generate-mac", "--key-id", macKey, "--message", "fileb://" + msgFile, "--mac-algorithm", "HMAC_SHA_256"}},
		{args: []string{"kms", "generate-mac", "--key-id", macKey, "--message", "fileb://" + msgFile, "--mac-algorithm", "HMAC_SHA_256", "--output", "text", "--query", "Mac"}},
		{args: []string{"kms", "generate-mac", "--key-id", macKey, "--message", "fileb://" + msgFile, "--mac-algorithm", "HMAC_SHA_512"}},
		{args: []string{"kms", "verify-mac", "--key-id", macKey, "--message", "fileb://" + msgFile, "--mac-algorithm", "HMAC_SHA_256", "--mac", "fileb://" + mac}},
		{args: []string{"kms", "verify-mac", "--key-id", macKey, "--message", "fileb://" + digestFile, "--mac-algorithm", "HMAC_SHA_256", "--mac", "fileb://" + mac}},
		{args: []string{"kms", "generate-data-key-pair-without-plaintext", "--key-id", k1, "--key-pair-spec", "ECC_NIST_P256"}, norm: true},
		{args: []string{"kms", "generate-data-key-pair-without-plaintext", "--key-id", "alias/diff-one", "--key-pair-spec", "RSA_2048", "--encryption-context", "purpose=diff", "--query", "[KeyId, KeyPairSpec]", "--output", "text"}},
		{args: []string{"kms", "generate-data-key-pair-without-plaintext", "--key-id", k1, "--key-pair-spec", "RSA_1024"}},
		{args: []string{"kms", "generate-data-key-pair-without-plaintext", "--key-id", eccKey, "--key-pair-spec", "ECC_NIST_P256"}},
		{args: []string{"kms", "generate-data-key-pair", "--key-id", k1, "--key-pair-spec", "ECC_NIST_P384"}, norm: true},
		{args: []string{"kms", "create-key", "--description", "made twice", "--tags", "TagKey=a,TagValue=b", "--query", "KeyMetadata.[Description,KeyUsage,KeySpec]"}},
		{args: []string{"kms", "create-key", "--cli-input-json", `{"Description":"from json","KeyUsage":"ENCRYPT_DECRYPT"}`, "--description", "from the command line", "--query", "KeyMetadata.[Description,KeyUsage]", "--output", "text"}},
		{args: []string{"kms", "create-key", "--description", "d"}, norm: true},
		{args: []string{"kms", "tag-resource", "--key-id", k1, "--tags", "TagKey=env,TagValue=test"}},
		{args: []string{"kms", "tag-resource", "--key-id", k1, "--tags", `[{"TagKey":"env","TagValue":"test"}]`}},
		{args: []string{"kms", "tag-resource", "--key-id", k1, "--tags", "Foo=1"}},
		{args: []string{"kms", "tag-resource", "--key-id", k1, "--tags", "TagKey=a,TagValue"}},
		{args: []string{"kms", "update-key-description", "--key-id", k1, "--description", "differential one"}},
		{args: []string{"kms", "enable-key", "--key-id", k1}},
		{args: []string{"kms", "enable-key", "--key-id", k2, "--generate-cli-skeleton", "output"}},
		{args: []string{"kms", "connect-custom-key-store", "--custom-key-store-id", "cks-1234567890abcdef0"}},
		{args: []string{"kms", "describe-custom-key-stores"}},
		{args: []string{"kms", "describe-custom-key-stores", "--custom-key-store-name", "x", "--output", "table"}},
		{args: []string{"kms", "list-grants", "--key-id", k1}},
		{args: []string{"kms", "describe-key", "--key-id", k1, "--region", "eu-west-1"}},
		{args: []string{"kms", "describe-key", "--key-id", k1, "--endpoint-url", "http://127.0.0.1:1"}},
		{args: []string{"kms", "list-keys", "--no-sign-request"}},
		{args: []string{"kms", "list-keys"}, noProfile: true},
		{args: []string{"kms", "list-keys", "--profile", "nope"}, noProfile: true},
	}
	type outcome struct{ aws, ctl result }
	results := make([]outcome, len(steps))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 4)
	run := func(i int, s step) {
		args := []string{"--endpoint-url", k.endpoint}
		if !s.noProfile {
			args = append(args, "--profile", "kmsd")
		}
		args = append(args, s.args...)
		results[i].aws = runBin(ctx, awsBin, env, args...)
		results[i].ctl = runBin(ctx, kmsctlOracle, env, args...)
	}
	// Each step's two runs are sequential (aws first). Read-only steps run
	// concurrently; steps that change what others read (a new key shows in
	// list-keys, a tag in list-resource-tags) run one by one afterwards, so
	// no read can fall between a step's aws run and its kmsctl run.
	var later []int
	for i, s := range steps {
		if mutates(s.args) {
			later = append(later, i)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			run(i, s)
		}()
	}
	wg.Wait()
	for _, i := range later {
		run(i, steps[i])
	}
	for i, s := range steps {
		a, c := results[i].aws, results[i].ctl
		a.stderr = asKmsctl(a.stderr)
		if s.norm {
			a.stdout, c.stdout = normalize(a.stdout), normalize(c.stdout)
		}
		name := strings.Join(s.args, " ")
		if a.code != c.code || a.stdout != c.stdout || a.stderr != c.stderr {
			t.Errorf("%s\n  aws    rc=%d stdout=%q stderr=%q\n  kmsctl rc=%d stdout=%q stderr=%q", name, a.code, a.stdout, a.stderr, c.code, c.stdout, c.stderr)
		}
	}
	t.Logf("%d invocations compared", len(steps))
}

func decodeB64(s string) ([]byte, error) {
	return jsonB64(s)
}

func jsonB64(s string) ([]byte, error) {
	var b []byte
	err := json.Unmarshal([]byte(`"`+s+`"`), &b)
	return b, err
}

// mutates reports whether a step changes state that other steps read.
func mutates(args []string) bool {
	if len(args) < 2 {
		return false
	}
	switch args[1] {
	case "create-key", "tag-resource", "untag-resource", "update-key-description", "enable-key", "disable-key",
		"connect-custom-key-store", "disconnect-custom-key-store", "create-alias", "delete-alias", "update-alias":
		return true
	}
	return false
}
