package kms

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/policy"
)

// ReplicateKey makes a replica of a multi-Region primary key in another
// Region of the same partition (spec §9.3): same key id, the primary's
// shared properties and (origin AWS_KMS) all its material versions, its
// own description, policy and tags. The replica starts Creating and is
// Enabled (PendingImport for imported material) after the replica delay;
// every related key lists it at once.
func (s *Service) ReplicateKey(ctx context.Context, c *Caller, in *kmsapi.ReplicateKeyRequest) (*kmsapi.ReplicateKeyResponse, error) {
	region := *in.ReplicaRegion
	k, err := s.resolveKeyID(ctx, c, *in.KeyId)
	if err != nil {
		return nil, err
	}
	if err := s.authorizeKey(ctx, c, "kms:ReplicateKey", k, nil, func(r *policy.Request) {
		r.Set(policy.KeyReplicaRegion, region)
	}); err != nil {
		return nil, err
	}
	// The replica is created in its Region: kms:CreateKey (and
	// kms:TagResource with Tags) from IAM policies there [M].
	rc := *c
	rc.Region = region
	if err := s.authorizeIAM(&rc, "kms:CreateKey", func(r *policy.Request) {
		r.Set(policy.KeyKeySpec, k.KeySpec)
		r.Set(policy.KeyCustomerMasterKeySpec, k.KeySpec)
		r.Set(policy.KeyKeyUsage, k.KeyUsage)
		r.Set(policy.KeyCustomerMasterKeyUsage, k.KeyUsage)
		r.Set(policy.KeyKeyOrigin, k.Origin)
		r.SetBool(policy.KeyMultiRegion, true)
		r.Set(policy.KeyMultiRegionKeyType, "REPLICA")
		setBool(r, policy.KeyBypassLockoutCheck, in.BypassPolicyLockoutSafetyCheck)
		if len(in.Tags) > 0 {
			setRequestTags(r, in.Tags)
		}
	}); err != nil {
		return nil, err
	}
	if len(in.Tags) > 0 {
		if err := s.authorizeIAM(&rc, "kms:TagResource", func(r *policy.Request) { setRequestTags(r, in.Tags) }); err != nil {
			return nil, err
		}
	}
	if err := replicable(k, region); err != nil {
		return nil, err
	}
	keyPolicy := policy.DefaultKeyPolicy(c.Account)
	if in.Policy != nil {
		if err := checkPolicy(&rc, *in.Policy, in.BypassPolicyLockoutSafetyCheck); err != nil {
			return nil, err
		}
		keyPolicy = *in.Policy
	}
	tags, err := checkTags(nil, in.Tags)
	if err != nil {
		return nil, err
	}

	now := s.now().UTC().Truncate(time.Millisecond)
	var replica *catalog.Key
	_, err = s.cat.UpdateRelated(ctx, k.Name(), func(ks []*catalog.Key, b *catalog.Batch) error {
		p := ks[0]
		if err := replicable(p, region); err != nil {
			return err // changed since it was read
		}
		replica = &catalog.Key{
			ID:            p.ID,
			Account:       p.Account,
			Region:        region,
			Created:       now,
			Description:   derefStr(in.Description),
			KeyUsage:      p.KeyUsage,
			KeySpec:       p.KeySpec,
			Origin:        p.Origin,
			State:         keys.Creating,
			Policy:        keyPolicy,
			Tags:          tags,
			PrimaryRegion: p.PrimaryRegion,
			Pending:       &catalog.Transition{Kind: catalog.TransitionReplica, Due: s.due()},
		}
		if err := s.copyShared(p, replica); err != nil {
			return err
		}
		for _, x := range ks {
			x.ReplicaRegions = append(slices.Clone(x.ReplicaRegions), region)
		}
		replica.ReplicaRegions = slices.Clone(p.ReplicaRegions)
		b.Create(replica)
		return nil
	})
	if errors.Is(err, catalog.ErrExists) {
		return nil, alreadyReplicated(k, region)
	}
	if err != nil {
		return nil, internal(err)
	}
	c.addResource(replica.ARN())
	out := &kmsapi.ReplicateKeyResponse{
		ReplicaKeyMetadata: metadata(replica),
		ReplicaPolicy:      kmsapi.String(replica.Policy),
	}
	for _, t := range replica.Tags {
		out.ReplicaTags = append(out.ReplicaTags, kmsapi.Tag{TagKey: kmsapi.String(t.Key), TagValue: kmsapi.String(t.Value)})
	}
	s.schedule(replica.Name())
	return out, nil
}

// replicable checks, in the order of spec §9.3, that primary k can be
// replicated into region.
func replicable(k *catalog.Key, region string) error {
	if !k.MultiRegion() {
		return notMultiRegion(k)
	}
	if !k.IsPrimary() {
		return notPrimary(k)
	}
	if err := settled(k); err != nil {
		return err
	}
	if keys.Partition(region) != keys.Partition(k.Region) {
		// [R] text: AWS's is not recorded.
		return exc("UnsupportedOperationException", "Replica Region "+region+" is not in the partition of "+k.ARN()+".")
	}
	if region == k.Region || slices.Contains(k.ReplicaRegions, region) {
		return alreadyReplicated(k, region)
	}
	return nil
}

// alreadyReplicated: a related key of k exists in region already, the
// primary's own Region included [U text].
func alreadyReplicated(k *catalog.Key, region string) error {
	return exc("AlreadyExistsException", "The multi-Region key "+keys.KeyARN(region, k.Account, k.ID)+" already exists.")
}
