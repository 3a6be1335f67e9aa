package kms

import (
	"context"

	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/kmsapi"
)

// Encrypt encrypts up to 4 KiB of plaintext under a symmetric key, or
// less (spec §5.4) under an RSA key with RSAES-OAEP.
func (s *Service) Encrypt(ctx context.Context, c *Caller, in *kmsapi.EncryptRequest) (*kmsapi.EncryptResponse, error) {
	k, err := s.resolveCross(ctx, c, *in.KeyId)
	if err != nil {
		return nil, err
	}
	if err := s.authorizeKey(ctx, c, "kms:Encrypt", k, ecOrEmpty(in.EncryptionContext), cryptoKeys(in.KeyId, in.EncryptionAlgorithm)); err != nil {
		return nil, err
	}
	if err := usable(k); err != nil {
		return nil, err
	}
	if err := checkEncryptUsage(k, "kms:Encrypt"); err != nil {
		return nil, err
	}
	if err := checkAlgorithm(k, in.EncryptionAlgorithm); err != nil {
		return nil, err
	}
	alg := encryptionAlgorithm(in.EncryptionAlgorithm)
	asymmetric := keys.IsAsymmetric(k.KeySpec)
	if asymmetric {
		if err := checkAsymmetricEncrypt(k, alg, in.EncryptionContext, len(in.Plaintext)); err != nil {
			return nil, err
		}
	}
	if err := dryRun(in.DryRun); err != nil {
		return nil, err
	}
	var blob []byte
	if asymmetric {
		blob, err = s.sealAsymmetric(k, alg, in.Plaintext)
	} else {
		blob, err = s.seal(withCaller(ctx, c, "kms:Encrypt"), k, in.Plaintext, in.EncryptionContext)
	}
	if err != nil {
		return nil, err
	}
	arn := k.ARN()
	return &kmsapi.EncryptResponse{
		CiphertextBlob:      blob,
		KeyId:               &arn,
		EncryptionAlgorithm: kmsapi.String(alg),
	}, nil
}
