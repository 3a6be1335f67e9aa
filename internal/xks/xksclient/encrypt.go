package xksclient

import (
	"bytes"
	"context"
	"errors"

	"github.com/kmsd/kmsd/internal/xks"
)

// EncryptInput is what KMS sends to the proxy's Encrypt: the inner (KMS-layer)
// ciphertext as plaintext, and its AAD (spec §1.6, §2.3).
type EncryptInput struct {
	Plaintext []byte
	AAD       []byte // additionalAuthenticatedData; nil or empty means none
	// SkipCDIV leaves out ciphertextDataIntegrityValueAlgorithm. KMS asks for the CDIV
	// on every call (§1.6, §6 "KMS side" 5), so only tests should set it.
	SkipCDIV bool
}

// EncryptOutput is the proxy's validated answer, to be embedded in KMS's blob.
type EncryptOutput struct {
	Ciphertext []byte
	IV         []byte
	Tag        []byte
	Metadata   []byte // ciphertextMetadata, nil when absent
	CDIV       []byte // ciphertextDataIntegrityValue, verified; nil when not requested nor sent
}

// Encrypt calls the proxy's Encrypt for an external key (spec §1.6), as Encrypt,
// GenerateDataKey(WithoutPlaintext) and ReEncrypt do (§2.2). meta.Operation defaults
// to Encrypt; meta.Principal and meta.KeyARN are required.
func (c *Client) Encrypt(ctx context.Context, keyID string, in EncryptInput, meta Meta) (*EncryptOutput, error) {
	const op = xks.OpEncrypt
	path, err := keyPath(op, keyID)
	if err != nil {
		return nil, err
	}
	if len(in.Plaintext) == 0 {
		return nil, &Error{Op: op, Kind: KindInternal, Err: errors.New("empty plaintext")}
	}
	rm, err := meta.requestMetadata(op, apiCrypto, OpEncrypt)
	if err != nil {
		return nil, err
	}
	req := &xks.EncryptRequest{RequestMetadata: rm, Plaintext: in.Plaintext, EncryptionAlgorithm: xks.AlgorithmGCM}
	if len(in.AAD) > 0 {
		req.AdditionalAuthenticatedData = in.AAD
	}
	if !in.SkipCDIV {
		req.CiphertextDataIntegrityValueAlgorithm = xks.CDIVAlgorithm
	}
	data, err := c.call(ctx, op, path, req)
	if err != nil {
		return nil, err
	}
	out, err := ParseEncrypt(data, in.Plaintext, in.AAD, !in.SkipCDIV)
	if err != nil {
		return nil, invalid(op, 200, err)
	}
	return out, nil
}

// errCDIV marks a CDIV mismatch: the proxy's ciphertext is corrupt (§2.4 "proxy
// returns a ciphertext KMS then rejects").
var errCDIV = errors.New("ciphertextDataIntegrityValue does not match the returned ciphertext")

// ParseEncrypt decodes and validates an Encrypt answer for the given request (spec
// §1.6, §2.3): ciphertext as long as the plaintext, IV of 12 or 16 bytes, tag of 16,
// metadata of at most 20, strict Base64 throughout, and a CDIV that is present when
// requested and, whenever present, equal to SHA-256 over AAD‖metadata‖IV‖ciphertext‖tag.
func ParseEncrypt(data, plaintext, aad []byte, wantCDIV bool) (*EncryptOutput, error) {
	var w xks.EncryptResponse
	if err := decodeStrict(data, &w); err != nil {
		return nil, err
	}
	switch {
	case w.Ciphertext == nil:
		return nil, missing("ciphertext")
	case len(w.Ciphertext) != len(plaintext):
		return nil, errors.New("ciphertext length differs from plaintext length")
	case w.InitializationVector == nil:
		return nil, missing("initializationVector")
	case len(w.InitializationVector) != 12 && len(w.InitializationVector) != 16:
		return nil, errors.New("initializationVector must be 12 or 16 bytes")
	case w.AuthenticationTag == nil:
		return nil, missing("authenticationTag")
	case len(w.AuthenticationTag) != xks.TagSize:
		return nil, errors.New("authenticationTag must be 16 bytes")
	case len(w.CiphertextMetadata) > xks.MaxCiphertextMetadata:
		return nil, errors.New("ciphertextMetadata longer than 20 bytes")
	case wantCDIV && w.CiphertextDataIntegrityValue == nil:
		return nil, missing("ciphertextDataIntegrityValue")
	}
	if w.CiphertextDataIntegrityValue != nil {
		want := xks.CDIV(aad, w.CiphertextMetadata, w.InitializationVector, w.Ciphertext, w.AuthenticationTag)
		if !bytes.Equal(want, w.CiphertextDataIntegrityValue) {
			return nil, errCDIV
		}
	}
	return &EncryptOutput{Ciphertext: w.Ciphertext, IV: w.InitializationVector, Tag: w.AuthenticationTag,
		Metadata: w.CiphertextMetadata, CDIV: w.CiphertextDataIntegrityValue}, nil
}
