package access

import (
	"encoding/base64"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmsd/kmsd/e2e/e2etest"
)

// stsConfig declares the roles of TestAssumeRoleParameters in the default
// account: one allowed to encrypt and decrypt, two whose trust policies
// check sts:ExternalId (StringEquals, and a Deny on StringNotEquals), and
// one whose identity policy allows kms:Encrypt only to sessions with the
// source identity alice-laptop, one whose identity policy allows it only
// to sessions tagged team=blue.
const stsConfig = `
[[accounts]]
id = "` + account + `"

  [[accounts.roles]]
  name = "crypto"
  assume_role_policy = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::` + account + `:root"},"Action":"sts:AssumeRole"}]}'
  [accounts.roles.policies]
  use = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["kms:Encrypt","kms:Decrypt"],"Resource":"*"}]}'

  [[accounts.roles]]
  name = "partner"
  assume_role_policy = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::` + account + `:root"},"Action":"sts:AssumeRole","Condition":{"StringEquals":{"sts:ExternalId":"partner-7f3a"}}}]}'

  [[accounts.roles]]
  name = "partner-not"
  assume_role_policy = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::` + account + `:root"},"Action":"sts:AssumeRole"},{"Effect":"Deny","Principal":{"AWS":"*"},"Action":"sts:AssumeRole","Condition":{"StringNotEquals":{"sts:ExternalId":"partner-7f3a"}}}]}'

  [[accounts.roles]]
  name = "traced"
  assume_role_policy = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::` + account + `:root"},"Action":["sts:AssumeRole","sts:SetSourceIdentity"]}]}'
  [accounts.roles.policies]
  encrypt = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:Encrypt","Resource":"*","Condition":{"StringEquals":{"aws:SourceIdentity":"alice-laptop"}}}]}'

  [[accounts.roles]]
  name = "team"
  assume_role_policy = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::` + account + `:root"},"Action":["sts:AssumeRole","sts:TagSession"]}]}'
  [accounts.roles.policies]
  blue = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:Encrypt","Resource":"*","Condition":{"StringEquals":{"aws:PrincipalTag/team":"blue"}}}]}'
`

