package kms

import (
	"context"

	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/policy"
)

// ReEncrypt decrypts a blob and encrypts its plaintext under another key
// (or the same key with another context) without exposing the plaintext.
func (s *Service) ReEncrypt(ctx context.Context, c *Caller, in *kmsapi.ReEncryptRequest) (*kmsapi.ReEncryptResponse, error) {
	// The destination is looked up first for kms:ReEncryptOnSameKey, which
	// both authorizations see; its errors come after the source's.
	dst, dstErr := s.resolveCross(ctx, c, *in.DestinationKeyId)
	sameKey := func(r *policy.Request) {
		if b, err := parseBlob(in.CiphertextBlob); err == nil && dstErr == nil {
			r.SetBool(policy.KeyReEncryptOnSameKey, b.KeyID == dst.ID)
		}
	}
	src, pt, err := s.open(ctx, c, "kms:ReEncryptFrom", in.CiphertextBlob, in.SourceKeyId, in.SourceEncryptionContext, in.SourceEncryptionAlgorithm, sameKey)
	if err != nil {
		return nil, err
	}
	defer clear(pt)
	if err := checkAlgorithm(src, in.SourceEncryptionAlgorithm); err != nil {
		return nil, err
	}
	if dstErr != nil {
		return nil, dstErr
	}
	if err := s.authorizeKey(ctx, c, "kms:ReEncryptTo", dst, ecOrEmpty(in.DestinationEncryptionContext), both(cryptoKeys(in.DestinationKeyId, in.DestinationEncryptionAlgorithm), sameKey)); err != nil {
		return nil, err
	}
	if err := usable(dst); err != nil {
		return nil, err
	}
	if err := checkEncryptUsage(dst, "kms:ReEncryptTo"); err != nil {
		return nil, err
	}
	if err := checkAlgorithm(dst, in.DestinationEncryptionAlgorithm); err != nil {
		return nil, err
	}
	dstAlg := encryptionAlgorithm(in.DestinationEncryptionAlgorithm)
	asymmetric := keys.IsAsymmetric(dst.KeySpec)
	if asymmetric {
		if err := checkAsymmetricEncrypt(dst, dstAlg, in.DestinationEncryptionContext, len(pt)); err != nil {
			return nil, err
		}
	}
	if err := dryRun(in.DryRun); err != nil {
		return nil, err
	}
	var blob []byte
	if asymmetric {
		blob, err = s.sealAsymmetric(dst, dstAlg, pt)
	} else {
		blob, err = s.seal(withCaller(ctx, c, "kms:ReEncrypt"), dst, pt, in.DestinationEncryptionContext)
	}
	if err != nil {
		return nil, err
	}
	srcMID, err := s.blobMaterialID(src, in.CiphertextBlob)
	if err != nil {
		return nil, err
	}
	var dstMID *string
	if !asymmetric {
		if dstMID, err = s.materialID(dst, dst.Current); err != nil {
			return nil, err
		}
	}
	srcARN, dstARN := src.ARN(), dst.ARN()
	return &kmsapi.ReEncryptResponse{
		SourceKeyMaterialId:            srcMID,
		DestinationKeyMaterialId:       dstMID,
		CiphertextBlob:                 blob,
		SourceKeyId:                    &srcARN,
		KeyId:                          &dstARN,
		SourceEncryptionAlgorithm:      kmsapi.String(encryptionAlgorithm(in.SourceEncryptionAlgorithm)),
		DestinationEncryptionAlgorithm: kmsapi.String(dstAlg),
	}, nil
}
