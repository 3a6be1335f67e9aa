package kms

import (
	"context"
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/kmsapi"
)

// Imported key material (origin EXTERNAL, spec §7). A key's versions are
// its key materials: version 1 is made by the first import and is CURRENT;
// a symmetric key's later NEW_KEY_MATERIAL imports add versions above
// Current (PENDING_ROTATION) that RotateKeyOnDemand makes current. Versions
// up to Current are permanently associated with the key; the key is usable
// only while every one of them is imported.

const (
	originExternal = "EXTERNAL"

	importStateImported = "IMPORTED"
	importStatePending  = "PENDING_IMPORT"

	materialExpires       = "KEY_MATERIAL_EXPIRES"
	materialDoesNotExpire = "KEY_MATERIAL_DOES_NOT_EXPIRE"

	importNew      = "NEW_KEY_MATERIAL"
	importExisting = "EXISTING_KEY_MATERIAL"

	// importTokenLifetime is how long GetParametersForImport's public key
	// and token are valid (spec §7.2).
	importTokenLifetime = 24 * time.Hour
)

// requireExternal refuses the import operations on keys whose material
// kmsd or a custom key store made (spec §1.3, §7.2 #5).
func requireExternal(k *catalog.Key) error {
	if k.Origin != originExternal {
		return exc("UnsupportedOperationException", k.ARN()+" origin is "+k.Origin+" which is not valid for this operation.")
	}
	return nil
}

// importStateCheck is the key-state check of the import operations (spec
// §7.2, §7.4, §7.7, §11.2): all three refuse a replica still Creating;
// GetParametersForImport and ImportKeyMaterial a key pending deletion;
// GetParametersForImport and DeleteImportedKeyMaterial a key Updating.
func importStateCheck(k *catalog.Key, op string) error {
	switch k.State {
	case keys.Creating:
		return usable(k)
	case keys.Updating:
		if op != "ImportKeyMaterial" {
			return exc("KMSInvalidStateException", k.ARN()+" is updating.")
		}
	case keys.PendingDeletion, keys.PendingReplicaDeletion:
		if op != "DeleteImportedKeyMaterial" {
			return usable(k)
		}
	}
	return nil
}

// materialState is the KeyMaterialState of version v of k, whose related
// multi-Region keys are related (none for a single-Region key). Material
// pending rotation in a multi-Region key is
// PENDING_MULTI_REGION_IMPORT_AND_ROTATION while some related key, k
// included, does not hold it imported; PENDING_ROTATION once all do
// (spec §9.7).
func materialState(k *catalog.Key, v *catalog.Version, related []*catalog.Key, now time.Time) string {
	switch {
	case v.Number == k.Current:
		return "CURRENT"
	case v.Number < k.Current:
		return "NON_CURRENT"
	case k.MultiRegion() && len(lacking(v.MaterialID, append([]*catalog.Key{k}, related...), now)) > 0:
		return "PENDING_MULTI_REGION_IMPORT_AND_ROTATION"
	}
	return "PENDING_ROTATION"
}

// lacking returns the Regions of the keys among ks that do not hold the
// material mid imported and unexpired at now.
func lacking(mid string, ks []*catalog.Key, now time.Time) []string {
	var out []string
	for _, k := range ks {
		held := false
		for i := range k.Versions {
			v := &k.Versions[i]
			if v.MaterialID == mid && v.ImportState == importStateImported && (v.ValidTo == nil || now.Before(*v.ValidTo)) {
				held = true
			}
		}
		if !held {
			out = append(out, k.Region)
		}
	}
	return out
}

// errAwaitingReplicas refuses RotateKeyOnDemand of a multi-Region key
// whose new material some related keys do not hold yet (spec §9.7). [U]
// exception and text.
func errAwaitingReplicas(k *catalog.Key, mid string, regions []string) error {
	return exc("KMSInvalidStateException", "Key material (id: "+mid+") of the key: "+k.ARN()+
		" is pending import into its related multi-Region keys in "+strings.Join(regions, ", ")+" and cannot be rotated yet.")
}

