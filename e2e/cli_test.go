package e2e

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The real clients: Debian's aws CLI v2 (package awscli) and Debian's
// Python with boto3 (package python3-boto3). scripts/test.sh installs them.
const (
	awsCLIPath = "/usr/bin/aws"
	pythonPath = "/usr/bin/python3"
)

// The KMS service models the Debian packages ship. They predate
// RotateKeyOnDemand and ListKeyRotations (2024), so the tests overlay them
// with those two operations from AWS's current model
// (testdata/kms-model-rotation.json) in the client's ~/.aws/models, the
// place botocore looks for newer models (what `aws configure add-model`
// writes).
const (
	cliKMSModel   = "/usr/lib/python3/dist-packages/awscli/botocore/data/kms/2014-11-01/service-2.json"
	boto3KMSModel = "/usr/lib/python3/dist-packages/botocore/data/kms/2014-11-01/service-2.json"
)

// installKMSModel writes base, with the operations and shapes of
// testdata/kms-model-rotation.json it lacks, as the KMS model in
// home/.aws/models.
func installKMSModel(t *testing.T, home, base string) {
	t.Helper()
	b, err := os.ReadFile(base)
	if err != nil {
		t.Fatalf("the KMS model of the Debian package: %v", err)
	}
	var model map[string]any
	if err := json.Unmarshal(b, &model); err != nil {
		t.Fatalf("%s: %v", base, err)
	}
	b, err = os.ReadFile(filepath.Join("testdata", "kms-model-rotation.json"))
	if err != nil {
		t.Fatalf("model supplement: %v", err)
	}
	var sup map[string]map[string]any
	if err := json.Unmarshal(b, &sup); err != nil {
		t.Fatalf("model supplement: %v", err)
	}
	for _, part := range []string{"operations", "shapes"} {
		m, ok := model[part].(map[string]any)
		if !ok {
			t.Fatalf("%s: no %s", base, part)
		}
		for name, def := range sup[part] {
			if _, ok := m[name]; !ok {
				m[name] = def
			}
		}
	}
	dir := filepath.Join(home, ".aws", "models", "kms", "2014-11-01")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatalf("%v", err)
	}
	out, err := json.Marshal(model)
	if err != nil {
		t.Fatalf("%v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "service-2.json"), out, 0o600); err != nil {
		t.Fatalf("%v", err)
	}
}

// clientHome makes a HOME for a Python client: empty config, the KMS model
// overlay, nothing from the real home directory.
func clientHome(t *testing.T, baseModel string) string {
	t.Helper()
	home := t.TempDir()
	installKMSModel(t, home, baseModel)
	if err := os.WriteFile(filepath.Join(home, "config"), nil, 0o600); err != nil {
		t.Fatalf("%v", err)
	}
	return home
}

// awsCLI runs the aws CLI v2 against one server.
type awsCLI struct {
	t    *testing.T
	s    *server
	env  []string
	home string
}

// newCLI returns an aws CLI using the profile kmsd of the credentials file
// kmsd wrote; credEnv, when given, replaces the profile (for example with
// AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY).
func newCLI(t *testing.T, s *server, credEnv ...string) *awsCLI {
	t.Helper()
	if _, err := os.Stat(awsCLIPath); err != nil {
		t.Fatalf("the aws CLI v2 (Debian package awscli) is required: %v", err)
	}
	home := clientHome(t, cliKMSModel)
	env := append(cleanEnv(),
		"HOME="+home,
		"AWS_CONFIG_FILE="+filepath.Join(home, "config"),
		"AWS_DEFAULT_REGION="+region,
		"AWS_PAGER=",
		"AWS_EC2_METADATA_DISABLED=true",
		"AWS_CLI_AUTO_PROMPT=off",
	)
	if len(credEnv) == 0 {
		credEnv = []string{"AWS_SHARED_CREDENTIALS_FILE=" + filepath.Join(s.DataDir, "credentials"), "AWS_PROFILE=kmsd"}
	}
	return &awsCLI{t: t, s: s, env: append(env, credEnv...), home: home}
}

// run runs `aws --endpoint-url … --output json kms args…`.
func (c *awsCLI) run(args ...string) (code int, stdout, stderr string) {
	c.t.Helper()
	cmd := exec.Command(awsCLIPath, append([]string{"--endpoint-url", c.s.Endpoint, "--output", "json", "kms"}, args...)...)
	cmd.Env = c.env
	cmd.Dir = c.home
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		c.t.Fatalf("aws kms %s: %v", strings.Join(args, " "), err)
	}
	return code, out.String(), errb.String()
}

