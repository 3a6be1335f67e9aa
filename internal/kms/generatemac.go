package kms

import (
	"context"
	"slices"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/policy"
)

// GenerateMac computes the HMAC of a message (up to 4096 bytes, taken as
// it is) with an HMAC key.
func (s *Service) GenerateMac(ctx context.Context, c *Caller, in *kmsapi.GenerateMacRequest) (*kmsapi.GenerateMacResponse, error) {
	k, mac, err := s.mac(ctx, c, "kms:GenerateMac", *in.KeyId, *in.MacAlgorithm, in.Message, in.DryRun)
	if err != nil {
		return nil, err
	}
	return &kmsapi.GenerateMacResponse{Mac: mac, MacAlgorithm: in.MacAlgorithm, KeyId: kmsapi.String(k.ARN())}, nil
}

// mac makes the checks GenerateMac and VerifyMac share, in AWS's order
// (spec §6: state, usage, algorithm, DryRun), and computes the MAC.
func (s *Service) mac(ctx context.Context, c *Caller, action, keyID, alg string, msg []byte, dry *bool) (*catalog.Key, []byte, error) {
	k, err := s.resolveCross(ctx, c, keyID)
	if err != nil {
		return nil, nil, err
	}
	if err := s.authorizeKey(ctx, c, action, k, nil, both(aliasKey(keyID), func(r *policy.Request) {
		r.Set(policy.KeyMacAlgorithm, alg)
	})); err != nil {
		return nil, nil, err
	}
	if err := usable(k); err != nil {
		return nil, nil, err
	}
	if err := checkUsage(k, keys.GenerateVerifyMAC, action); err != nil {
		return nil, nil, err
	}
	if info, _ := keys.Spec(k.KeySpec); !slices.Contains(info.MAC, alg) {
		return nil, nil, exc("InvalidKeyUsageException", "Algorithm "+alg+" is incompatible with key spec "+k.KeySpec+".")
	}
	if err := dryRun(dry); err != nil {
		return nil, nil, err
	}
	key, err := s.privateKey(k)
	if err != nil {
		return nil, nil, internal(err)
	}
	mac, err := key.MAC(alg, msg)
	if err != nil {
		return nil, nil, internal(err)
	}
	return k, mac, nil
}