// allImported reports whether every material permanently associated with
// k is imported: the condition of an EXTERNAL key being usable. A key
// without its current material (a replica that has imported only material
// pending rotation) is not.
func allImported(k *catalog.Key) bool {
	if len(k.Versions) == 0 || k.Version(k.Current) == nil {
		return false
	}
	for i := range k.Versions {
		v := &k.Versions[i]
		if v.Number <= k.Current && v.ImportState != importStateImported {
			return false
		}
	}
	return true
}

// settle sets k's state after material came or went: PendingImport while
// a permanent material is missing, Enabled again once none is (a Disabled
// key stays Disabled), PendingDeletion untouched (spec §7.1, §7.7).
func settle(k *catalog.Key) {
	switch {
	case k.State != keys.Enabled && k.State != keys.Disabled && k.State != keys.PendingImport:
		// PendingDeletion stays; so do the multi-Region transitions,
		// which end in the state they began with.
	case !allImported(k):
		k.State = keys.PendingImport
	case k.State == keys.PendingImport:
		k.State = keys.Enabled
	}
}

// unimport deletes the material of v, keeping its id (and description),
// so the same material can be imported again.
func unimport(v *catalog.Version) {
	v.Sealed = nil
	v.ImportState = importStatePending
	v.ExpirationModel = ""
	v.ValidTo = nil
}

// expiring reports whether some imported material of k has reached its
// ValidTo at now.
func expiring(k *catalog.Key, now time.Time) bool {
	if k.Origin != originExternal {
		return false
	}
	for i := range k.Versions {
		v := &k.Versions[i]
		if v.ImportState == importStateImported && v.ValidTo != nil && !now.Before(*v.ValidTo) {
			return true
		}
	}
	return false
}

// expire deletes the material of k that has reached its ValidTo at now,
// as DeleteImportedKeyMaterial would (spec §7.6), and reports whether
// there was any. k is a record being updated.
func expire(k *catalog.Key, now time.Time) bool {
	if !expiring(k, now) {
		return false
	}
	for i := range k.Versions {
		v := &k.Versions[i]
		if v.ImportState == importStateImported && v.ValidTo != nil && !now.Before(*v.ValidTo) {
			unimport(v)
		}
	}
	settle(k)
	return true
}

// expiredView is k as it is once its expired material is gone: the
// check on use, so that a sweep running late never lets expired material
// work. Records are shared, so a changed view is a copy.
func (s *Service) expiredView(k *catalog.Key) *catalog.Key {
	if k.Origin != originExternal {
		return k
	}
	now := s.now()
	if !expiring(k, now) {
		return k
	}
	v := *k
	v.Versions = slices.Clone(k.Versions)
	expire(&v, now)
	return &v
}

// ExpiredMaterial is what one expiry sweep deleted from one key, for the
// audit record AWS writes (DeleteExpiredKeyMaterial, spec §7.6).
type ExpiredMaterial struct {
	Account, Region, KeyARN string
	KeyMaterialIDs          []string
}

