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

const day = 24 * time.Hour

// rotatable checks that rotation applies to k: a symmetric key with key
// material made by KMS, in a state that allows it. The key's state is
// checked before its type — origin, custom key store, key spec — as AWS
// does (spec §1.4: a disabled RSA key is DisabledException). Unavailable,
// a state only custom-store keys have while their store is not connected,
// falls through to the custom-store answer: those keys never rotate,
// connected or not (custom key stores spec §5.11). onDemand selects
// RotateKeyOnDemand's answer for asymmetric and HMAC keys, which AWS
// sends without a message [S].
func rotatable(k *catalog.Key, onDemand bool) error {
	noRotation := exc("UnsupportedOperationException", k.ARN()+" origin or key spec does not support rotation.")
	switch k.State {
	case keys.Enabled, keys.Unavailable:
	default:
		if err := usable(k); err != nil {
			return err
		}
	}
	if k.CustomKeyStoreID != "" {
		return noRotation
	}
	if onDemand && k.KeySpec != keys.Symmetric {
		return exc("UnsupportedOperationException", "")
	}
	if k.Origin == originExternal {
		// Imported symmetric material rotates on demand only, by
		// promoting material imported for it (spec §7.8).
		if onDemand {
			return nil
		}
		return exc("UnsupportedOperationException", k.ARN()+" origin is EXTERNAL which is not valid for this operation.")
	}
	if k.Origin != "AWS_KMS" || k.KeySpec != keys.Symmetric {
		return noRotation
	}
	return nil
}

// rotate adds a new version of key material to k and makes it current.
// Earlier versions stay, so their ciphertexts still decrypt.
func (s *Service) rotate(k *catalog.Key, kind string, now time.Time) error {
	material, err := s.randomBytes(32)
	if err != nil {
		return err
	}
	defer clear(material)
	v := k.Current + 1
	sealed, err := s.cat.Seal(k.Name(), v, material)
	if err != nil {
		return internal(err)
	}
	k.Versions = append(k.Versions, catalog.Version{Number: v, Created: now, Sealed: sealed, MaterialID: s.cat.MaterialID(k.ID, material)})
	k.Current = v
	k.Rotations = append(k.Rotations, catalog.Rotation{Date: now, Type: kind})
	// On-demand rotations do not change the automatic schedule (model
	// documentation of RotateKeyOnDemand).
	if k.RotationEnabled && kind == "AUTOMATIC" {
		next := now.Add(time.Duration(k.RotationPeriodInDays) * day)
		k.NextRotation = &next
	}
	return nil
}

// EnableKeyRotation turns on automatic rotation (every 365 days unless
// RotationPeriodInDays says otherwise, 90–2560).
func (s *Service) EnableKeyRotation(ctx context.Context, c *Caller, in *kmsapi.EnableKeyRotationRequest) (*kmsapi.EnableKeyRotationResponse, error) {
	k, err := s.resolveKeyID(ctx, c, *in.KeyId)
	if err != nil {
		return nil, err
	}
	period := int32(365)
	if in.RotationPeriodInDays != nil {
		period = *in.RotationPeriodInDays
	}
	if err := s.authorizeKey(ctx, c, "kms:EnableKeyRotation", k, nil, func(r *policy.Request) {
		setInt(r, policy.KeyRotationPeriodInDays, period)
	}); err != nil {
		return nil, err
	}
	_, err = s.updateShared(ctx, k.Name(), func(k *catalog.Key, related []*catalog.Key) error {
		if err := rotatable(k, false); err != nil {
			return err
		}
		k.RotationEnabled = true
		k.RotationPeriodInDays = period
		next := s.now().UTC().Truncate(time.Millisecond).Add(time.Duration(period) * day)
		k.NextRotation = &next
		return nil
	})
	if err != nil {
		return nil, internal(err)
	}
	return &kmsapi.EnableKeyRotationResponse{}, nil
}

// DisableKeyRotation turns off automatic rotation.
func (s *Service) DisableKeyRotation(ctx context.Context, c *Caller, in *kmsapi.DisableKeyRotationRequest) (*kmsapi.DisableKeyRotationResponse, error) {
	k, err := s.resolveKeyID(ctx, c, *in.KeyId)
	if err != nil {
		return nil, err
	}
	if err := s.authorizeKey(ctx, c, "kms:DisableKeyRotation", k, nil, nil); err != nil {
		return nil, err
	}
	_, err = s.updateShared(ctx, k.Name(), func(k *catalog.Key, related []*catalog.Key) error {
		if err := rotatable(k, false); err != nil {
			return err
		}
		k.RotationEnabled = false
		k.RotationPeriodInDays = 0
		k.NextRotation = nil
		return nil
	})
	if err != nil {
		return nil, internal(err)
	}
	return &kmsapi.DisableKeyRotationResponse{}, nil
}

