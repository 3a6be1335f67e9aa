// Package access holds the end-to-end tests of access control and audit:
// they start the real kmsd and drive it with the real aws CLI v2 under
// several identities — the administrator, a user allowed only kms:Encrypt
// on one key, a user of another account, a user without
// kms:ConnectCustomKeyStore, a role session — and then read the audit log.
package access

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

	"github.com/kmsd/kmsd/e2e/e2etest"
)

const (
	awsCLI   = "/usr/bin/aws" // Debian's aws CLI v2; the pip one on PATH is v1
	account  = "111122223333"
	other    = "444455556666"
	region   = "us-east-1"
	carolKey = "AKIACAROLEXAMPLE0001"
	carolSec = "carol-secret-0123456789abcdefghijklmnopqr"
)

var kmsdBin, kmsctlBin string

func TestMain(m *testing.M) {
	e2etest.Main(m, map[string]*string{"kmsd": &kmsdBin, "kmsctl": &kmsctlBin})
}

type kmsd struct {
	t        *testing.T
	dataDir  string
	endpoint string
	logPath  string
	proc     *e2etest.KMSD
	requests int // requests sent, to check the audit log against
}

func start(t *testing.T, iamConfig string) *kmsd {
	tmp := t.TempDir()
	cfg := filepath.Join(tmp, "iam.toml")
	if err := os.WriteFile(cfg, []byte(iamConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	p := e2etest.StartKMSD(t, e2etest.KMSDConfig{Bin: kmsdBin, Args: []string{"--iam-config", cfg},
		Env: []string{"PATH=" + os.Getenv("PATH"), "HOME=" + tmp}})
	return &kmsd{t: t, dataDir: p.DataDir, endpoint: p.Endpoint, logPath: p.LogFile, proc: p}
}

// stop shuts kmsd down (SIGINT, which kmsd treats as SIGTERM) and waits:
// the audit log is flushed before kmsd exits.
func (s *kmsd) stop() { s.proc.Stop() }

// profile is a set of credentials for the aws CLI.
type profile struct {
	name string
	env  []string
}

func credsProfile(name, akid, secret, token string) profile {
	env := []string{"AWS_ACCESS_KEY_ID=" + akid, "AWS_SECRET_ACCESS_KEY=" + secret}
	if token != "" {
		env = append(env, "AWS_SESSION_TOKEN="+token)
	}
	return profile{name, env}
}

// aws runs the aws CLI v2 and returns its exit code, stdout and stderr.
func (s *kmsd) aws(p profile, args ...string) (int, string, string) {
	s.t.Helper()
	if _, err := os.Stat(awsCLI); err != nil {
		s.t.Fatalf("the aws CLI v2 (Debian package awscli) is required at %s: %v", awsCLI, err)
	}
	home := s.t.TempDir()
	cmd := exec.Command(awsCLI, append([]string{"--endpoint-url", s.endpoint, "--output", "json", "--region", region}, args...)...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + home, "AWS_CONFIG_FILE=" + filepath.Join(home, "none"),
		"AWS_SHARED_CREDENTIALS_FILE=" + filepath.Join(home, "none"), "AWS_PAGER=", "AWS_EC2_METADATA_DISABLED=true",
		"AWS_MAX_ATTEMPTS=1", "AWS_RETRY_MODE=standard"}, p.env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	s.requests++
	var ee *exec.ExitError
	code := 0
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		s.t.Fatalf("aws %s: %v", strings.Join(args, " "), err)
	}
	return code, out.String(), errb.String()
}

func (s *kmsd) ok(p profile, args ...string) map[string]any {
	s.t.Helper()
	code, out, errOut := s.aws(p, args...)
	if code != 0 {
		s.t.Fatalf("[%s] aws %s: exit %d: %s", p.name, strings.Join(args, " "), code, errOut)
	}
	var v map[string]any
	if strings.TrimSpace(out) != "" {
		if err := json.Unmarshal([]byte(out), &v); err != nil {
			s.t.Fatalf("[%s] aws %s: output %q: %v", p.name, strings.Join(args, " "), out, err)
		}
	}
	return v
}

// denied runs a call that must be refused with AccessDeniedException (exit
// 254) and a message naming the principal and the action.
func (s *kmsd) denied(p profile, principal, action string, args ...string) string {
	s.t.Helper()
	code, _, errOut := s.aws(p, args...)
	want := "User: " + principal + " is not authorized to perform: " + action
	if code != 254 || !strings.Contains(errOut, "AccessDenied") || !strings.Contains(errOut, want) {
		s.t.Fatalf("[%s] aws %s: exit %d, stderr %q; want exit 254, AccessDenied and %q", p.name, strings.Join(args, " "), code, errOut, want)
	}
	return errOut
}

func str(v any, path ...string) string {
	for _, p := range path {
		m, _ := v.(map[string]any)
		v = m[p]
	}
	s, _ := v.(string)
	return s
}

func adminProfile(t *testing.T, s *kmsd) profile {
	b, err := os.ReadFile(filepath.Join(s.dataDir, "credentials"))
	if err != nil {
		t.Fatal(err)
	}
	var akid, secret string
	for _, line := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(line, "=")
		switch strings.TrimSpace(k) {
		case "aws_access_key_id":
			akid = strings.TrimSpace(v)
		case "aws_secret_access_key":
			secret = strings.TrimSpace(v)
		}
	}
	return credsProfile("admin", akid, secret, "")
}

