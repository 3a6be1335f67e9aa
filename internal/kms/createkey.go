package kms

import (
	"context"
	"encoding/hex"
	"errors"
	"time"

	"github.com/google/uuid"
	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/keystore"
	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/policy"
	"github.com/kmsd/kmsd/internal/storage"
)

// CreateKey creates a key of any KeySpec × KeyUsage of spec §2.1 with
// material made here (origin AWS_KMS) or imported later (origin EXTERNAL), or a symmetric encryption key in
// the cluster of a CONNECTED CloudHSM key store (origin AWS_CLOUDHSM with
// CustomKeyStoreId) or behind an external key store.
func (s *Service) CreateKey(ctx context.Context, c *Caller, in *kmsapi.CreateKeyRequest) (*kmsapi.CreateKeyResponse, error) {
	return s.createKey(ctx, c, in, "")
}

// createKey is CreateKey making the key with key id fixedID if not empty
// (a seed file's key in a custom key store).
func (s *Service) createKey(ctx context.Context, c *Caller, in *kmsapi.CreateKeyRequest, fixedID string) (*kmsapi.CreateKeyResponse, error) {
	spec := "SYMMETRIC_DEFAULT"
	if in.KeySpec != nil {
		spec = *in.KeySpec
	} else if in.CustomerMasterKeySpec != nil {
		spec = *in.CustomerMasterKeySpec
	}
	usage := keys.EncryptDecrypt
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
		if in.MultiRegion != nil && *in.MultiRegion {
			r.Set(policy.KeyMultiRegionKeyType, "PRIMARY")
		}
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
	info, _ := keys.Spec(spec) // the model's enum check came first
	if in.KeyUsage == nil && spec != keys.Symmetric {
		return nil, exc("ValidationException", "You must specify a KeyUsage value for all KMS keys except for symmetric encryption keys.")
	}
	if !info.Allows(usage) {
		return nil, exc("ValidationException", "KeyUsage "+usage+" is not compatible with KeySpec "+spec)
	}
	if info.ChinaOnly && !keys.InChina(c.Region) {
		return nil, exc("UnsupportedOperationException", spec+" is not supported in this Region.")
	}
	custom := origin == "AWS_CLOUDHSM" || origin == "EXTERNAL_KEY_STORE" || in.CustomKeyStoreId != nil
	if custom && spec != keys.Symmetric {
		// Spec §2.4: custom key stores hold only symmetric encryption
		// keys; refused before the store is contacted.
		return nil, exc("UnsupportedOperationException", "KeySpec "+spec+" is not supported for KMS keys in a custom key store. Only SYMMETRIC_DEFAULT keys are.")
	}
	if origin == "EXTERNAL" && (in.CustomKeyStoreId != nil || in.XksKeyId != nil) {
		// Spec §3.1 #7 [R]: keys in custom key stores have their material
		// in the store; none can be imported.
		return nil, exc("UnsupportedOperationException", "Origin EXTERNAL is not supported for KMS keys in a custom key store.")
	}
	external := origin == "EXTERNAL"
	if (origin != "AWS_KMS" && !custom && !external) || (custom && origin == "AWS_KMS") || (in.XksKeyId != nil && origin != "EXTERNAL_KEY_STORE") {
		return nil, exc("UnsupportedOperationException", "Origin "+origin+" with these custom key store parameters is not supported by kmsd yet.")
	}
	multiRegion := in.MultiRegion != nil && *in.MultiRegion
	if multiRegion && custom {
		// Spec §9.2 [G]: custom key stores hold no multi-Region keys.
		return nil, exc("UnsupportedOperationException", "Multi-Region keys are not supported in custom key stores.")
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

	uid, err := uuid.NewRandomFromReader(s.rand)
	if err != nil {
		return nil, internal(err)
	}
	id := uid.String()
	if fixedID != "" {
		id = fixedID
	}
	if multiRegion {
		// mrk- and the UUID's 32 hex digits (spec §1.6).
		id = "mrk-" + hex.EncodeToString(uid[:])
	}
	// store is the key's custom key store as read from the database; the
	// transaction that writes the key checks it again (CreateKeyIf).
	var store *keystore.Store
	madeHSMKey := false
	if origin == "EXTERNAL_KEY_STORE" {
		if store, err = s.createExternalKey(ctx, c, in.CustomKeyStoreId, in.XksKeyId); err != nil {
			return nil, err
		}
	} else if custom {
		if store, madeHSMKey, err = s.createStoreKey(ctx, c, origin, in.CustomKeyStoreId, hsmLabel(c.Region, c.Account, id), fixedID != ""); err != nil {
			return nil, err
		}
	}
	k := &catalog.Key{
		ID:          id,
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
	if multiRegion {
		k.PrimaryRegion = c.Region
	}
	if external {
		// Spec §3.2: no material until ImportKeyMaterial; version 1 is
		// made by the first import.
		k.State, k.Current = keys.PendingImport, 0
	}
	if custom {
		// The material lives in the cluster, labelled with the key's ARN.
		k.CustomKeyStoreID = *in.CustomKeyStoreId
		k.XksKeyID = derefStr(in.XksKeyId)
	}
	// External keys also hold kmsd material: the inner layer of their
	// double encryption (spec §10.8).
	if (!custom && !external) || k.XksKeyID != "" {
		v, err := s.newMaterial(k.Name(), k.ID, spec, k.Created)
		if err != nil {
			return nil, err
		}
		k.Versions = []catalog.Version{v}
	}
	var check func(ctx context.Context, tx storage.Reader) error
	if store != nil {
		check = func(ctx context.Context, tx storage.Reader) error { return keystore.CheckCreateKey(ctx, tx, store) }
	}
	if err := s.cat.CreateKeyIf(ctx, k, check); err != nil {
		if madeHSMKey {
			// No KMS key will use the material made in the cluster.
			s.deleteHSMKey(ctx, store, k)
		}
		switch {
		case errors.Is(err, catalog.ErrXksKeyInUse):
			// Taken since createExternalKey's check, by a CreateKey racing
			// this one (perhaps on another node).
			return nil, xksKeyInUse(k.XksKeyID, k.CustomKeyStoreID)
		case errors.Is(err, keystore.ErrNotFound), errors.Is(err, keystore.ErrInvalidState):
			// The store was disconnected or deleted (perhaps through
			// another node) since it was read.
			return nil, storeErr(err)
		}
		return nil, internal(err)
	}
	m, err := s.withMaterialID(k, s.storeMetadata(k, metadata(k)))
	if err != nil {
		return nil, err
	}
	return &kmsapi.CreateKeyResponse{KeyMetadata: m}, nil
}

// newMaterial makes version 1 of a key's material, sealed under the
// barrier: 32 random bytes (AES-256) for symmetric keys, the private
// encoding of package material for the others, with the public key of a
// key pair beside it in clear. name is the key's catalog name (Name), id
// its key id, of which the KeyMaterialId is made.
func (s *Service) newMaterial(name, id, spec string, created time.Time) (catalog.Version, error) {
	var priv, pub []byte
	var err error
	if spec == keys.Symmetric {
		priv, err = s.randomBytes(32)
	} else {
		priv, pub, err = s.generate(spec, s.rand)
	}
	if err != nil {
		return catalog.Version{}, internal(err)
	}
	defer clear(priv)
	sealed, err := s.cat.Seal(name, 1, priv)
	if err != nil {
		return catalog.Version{}, internal(err)
	}
	return catalog.Version{Number: 1, Created: created, Sealed: sealed, Public: pub, MaterialID: s.cat.MaterialID(id, priv)}, nil
}
