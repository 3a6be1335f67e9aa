package kms

import (
	"context"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/kmsapi"
)

// CancelKeyDeletion takes a key out of PendingDeletion (or a multi-Region
// primary out of PendingReplicaDeletion); as in AWS it comes back
// Disabled.
func (s *Service) CancelKeyDeletion(ctx context.Context, c *Caller, in *kmsapi.CancelKeyDeletionRequest) (*kmsapi.CancelKeyDeletionResponse, error) {
	k, err := s.resolveKeyID(ctx, c, *in.KeyId)
	if err != nil {
		return nil, err
	}
	if err := s.authorizeKey(ctx, c, "kms:CancelKeyDeletion", k, nil, nil); err != nil {
		return nil, err
	}
	k, err = s.cat.UpdateKey(ctx, k.Name(), func(k *catalog.Key) error {
		if k.State != keys.PendingDeletion && k.State != keys.PendingReplicaDeletion {
			return exc("KMSInvalidStateException", k.ARN()+" is not pending deletion.")
		}
		k.State = keys.Disabled
		if k.Origin == originExternal && !allImported(k) {
			// A key missing imported material comes back waiting for it.
			k.State = keys.PendingImport
		}
		k.DeletionDate = nil
		k.PendingWindowInDays = 0
		return nil
	})
	if err != nil {
		return nil, internal(err)
	}
	return &kmsapi.CancelKeyDeletionResponse{KeyId: kmsapi.String(k.ARN())}, nil
}