// GetKeyRotationStatus reports whether automatic rotation is on. Like
// AWS, it may name a key of another account by key ARN; that account's key
// policy and the caller's IAM policies decide.
func (s *Service) GetKeyRotationStatus(ctx context.Context, c *Caller, in *kmsapi.GetKeyRotationStatusRequest) (*kmsapi.GetKeyRotationStatusResponse, error) {
	k, err := s.resolveKeyIDCross(ctx, c, *in.KeyId)
	if err != nil {
		return nil, err
	}
	if err := s.authorizeKey(ctx, c, "kms:GetKeyRotationStatus", k, nil, nil); err != nil {
		return nil, err
	}
	if k.CustomKeyStoreID != "" { // spec §5.11: no rotation in custom key stores
		return nil, exc("UnsupportedOperationException", k.ARN()+" is in a custom key store, which does not support rotation.")
	}
	// While a key is pending deletion its rotation status reads false and
	// KMS does not rotate it; cancelling the deletion brings the earlier
	// status back (model documentation of GetKeyRotationStatus). The
	// record keeps the setting, so only the answer changes.
	enabled := k.RotationEnabled && k.State != keys.PendingDeletion && k.State != keys.PendingReplicaDeletion
	out := &kmsapi.GetKeyRotationStatusResponse{
		KeyRotationEnabled: kmsapi.Bool(enabled),
		KeyId:              kmsapi.String(k.ARN()),
	}
	if enabled {
		out.RotationPeriodInDays = kmsapi.Int32(k.RotationPeriodInDays)
		if k.NextRotation != nil {
			out.NextRotationDate = kmsapi.NewTime(*k.NextRotation)
		}
	}
	return out, nil
}

// maxOnDemandRotations is the number of on-demand rotations a key allows:
// 25 in the current model's documentation of RotateKeyOnDemand (AWS
// enforced 10 in April 2025; spec §8, §16.7).
const maxOnDemandRotations = 25

// onDemandLimit refuses an on-demand rotation of k beyond
// maxOnDemandRotations, with AWS's message [S] (no final period).
func onDemandLimit(k *catalog.Key) error {
	n := 0
	for _, r := range k.Rotations {
		if r.Type == "ON_DEMAND" {
			n++
		}
	}
	if n >= maxOnDemandRotations {
		return exc("LimitExceededException", "The on-demand rotations limit has been reached for the given keyId. No more on-demand rotations can be performed for this key: "+k.ARN())
	}
	return nil
}

// RotateKeyOnDemand rotates the key material now and answers the key's
// ARN, as AWS does.
func (s *Service) RotateKeyOnDemand(ctx context.Context, c *Caller, in *kmsapi.RotateKeyOnDemandRequest) (*kmsapi.RotateKeyOnDemandResponse, error) {
	k, err := s.resolveKeyID(ctx, c, *in.KeyId)
	if err != nil {
		return nil, err
	}
	if err := s.authorizeKey(ctx, c, "kms:RotateKeyOnDemand", k, nil, nil); err != nil {
		return nil, err
	}
	k, err = s.updateShared(ctx, k.Name(), func(k *catalog.Key, related []*catalog.Key) error {
		if err := rotatable(k, true); err != nil {
			return err
		}
		if err := onDemandLimit(k); err != nil {
			return err
		}
		if k.Origin == originExternal {
			return promoteImported(k, related, s.now().UTC().Truncate(time.Millisecond))
		}
		return s.rotate(k, "ON_DEMAND", s.now().UTC().Truncate(time.Millisecond))
	})
	if err != nil {
		return nil, internal(err)
	}
	return &kmsapi.RotateKeyOnDemandResponse{KeyId: kmsapi.String(k.ARN())}, nil
}

