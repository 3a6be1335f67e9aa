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
	k, err = s.cat.UpdateKey(ctx, k.ID, func(k *catalog.Key) error {
		if k.State == keys.PendingDeletion {
			return exc("KMSInvalidStateException", k.ARN()+" is pending deletion.")
		}
		when := s.now().UTC().Add(time.Duration(days) * 24 * time.Hour).Truncate(time.Millisecond)
		k.State = keys.PendingDeletion
		k.DeletionDate = &when
		k.PendingWindowInDays = days
		return nil
	})
	if err != nil {
		return nil, internal(err)
	}
	return &kmsapi.ScheduleKeyDeletionResponse{
		KeyId:               kmsapi.String(k.ARN()),
		DeletionDate:        kmsapi.NewTime(*k.DeletionDate),
		KeyState:            kmsapi.String(string(keys.PendingDeletion)),
		PendingWindowInDays: kmsapi.Int32(days),
	}, nil
}

// SweepDeletions deletes every key whose deletion date has passed. It
// returns how many keys it deleted.
func (s *Service) SweepDeletions(ctx context.Context) (int, error) {
	now := s.now()
	var due []*catalog.Key
	var backed []*catalog.Key // keys of custom key stores among them
	err := s.cat.AllKeys(ctx, func(k *catalog.Key) error {
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
		id := k.ID
		if err := s.cat.DeleteGrants(ctx, id); err != nil {
			return 0, err
		}
		if err := s.cat.DeleteKey(ctx, id); err != nil {
			return 0, err
		}
		if err := s.forgetUsage(ctx, k); err != nil {
			// The key is gone; its stale last-use record names a key
			// nobody can ask about, so it is not worth failing the sweep.
			s.log.Error("delete the last use of a deleted key", "keyId", id, "err", err)
		}
		s.log.Info("key deleted after its waiting period", "keyId", id)
	}
	return len(due), nil
}