const iamConfig = `
[[accounts]]
id = "` + other + `"

  [[accounts.users]]
  name = "carol"
  [accounts.users.policies]
  kms-use = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["kms:Encrypt","kms:Decrypt","kms:DescribeKey","kms:ConnectCustomKeyStore"],"Resource":"*"}]}'

    [[accounts.users.access_keys]]
    id = "` + carolKey + `"
    secret = "` + carolSec + `"
`

// TestAccessControlAndAudit is the end-to-end scenario.
func TestAccessControlAndAudit(t *testing.T) {
	s := start(t, iamConfig)
	admin := adminProfile(t, s)
	carol := credsProfile("carol", carolKey, carolSec, "")
	const carolARN = "arn:aws:iam::" + other + ":user/carol"
	const encARN = "arn:aws:iam::" + account + ":user/enc-user"

	// Identities through the IAM API.
	u := s.ok(admin, "iam", "create-user", "--user-name", "enc-user")
	if str(u, "User", "Arn") != encARN || !strings.HasPrefix(str(u, "User", "UserId"), "AIDA") {
		t.Fatalf("create-user: %v", u)
	}
	ak := s.ok(admin, "iam", "create-access-key", "--user-name", "enc-user")
	encKey, encSecret := str(ak, "AccessKey", "AccessKeyId"), str(ak, "AccessKey", "SecretAccessKey")
	if !strings.HasPrefix(encKey, "AKIA") || len(encSecret) != 40 {
		t.Fatalf("create-access-key: %v", ak)
	}
	enc := credsProfile("enc-user", encKey, encSecret, "")
	if g := s.ok(admin, "iam", "get-user", "--user-name", "enc-user"); str(g, "User", "UserName") != "enc-user" {
		t.Fatalf("get-user: %v", g)
	}
	lu := s.ok(admin, "iam", "list-users")
	if b, _ := json.Marshal(lu); !strings.Contains(string(b), "enc-user") || !strings.Contains(string(b), "kmsd-admin") {
		t.Fatalf("list-users: %s", b)
	}
	s.ok(admin, "iam", "create-user", "--user-name", "no-cks")
	nk := s.ok(admin, "iam", "create-access-key", "--user-name", "no-cks")
	noCKS := credsProfile("no-cks", str(nk, "AccessKey", "AccessKeyId"), str(nk, "AccessKey", "SecretAccessKey"), "")
	s.ok(admin, "iam", "put-user-policy", "--user-name", "no-cks", "--policy-name", "most",
		"--policy-document", `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:*","Resource":"*"},{"Effect":"Deny","Action":"kms:ConnectCustomKeyStore","Resource":"*"}]}`)

	// Keys.
	k1 := s.ok(admin, "kms", "create-key", "--description", "k1")
	k1ARN, k1ID := str(k1, "KeyMetadata", "Arn"), str(k1, "KeyMetadata", "KeyId")
	k2 := s.ok(admin, "kms", "create-key", "--description", "k2")
	k2ARN := str(k2, "KeyMetadata", "Arn")
	s.ok(admin, "iam", "put-user-policy", "--user-name", "enc-user", "--policy-name", "encrypt-k1",
		"--policy-document", `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:Encrypt","Resource":"`+k1ARN+`"}]}`)

	// The user allowed only kms:Encrypt on k1.
	secretPlain := "plaintext-NEVER-LOGGED-7f3a9c"
	plainB64 := base64.StdEncoding.EncodeToString([]byte(secretPlain))
	e := s.ok(enc, "kms", "encrypt", "--key-id", k1ARN, "--plaintext", plainB64)
	ciphertext := str(e, "CiphertextBlob")
	s.denied(enc, encARN, "kms:Encrypt on resource: "+k2ARN, "kms", "encrypt", "--key-id", k2ARN, "--plaintext", plainB64)
	s.denied(enc, encARN, "kms:Decrypt on resource: "+k1ARN, "kms", "decrypt", "--ciphertext-blob", ciphertext)
	s.denied(enc, encARN, "kms:DescribeKey", "kms", "describe-key", "--key-id", k1ID)
	s.denied(enc, encARN, "kms:ListKeys", "kms", "list-keys")
	s.denied(enc, encARN, "kms:CreateKey", "kms", "create-key")
	s.denied(enc, encARN, "iam:CreateUser", "iam", "create-user", "--user-name", "mallory")
	// The admin decrypts; the data key and its plaintext are used too.
	d := s.ok(admin, "kms", "decrypt", "--ciphertext-blob", ciphertext)
	if str(d, "Plaintext") != plainB64 {
		t.Fatalf("decrypt: %v", d)
	}
	dk := s.ok(admin, "kms", "generate-data-key", "--key-id", k1ID, "--key-spec", "AES_256")
	dataKey := str(dk, "Plaintext")

	// A grant gives enc-user Encrypt on k2, with an encryption context.
	g := s.ok(admin, "kms", "create-grant", "--key-id", k2ARN, "--grantee-principal", encARN,
		"--operations", "Encrypt", "--constraints", "EncryptionContextSubset={purpose=test}")
	grantID, grantToken := str(g, "GrantId"), str(g, "GrantToken")
	s.ok(enc, "kms", "encrypt", "--key-id", k2ARN, "--plaintext", plainB64, "--encryption-context", "purpose=test", "--grant-tokens", grantToken)
	s.denied(enc, encARN, "kms:Encrypt on resource: "+k2ARN, "kms", "encrypt", "--key-id", k2ARN, "--plaintext", plainB64)
	lg := s.ok(admin, "kms", "list-grants", "--key-id", k2ARN)
	if b, _ := json.Marshal(lg); !strings.Contains(string(b), grantID) {
		t.Fatalf("list-grants: %s", b)
	}
	s.denied(enc, encARN, "kms:RetireGrant", "kms", "retire-grant", "--grant-token", grantToken)
	s.ok(admin, "kms", "revoke-grant", "--key-id", k2ARN, "--grant-id", grantID)
	s.denied(enc, encARN, "kms:Encrypt on resource: "+k2ARN, "kms", "encrypt", "--key-id", k2ARN, "--plaintext", plainB64, "--encryption-context", "purpose=test")

	// The user of another account: its IAM policy is not enough…
	s.denied(carol, carolARN, "kms:Encrypt on resource: "+k1ARN, "kms", "encrypt", "--key-id", k1ARN, "--plaintext", plainB64)
	// …until the key policy allows its account.
	pol := `{"Version":"2012-10-17","Statement":[
{"Sid":"Enable IAM User Permissions","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::` + account + `:root"},"Action":"kms:*","Resource":"*"},
{"Sid":"Other account","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::` + other + `:root"},"Action":["kms:Encrypt","kms:DescribeKey","kms:ConnectCustomKeyStore"],"Resource":"*"}]}`
	s.ok(admin, "kms", "put-key-policy", "--key-id", k1ID, "--policy-name", "default", "--policy", pol)
	s.ok(carol, "kms", "encrypt", "--key-id", k1ARN, "--plaintext", plainB64)
	if dsc := s.ok(carol, "kms", "describe-key", "--key-id", k1ARN); str(dsc, "KeyMetadata", "KeyId") != k1ID {
		t.Fatalf("describe-key across accounts: %v", dsc)
	}
	s.denied(carol, carolARN, "kms:Decrypt on resource: "+k1ARN, "kms", "decrypt", "--ciphertext-blob", ciphertext)
	// Custom key store operations are decided by IAM alone: carol's IAM
	// policy allows kms:ConnectCustomKeyStore, and the key policy even names
	// it, but custom key store operations never cross accounts: carol
	// reaches only her own account's stores (none exist yet).
	code, _, errOut := s.aws(carol, "kms", "connect-custom-key-store", "--custom-key-store-id", "cks-1234567890abcdef0")
	if code != 254 || strings.Contains(errOut, "AccessDenied") {
		t.Fatalf("carol connect-custom-key-store: exit %d %q", code, errOut)
	}
	// The user without kms:ConnectCustomKeyStore.
	s.denied(noCKS, "arn:aws:iam::"+account+":user/no-cks", "kms:ConnectCustomKeyStore", "kms", "connect-custom-key-store", "--custom-key-store-id", "cks-1234567890abcdef0")
	s.ok(noCKS, "kms", "list-keys")

	// A role and a session through STS.
	trust := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::` + account + `:root"},"Action":"sts:AssumeRole"}]}`
	s.ok(admin, "iam", "create-role", "--role-name", "app", "--assume-role-policy-document", trust)
	s.ok(admin, "iam", "put-role-policy", "--role-name", "app", "--policy-name", "describe",
		"--policy-document", `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:DescribeKey","Resource":"*"}]}`)
	ar := s.ok(admin, "sts", "assume-role", "--role-arn", "arn:aws:iam::"+account+":role/app", "--role-session-name", "s1")
	sessSecret, sessToken := str(ar, "Credentials", "SecretAccessKey"), str(ar, "Credentials", "SessionToken")
	role := credsProfile("role", str(ar, "Credentials", "AccessKeyId"), sessSecret, sessToken)
	sessARN := "arn:aws:sts::" + account + ":assumed-role/app/s1"
	if id := s.ok(role, "sts", "get-caller-identity"); str(id, "Arn") != sessARN {
		t.Fatalf("get-caller-identity: %v", id)
	}
	s.ok(role, "kms", "describe-key", "--key-id", k1ID)
	s.denied(role, sessARN, "kms:Encrypt", "kms", "encrypt", "--key-id", k1ID, "--plaintext", plainB64)
	s.denied(enc, encARN, "sts:AssumeRole", "sts", "assume-role", "--role-arn", "arn:aws:iam::"+account+":role/app", "--role-session-name", "xx")

	// Clean-up through the IAM API.
	s.ok(admin, "iam", "delete-user-policy", "--user-name", "enc-user", "--policy-name", "encrypt-k1")
	s.ok(admin, "iam", "delete-access-key", "--user-name", "enc-user", "--access-key-id", encKey)
	code, _, errOut = s.aws(enc, "kms", "encrypt", "--key-id", k1ARN, "--plaintext", plainB64)
	if code != 254 || !strings.Contains(errOut, "UnrecognizedClient") {
		t.Fatalf("deleted key still works: %d %q", code, errOut)
	}
	s.ok(admin, "iam", "delete-user", "--user-name", "enc-user")

	s.stop()
	checkAudit(t, s, map[string]string{
		"plaintext": secretPlain, "plaintext (base64)": plainB64, "ciphertext": ciphertext, "data key": dataKey,
		"enc-user secret key": encSecret, "carol secret key": carolSec, "session secret key": sessSecret,
		"session token": sessToken, "grant token": grantToken,
	}, encARN, k2ARN)

	// kmsctl audit search.
	out, err := exec.Command(kmsctlBin, "audit", "search", "--audit-log", filepath.Join(s.dataDir, "audit.log"),
		"--principal", encARN, "--event-name", "Encrypt", "--key-id", k2ARN).Output()
	if err != nil {
		t.Fatalf("kmsctl audit search: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 4 { // one allowed by the grant, three denied
		t.Fatalf("kmsctl audit search found %d records, want 4:\n%s", len(lines), out)
	}
}

// checkAudit reads the audit log: exactly one record per request, with
// the CloudTrail fields, and none of the secrets in it or in the server
// log.
func checkAudit(t *testing.T, s *kmsd, secrets map[string]string, encARN, k2ARN string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.dataDir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	logb, _ := os.ReadFile(s.logPath)
	for what, v := range secrets {
		if v == "" {
			t.Fatalf("secret %s is empty: the test did not get it", what)
		}
		if bytes.Contains(b, []byte(v)) {
			t.Errorf("the audit log contains the %s", what)
		}
		if bytes.Contains(logb, []byte(v)) {
			t.Errorf("the server log contains the %s", what)
		}
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != s.requests {
		t.Fatalf("audit log has %d records for %d requests", len(lines), s.requests)
	}
	ids := map[string]bool{}
	fields := []string{"eventVersion", "userIdentity", "eventTime", "eventSource", "eventName", "awsRegion",
		"sourceIPAddress", "userAgent", "requestParameters", "responseElements", "requestID", "eventID",
		"readOnly", "eventType", "managementEvent", "recipientAccountId"}
	deniedEncrypt := 0
	for _, line := range lines {
		var r map[string]any
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		for _, f := range fields {
			if _, ok := r[f]; !ok {
				t.Fatalf("record lacks %s: %s", f, line)
			}
		}
		if ids[str(r, "requestID")] {
			t.Fatalf("request id %s twice", str(r, "requestID"))
		}
		ids[str(r, "requestID")] = true
		if str(r, "sourceIPAddress") != "127.0.0.1" || !strings.Contains(str(r, "userAgent"), "aws-cli/2") {
			t.Fatalf("record source: %s", line)
		}
		if str(r, "eventName") == "Encrypt" && str(r, "errorCode") == "AccessDeniedException" && str(r, "userIdentity", "arn") == encARN {
			res, _ := r["resources"].([]any)
			if len(res) == 1 && str(res[0], "ARN") == k2ARN {
				deniedEncrypt++
				if !strings.Contains(str(r, "errorMessage"), "kms:Encrypt") || str(r, "userIdentity", "type") != "IAMUser" ||
					str(r, "eventSource") != "kms.amazonaws.com" || str(r, "userIdentity", "userName") != "enc-user" {
					t.Fatalf("denied record: %s", line)
				}
			}
		}
	}
	if deniedEncrypt != 3 {
		t.Fatalf("%d denied Encrypt records of enc-user on k2, want 3", deniedEncrypt)
	}
}