// SweepImports deletes imported key material whose ValidTo has passed
// (spec §7.6) and says from which keys.
func (s *Service) SweepImports(ctx context.Context) ([]ExpiredMaterial, error) {
	now := s.now()
	var due []string
	err := s.sweepKeys(ctx, func(k *catalog.Key) error {
		if expiring(k, now) {
			due = append(due, k.Name())
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	var out []ExpiredMaterial
	for _, name := range due {
		var ids []string
		k, err := s.cat.UpdateKey(ctx, name, func(k *catalog.Key) error {
			ids = ids[:0]
			for i := range k.Versions {
				v := &k.Versions[i]
				if v.ImportState == importStateImported && v.ValidTo != nil && !now.Before(*v.ValidTo) {
					ids = append(ids, v.MaterialID)
				}
			}
			if !expire(k, now) {
				return errUnchanged
			}
			return nil
		})
		switch {
		case errors.Is(err, errUnchanged):
		case errors.Is(err, catalog.ErrNotFound):
			// Deleted since it was found (by SweepDeletions of the same
			// round): no material left to expire.
		case err != nil:
			return out, err
		default:
			out = append(out, ExpiredMaterial{Account: k.Account, Region: k.Region, KeyARN: k.ARN(), KeyMaterialIDs: ids})
			s.log.Info("imported key material expired", "key", k.ARN())
		}
	}
	return out, nil
}

// errUnchanged aborts an update that has nothing to do; callers handle it
// and never return it.
var errUnchanged = errors.New("kms: nothing to change")

// promoteImported is RotateKeyOnDemand of an EXTERNAL symmetric key: the
// imported PENDING_ROTATION material becomes CURRENT, the current one
// NON_CURRENT (still decrypting), spec §7.8.
//
// In a multi-Region key every related key must hold the material first
// (spec §9.7); copyShared then makes it current in each of them, in the
// same transaction.
func promoteImported(k *catalog.Key, related []*catalog.Key, now time.Time) error {
	var next *catalog.Version
	for i := range k.Versions {
		v := &k.Versions[i]
		if v.Number > k.Current && v.ImportState == importStateImported {
			next = v
		}
	}
	if next == nil {
		return exc("KMSInvalidStateException", "No available key material pending rotation for the key: "+k.ARN()+".")
	}
	if k.IsPrimary() { // a replica is refused as not the primary
		if regions := lacking(next.MaterialID, related, now); len(regions) > 0 {
			return errAwaitingReplicas(k, next.MaterialID, regions)
		}
	}
	k.Current = next.Number
	k.Rotations = append(k.Rotations, catalog.Rotation{Date: now, Type: "ON_DEMAND"})
	return nil
}

// listImportedRotations is ListKeyRotations of an EXTERNAL symmetric key
// (spec §7.8): an entry per material with its import fields; by default
// (ROTATIONS_ONLY) the materials that became current by a rotation, with
// ALL_KEY_MATERIAL also the first material and pending ones. The marker
// is an index into that list.
func listImportedRotations(k *catalog.Key, related []*catalog.Key, now time.Time, in *kmsapi.ListKeyRotationsRequest) (*kmsapi.ListKeyRotationsResponse, error) {
	all := in.IncludeKeyMaterial != nil && *in.IncludeKeyMaterial == "ALL_KEY_MATERIAL"
	var entries []kmsapi.RotationsListEntry
	for i := range k.Versions {
		v := &k.Versions[i]
		rotated := v.Number > 1 && v.Number <= k.Current && int(v.Number)-2 < len(k.Rotations)
		if !all && !rotated {
			continue
		}
		e := kmsapi.RotationsListEntry{
			KeyId:            kmsapi.String(k.ID),
			KeyMaterialId:    kmsapi.String(v.MaterialID),
			ImportState:      kmsapi.String(v.ImportState),
			KeyMaterialState: kmsapi.String(materialState(k, v, related, now)),
		}
		if v.MaterialDescription != "" {
			e.KeyMaterialDescription = kmsapi.String(v.MaterialDescription)
		}
		if v.ExpirationModel != "" {
			e.ExpirationModel = kmsapi.String(v.ExpirationModel)
		}
		if v.ValidTo != nil {
			e.ValidTo = kmsapi.NewTime(*v.ValidTo)
		}
		if rotated {
			r := k.Rotations[v.Number-2]
			e.RotationDate, e.RotationType = kmsapi.NewTime(r.Date), kmsapi.String(r.Type)
		}
		entries = append(entries, e)
	}
	limit := pageLimit(in.Limit, 100)
	start := 0
	if in.Marker != nil {
		n, ok := atoi(*in.Marker)
		if !ok || n > len(entries) {
			return nil, exc("InvalidMarkerException", "Invalid marker")
		}
		start = n
	}
	end := min(start+limit, len(entries))
	out := &kmsapi.ListKeyRotationsResponse{Rotations: append([]kmsapi.RotationsListEntry{}, entries[start:end]...), Truncated: kmsapi.Bool(false)}
	if end < len(entries) {
		out.Truncated = kmsapi.Bool(true)
		out.NextMarker = kmsapi.String(itoa(end))
	}
	return out, nil
}
