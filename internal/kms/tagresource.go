package kms

import (
	"context"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/policy"
)

// TagResource adds or replaces tags on a key.
func (s *Service) TagResource(ctx context.Context, c *Caller, in *kmsapi.TagResourceRequest) (*kmsapi.TagResourceResponse, error) {
	k, err := s.resolveKeyID(ctx, c, *in.KeyId)
	if err != nil {
		return nil, err
	}
	if err := s.authorizeKey(ctx, c, "kms:TagResource", k, nil, func(r *policy.Request) { setRequestTags(r, in.Tags) }); err != nil {
		return nil, err
	}
	if err := notPendingDeletion(k); err != nil {
		return nil, err
	}
	_, err = s.cat.UpdateKey(ctx, k.Name(), func(k *catalog.Key) error {
		tags, err := checkTags(k.Tags, in.Tags)
		k.Tags = tags
		return err
	})
	if err != nil {
		return nil, internal(err)
	}
	return &kmsapi.TagResourceResponse{}, nil
}
