package main

import (
	"flag"
	"fmt"
	"os"
)

// keyPolicyFile is -key-policy: a key policy document for the key the
// benchmark creates, to measure the cost of authorization with a
// realistic policy against the default one. "@realistic" stands for the
// built-in five-statement policy below (ACCOUNT is replaced by the
// account id).
var keyPolicyFile string

func registerPolicyFlag(fs *flag.FlagSet) {
	fs.StringVar(&keyPolicyFile, "key-policy", "", "key policy for the benchmark's key: a file, or @realistic for a built-in 5-statement policy with encryption-context conditions (default: KMS's default policy)")
}

// realisticPolicy has five statements as real deployments write them:
// the account root, key administrators, use conditioned on the
// encryption context, use through a service, and a deny of use without
// an encryption context.
const realisticPolicy = `{
  "Version": "2012-10-17",
  "Id": "kmsbench-realistic",
  "Statement": [
    {"Sid": "Enable IAM User Permissions", "Effect": "Allow",
     "Principal": {"AWS": "arn:aws:iam::ACCOUNT:root"}, "Action": "kms:*", "Resource": "*"},
    {"Sid": "Key administrators", "Effect": "Allow",
     "Principal": {"AWS": ["arn:aws:iam::ACCOUNT:role/KeyAdmin", "arn:aws:iam::ACCOUNT:user/kmsd-admin"]},
     "Action": ["kms:Create*", "kms:Describe*", "kms:Enable*", "kms:List*", "kms:Put*", "kms:Update*",
                "kms:Revoke*", "kms:Disable*", "kms:Get*", "kms:Delete*", "kms:TagResource",
                "kms:UntagResource", "kms:ScheduleKeyDeletion", "kms:CancelKeyDeletion"],
     "Resource": "*"},
    {"Sid": "Use with the application's context", "Effect": "Allow",
     "Principal": {"AWS": "arn:aws:iam::ACCOUNT:user/kmsd-admin"},
     "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*"],
     "Resource": "*",
     "Condition": {"StringEquals": {"kms:EncryptionContext:purpose": "kmsbench"},
                   "ForAllValues:StringLike": {"kms:EncryptionContextKeys": ["purpose", "tenant"]}}},
    {"Sid": "Use through a service", "Effect": "Allow",
     "Principal": {"AWS": "arn:aws:iam::ACCOUNT:root"},
     "Action": ["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey*"],
     "Resource": "*",
     "Condition": {"StringEquals": {"kms:ViaService": "s3.us-east-1.amazonaws.com", "kms:CallerAccount": "ACCOUNT"}}},
    {"Sid": "Deny use without a context", "Effect": "Deny",
     "Principal": {"AWS": "*"},
     "Action": ["kms:Encrypt", "kms:GenerateDataKey*"],
     "Resource": "*",
     "Condition": {"Null": {"kms:EncryptionContext:purpose": "true"}}}
  ]
}`

// createKeyBody is the CreateKey request of the benchmark's key.
func createKeyBody() (map[string]any, error) {
	body := map[string]any{"Description": "kmsbench"}
	switch keyPolicyFile {
	case "":
		return body, nil
	case "@realistic":
		body["Policy"] = replaceAccount(realisticPolicy)
	default:
		b, err := os.ReadFile(keyPolicyFile)
		if err != nil {
			return nil, fmt.Errorf("-key-policy: %w", err)
		}
		body["Policy"] = replaceAccount(string(b))
	}
	return body, nil
}

func replaceAccount(doc string) string {
	acct := os.Getenv("KMSBENCH_ACCOUNT")
	if acct == "" {
		acct = "111122223333"
	}
	out := []byte{}
	for i := 0; i < len(doc); {
		if len(doc)-i >= 7 && doc[i:i+7] == "ACCOUNT" {
			out = append(out, acct...)
			i += 7
			continue
		}
		out = append(out, doc[i])
		i++
	}
	return string(out)
}
