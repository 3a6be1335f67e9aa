package kms

import (
	"context"
	"encoding/json"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/kmsapi"
)

// defaultPolicy is the key policy AWS writes when CreateKey has none:
// the account's root may do everything, so IAM policies decide.
func defaultPolicy(account string) string {
	return `{
  "Version" : "2012-10-17",
  "Id" : "key-default-1",
  "Statement" : [ {
    "Sid" : "Enable IAM User Permissions",
    "Effect" : "Allow",
    "Principal" : {
      "AWS" : "arn:aws:iam::` + account + `:root"
    },
    "Action" : "kms:*",
    "Resource" : "*"
  } ]
}`
}

// checkPolicy accepts a document that is a JSON object with a Statement.
// Evaluation of policies is the access-control issue's; here a document
// must at least parse, as AWS rejects malformed ones.
func checkPolicy(doc string) error {
	var p struct {
		Statement json.RawMessage `json:"Statement"`
	}
	if err := json.Unmarshal([]byte(doc), &p); err != nil || len(p.Statement) == 0 {
		return exc("MalformedPolicyDocumentException", "The new key policy will not allow you to update the key policy in the future.")
	}
	return nil
}

func policyName(p *string) error {
	if p != nil && *p != "default" {
		return exc("NotFoundException", "No such policy exists")
	}
	return nil
}

// GetKeyPolicy returns the key's policy document.
func (s *Service) GetKeyPolicy(ctx context.Context, c *Caller, in *kmsapi.GetKeyPolicyRequest) (*kmsapi.GetKeyPolicyResponse, error) {
	k, err := s.resolveKeyID(ctx, c, *in.KeyId)
	if err != nil {
		return nil, err
	}
	if err := policyName(in.PolicyName); err != nil {
		return nil, err
	}
	return &kmsapi.GetKeyPolicyResponse{Policy: kmsapi.String(k.Policy), PolicyName: kmsapi.String("default")}, nil
}

// PutKeyPolicy replaces the key's policy document.
func (s *Service) PutKeyPolicy(ctx context.Context, c *Caller, in *kmsapi.PutKeyPolicyRequest) (*kmsapi.PutKeyPolicyResponse, error) {
	k, err := s.resolveKeyID(ctx, c, *in.KeyId)
	if err != nil {
		return nil, err
	}
	if err := policyName(in.PolicyName); err != nil {
		return nil, err
	}
	if err := notPendingDeletion(k); err != nil {
		return nil, err
	}
	if err := checkPolicy(*in.Policy); err != nil {
		return nil, err
	}
	_, err = s.cat.UpdateKey(ctx, k.ID, func(k *catalog.Key) error {
		k.Policy = *in.Policy
		return nil
	})
	if err != nil {
		return nil, internal(err)
	}
	return &kmsapi.PutKeyPolicyResponse{}, nil
}

// ListKeyPolicies lists the key's policy names: always "default".
func (s *Service) ListKeyPolicies(ctx context.Context, c *Caller, in *kmsapi.ListKeyPoliciesRequest) (*kmsapi.ListKeyPoliciesResponse, error) {
	if _, err := s.resolveKeyID(ctx, c, *in.KeyId); err != nil {
		return nil, err
	}
	return &kmsapi.ListKeyPoliciesResponse{PolicyNames: []string{"default"}, Truncated: kmsapi.Bool(false)}, nil
}