// ListKeyRotations lists completed rotations, oldest first; the marker is
// an index.
func (s *Service) ListKeyRotations(ctx context.Context, c *Caller, in *kmsapi.ListKeyRotationsRequest) (*kmsapi.ListKeyRotationsResponse, error) {
	k, err := s.resolveKeyID(ctx, c, *in.KeyId)
	if err != nil {
		return nil, err
	}
	if err := s.authorizeKey(ctx, c, "kms:ListKeyRotations", k, nil, nil); err != nil {
		return nil, err
	}
	if k.Origin == originExternal && k.KeySpec == keys.Symmetric {
		related, err := s.related(ctx, k)
		if err != nil {
			return nil, internal(err)
		}
		return listImportedRotations(k, related, s.now(), in)
	}
	if k.Origin != "AWS_KMS" || k.KeySpec != "SYMMETRIC_DEFAULT" {
		return nil, exc("UnsupportedOperationException", k.ARN()+" origin or key spec does not support rotation.")
	}
	limit := pageLimit(in.Limit, 100)
	start := 0
	if in.Marker != nil {
		n, ok := atoi(*in.Marker)
		if !ok || n > len(k.Rotations) {
			return nil, exc("InvalidMarkerException", "Invalid marker")
		}
		start = n
	}
	out := &kmsapi.ListKeyRotationsResponse{Rotations: []kmsapi.RotationsListEntry{}, Truncated: kmsapi.Bool(false)}
	end := min(start+limit, len(k.Rotations))
	for _, r := range k.Rotations[start:end] {
		out.Rotations = append(out.Rotations, kmsapi.RotationsListEntry{
			KeyId:        kmsapi.String(k.ID),
			RotationDate: kmsapi.NewTime(r.Date),
			RotationType: kmsapi.String(r.Type),
		})
	}
	if end < len(k.Rotations) {
		out.Truncated = kmsapi.Bool(true)
		out.NextMarker = kmsapi.String(itoa(end))
	}
	return out, nil
}

// errNotDue ends a sweep's update of a key whose rotation is no longer
// due when the transaction reads it: nothing is written.
var errNotDue = errors.New("kms: rotation no longer due")

// rotationDue says k's automatic rotation is due at now.
func rotationDue(k *catalog.Key, now time.Time) bool {
	return k.RotationEnabled && k.State == keys.Enabled && k.NextRotation != nil && !now.Before(*k.NextRotation) && !k.IsReplica()
}

// SweepRotations rotates every key whose automatic rotation is due, and
// returns how many it rotated. The candidates come from a scan that may be
// stale by the time each is updated — another controller may have rotated
// the key before this one was given the lease, or the key been disabled,
// deleted or had its rotation turned off since — so each key's update
// checks again, on the record it read in its transaction, that the
// rotation is due, and writes the new material and the next rotation date
// together: a sweep cut off and run again (on this node or the next
// controller) rotates every due key exactly once (MULTINODE.md §4.6).
// Single-Region keys are rotated catalog.KeysPerUpdate to a transaction
// (catalog.UpdateKeys), each checked on its own: a commit, and on
// PostgreSQL a WAL flush and a change-feed wake-up on every node, per 12
// keys rather than per key, so that 1,000 keys due at once rotate well
// within 2 sweep intervals on a loaded machine (e2e
// TestA8SweepsExactlyOnce). A multi-Region primary is rotated with its
// replicas in a transaction of its own.
func (s *Service) SweepRotations(ctx context.Context) (int, error) {
	now := s.now().UTC().Truncate(time.Millisecond)
	var single, multi []string // names of the due keys
	err := s.sweepKeys(ctx, func(k *catalog.Key) error {
		switch {
		case !rotationDue(k, now):
		case k.MultiRegion():
			multi = append(multi, k.Name())
		default:
			single = append(single, k.Name())
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	n := 0
	for batch := range slices.Chunk(single, catalog.KeysPerUpdate) {
		done, err := s.cat.UpdateKeys(ctx, batch, func(k *catalog.Key) error {
			if !rotationDue(k, now) {
				return catalog.ErrNoChange
			}
			return s.rotate(k, "AUTOMATIC", now)
		})
		n += len(done)
		if err != nil {
			return n, err
		}
	}
	// Multi-Region primaries, each with its replicas (updateShared).
	for _, id := range multi {
		_, err := s.updateShared(ctx, id, func(k *catalog.Key, _ []*catalog.Key) error {
			if !rotationDue(k, now) {
				return errNotDue
			}
			return s.rotate(k, "AUTOMATIC", now)
		})
		switch {
		case errors.Is(err, errNotDue), errors.Is(err, catalog.ErrNotFound):
			continue
		case err != nil:
			return n, err
		}
		n++
	}
	return n, nil
}
