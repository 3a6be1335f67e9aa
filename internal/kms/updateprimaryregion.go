package kms

import (
	"context"
	"errors"
	"slices"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/policy"
)

// UpdatePrimaryRegion makes the replica in PrimaryRegion the primary key
// (spec §9.4). It returns at once; the current and the new primary are
// Updating until the replica delay has passed, then the roles are swapped
// in every related key and both return to their earlier state.
// Cryptography works meanwhile.
func (s *Service) UpdatePrimaryRegion(ctx context.Context, c *Caller, in *kmsapi.UpdatePrimaryRegionRequest) (*kmsapi.UpdatePrimaryRegionResponse, error) {
	region := *in.PrimaryRegion
	k, err := s.resolveKeyID(ctx, c, *in.KeyId)
	if err != nil {
		return nil, err
	}
	setRegion := func(r *policy.Request) { r.Set(policy.KeyPrimaryRegion, region) }
	if err := s.authorizeKey(ctx, c, "kms:UpdatePrimaryRegion", k, nil, setRegion); err != nil {
		return nil, err
	}
	if !k.MultiRegion() {
		return nil, notMultiRegion(k)
	}
	if !k.IsPrimary() {
		return nil, notPrimary(k)
	}
	// The replica that becomes primary: its own key policy must allow
	// kms:UpdatePrimaryRegion too [M].
	target, err := s.cat.Key(ctx, catalog.Name(region, k.ID))
	if errors.Is(err, catalog.ErrNotFound) || (err == nil && !slices.Contains(k.ReplicaRegions, region)) {
		return nil, noReplica(k, region)
	}
	if err != nil {
		return nil, internal(err)
	}
	if err := s.authorizeKey(ctx, c, "kms:UpdatePrimaryRegion", target, nil, setRegion); err != nil {
		return nil, err
	}
	_, err = s.cat.UpdateRelated(ctx, k.Name(), func(ks []*catalog.Key, _ *catalog.Batch) error {
		p := ks[0]
		if !p.IsPrimary() {
			return notPrimary(p)
		}
		var r *catalog.Key
		for _, x := range ks[1:] {
			if x.Region == region {
				r = x
			}
		}
		if r == nil || !slices.Contains(p.ReplicaRegions, region) {
			return noReplica(p, region)
		}
		for _, x := range []*catalog.Key{p, r} {
			if err := settled(x); err != nil {
				return err
			}
		}
		due := s.due()
		for _, x := range []*catalog.Key{p, r} {
			x.Pending = &catalog.Transition{Kind: catalog.TransitionPrimary, Due: due, Restore: x.State, PrimaryRegion: region}
			x.State = keys.Updating
		}
		return nil
	})
	if err != nil {
		return nil, internal(err)
	}
	c.addResource(target.ARN())
	s.schedule(k.Name())
	return &kmsapi.UpdatePrimaryRegionResponse{}, nil
}

// noReplica: k has no related replica in region [R text, spec §9.4].
func noReplica(k *catalog.Key, region string) error {
	return exc("NotFoundException", "Key '"+keys.KeyARN(region, k.Account, k.ID)+"' does not exist")
}