// ok runs a command that must succeed and returns its JSON output.
func (c *awsCLI) ok(args ...string) map[string]any {
	c.t.Helper()
	code, stdout, stderr := c.run(args...)
	if code != 0 {
		c.t.Fatalf("aws kms %s: exit %d, stderr %q", strings.Join(args, " "), code, stderr)
	}
	var v map[string]any
	if strings.TrimSpace(stdout) == "" {
		return v
	}
	if err := json.Unmarshal([]byte(stdout), &v); err != nil {
		c.t.Fatalf("aws kms %s: output is not JSON: %v: %q", strings.Join(args, " "), err, stdout)
	}
	return v
}

// text runs a command that must succeed and returns its output trimmed
// (for --output text --query …).
func (c *awsCLI) text(args ...string) string {
	c.t.Helper()
	code, stdout, stderr := c.run(args...)
	if code != 0 {
		c.t.Fatalf("aws kms %s: exit %d, stderr %q", strings.Join(args, " "), code, stderr)
	}
	return strings.TrimSpace(stdout)
}

// fails runs a command that must fail as a service error does: exit
// status 254 and exactly the line want on stderr.
func (c *awsCLI) fails(want string, args ...string) {
	c.t.Helper()
	code, stdout, stderr := c.run(args...)
	if code != 254 || strings.TrimSpace(stderr) != strings.TrimSpace(want) {
		c.t.Errorf("aws kms %s:\n got exit %d, stderr %q (stdout %q)\nwant exit 254, stderr %q", strings.Join(args, " "), code, stderr, stdout, want)
	}
}

// file writes b to a new file and returns its fileb:// URL.
func (c *awsCLI) file(name string, b []byte) string {
	c.t.Helper()
	p := filepath.Join(c.t.TempDir(), name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		c.t.Fatalf("%v", err)
	}
	return "fileb://" + p
}

// decrypt decrypts the blob in blobURL with extra arguments and returns
// the plaintext: --output text --query Plaintext, base64-decoded.
func (c *awsCLI) decrypt(blobURL string, extra ...string) []byte {
	c.t.Helper()
	out := c.text(append([]string{"decrypt", "--ciphertext-blob", blobURL, "--output", "text", "--query", "Plaintext"}, extra...)...)
	pt, err := base64.StdEncoding.DecodeString(out)
	if err != nil {
		c.t.Fatalf("decrypt: Plaintext is not base64: %q", out)
	}
	return pt
}

// field walks v along path (object members) and returns what is there.
func field(t *testing.T, v any, path ...string) any {
	t.Helper()
	for _, p := range path {
		m, ok := v.(map[string]any)
		if !ok {
			t.Fatalf("field %v: %s is not in %v", path, p, v)
		}
		v = m[p]
	}
	return v
}

func str(t *testing.T, v any, path ...string) string {
	t.Helper()
	s, _ := field(t, v, path...).(string)
	return s
}

// blobOf base64-decodes the CiphertextBlob member of an output.
func blobOf(t *testing.T, v any) []byte {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(str(t, v, "CiphertextBlob"))
	if err != nil || len(b) == 0 {
		t.Fatalf("CiphertextBlob: %v in %v", err, v)
	}
	return b
}

func cliError(code, op, msg string) string {
	return "An error occurred (" + code + ") when calling the " + op + " operation: " + msg
}

