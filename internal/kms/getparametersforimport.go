package kms

import (
	"context"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/material"
	"github.com/kmsd/kmsd/internal/policy"
)

// GetParametersForImport hands out a fresh wrapping key pair's public key
// and an import token holding its private key, both valid 24 hours, for
// importing material into an EXTERNAL key (spec §7.2). The token is
// stateless — sealed by the barrier, bound to account, Region and key —
// so any unexpired token of the key works, more than once.
func (s *Service) GetParametersForImport(ctx context.Context, c *Caller, in *kmsapi.GetParametersForImportRequest) (*kmsapi.GetParametersForImportResponse, error) {
	alg, spec := *in.WrappingAlgorithm, *in.WrappingKeySpec
	if alg == "RSAES_PKCS1_V1_5" {
		// [U] text: AWS withdrew the algorithm on 2023-10-10.
		return nil, exc("ValidationException", "The wrapping algorithm RSAES_PKCS1_V1_5 is no longer supported. Use RSAES_OAEP_SHA_1, RSAES_OAEP_SHA_256, RSA_AES_KEY_WRAP_SHA_1 or RSA_AES_KEY_WRAP_SHA_256.")
	}
	if err := chinaOnly(c.Region, alg); err != nil {
		return nil, err
	}
	if spec == "SM2" && !keys.InChina(c.Region) {
		return nil, exc("UnsupportedOperationException", "SM2 is not supported in this Region.")
	}
	if (alg == "SM2PKE") != (spec == "SM2") {
		// [U] text.
		return nil, exc("ValidationException", "Wrapping algorithm "+alg+" is not compatible with wrapping key spec "+spec+".")
	}
	k, err := s.resolveKeyID(ctx, c, *in.KeyId)
	if err != nil {
		return nil, err
	}
	if err := s.authorizeKey(ctx, c, "kms:GetParametersForImport", k, nil, func(r *policy.Request) {
		r.Set(policy.KeyWrappingAlgorithm, alg)
		r.Set(policy.KeyWrappingKeySpec, spec)
	}); err != nil {
		return nil, err
	}
	if err := requireExternal(k); err != nil {
		return nil, err
	}
	if err := importStateCheck(k, "GetParametersForImport"); err != nil {
		return nil, err
	}
	priv, pub, err := s.wrappingPair(spec)
	if err != nil {
		return nil, internal(err)
	}
	defer clear(priv)
	now := s.now().UTC()
	token, err := s.cat.SealImportToken(&catalog.ImportToken{
		Account: k.Account, Region: k.Region, KeyID: k.ID,
		WrappingAlgorithm: alg, WrappingKeySpec: spec,
		Issued: now, Private: priv,
	})
	if err != nil {
		return nil, internal(err)
	}
	return &kmsapi.GetParametersForImportResponse{
		KeyId:             kmsapi.String(k.ARN()),
		ImportToken:       token,
		PublicKey:         pub,
		ParametersValidTo: kmsapi.NewTime(now.Add(importTokenLifetime)),
	}, nil
}

// wrappingPair is a fresh key pair of a WrappingKeySpec: the private key
// as PKCS #8, the public key as SubjectPublicKeyInfo. RSA pairs come from
// the pool that GenerateDataKeyPair uses when it has one ready (each pair
// is handed out once), since an RSA_4096 pair takes a second to make.
func (s *Service) wrappingPair(spec string) (private, public []byte, err error) {
	if pair, ok := s.pairs.Take(spec); ok {
		return pair.Private, pair.Public, nil
	}
	return material.GeneratePair(spec, s.rand)
}
