package xksclient

import (
	"context"
	"errors"

	"github.com/kmsd/kmsd/internal/xks"
)

// DecryptInput is what KMS extracts from its blob for the proxy's Decrypt (§1.7).
type DecryptInput struct {
	Ciphertext []byte
	IV         []byte
	Tag        []byte
	AAD        []byte // as given to Encrypt
	Metadata   []byte // ciphertextMetadata as returned by Encrypt
}

// Decrypt calls the proxy's Decrypt for an external key (spec §1.7), as Decrypt and
// ReEncrypt do (§2.2), and returns the plaintext (KMS's inner ciphertext).
// meta.Operation defaults to Decrypt; meta.Principal and meta.KeyARN are required.
func (c *Client) Decrypt(ctx context.Context, keyID string, in DecryptInput, meta Meta) ([]byte, error) {
	const op = xks.OpDecrypt
	path, err := keyPath(op, keyID)
	if err != nil {
		return nil, err
	}
	if len(in.Ciphertext) == 0 || len(in.IV) == 0 || len(in.Tag) == 0 {
		return nil, &Error{Op: op, Kind: KindInternal, Err: errors.New("ciphertext, IV and tag are required")}
	}
	rm, err := meta.requestMetadata(op, apiCrypto, OpDecrypt)
	if err != nil {
		return nil, err
	}
	req := &xks.DecryptRequest{RequestMetadata: rm, Ciphertext: in.Ciphertext, EncryptionAlgorithm: xks.AlgorithmGCM,
		InitializationVector: in.IV, AuthenticationTag: in.Tag}
	if len(in.AAD) > 0 {
		req.AdditionalAuthenticatedData = in.AAD
	}
	if len(in.Metadata) > 0 {
		req.CiphertextMetadata = in.Metadata
	}
	data, err := c.call(ctx, op, path, req)
	if err != nil {
		return nil, err
	}
	pt, err := ParseDecrypt(data, len(in.Ciphertext))
	if err != nil {
		return nil, invalid(op, 200, err)
	}
	return pt, nil
}

// ParseDecrypt decodes and validates a Decrypt answer (spec §1.7, §2.3): a plaintext
// in strict Base64 exactly as long as the ciphertext sent.
func ParseDecrypt(data []byte, ciphertextLen int) ([]byte, error) {
	var w xks.DecryptResponse
	if err := decodeStrict(data, &w); err != nil {
		return nil, err
	}
	switch {
	case w.Plaintext == nil:
		return nil, missing("plaintext")
	case len(w.Plaintext) != ciphertextLen:
		return nil, errors.New("plaintext length differs from ciphertext length")
	}
	return w.Plaintext, nil
}
