package policy_test

import (
	"fmt"
	"time"

	"github.com/kmsd/kmsd/internal/policy"
)

// An Encrypt call by an IAM user against a key with the default key
// policy: the key policy defers to IAM, so the user's identity policies
// decide.
func ExampleDecide() {
	keyPolicy, err := policy.Parse(policy.DefaultKeyPolicy("111122223333"), policy.KeyPolicy)
	if err != nil {
		panic(err)
	}
	alice, _ := policy.PrincipalFromARN("arn:aws:iam::111122223333:user/alice")
	r := policy.NewRequest(alice, "kms:Encrypt", "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab")
	r.SetEncryptionContext(map[string]string{"purpose": "backup"})
	r.SetTime(time.Date(2024, 6, 1, 12, 0, 0, 0, time.UTC))

	allowed, reason := policy.Decide(keyPolicy, policy.Identity{}, policy.NoGrant, r)
	fmt.Println(allowed, reason)
	fmt.Println(policy.AccessDeniedMessage(r, reason))

	iam, _ := policy.Parse(`{"Version": "2012-10-17", "Statement": {"Effect": "Allow", "Action": "kms:Encrypt", "Resource": "*",
		"Condition": {"StringEquals": {"kms:EncryptionContext:purpose": "backup"}}}}`, policy.IdentityPolicy)
	allowed, reason = policy.Decide(keyPolicy, policy.Identity{Policies: []*policy.Policy{iam}}, policy.NoGrant, r)
	fmt.Println(allowed, reason)
	// Output:
	// false no identity policy allows
	// User: arn:aws:iam::111122223333:user/alice is not authorized to perform: kms:Encrypt on resource: arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab because no identity-based policy allows the kms:Encrypt action
	// true allowed by the key policy and an identity policy
}

// A malformed document is rejected with the message for
// MalformedPolicyDocumentException.
func ExampleParse() {
	_, err := policy.Parse(`{"Statement": {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:user/*"}, "Action": "kms:*", "Resource": "*"}}`, policy.KeyPolicy)
	if pe, ok := err.(*policy.Error); ok {
		fmt.Println(pe.Message)
	}
	// Output: Policy contains a statement with one or more invalid principals.
}
