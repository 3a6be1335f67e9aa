package kms

import (
	"context"
	"slices"
	"time"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/policy"
)

// CreateGrant gives a grantee principal permission to use a key in the
// listed operations, optionally only with a given encryption context. A
// grant is effective as soon as CreateGrant returns.
func (s *Service) CreateGrant(ctx context.Context, c *Caller, in *kmsapi.CreateGrantRequest) (*kmsapi.CreateGrantResponse, error) {
	k, err := s.resolveCross(ctx, c, *in.KeyId)
	if err != nil {
		return nil, err
	}
	g := &catalog.Grant{
		KeyID:             k.ID,
		Region:            k.Region,
		Name:              derefStr(in.Name),
		GranteePrincipal:  *in.GranteePrincipal,
		RetiringPrincipal: derefStr(in.RetiringPrincipal),
		IssuingAccount:    "arn:aws:iam::" + c.Account + ":root",
		Operations:        slices.Clone(in.Operations),
	}
	if in.Constraints != nil {
		g.ECEquals = in.Constraints.EncryptionContextEquals
		g.ECSubset = in.Constraints.EncryptionContextSubset
	}
	constraint := ""
	switch {
	case g.ECEquals != nil:
		constraint = "EncryptionContextEquals"
	case g.ECSubset != nil:
		constraint = "EncryptionContextSubset"
	}
	extra := func(r *policy.Request) {
		r.Set(policy.KeyGrantOperations, g.Operations...)
		r.Set(policy.KeyGranteePrincipal, g.GranteePrincipal)
		if g.RetiringPrincipal != "" {
			r.Set(policy.KeyRetiringPrincipal, g.RetiringPrincipal)
		}
		if constraint != "" {
			r.Set(policy.KeyGrantConstraintType, constraint)
		}
		r.SetBool(policy.KeyGrantIsForAWSResource, false)
		// The encryption context keys of CreateGrant are those of the
		// grant's constraint, as in AWS.
		switch {
		case g.ECEquals != nil:
			r.SetEncryptionContext(g.ECEquals)
		case g.ECSubset != nil:
			r.SetEncryptionContext(g.ECSubset)
		}
	}
	if err := s.authorizeCreateGrant(ctx, c, k, g, extra); err != nil {
		return nil, err
	}
	if err := notPendingDeletion(k); err != nil {
		return nil, err
	}
	if k.State == keys.Creating { // a new replica (spec §11.2)
		return nil, usable(k)
	}
	if len(g.Operations) == 0 {
		return nil, validation("Value null at 'operations' failed to satisfy constraint: Member must not be null")
	}
	if constraint != "" && k.KeySpec != keys.Symmetric {
		// [U] AWS's text is not recorded (spec §12.2).
		return nil, exc("ValidationException", "Grant constraints are not supported for asymmetric or HMAC KMS keys.")
	}
	allowed := grantOperations
	if k.KeySpec != keys.Symmetric {
		allowed = keys.GrantOperations(k.KeySpec, k.KeyUsage)
	}
	for _, op := range g.Operations {
		if !slices.Contains(allowed, op) {
			return nil, exc("ValidationException", "Grant operations "+op+" are not valid for the key spec "+k.KeySpec+" and key usage "+k.KeyUsage+".")
		}
		if constraint != "" && !slices.Contains(ecOperations, op) {
			return nil, exc("ValidationException", "Grant constraints are not supported for the "+op+" operation.")
		}
	}
	if !validGrantPrincipal(g.GranteePrincipal) {
		return nil, exc("ValidationException", "Invalid GranteePrincipal "+g.GranteePrincipal)
	}
	if g.RetiringPrincipal != "" && !validGrantPrincipal(g.RetiringPrincipal) {
		return nil, exc("ValidationException", "Invalid RetiringPrincipal "+g.RetiringPrincipal)
	}
	if err := dryRun(in.DryRun); err != nil {
		return nil, err
	}
	token, err := s.newGrantToken()
	if err != nil {
		return nil, err
	}
	// A named grant created again with the same parameters is the same
	// grant (CreateGrant is idempotent by name).
	if g.Name != "" {
		list, err := s.cat.Grants(ctx, k.Name())
		if err != nil {
			return nil, internal(err)
		}
		for _, e := range list {
			if e.Name == g.Name && e.GranteePrincipal == g.GranteePrincipal && e.RetiringPrincipal == g.RetiringPrincipal &&
				slices.Equal(e.Operations, g.Operations) && mapsEqual(e.ECEquals, g.ECEquals) && mapsEqual(e.ECSubset, g.ECSubset) {
				return &kmsapi.CreateGrantResponse{GrantId: kmsapi.String(e.ID), GrantToken: kmsapi.String(e.Token)}, nil
			}
		}
	}
	if g.ID, err = s.newGrantID(); err != nil {
		return nil, err
	}
	g.Token = token
	g.Created = s.now().UTC().Truncate(time.Millisecond)
	if err := s.cat.CreateGrant(ctx, g); err != nil {
		return nil, internal(err)
	}
	return &kmsapi.CreateGrantResponse{GrantId: kmsapi.String(g.ID), GrantToken: kmsapi.String(token)}, nil
}

// authorizeCreateGrant is authorizeKey for CreateGrant: a grant that
// allows CreateGrant lets its grantee create only grants it covers.
func (s *Service) authorizeCreateGrant(ctx context.Context, c *Caller, k *catalog.Key, g *catalog.Grant, extra func(*policy.Request)) error {
	c.addResource(k.ARN())
	if c.Trusted && k.Account == c.Account {
		return nil
	}
	r := s.request(c, "kms:CreateGrant", k.ARN())
	kp := s.keyPolicy(k)
	if err := s.setKeyConditions(ctx, r, k, readers{kp, c.Policies, c.SessionPolicies}); err != nil {
		return err
	}
	extra(r)
	ok, reason := policy.Decide(kp, c.identity(), policy.NoGrant, r)
	if ok {
		return nil
	}
	if reason.GrantMayAllow() {
		gm, err := s.grantAllowing(ctx, c, k, "kms:CreateGrant", nil, g)
		if err != nil {
			return err
		}
		if ok, _ := policy.Decide(s.keyPolicy(k), c.identity(), gm, r); ok && gm != policy.NoGrant {
			return nil
		}
	}
	return accessDenied(r, reason)
}
