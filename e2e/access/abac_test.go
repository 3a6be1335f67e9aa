package access

import (
	"encoding/base64"
	"strings"
	"testing"
)

// TestABACConditionKeys is the ABAC issue's reproduction with the real aws
// CLI: a key with alias alias/k1 and tag env=prod, whose key policy lets
// the account root do everything and denies kms:Encrypt by
// kms:ResourceAliases, kms:Decrypt by aws:ResourceTag/env and
// kms:GenerateDataKey by kms:RequestAlias. AWS denies all three; so must
// kmsd. The same calls on a key with another alias and tag value, or
// naming the key by id, still succeed.
func TestABACConditionKeys(t *testing.T) {
	s := start(t, iamConfig)
	admin := adminProfile(t, s)
	const userARN = "arn:aws:iam::" + account + ":user/abac-user"
	s.ok(admin, "iam", "create-user", "--user-name", "abac-user")
	ak := s.ok(admin, "iam", "create-access-key", "--user-name", "abac-user")
	user := credsProfile("abac-user", str(ak, "AccessKey", "AccessKeyId"), str(ak, "AccessKey", "SecretAccessKey"), "")
	s.ok(admin, "iam", "put-user-policy", "--user-name", "abac-user", "--policy-name", "all",
		"--policy-document", `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:*","Resource":"*"}]}`)

	keyPolicy := `{"Version":"2012-10-17","Statement":[
	  {"Sid":"root","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::` + account + `:root"},"Action":"kms:*","Resource":"*"},
	  {"Sid":"by-alias","Effect":"Deny","Principal":"*","Action":"kms:Encrypt","Resource":"*","Condition":{"ForAnyValue:StringEquals":{"kms:ResourceAliases":"alias/k1"}}},
	  {"Sid":"by-tag","Effect":"Deny","Principal":"*","Action":"kms:Decrypt","Resource":"*","Condition":{"StringEquals":{"aws:ResourceTag/env":"prod"}}},
	  {"Sid":"by-request-alias","Effect":"Deny","Principal":"*","Action":"kms:GenerateDataKey","Resource":"*","Condition":{"StringEquals":{"kms:RequestAlias":"alias/k1"}}}]}`
	mkKey := func(alias, env string) (arn, id, blob string) {
		k := s.ok(admin, "kms", "create-key", "--tags", "TagKey=env,TagValue="+env)
		arn, id = str(k, "KeyMetadata", "Arn"), str(k, "KeyMetadata", "KeyId")
		s.ok(admin, "kms", "create-alias", "--alias-name", alias, "--target-key-id", id)
		// A ciphertext made before the deny is in place.
		e := s.ok(user, "kms", "encrypt", "--key-id", id, "--plaintext", base64.StdEncoding.EncodeToString([]byte("abac")))
		s.ok(admin, "kms", "put-key-policy", "--key-id", id, "--policy-name", "default", "--policy", keyPolicy)
		return arn, id, str(e, "CiphertextBlob")
	}
	k1ARN, k1ID, k1Blob := mkKey("alias/k1", "prod")
	_, k2ID, k2Blob := mkKey("alias/k2", "dev")
	plain := base64.StdEncoding.EncodeToString([]byte("abac"))

	explicit := func(out string) {
		t.Helper()
		if !strings.Contains(out, "with an explicit deny in a resource-based policy") {
			t.Errorf("stderr %q: want AWS's explicit-deny wording", out)
		}
	}
	explicit(s.denied(user, userARN, "kms:Encrypt on resource: "+k1ARN, "kms", "encrypt", "--key-id", k1ID, "--plaintext", plain))
	explicit(s.denied(user, userARN, "kms:Decrypt on resource: "+k1ARN, "kms", "decrypt", "--ciphertext-blob", k1Blob))
	explicit(s.denied(user, userARN, "kms:GenerateDataKey on resource: "+k1ARN, "kms", "generate-data-key", "--key-id", "alias/k1", "--key-spec", "AES_256"))
	explicit(s.denied(user, userARN, "kms:GenerateDataKey on resource: "+k1ARN, "kms", "generate-data-key",
		"--key-id", "arn:aws:kms:"+region+":"+account+":alias/k1", "--key-spec", "AES_256"))

	// The same key named by id is not denied by kms:RequestAlias; the
	// key with another alias and tag value is not denied at all.
	s.ok(user, "kms", "generate-data-key", "--key-id", k1ID, "--key-spec", "AES_256")
	s.ok(user, "kms", "encrypt", "--key-id", k2ID, "--plaintext", plain)
	s.ok(user, "kms", "encrypt", "--key-id", "alias/k2", "--plaintext", plain)
	s.ok(user, "kms", "decrypt", "--ciphertext-blob", k2Blob)
	s.ok(user, "kms", "generate-data-key", "--key-id", "alias/k2", "--key-spec", "AES_256")

	// Policies naming keys kmsd cannot fill are refused, naming the key.
	for _, c := range [][]string{
		{"kms", "put-key-policy", "--key-id", k2ID, "--policy-name", "default", "--policy",
			`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::` + account + `:root"},"Action":"kms:*","Resource":"*","Condition":{"StringEquals":{"aws:PrincipalOrgID":"o-1"}}}]}`},
		{"iam", "put-user-policy", "--user-name", "abac-user", "--policy-name", "org", "--policy-document",
			`{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Action":"kms:*","Resource":"*","Condition":{"StringNotEquals":{"aws:PrincipalOrgID":"o-1"}}}]}`},
	} {
		code, _, errOut := s.aws(admin, c...)
		if code != 254 || !strings.Contains(errOut, "MalformedPolicyDocument") || !strings.Contains(errOut, "aws:PrincipalOrgID") {
			t.Errorf("aws %s: exit %d, stderr %q; want MalformedPolicyDocument naming aws:PrincipalOrgID", c[1], code, errOut)
		}
	}
}
