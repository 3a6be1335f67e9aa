package seed

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

// identitySeed declares a user with a fixed access key and a policy that
// allows only using keys, and a role.
const (
	aliceKey    = "AKIAKMSDSEEDALICE001"
	aliceSecret = "alice-secret-for-tests-only-0123456789"
)

var identitySeed = `Keys:
  - KeyId: ` + symID + `
    KeyMaterial: [` + symHex + `]
Users:
  - UserName: alice
    Policies:
      use-keys: '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["kms:Encrypt","kms:Decrypt","kms:DescribeKey","sts:AssumeRole"],"Resource":"*"}]}'
    AccessKeys:
      - AccessKeyId: ` + aliceKey + `
        SecretAccessKey: ` + aliceSecret + `
Roles:
  - RoleName: app
    AssumeRolePolicyDocument: '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::` + account + `:user/alice"},"Action":"sts:AssumeRole"}]}'
    Policies:
      decrypt: '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:Decrypt","Resource":"*"}]}'
`

// asAlice runs the aws CLI with alice's seeded access key.
func (e *env) asAlice(args ...string) (int, string) {
	e.t.Helper()
	return e.as([]string{"AWS_ACCESS_KEY_ID=" + aliceKey, "AWS_SECRET_ACCESS_KEY=" + aliceSecret}, args...)
}

// as runs the aws CLI with the credentials in creds.
func (e *env) as(creds []string, args ...string) (int, string) {
	e.t.Helper()
	cmd := exec.Command(awsCLI, append([]string{"--endpoint-url", e.k.Endpoint, "--output", "json"}, args...)...)
	cmd.Env = append(append(withoutProfile(e.k.CLIEnv(e.region)), "HOME="+e.home, "AWS_MAX_ATTEMPTS=1"), creds...)
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), string(out)
	}
	if err != nil {
		e.t.Fatal(err)
	}
	return 0, string(out)
}

// TestSeedIdentities: in verify mode the seed file's IAM users (with
// fixed access keys) and roles exist and are enforced, and a second start
// changes nothing.
func TestSeedIdentities(t *testing.T) {
	data := t.TempDir() + "/data"
	file := write(t, "seed.yaml", identitySeed)
	for start_ := 0; start_ < 2; start_++ {
		e := start(t, data, "us-east-1", "--seed", file)
		if code, out := e.asAlice("kms", "encrypt", "--key-id", symID, "--plaintext", fileb(t, []byte("alice"))); code != 0 {
			t.Fatalf("start %d: alice's encrypt: %s", start_+1, out)
		}
		if code, out := e.asAlice("kms", "create-key"); code == 0 || !strings.Contains(out, "AccessDeniedException") {
			t.Fatalf("start %d: alice's create-key: exit %d %s", start_+1, code, out)
		}
		role := e.ok("iam", "get-role", "--role-name", "app")["Role"].(map[string]any)
		if role["Arn"] != "arn:aws:iam::"+account+":role/app" {
			t.Fatalf("role %v", role)
		}
		// alice may assume the role, whose policy allows Decrypt only.
		code, out := e.asAlice("sts", "assume-role", "--role-arn", role["Arn"].(string), "--role-session-name", "seeded")
		if code != 0 {
			t.Fatalf("assume-role: %s", out)
		}
		var ar struct {
			Credentials struct{ AccessKeyId, SecretAccessKey, SessionToken string }
		}
		if err := json.Unmarshal([]byte(out), &ar); err != nil {
			t.Fatal(err)
		}
		session := []string{"AWS_ACCESS_KEY_ID=" + ar.Credentials.AccessKeyId, "AWS_SECRET_ACCESS_KEY=" + ar.Credentials.SecretAccessKey, "AWS_SESSION_TOKEN=" + ar.Credentials.SessionToken}
		ct := b64(t, e.ok("kms", "encrypt", "--key-id", symID, "--plaintext", fileb(t, []byte("r"))), "CiphertextBlob")
		if code, out := e.as(session, "kms", "decrypt", "--ciphertext-blob", fileb(t, ct)); code != 0 {
			t.Fatalf("the role's decrypt: %s", out)
		}
		if code, out := e.as(session, "kms", "encrypt", "--key-id", symID, "--plaintext", fileb(t, []byte("r"))); code == 0 || !strings.Contains(out, "AccessDeniedException") {
			t.Fatalf("the role's encrypt: exit %d %s", code, out)
		}
		if start_ == 1 && !strings.Contains(e.k.Log(), "created=0 existing=4 differences=0") {
			t.Fatalf("second start's report:\n%s", e.k.Log())
		}
		if strings.Contains(e.k.Log(), aliceSecret) {
			t.Fatal("a seeded secret in the log")
		}
		e.k.Stop()
	}
}
