package kms

import (
	"context"

	"github.com/kmsd/kmsd/internal/kmsapi"
)

// DescribeKey returns a key's metadata; the key may be named by id, ARN,
// alias name or alias ARN.
func (s *Service) DescribeKey(ctx context.Context, c *Caller, in *kmsapi.DescribeKeyRequest) (*kmsapi.DescribeKeyResponse, error) {
	k, err := s.resolveCross(ctx, c, *in.KeyId)
	if err != nil {
		return nil, err
	}
	if err := s.authorizeKey(ctx, c, "kms:DescribeKey", k, nil, aliasKey(*in.KeyId)); err != nil {
		return nil, err
	}
	m, err := s.withMaterialID(k, s.storeMetadata(k, metadata(k)))
	if err != nil {
		return nil, err
	}
	return &kmsapi.DescribeKeyResponse{KeyMetadata: m}, nil
}