// TestAssumeRoleParameters: AssumeRole's session policy, ExternalId,
// session tags and DurationSeconds, through the aws CLI v2.
func TestAssumeRoleParameters(t *testing.T) {
	s := start(t, stsConfig)
	admin := adminProfile(t, s)
	adminARN := str(s.ok(admin, "sts", "get-caller-identity"), "Arn")
	k := s.ok(admin, "kms", "create-key", "--description", "sts")
	keyARN := str(k, "KeyMetadata", "Arn")
	plain := base64.StdEncoding.EncodeToString([]byte("session policy test"))
	ct := str(s.ok(admin, "kms", "encrypt", "--key-id", keyARN, "--plaintext", plain), "CiphertextBlob")
	roleARN := func(name string) string { return "arn:aws:iam::" + account + ":role/" + name }
	session := func(ar map[string]any, name string) profile {
		return credsProfile(name, str(ar, "Credentials", "AccessKeyId"), str(ar, "Credentials", "SecretAccessKey"), str(ar, "Credentials", "SessionToken"))
	}

	// A session policy allowing only Decrypt limits a role allowed both.
	ar := s.ok(admin, "sts", "assume-role", "--role-arn", roleARN("crypto"), "--role-session-name", "decrypt-only",
		"--policy", `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:Decrypt","Resource":"*"}]}`)
	if _, ok := ar["PackedPolicySize"]; !ok {
		t.Errorf("assume-role with a session policy: no PackedPolicySize in %v", ar)
	}
	limited := session(ar, "decrypt-only")
	sessARN := "arn:aws:sts::" + account + ":assumed-role/crypto/decrypt-only"
	msg := s.denied(limited, sessARN, "kms:Encrypt on resource: "+keyARN, "kms", "encrypt", "--key-id", keyARN, "--plaintext", plain)
	if !strings.Contains(msg, "because no session policy allows the kms:Encrypt action") {
		t.Errorf("encrypt under a Decrypt-only session policy: %s", msg)
	}
	if d := s.ok(limited, "kms", "decrypt", "--ciphertext-blob", ct); str(d, "Plaintext") != plain {
		t.Errorf("decrypt under the session policy: %v", d)
	}
	// Without a session policy the role's own permissions apply.
	full := session(s.ok(admin, "sts", "assume-role", "--role-arn", roleARN("crypto"), "--role-session-name", "full"), "full")
	s.ok(full, "kms", "encrypt", "--key-id", keyARN, "--plaintext", plain)
	// A managed session policy kmsd does not know is refused, not dropped.
	code, _, errOut := s.aws(admin, "sts", "assume-role", "--role-arn", roleARN("crypto"), "--role-session-name", "managed",
		"--policy-arns", "arn=arn:aws:iam::"+account+":policy/nope")
	if code == 0 || !strings.Contains(errOut, "NoSuchEntity") {
		t.Errorf("unknown managed session policy: exit %d %q", code, errOut)
	}

	// ExternalId, both ways.
	s.ok(admin, "sts", "assume-role", "--role-arn", roleARN("partner"), "--role-session-name", "p1", "--external-id", "partner-7f3a")
	s.denied(admin, adminARN, "sts:AssumeRole", "sts", "assume-role", "--role-arn", roleARN("partner"), "--role-session-name", "p1", "--external-id", "wrong-id")
	s.denied(admin, adminARN, "sts:AssumeRole", "sts", "assume-role", "--role-arn", roleARN("partner"), "--role-session-name", "p1")
	s.ok(admin, "sts", "assume-role", "--role-arn", roleARN("partner-not"), "--role-session-name", "p1", "--external-id", "partner-7f3a")
	s.denied(admin, adminARN, "sts:AssumeRole", "sts", "assume-role", "--role-arn", roleARN("partner-not"), "--role-session-name", "p1", "--external-id", "wrong-id")
	s.denied(admin, adminARN, "sts:AssumeRole", "sts", "assume-role", "--role-arn", roleARN("partner-not"), "--role-session-name", "p1")

	// Session tags are the session's aws:PrincipalTag/*.
	blue := session(s.ok(admin, "sts", "assume-role", "--role-arn", roleARN("team"), "--role-session-name", "blue", "--tags", "Key=team,Value=blue"), "blue")
	s.ok(blue, "kms", "encrypt", "--key-id", keyARN, "--plaintext", plain)
	red := session(s.ok(admin, "sts", "assume-role", "--role-arn", roleARN("team"), "--role-session-name", "red", "--tags", "Key=team,Value=red"), "red")
	s.denied(red, "arn:aws:sts::"+account+":assumed-role/team/red", "kms:Encrypt", "kms", "encrypt", "--key-id", keyARN, "--plaintext", plain)
	// Tags need sts:TagSession in the trust policy.
	s.denied(admin, adminARN, "sts:TagSession", "sts", "assume-role", "--role-arn", roleARN("crypto"), "--role-session-name", "t1", "--tags", "Key=team,Value=blue")

	// A source identity is the session's aws:SourceIdentity, and its audit
	// records carry it.
	ar = s.ok(admin, "sts", "assume-role", "--role-arn", roleARN("traced"), "--role-session-name", "traced", "--source-identity", "alice-laptop")
	if str(ar, "SourceIdentity") != "alice-laptop" {
		t.Errorf("assume-role with a source identity: %v", ar)
	}
	s.ok(session(ar, "traced"), "kms", "encrypt", "--key-id", keyARN, "--plaintext", plain)
	untraced := session(s.ok(admin, "sts", "assume-role", "--role-arn", roleARN("traced"), "--role-session-name", "untraced"), "untraced")
	s.denied(untraced, "arn:aws:sts::"+account+":assumed-role/traced/untraced", "kms:Encrypt", "kms", "encrypt", "--key-id", keyARN, "--plaintext", plain)

	// The CLI refuses a DurationSeconds below 900 itself; with its
	// parameter validation off, kmsd answers as STS does.
	cfg := filepath.Join(t.TempDir(), "config")
	if err := os.WriteFile(cfg, []byte("[default]\nparameter_validation = false\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	noValidation := profile{"admin", append(append([]string(nil), admin.env...), "AWS_CONFIG_FILE="+cfg)}
	code, _, errOut = s.aws(noValidation, "sts", "assume-role", "--role-arn", roleARN("crypto"), "--role-session-name", "short", "--duration-seconds", "899")
	want := ": 1 validation error detected: Value '899' at 'durationSeconds' failed to satisfy constraint: Member must have value greater than or equal to 900"
	if code != 254 || !strings.Contains(errOut, "(ValidationError)") || !strings.Contains(errOut, want) {
		t.Errorf("duration 899: exit %d %q; want %q", code, errOut, want)
	}
	code, _, errOut = s.aws(admin, "sts", "assume-role", "--role-arn", roleARN("crypto"), "--role-session-name", "long", "--duration-seconds", "7200")
	if code != 254 || !strings.Contains(errOut, "The requested DurationSeconds exceeds the MaxSessionDuration set for this role.") {
		t.Errorf("duration 7200: exit %d %q", code, errOut)
	}

	s.stop()
	b, err := os.ReadFile(filepath.Join(s.dataDir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	traced := 0
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var r map[string]any
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		if str(r, "eventName") == "Encrypt" && str(r, "userIdentity", "arn") == "arn:aws:sts::"+account+":assumed-role/traced/traced" {
			traced++
			if got := str(r, "userIdentity", "sessionContext", "sourceIdentity"); got != "alice-laptop" {
				t.Errorf("audit record of the traced session: sourceIdentity %q: %s", got, line)
			}
		}
	}
	if traced != 1 {
		t.Errorf("%d Encrypt records of the traced session, want 1", traced)
	}
}

// TestSessionAcrossRestart: a role session's credentials, issued by one
// kmsd process, are accepted by the next process on the same data (a
// restart here; any node with the same root key and database in
// multi-node), with the session policy they were issued with, because the
// session token carries the session sealed; an altered token is refused
// with STS's and KMS's error for an invalid token. Through the aws CLI v2.
func TestSessionAcrossRestart(t *testing.T) {
	s := start(t, stsConfig)
	admin := adminProfile(t, s)
	keyARN := str(s.ok(admin, "kms", "create-key", "--description", "restart"), "KeyMetadata", "Arn")
	ar := s.ok(admin, "sts", "assume-role", "--role-arn", "arn:aws:iam::"+account+":role/crypto", "--role-session-name", "survivor",
		"--policy", `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["kms:Encrypt","sts:GetCallerIdentity"],"Resource":"*"}]}`)
	akid, secret, token := str(ar, "Credentials", "AccessKeyId"), str(ar, "Credentials", "SecretAccessKey"), str(ar, "Credentials", "SessionToken")
	sess := credsProfile("survivor", akid, secret, token)
	plain := base64.StdEncoding.EncodeToString([]byte("across a restart"))
	s.ok(sess, "kms", "encrypt", "--key-id", keyARN, "--plaintext", plain)

	// Restart on the same data directory: the new process has never seen
	// the session.
	s.stop()
	p := e2etest.StartKMSD(t, e2etest.KMSDConfig{Bin: kmsdBin, DataDir: s.dataDir, Args: s.proc.Cmd.Args[len(s.proc.Cmd.Args)-2:],
		Env: s.proc.Cmd.Env})
	s.endpoint, s.proc = p.Endpoint, p

	sessARN := "arn:aws:sts::" + account + ":assumed-role/crypto/survivor"
	if got := str(s.ok(sess, "sts", "get-caller-identity"), "Arn"); got != sessARN {
		t.Errorf("after the restart, get-caller-identity of the session: %q, want %q", got, sessARN)
	}
	ct := str(s.ok(sess, "kms", "encrypt", "--key-id", keyARN, "--plaintext", plain), "CiphertextBlob")
	// The session policy still limits the session after the restart.
	s.denied(sess, sessARN, "kms:Decrypt on resource: "+keyARN, "kms", "decrypt", "--ciphertext-blob", ct)

	// One character changed in the middle of the token, for KMS and STS.
	mid := len(token) / 2
	c := byte('A')
	if token[mid] == 'A' {
		c = 'B'
	}
	bad := credsProfile("tampered", akid, secret, token[:mid]+string(c)+token[mid+1:])
	for _, call := range []struct {
		args          []string
		code, message string
	}{
		{[]string{"kms", "encrypt", "--key-id", keyARN, "--plaintext", plain}, "UnrecognizedClientException", "The security token included in the request is invalid."},
		{[]string{"sts", "get-caller-identity"}, "InvalidClientTokenId", "The security token included in the request is invalid."},
	} {
		code, _, errOut := s.aws(bad, call.args...)
		if code == 0 || !strings.Contains(errOut, "("+call.code+")") || !strings.Contains(errOut, call.message) {
			t.Errorf("aws %s with a tampered token: exit %d, %q; want %s: %s", strings.Join(call.args, " "), code, errOut, call.code, call.message)
		}
	}
}

// TestSessionAcrossProcesses: two kmsd processes on one data directory
// (one database, one root key; SQLite lets both open it) stand for two
// nodes: a role session assumed through the first is accepted by the
// second, which never saw it issued, with its session policy; an altered
// token is refused there too. Their audit logs, one per node, merge
// through kmsctl audit search.
func TestSessionAcrossProcesses(t *testing.T) {
	logs := t.TempDir()
	tmp := t.TempDir()
	cfg := filepath.Join(tmp, "iam.toml")
	if err := os.WriteFile(cfg, []byte(stsConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + tmp}
	pa := e2etest.StartKMSD(t, e2etest.KMSDConfig{Bin: kmsdBin, Env: env,
		Args: []string{"--iam-config", cfg, "--node-id", "node-a", "--audit-log", filepath.Join(logs, "a.log")}})
	a := &kmsd{t: t, dataDir: pa.DataDir, endpoint: pa.Endpoint, logPath: pa.LogFile, proc: pa}
	admin := adminProfile(t, a)
	keyARN := str(a.ok(admin, "kms", "create-key", "--description", "two nodes"), "KeyMetadata", "Arn")

	pb := e2etest.StartKMSD(t, e2etest.KMSDConfig{Bin: kmsdBin, Env: env, DataDir: pa.DataDir,
		Args: []string{"--iam-config", cfg, "--node-id", "node-b", "--audit-log", filepath.Join(logs, "b.log")}})
	b := &kmsd{t: t, dataDir: pb.DataDir, endpoint: pb.Endpoint, logPath: pb.LogFile, proc: pb}

	ar := a.ok(admin, "sts", "assume-role", "--role-arn", "arn:aws:iam::"+account+":role/crypto", "--role-session-name", "roamer",
		"--policy", `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["kms:Encrypt","sts:GetCallerIdentity"],"Resource":"*"}]}`)
	akid, secret, token := str(ar, "Credentials", "AccessKeyId"), str(ar, "Credentials", "SecretAccessKey"), str(ar, "Credentials", "SessionToken")
	sess := credsProfile("roamer", akid, secret, token)
	sessARN := "arn:aws:sts::" + account + ":assumed-role/crypto/roamer"
	if got := str(b.ok(sess, "sts", "get-caller-identity"), "Arn"); got != sessARN {
		t.Errorf("node b: get-caller-identity of a session from node a: %q, want %q", got, sessARN)
	}
	plain := base64.StdEncoding.EncodeToString([]byte("issued on a, used on b"))
	ct := str(b.ok(sess, "kms", "encrypt", "--key-id", keyARN, "--plaintext", plain), "CiphertextBlob")
	b.denied(sess, sessARN, "kms:Decrypt on resource: "+keyARN, "kms", "decrypt", "--ciphertext-blob", ct)
	mid := len(token) / 2
	c := byte('A')
	if token[mid] == 'A' {
		c = 'B'
	}
	bad := credsProfile("tampered", akid, secret, token[:mid]+string(c)+token[mid+1:])
	if code, _, errOut := b.aws(bad, "kms", "encrypt", "--key-id", keyARN, "--plaintext", plain); code == 0 ||
		!strings.Contains(errOut, "(UnrecognizedClientException)") || !strings.Contains(errOut, "The security token included in the request is invalid.") {
		t.Errorf("node b, tampered token: exit %d %q", code, errOut)
	}
	a.stop()
	b.stop()

	out, err := exec.Command(kmsctlBin, "audit", "search", "--audit-log", logs, "--principal", akid).Output()
	if err != nil {
		t.Fatalf("kmsctl audit search: %v", err)
	}
	var nodes []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var r struct {
			Extra struct {
				Node string `json:"kmsdNode"`
			} `json:"additionalEventData"`
		}
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		nodes = append(nodes, r.Extra.Node)
	}
	// The session's three authenticated calls, all served by node b (the
	// one with the altered token names no principal).
	if strings.Join(nodes, " ") != "node-b node-b node-b" {
		t.Errorf("audit records of the session's calls come from nodes %v, want node-b three times:\n%s", nodes, out)
	}
}
