package kms

import (
	"context"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/kmsapi"
)

// dataKeyLength applies the rule shared by the GenerateDataKey family:
// exactly one of KeySpec and NumberOfBytes.
func dataKeyLength(spec *string, n *int32) (int, error) {
	switch {
	case spec != nil && n != nil, spec == nil && n == nil:
		return 0, exc("ValidationException", "Please specify either number of bytes or key spec.")
	case n != nil:
		return int(*n), nil
	case *spec == "AES_128":
		return 16, nil
	}
	return 32, nil
}

// dataKey makes a data key under keyID and returns the key and its blob.
func (s *Service) dataKey(ctx context.Context, c *Caller, action, keyID string, spec *string, n *int32, alg *string, ec map[string]string, dry *bool) (*catalog.Key, []byte, []byte, error) {
	size, err := dataKeyLength(spec, n)
	if err != nil {
		return nil, nil, nil, err
	}
	k, err := s.resolveCross(ctx, c, keyID)
	if err != nil {
		return nil, nil, nil, err
	}
	if err := s.authorizeKey(ctx, c, action, k, ecOrEmpty(ec), cryptoKeys(&keyID, alg)); err != nil {
		return nil, nil, nil, err
	}
	if err := usable(k); err != nil {
		return nil, nil, nil, err
	}
	if err := checkEncryptUsage(k, action); err != nil {
		return nil, nil, nil, err
	}
	if err := checkAlgorithm(k, alg); err != nil {
		return nil, nil, nil, err
	}
	if err := dryRun(dry); err != nil {
		return nil, nil, nil, err
	}
	pt, err := s.randomBytes(size)
	if err != nil {
		return nil, nil, nil, err
	}
	blob, err := s.seal(withCaller(ctx, c, action), k, pt, ec)
	if err != nil {
		return nil, nil, nil, err
	}
	return k, pt, blob, nil
}

// GenerateDataKey returns a random data key in plaintext and encrypted
// under a KMS key.
func (s *Service) GenerateDataKey(ctx context.Context, c *Caller, in *kmsapi.GenerateDataKeyRequest) (*kmsapi.GenerateDataKeyResponse, error) {
	if in.Recipient != nil {
		return nil, exc("UnsupportedOperationException", "Recipient (Nitro Enclaves attestation) is not supported by kmsd.")
	}
	k, pt, blob, err := s.dataKey(ctx, c, "kms:GenerateDataKey", *in.KeyId, in.KeySpec, in.NumberOfBytes, nil, in.EncryptionContext, in.DryRun)
	if err != nil {
		return nil, err
	}
	mid, err := s.materialID(k, k.Current)
	if err != nil {
		return nil, err
	}
	arn := k.ARN()
	return &kmsapi.GenerateDataKeyResponse{CiphertextBlob: blob, Plaintext: pt, KeyId: &arn, KeyMaterialId: mid}, nil
}

// GenerateDataKeyWithoutPlaintext is GenerateDataKey without the plaintext.
func (s *Service) GenerateDataKeyWithoutPlaintext(ctx context.Context, c *Caller, in *kmsapi.GenerateDataKeyWithoutPlaintextRequest) (*kmsapi.GenerateDataKeyWithoutPlaintextResponse, error) {
	k, pt, blob, err := s.dataKey(ctx, c, "kms:GenerateDataKeyWithoutPlaintext", *in.KeyId, in.KeySpec, in.NumberOfBytes, nil, in.EncryptionContext, in.DryRun)
	if err != nil {
		return nil, err
	}
	clear(pt)
	mid, err := s.materialID(k, k.Current)
	if err != nil {
		return nil, err
	}
	arn := k.ARN()
	return &kmsapi.GenerateDataKeyWithoutPlaintextResponse{CiphertextBlob: blob, KeyId: &arn, KeyMaterialId: mid}, nil
}
