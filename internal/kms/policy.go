package kms

import (
	"context"
	"errors"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/policy"
)

// checkPolicy applies CreateKey's and PutKeyPolicy's rules to a key
// policy document: the size limit, the policy language, and — unless the
// caller bypasses it — the lockout safety check (the new policy must still
// let the caller change it). Enforcement of policies on requests is the
// access-control issue's.
func checkPolicy(c *Caller, doc string, bypass *bool) error {
	if err := policy.CheckKeyPolicySize(doc); err != nil {
		return exc("LimitExceededException", "The key policy exceeds the maximum size of 32768 bytes.")
	}
	p, err := policy.Parse(doc, policy.KeyPolicy)
	if err == nil {
		err = policy.CheckConditionKeys(p)
	}
	if err != nil {
		return exc("MalformedPolicyDocumentException", policyMessage(err))
	}
	if bypass != nil && *bypass {
		return nil
	}
	principal, err := policy.PrincipalFromARN(c.ARN)
	if err != nil {
		principal = policy.RootPrincipal(c.Account)
	}
	if err := policy.CheckLockout(p, policy.NewRequest(principal, "kms:PutKeyPolicy", "*")); err != nil {
		return exc("MalformedPolicyDocumentException", policyMessage(err))
	}
	return nil
}

func policyMessage(err error) string {
	var pe *policy.Error
	if errors.As(err, &pe) {
		return pe.Message
	}
	return "The policy is malformed."
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
	if err := s.authorizeKey(ctx, c, "kms:GetKeyPolicy", k, nil, nil); err != nil {
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
	if err := s.authorizeKey(ctx, c, "kms:PutKeyPolicy", k, nil, func(r *policy.Request) {
		setBool(r, policy.KeyBypassLockoutCheck, in.BypassPolicyLockoutSafetyCheck)
	}); err != nil {
		return nil, err
	}
	if err := policyName(in.PolicyName); err != nil {
		return nil, err
	}
	if err := notPendingDeletion(k); err != nil {
		return nil, err
	}
	if err := checkPolicy(c, *in.Policy, in.BypassPolicyLockoutSafetyCheck); err != nil {
		return nil, err
	}
	_, err = s.cat.UpdateKey(ctx, k.Name(), func(k *catalog.Key) error {
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
	k, err := s.resolveKeyID(ctx, c, *in.KeyId)
	if err != nil {
		return nil, err
	}
	if err := s.authorizeKey(ctx, c, "kms:ListKeyPolicies", k, nil, nil); err != nil {
		return nil, err
	}
	return &kmsapi.ListKeyPoliciesResponse{PolicyNames: []string{"default"}, Truncated: kmsapi.Bool(false)}, nil
}
