package access

import (
	"regexp"
	"strings"
	"testing"
)

// crossAccountConfig declares carol of account 444455556666, whose IAM
// policy allows kms:GetKeyRotationStatus on any key: what a key of another
// account lets her do is then up to its key policy. dave, of the same
// account, has no IAM policy.
const crossAccountConfig = `
[[accounts]]
id = "` + other + `"

  [[accounts.users]]
  name = "carol"
  [accounts.users.policies]
  rotation = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:GetKeyRotationStatus","Resource":"*"}]}'

    [[accounts.users.access_keys]]
    id = "` + carolKey + `"
    secret = "` + carolSec + `"

  [[accounts.users]]
  name = "dave"

    [[accounts.users.access_keys]]
    id = "` + daveKey + `"
    secret = "` + daveSec + `"
`

const (
	daveKey = "AKIADAVEEXAMPLE00001"
	daveSec = "dave-secret-0123456789abcdefghijklmnopqrs"
)

// TestCrossAccountKeyRotationStatus is the security issue's repro for
// GetKeyRotationStatus across accounts, with the aws CLI v2. AWS lets a
// principal of another account read a key's rotation status, naming the
// key by its ARN, when both the key policy (for its account) and its IAM
// policy allow it; kmsd used to look the key up in the caller's account
// only and answer NotFoundException. A bare key id is looked up in the
// caller's own account (NotFoundException naming that account's key ARN);
// a key policy that does not name her account, or an IAM policy that does
// not allow the action, is refused with AWS's AccessDeniedException text.
func TestCrossAccountKeyRotationStatus(t *testing.T) {
	s := start(t, crossAccountConfig)
	admin := adminProfile(t, s)
	carol := credsProfile("carol", carolKey, carolSec, "")
	dave := credsProfile("dave", daveKey, daveSec, "")
	const carolARN = "arn:aws:iam::" + other + ":user/carol"
	const daveARN = "arn:aws:iam::" + other + ":user/dave"

	// shared lets account 444455556666 read its rotation status; private
	// keeps the default key policy (its own account only).
	shared := s.ok(admin, "kms", "create-key", "--description", "shared")
	sharedARN, sharedID := str(shared, "KeyMetadata", "Arn"), str(shared, "KeyMetadata", "KeyId")
	private := s.ok(admin, "kms", "create-key", "--description", "private")
	privateARN, privateID := str(private, "KeyMetadata", "Arn"), str(private, "KeyMetadata", "KeyId")
	pol := `{"Version":"2012-10-17","Statement":[
{"Sid":"Enable IAM User Permissions","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::` + account + `:root"},"Action":"kms:*","Resource":"*"},
{"Sid":"Other account reads rotation","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::` + other + `:root"},"Action":"kms:GetKeyRotationStatus","Resource":"*"}]}`
	s.ok(admin, "kms", "put-key-policy", "--key-id", sharedID, "--policy-name", "default", "--policy", pol)
	for _, id := range []string{sharedID, privateID} {
		s.ok(admin, "kms", "enable-key-rotation", "--key-id", id)
	}
	// The owner still reads it (its root statement was kept).
	if r := s.ok(admin, "kms", "get-key-rotation-status", "--key-id", sharedID); r["KeyRotationEnabled"] != true {
		t.Fatalf("owner get-key-rotation-status: %v", r)
	}

	tests := []struct {
		name      string
		who       profile
		keyID     string
		exception string // "": success with KeyRotationEnabled true
		message   string // the exception's whole message
	}{
		{"key ARN, key policy allows her account", carol, sharedARN, "", ""},
		{"bare key id, looked up in her own account", carol, sharedID, "NotFoundException",
			"Key 'arn:aws:kms:" + region + ":" + other + ":key/" + sharedID + "' does not exist"},
		{"key ARN, key policy does not name her account", carol, privateARN, "AccessDeniedException",
			"User: " + carolARN + " is not authorized to perform: kms:GetKeyRotationStatus on resource: " + privateARN +
				" because no resource-based policy allows the kms:GetKeyRotationStatus action"},
		{"key policy allows his account, his IAM policy does not", dave, sharedARN, "AccessDeniedException",
			"User: " + daveARN + " is not authorized to perform: kms:GetKeyRotationStatus on resource: " + sharedARN +
				" because no identity-based policy allows the kms:GetKeyRotationStatus action"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := s.aws(tt.who, "kms", "get-key-rotation-status", "--key-id", tt.keyID)
			if tt.exception == "" {
				if code != 0 || !strings.Contains(out, `"KeyRotationEnabled": true`) {
					t.Fatalf("exit %d, stdout %q, stderr %q; want KeyRotationEnabled true", code, out, errOut)
				}
				return
			}
			if exc, msg := cliError(errOut); code != 254 || exc != tt.exception || msg != tt.message {
				t.Fatalf("exit %d, stderr %q; want exit 254, %s and the message %q", code, errOut, tt.exception, tt.message)
			}
		})
	}
}

// cliErrorRe is the aws CLI v2's report of an error answer: "An error
// occurred (<exception>) when calling the <Op> operation[ (reached max
// retries: N)]: <message>".
var cliErrorRe = regexp.MustCompile(`An error occurred \((\w+)\) when calling the \w+ operation(?: \([^)]*\))?: (.*)`)

// cliError is the exception and the whole message in the aws CLI's stderr.
func cliError(stderr string) (exception, message string) {
	m := cliErrorRe.FindStringSubmatch(stderr)
	if m == nil {
		return "", ""
	}
	return m[1], m[2]
}
