package kms

import (
	"context"
	"time"

	"github.com/google/uuid"
	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/policy"
)

// CreateKey creates a symmetric encryption key with AES-256 material made
// here (origin AWS_KMS), or in the cluster of a CONNECTED CloudHSM key
// store (origin AWS_CLOUDHSM with CustomKeyStoreId).
func (s *Service) CreateKey(ctx context.Context, c *Caller, in *kmsapi.CreateKeyRequest) (*kmsapi.CreateKeyResponse, error) {
	spec := "SYMMETRIC_DEFAULT"
	if in.KeySpec != nil {
		spec = *in.KeySpec
	} else if in.CustomerMasterKeySpec != nil {
		spec = *in.CustomerMasterKeySpec
	}
	usage := "ENCRYPT_DECRYPT"
	if in.KeyUsage != nil {
		usage = *in.KeyUsage
	}
	origin := "AWS_KMS"
	if in.Origin != nil {
		origin = *in.Origin
	}
	// The key's properties as the request makes them, defaults included,
	// under their current and their deprecated names.
	if err := s.authorizeIAM(c, "kms:CreateKey", func(r *policy.Request) {
		r.Set(policy.KeyKeySpec, spec)
		r.Set(policy.KeyCustomerMasterKeySpec, spec)
		r.Set(policy.KeyKeyUsage, usage)
		r.Set(policy.KeyCustomerMasterKeyUsage, usage)
		r.Set(policy.KeyKeyOrigin, origin)
		setBool(r, policy.KeyMultiRegion, in.MultiRegion)
		setBool(r, policy.KeyBypassLockoutCheck, in.BypassPolicyLockoutSafetyCheck)
		if len(in.Tags) > 0 {
			setRequestTags(r, in.Tags)
		}
	}); err != nil {
		return nil, err
	}
	if in.KeySpec != nil && in.CustomerMasterKeySpec != nil {
		return nil, exc("ValidationException", "You cannot specify KeySpec and CustomerMasterKeySpec in the same request. CustomerMasterKeySpec parameter is deprecated. Use KeySpec instead.")
	}
	if spec != "SYMMETRIC_DEFAULT" {
		return nil, exc("UnsupportedOperationException", "KeySpec "+spec+" is not supported by kmsd yet; only SYMMETRIC_DEFAULT keys are.")
	}
	if usage != "ENCRYPT_DECRYPT" {
		return nil, exc("ValidationException", "KeyUsage "+usage+" is not compatible with KeySpec "+spec)
	}
	custom := origin == "AWS_CLOUDHSM" || origin == "EXTERNAL_KEY_STORE" || in.CustomKeyStoreId != nil
	if (origin != "AWS_KMS" && !custom) || (custom && origin == "AWS_KMS") || (in.XksKeyId != nil && origin != "EXTERNAL_KEY_STORE") {
		return nil, exc("UnsupportedOperationException", "Origin "+origin+" with these custom key store parameters is not supported by kmsd yet.")
	}
	if in.MultiRegion != nil && *in.MultiRegion {
		return nil, exc("UnsupportedOperationException", "Multi-Region keys are not supported by kmsd yet.")
	}
	keyPolicy := policy.DefaultKeyPolicy(c.Account)
	if in.Policy != nil {
		if err := checkPolicy(c, *in.Policy, in.BypassPolicyLockoutSafetyCheck); err != nil {
			return nil, err
		}
		keyPolicy = *in.Policy
	}
	tags, err := checkTags(nil, in.Tags)
	if err != nil {
		return nil, err
	}

	id, err := uuid.NewRandomFromReader(s.rand)
	if err != nil {
		return nil, internal(err)
	}
	if origin == "EXTERNAL_KEY_STORE" {
		if err := s.createExternalKey(ctx, c, in.CustomKeyStoreId, in.XksKeyId); err != nil {
			return nil, err
		}
	} else if custom {
		if err := s.createStoreKey(ctx, c, origin, in.CustomKeyStoreId, keys.KeyARN(c.Region, c.Account, id.String())); err != nil {
			return nil, err
		}
	}
	k := &catalog.Key{
		ID:          id.String(),
		Account:     c.Account,
		Region:      c.Region,
		Created:     s.now().UTC().Truncate(time.Millisecond),
		Description: derefStr(in.Description),
		KeyUsage:    usage,
		KeySpec:     spec,
		Origin:      origin,
		State:       keys.Enabled,
		Policy:      keyPolicy,
		Tags:        tags,
		Current:     1,
	}
	if custom {
		// The material lives in the cluster, labelled with the key's ARN.
		k.CustomKeyStoreID = *in.CustomKeyStoreId
		k.XksKeyID = derefStr(in.XksKeyId)
	}
	// External keys also hold kmsd material: the inner layer of their
	// double encryption (spec §10.8).
	if !custom || k.XksKeyID != "" {
		material, err := s.randomBytes(32)
		if err != nil {
			return nil, err
		}
		defer clear(material)
		sealed, err := s.cat.Seal(k.ID, 1, material)
		if err != nil {
			return nil, internal(err)
		}
		k.Versions = []catalog.Version{{Number: 1, Created: k.Created, Sealed: sealed}}
	}
	if err := s.cat.CreateKey(ctx, k); err != nil {
		return nil, internal(err)
	}
	return &kmsapi.CreateKeyResponse{KeyMetadata: s.storeMetadata(k, metadata(k))}, nil
}
