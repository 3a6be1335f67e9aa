package kms

import (
	"context"
	"errors"
	"slices"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/policy"
)

var errFound = errors.New("found")

// RetireGrant deletes a grant, named by its token or by key and grant id.
// As in KMS, policies do not decide who may: the grant's retiring
// principal, its grantee when the grant allows RetireGrant, and the root
// of the account that issued it may.
func (s *Service) RetireGrant(ctx context.Context, c *Caller, in *kmsapi.RetireGrantRequest) (*kmsapi.RetireGrantResponse, error) {
	var g *catalog.Grant
	var k *catalog.Key
	switch {
	case in.GrantToken != nil:
		err := s.cat.AllGrants(ctx, func(e *catalog.Grant) error {
			if e.Token == *in.GrantToken {
				g = e
				return errFound
			}
			return nil
		})
		if err != nil && !errors.Is(err, errFound) {
			return nil, internal(err)
		}
		if g == nil {
			return nil, exc("InvalidGrantTokenException", "Grant token is not valid")
		}
		if k, err = s.cat.Key(ctx, g.KeyName()); err != nil {
			return nil, exc("InvalidGrantTokenException", "Grant token is not valid")
		}
		if in.GrantId != nil && *in.GrantId != g.ID {
			return nil, exc("InvalidGrantIdException", "The grant id does not match the grant token")
		}
	case in.KeyId != nil && in.GrantId != nil:
		var err error
		if k, err = s.resolveCross(ctx, c, *in.KeyId); err != nil {
			return nil, err
		}
		list, err := s.cat.Grants(ctx, k.Name())
		if err != nil {
			return nil, internal(err)
		}
		for _, e := range list {
			if e.ID == *in.GrantId {
				g = e
			}
		}
		if g == nil {
			return nil, grantNotFound(*in.GrantId)
		}
	default:
		return nil, exc("ValidationException", "Either a grant token or both a key ID and a grant ID are required.")
	}
	c.addResource(k.ARN())
	p := c.principal()
	may := g.RetiringPrincipal == p.ARN || (p.RoleARN != "" && g.RetiringPrincipal == p.RoleARN) ||
		(granteeMatches(g, &p) && slices.Contains(g.Operations, "RetireGrant")) ||
		(p.Type == policy.Root && g.IssuingAccount == p.ARN) ||
		(c.Trusted && k.Account == c.Account)
	if !may {
		r := s.request(c, "kms:RetireGrant", k.ARN())
		return nil, accessDenied(r, policy.NoKeyPolicyAllows)
	}
	// A grant naming the role of a session is limited by the session's
	// session policies, as policy.Decide has it for every grant.
	direct := g.RetiringPrincipal == p.ARN || (g.GranteePrincipal == p.ARN && slices.Contains(g.Operations, "RetireGrant")) ||
		(p.Type == policy.Root && g.IssuingAccount == p.ARN) || (c.Trusted && k.Account == c.Account)
	if !direct && len(c.SessionPolicies) > 0 {
		r := s.request(c, "kms:RetireGrant", k.ARN())
		if ok, reason := policy.Decide(nil, policy.Identity{Session: c.SessionPolicies}, policy.GrantToRole, r); !ok {
			return nil, accessDenied(r, reason)
		}
	}
	if err := dryRun(in.DryRun); err != nil {
		return nil, err
	}
	if err := s.cat.DeleteGrant(ctx, k.Name(), g.ID); err != nil {
		if errors.Is(err, catalog.ErrNotFound) {
			return nil, grantNotFound(g.ID)
		}
		return nil, internal(err)
	}
	return &kmsapi.RetireGrantResponse{}, nil
}
