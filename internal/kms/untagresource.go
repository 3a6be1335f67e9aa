package kms

import (
	"context"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/policy"
)

// UntagResource removes tags by key; absent tag keys are ignored.
func (s *Service) UntagResource(ctx context.Context, c *Caller, in *kmsapi.UntagResourceRequest) (*kmsapi.UntagResourceResponse, error) {
	k, err := s.resolveKeyID(ctx, c, *in.KeyId)
	if err != nil {
		return nil, err
	}
	if err := s.authorizeKey(ctx, c, "kms:UntagResource", k, nil, func(r *policy.Request) { r.Set(policy.KeyTagKeys, in.TagKeys...) }); err != nil {
		return nil, err
	}
	if err := notPendingDeletion(k); err != nil {
		return nil, err
	}
	_, err = s.cat.UpdateKey(ctx, k.Name(), func(k *catalog.Key) error {
		drop := map[string]bool{}
		for _, t := range in.TagKeys {
			drop[t] = true
		}
		kept := k.Tags[:0]
		for _, t := range k.Tags {
			if !drop[t.Key] {
				kept = append(kept, t)
			}
		}
		k.Tags = kept
		return nil
	})
	if err != nil {
		return nil, internal(err)
	}
	return &kmsapi.UntagResourceResponse{}, nil
}