// TestCLIFlow drives a key's life with the aws CLI v2 and the profile kmsd
// writes.
func TestCLIFlow(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	c := newCLI(t, s)

	md := c.ok("create-key", "--description", "cli key")
	k1 := str(t, md, "KeyMetadata", "KeyId")
	arn1 := keyARN(k1)
	if got := str(t, md, "KeyMetadata", "Arn"); got != arn1 {
		t.Errorf("create-key: Arn: got %q, want %q", got, arn1)
	}
	if got := str(t, md, "KeyMetadata", "KeyState"); got != "Enabled" {
		t.Errorf("create-key: KeyState: got %q, want Enabled", got)
	}
	k2 := str(t, c.ok("create-key", "--description", "cli second key"), "KeyMetadata", "KeyId")
	arn2 := keyARN(k2)

	// encrypt from a file, decrypt with and without --key-id.
	pt := []byte("cli plaintext \x00\x01\xfe\xff")
	ptURL := c.file("pt.bin", pt)
	ec := `{"purpose":"cli","tenant":"acme"}`
	enc := c.ok("encrypt", "--key-id", k1, "--plaintext", ptURL, "--encryption-context", ec)
	if got := str(t, enc, "KeyId"); got != arn1 {
		t.Errorf("encrypt: KeyId: got %q, want %q", got, arn1)
	}
	blobURL := c.file("ct.bin", blobOf(t, enc))
	for _, extra := range [][]string{nil, {"--key-id", k1}, {"--key-id", arn1}} {
		if got := c.decrypt(blobURL, append([]string{"--encryption-context", ec}, extra...)...); !bytes.Equal(got, pt) {
			t.Errorf("decrypt %v: got %x, want %x", extra, got, pt)
		}
	}

	// re-encrypt to the second key.
	re := c.ok("re-encrypt", "--ciphertext-blob", blobURL, "--source-encryption-context", ec,
		"--destination-key-id", k2, "--destination-encryption-context", `{"stage":"re"}`)
	if str(t, re, "SourceKeyId") != arn1 || str(t, re, "KeyId") != arn2 {
		t.Errorf("re-encrypt: SourceKeyId, KeyId: got %q, %q; want %q, %q", str(t, re, "SourceKeyId"), str(t, re, "KeyId"), arn1, arn2)
	}
	reURL := c.file("re.bin", blobOf(t, re))
	if got := c.decrypt(reURL, "--encryption-context", `{"stage":"re"}`); !bytes.Equal(got, pt) {
		t.Errorf("decrypt of the re-encrypted blob: got %x, want %x", got, pt)
	}

	// generate-data-key: the plaintext key is what its blob decrypts to.
	dk := c.ok("generate-data-key", "--key-id", k1, "--key-spec", "AES_256")
	dkPlain, err := base64.StdEncoding.DecodeString(str(t, dk, "Plaintext"))
	if err != nil || len(dkPlain) != 32 {
		t.Fatalf("generate-data-key: Plaintext: got %q (%v), want 32 bytes in base64", str(t, dk, "Plaintext"), err)
	}
	if got := c.decrypt(c.file("dk.bin", blobOf(t, dk))); !bytes.Equal(got, dkPlain) {
		t.Errorf("decrypt of the data key blob: got %x, want %x", got, dkPlain)
	}

	// Aliases.
	const alias = "alias/cli-flow"
	c.ok("create-alias", "--alias-name", alias, "--target-key-id", k1)
	if got := str(t, c.ok("describe-key", "--key-id", alias), "KeyMetadata", "KeyId"); got != k1 {
		t.Errorf("describe-key %s: got %q, want %q", alias, got, k1)
	}
	if got := str(t, c.ok("describe-key", "--key-id", aliasARN(alias)), "KeyMetadata", "KeyId"); got != k1 {
		t.Errorf("describe-key %s: got %q, want %q", aliasARN(alias), got, k1)
	}
	viaAlias := c.ok("encrypt", "--key-id", alias, "--plaintext", ptURL)
	if got := str(t, viaAlias, "KeyId"); got != arn1 {
		t.Errorf("encrypt via %s: KeyId: got %q, want %q", alias, got, arn1)
	}
	c.ok("update-alias", "--alias-name", alias, "--target-key-id", k2)
	la, _ := field(t, c.ok("list-aliases", "--key-id", k2), "Aliases").([]any)
	if len(la) != 1 || str(t, la[0], "AliasName") != alias || str(t, la[0], "AliasArn") != aliasARN(alias) || str(t, la[0], "TargetKeyId") != k2 {
		t.Errorf("list-aliases --key-id %s: got %s, want one alias %s → %s", k2, jsonString(la), alias, k2)
	}
	c.ok("delete-alias", "--alias-name", alias)
	c.fails(cliError("NotFoundException", "DescribeKey", "Alias "+aliasARN(alias)+" is not found."), "describe-key", "--key-id", alias)

	// rotate-key-on-demand: the blob made before still decrypts.
	c.ok("rotate-key-on-demand", "--key-id", k1)
	if got := c.decrypt(blobURL, "--encryption-context", ec); !bytes.Equal(got, pt) {
		t.Errorf("decrypt after rotation: got %x, want %x", got, pt)
	}
	rots, _ := field(t, c.ok("list-key-rotations", "--key-id", k1), "Rotations").([]any)
	if len(rots) != 1 || str(t, rots[0], "RotationType") != "ON_DEMAND" || str(t, rots[0], "KeyId") != k1 {
		t.Errorf("list-key-rotations: got %s, want one ON_DEMAND rotation of %s", jsonString(rots), k1)
	}

	// disable-key / enable-key.
	c.ok("disable-key", "--key-id", k1)
	if got := str(t, c.ok("describe-key", "--key-id", k1), "KeyMetadata", "KeyState"); got != "Disabled" {
		t.Errorf("describe-key after disable-key: KeyState: got %q, want Disabled", got)
	}
	c.fails(cliError("DisabledException", "Encrypt", arn1+" is disabled."), "encrypt", "--key-id", k1, "--plaintext", ptURL)
	c.fails(cliError("DisabledException", "Decrypt", arn1+" is disabled."), "decrypt", "--ciphertext-blob", blobURL, "--encryption-context", ec)
	c.ok("enable-key", "--key-id", k1)
	if got := c.decrypt(blobURL, "--encryption-context", ec); !bytes.Equal(got, pt) {
		t.Errorf("decrypt after enable-key: got %x, want %x", got, pt)
	}

	// schedule-key-deletion / cancel-key-deletion.
	sd := c.ok("schedule-key-deletion", "--key-id", k1, "--pending-window-in-days", "7")
	if str(t, sd, "KeyState") != "PendingDeletion" || field(t, sd, "PendingWindowInDays") != float64(7) || str(t, sd, "DeletionDate") == "" {
		t.Errorf("schedule-key-deletion: got %s, want PendingDeletion in 7 days", jsonString(sd))
	}
	if got := str(t, c.ok("describe-key", "--key-id", k1), "KeyMetadata", "KeyState"); got != "PendingDeletion" {
		t.Errorf("describe-key after schedule-key-deletion: KeyState: got %q, want PendingDeletion", got)
	}
	c.fails(cliError("KMSInvalidStateException", "Encrypt", arn1+" is pending deletion."), "encrypt", "--key-id", k1, "--plaintext", ptURL)
	if got := str(t, c.ok("cancel-key-deletion", "--key-id", k1), "KeyId"); got != arn1 {
		t.Errorf("cancel-key-deletion: KeyId: got %q, want %q", got, arn1)
	}
	if got := str(t, c.ok("describe-key", "--key-id", k1), "KeyMetadata", "KeyState"); got != "Disabled" {
		t.Errorf("describe-key after cancel-key-deletion: KeyState: got %q, want Disabled", got)
	}
}

