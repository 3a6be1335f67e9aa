package kms

import (
	"context"
	"time"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/policy"
)

// ScheduleKeyDeletion puts a key in PendingDeletion for 7–30 days (30 by
// default); the sweeper deletes it when the window has passed.
func (s *Service) ScheduleKeyDeletion(ctx context.Context, c *Caller, in *kmsapi.ScheduleKeyDeletionRequest) (*kmsapi.ScheduleKeyDeletionResponse, error) {
	days := int32(30)
	if in.PendingWindowInDays != nil {
		days = *in.PendingWindowInDays
	}
	// The model allows 1–365; the service allows 7–30.
	switch {
	case days < 7:
		return nil, validation("Value '" + itoa(int(days)) + "' at 'pendingWindowInDays' failed to satisfy constraint: Member must have value greater than or equal to 7")
	case days > 30:
		return nil, validation("Value '" + itoa(int(days)) + "' at 'pendingWindowInDays' failed to satisfy constraint: Member must have value less than or equal to 30")
	}
	k, err := s.resolveKeyID(ctx, c, *in.KeyId)
	if err != nil {
		return nil, err
	}
	if err := s.authorizeKey(ctx, c, "kms:ScheduleKeyDeletion", k, nil, func(r *policy.Request) {
		setInt(r, policy.KeyPendingWindowInDays, days)
	}); err != nil {
		return nil, err
	}
	k, err = s.cat.UpdateKey(ctx, k.Name(), func(k *catalog.Key) error {
		if err := notPendingDeletion(k); err != nil {
			return err
		}
		if err := notUpdating(k); err != nil {
			return err
		}
		k.PendingWindowInDays = days
		if k.IsPrimary() && len(k.ReplicaRegions) > 0 {
			// The window starts when the last replica is deleted
			// (spec §9.6; SweepDeletions).
			k.State = keys.PendingReplicaDeletion
			return nil
		}
		when := s.now().UTC().Add(time.Duration(days) * 24 * time.Hour).Truncate(time.Millisecond)
		k.State = keys.PendingDeletion
		k.DeletionDate = &when
		return nil
	})
	if err != nil {
		return nil, internal(err)
	}
	out := &kmsapi.ScheduleKeyDeletionResponse{
		KeyId:               kmsapi.String(k.ARN()),
		KeyState:            kmsapi.String(string(k.State)),
		PendingWindowInDays: kmsapi.Int32(days),
	}
	if k.DeletionDate != nil {
		out.DeletionDate = kmsapi.NewTime(*k.DeletionDate)
	}
	return out, nil
}

// SweepDeletions deletes every key whose deletion date has passed. It
// returns how many keys it deleted.
func (s *Service) SweepDeletions(ctx context.Context) (int, error) {
	now := s.now()
	var due []*catalog.Key
	var backed []*catalog.Key // keys of custom key stores among them
	err := s.sweepKeys(ctx, func(k *catalog.Key) error {
		if k.State == keys.PendingDeletion && k.DeletionDate != nil && !now.Before(*k.DeletionDate) {
			due = append(due, k)
			if k.CustomKeyStoreID != "" {
				backed = append(backed, k)
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	for _, k := range backed {
		s.deleteBackingKey(ctx, k)
	}
	for _, k := range due {
		id := k.Name()
		if err := s.cat.DeleteGrants(ctx, id); err != nil {
			return 0, err
		}
		if err := s.deleteKey(ctx, id); err != nil {
			return 0, err
		}
		if err := s.forgetUsage(ctx, k); err != nil {
			// The key is gone; its stale last-use record names a key
			// nobody can ask about, so it is not worth failing the sweep.
			s.log.Error("delete the last use of a deleted key", "key", id, "err", err)
		}
		s.log.Info("key deleted after its waiting period", "key", id)
	}
	return len(due), nil
}
