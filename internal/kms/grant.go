package kms

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"slices"
	"strings"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/policy"
)

// emptyEC stands for "no encryption context" in a cryptographic operation,
// where the context's absence is itself a condition value.
var emptyEC = map[string]string{}

func ecOrEmpty(ec map[string]string) map[string]string {
	if ec == nil {
		return emptyEC
	}
	return ec
}

// grantOperations are the operations a grant on a symmetric encryption
// key may allow; ecOperations those of them that take an encryption
// context, the only ones grant constraints can apply to.
var (
	grantOperations = []string{"Decrypt", "Encrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext",
		"ReEncryptFrom", "ReEncryptTo", "CreateGrant", "RetireGrant", "DescribeKey",
		"GenerateDataKeyPair", "GenerateDataKeyPairWithoutPlaintext"}
	ecOperations = []string{"Decrypt", "Encrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext",
		"ReEncryptFrom", "ReEncryptTo", "GenerateDataKeyPair", "GenerateDataKeyPairWithoutPlaintext", "CreateGrant"}
)

// granteeMatches reports whether a grant's grantee is the caller: the
// principal's ARN, or for a role session the role's ARN.
func granteeMatches(g *catalog.Grant, p *policy.Principal) bool {
	return g.GranteePrincipal == p.ARN || (p.RoleARN != "" && g.GranteePrincipal == p.RoleARN)
}

// constraintsHold reports whether ec satisfies the grant's constraints.
func constraintsHold(g *catalog.Grant, ec map[string]string) bool {
	if g.ECEquals == nil && g.ECSubset == nil {
		return true
	}
	if ec == nil {
		return false // an operation without an encryption context
	}
	if g.ECEquals != nil {
		if len(ec) != len(g.ECEquals) {
			return false
		}
		for k, v := range g.ECEquals {
			if w, ok := ec[k]; !ok || w != v {
				return false
			}
		}
	}
	for k, v := range g.ECSubset {
		if w, ok := ec[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// grantsAllow reports whether a grant on k gives the caller action, and
// through which grantee: policy.Decide limits a grant to the role of a
// session by the session's session policies, and not one to the session
// itself. A node serves cryptographic operations from cached grants, up
// to the change feed's bound behind; a request that carries grant tokens
// and is not allowed by them reads the key's grants from the database
// before being refused (ReadContext), which is what AWS promises grant
// tokens do. The tokens' values are not checked.
func (s *Service) grantsAllow(ctx context.Context, c *Caller, k *catalog.Key, action string, ec map[string]string) (policy.GrantMatch, error) {
	return s.grantAllowing(ctx, c, k, action, ec, nil)
}

// grantAllowing is grantsAllow; with child set (CreateGrant through a
// grant) the allowing grant must also cover every operation of the new
// grant, and the new grant's constraints must be at least as strict.
func (s *Service) grantAllowing(ctx context.Context, c *Caller, k *catalog.Key, action string, ec map[string]string, child *catalog.Grant) (policy.GrantMatch, error) {
	m, err := s.grantMatch(ctx, c, k, action, ec, child)
	if err == nil && m != policy.GrantToPrincipal && ctx.Value(grantTokensKey{}) != nil && !catalog.IsFresh(ctx) {
		return s.grantMatch(catalog.WithFresh(ctx), c, k, action, ec, child)
	}
	return m, err
}

func (s *Service) grantMatch(ctx context.Context, c *Caller, k *catalog.Key, action string, ec map[string]string, child *catalog.Grant) (policy.GrantMatch, error) {
	list, err := s.cat.Grants(ctx, k.Name())
	if err != nil {
		return policy.NoGrant, internal(err)
	}
	if len(list) == 0 {
		return policy.NoGrant, nil
	}
	op := strings.TrimPrefix(action, "kms:")
	p := c.principal()
	best := policy.NoGrant
	for _, g := range list {
		if !granteeMatches(g, &p) || !slices.Contains(g.Operations, op) {
			continue
		}
		if child != nil {
			if !covers(g, child) {
				continue
			}
		} else if !constraintsHold(g, ec) {
			continue
		}
		if g.GranteePrincipal == p.ARN {
			return policy.GrantToPrincipal, nil
		}
		best = policy.GrantToRole
	}
	return best, nil
}

// covers reports whether parent may create child: every operation of
// child is in parent, and child's constraints imply parent's.
func covers(parent, child *catalog.Grant) bool {
	for _, op := range child.Operations {
		if !slices.Contains(parent.Operations, op) {
			return false
		}
	}
	if parent.ECEquals != nil && !mapsEqual(parent.ECEquals, child.ECEquals) {
		return false
	}
	if parent.ECSubset != nil {
		src := child.ECSubset
		if child.ECEquals != nil {
			src = child.ECEquals
		}
		for k, v := range parent.ECSubset {
			if w, ok := src[k]; !ok || w != v {
				return false
			}
		}
	}
	return true
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) || (a == nil) != (b == nil) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// validGrantPrincipal accepts the principals a grant may name: an IAM
// user, role, role session or account root ARN, or a service principal.
func validGrantPrincipal(s string) bool {
	if _, err := policy.PrincipalFromARN(s); err == nil {
		return true
	}
	return strings.HasSuffix(s, ".amazonaws.com") && !strings.ContainsAny(s, " :/")
}

// newGrantID is 64 hex characters, as KMS's grant ids are.
func (s *Service) newGrantID() (string, error) {
	b, err := s.randomBytes(32)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}

func (s *Service) newGrantToken() (string, error) {
	b, err := s.randomBytes(96)
	if err != nil {
		return "", err
	}
	return "AQpAM2" + base64.RawURLEncoding.EncodeToString(b), nil
}

func grantEntry(k *catalog.Key, g *catalog.Grant) kmsapi.GrantListEntry {
	e := kmsapi.GrantListEntry{
		KeyId:            kmsapi.String(k.ARN()),
		GrantId:          kmsapi.String(g.ID),
		CreationDate:     kmsapi.NewTime(g.Created),
		GranteePrincipal: kmsapi.String(g.GranteePrincipal),
		IssuingAccount:   kmsapi.String(g.IssuingAccount),
		Operations:       g.Operations,
	}
	if g.Name != "" {
		e.Name = kmsapi.String(g.Name)
	}
	if g.RetiringPrincipal != "" {
		e.RetiringPrincipal = kmsapi.String(g.RetiringPrincipal)
	}
	if g.ECEquals != nil || g.ECSubset != nil {
		e.Constraints = &kmsapi.GrantConstraints{EncryptionContextEquals: g.ECEquals, EncryptionContextSubset: g.ECSubset}
	}
	return e
}

func grantNotFound(id string) error {
	return exc("NotFoundException", "Grant ID "+id+" not found")
}