// TestCLIErrors checks the exit status and the error line the aws CLI
// prints for requests AWS KMS refuses.
func TestCLIErrors(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	cr := s.Creds()
	c := newCLI(t, s)
	k := str(t, c.ok("create-key"), "KeyMetadata", "KeyId")
	arn := keyARN(k)

	const missing = "6f1f3a43-5b2e-4c0e-8f6d-000000000001"
	c.fails(cliError("NotFoundException", "DescribeKey", "Key '"+keyARN(missing)+"' does not exist"), "describe-key", "--key-id", missing)

	pt := []byte("cli errors")
	ptURL := c.file("pt.bin", pt)
	blob := blobOf(t, c.ok("encrypt", "--key-id", k, "--plaintext", ptURL, "--encryption-context", `{"ab":"c"}`))
	for _, i := range []int{0, 3, len(blob) / 2, len(blob) - 1} {
		bad := bytes.Clone(blob)
		bad[i] ^= 0x01
		c.fails(cliError("InvalidCiphertextException", "Decrypt", ""), "decrypt", "--ciphertext-blob", c.file("bad.bin", bad), "--encryption-context", `{"ab":"c"}`)
	}
	blobURL := c.file("ct.bin", blob)
	c.fails(cliError("InvalidCiphertextException", "Decrypt", ""), "decrypt", "--ciphertext-blob", blobURL, "--encryption-context", `{"a":"bc"}`)
	if got := c.decrypt(blobURL, "--encryption-context", `{"ab":"c"}`); !bytes.Equal(got, pt) {
		t.Errorf("decrypt with the right context: got %x, want %x", got, pt)
	}

	c.fails(cliError("ValidationException", "Encrypt", "1 validation error detected: Value at 'plaintext' failed to satisfy constraint: Member must have length less than or equal to 4096"),
		"encrypt", "--key-id", k, "--plaintext", c.file("big.bin", make([]byte, 4097)))
	c.fails(cliError("ValidationException", "CreateKey", "1 validation error detected: Value 'BOGUS' at 'keyUsage' failed to satisfy constraint: Member must satisfy enum value set: [SIGN_VERIFY, ENCRYPT_DECRYPT, GENERATE_VERIFY_MAC, KEY_AGREEMENT]"),
		"create-key", "--key-usage", "BOGUS")

	c.ok("disable-key", "--key-id", k)
	c.fails(cliError("DisabledException", "Encrypt", arn+" is disabled."), "encrypt", "--key-id", k, "--plaintext", ptURL)

	badSecret := newCLI(t, s, "AWS_ACCESS_KEY_ID="+cr.AccessKeyID, "AWS_SECRET_ACCESS_KEY="+cr.SecretAccessKey+"x")
	badSecret.fails(cliError("InvalidSignatureException", "ListKeys",
		"The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details."),
		"list-keys")
	unknown := newCLI(t, s, "AWS_ACCESS_KEY_ID=AKIAE2EUNKNOWNKEY000", "AWS_SECRET_ACCESS_KEY="+cr.SecretAccessKey)
	unknown.fails(cliError("UnrecognizedClientException", "ListKeys", "The security token included in the request is invalid."), "list-keys")
}
