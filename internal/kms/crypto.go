package kms

import (
	"context"
	"errors"
	"sync"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/policy"
)

var aadPool = sync.Pool{New: func() any { b := make([]byte, 0, 256); return &b }}

// seal encrypts plaintext under the current version of k, binding the
// encryption context, and returns the ciphertext blob.
func (s *Service) seal(cx context.Context, k *catalog.Key, plaintext []byte, ctx map[string]string) ([]byte, error) {
	if k.XksKeyID != "" {
		return s.sealXKS(cx, k, plaintext, ctx)
	}
	if k.CustomKeyStoreID != "" {
		return s.sealHSM(cx, k, plaintext, ctx)
	}
	aead, err := s.cat.AEAD(k, k.Current)
	if err != nil {
		return nil, internal(err)
	}
	blob := make([]byte, 0, 3+len(k.ID)+4+keys.NonceSize+len(plaintext)+keys.TagSize)
	blob = keys.AppendHeader(blob, k.ID, k.Current)
	hdr := len(blob)
	blob = blob[:hdr+keys.NonceSize]
	if _, err := s.rand.Read(blob[hdr:]); err != nil {
		return nil, internal(err)
	}
	ap := aadPool.Get().(*[]byte)
	aad := keys.AppendAAD((*ap)[:0], blob[:hdr], ctx)
	blob = aead.Seal(blob, blob[hdr:hdr+keys.NonceSize], plaintext, aad)
	*ap = aad
	aadPool.Put(ap)
	return blob, nil
}

var errCiphertext = kmsapi.NewException("InvalidCiphertextException", "")

// open decrypts a ciphertext blob. keyID, when not empty, is the key the
// caller says the blob is for; extra, if not nil, adds condition keys of
// the operation. It returns the key and the plaintext.
func (s *Service) open(ctx context.Context, c *Caller, action string, blob []byte, keyID *string, ec map[string]string, alg *string, extra func(*policy.Request)) (*catalog.Key, []byte, error) {
	b, err := keys.ParseBlob(blob)
	if err != nil {
		return nil, nil, errCiphertext
	}
	var k *catalog.Key
	if keyID != nil {
		if k, err = s.resolveCross(ctx, c, *keyID); err != nil {
			return nil, nil, err
		}
		if k.ID != b.KeyID {
			return nil, nil, exc("IncorrectKeyException", "The key ID in the request does not identify a CMK that can perform this operation.")
		}
	} else {
		k, err = s.cat.Key(ctx, b.KeyID)
		if errors.Is(err, catalog.ErrNotFound) || (err == nil && k.Region != c.Region) {
			return nil, nil, errCiphertext
		}
		if err != nil {
			return nil, nil, internal(err)
		}
		k = s.view(k)
	}
	if err := s.authorizeKey(ctx, c, action, k, ecOrEmpty(ec), both(cryptoKeys(keyID, alg), extra)); err != nil {
		return nil, nil, err
	}
	if err := usable(k); err != nil {
		return nil, nil, err
	}
	if err := checkEncryptUsage(k); err != nil {
		return nil, nil, err
	}
	if k.XksKeyID != "" || b.External != nil {
		pt, err := s.openXKS(withCaller(ctx, c, action), k, b, ec)
		return k, pt, err
	}
	if k.CustomKeyStoreID != "" {
		pt, err := s.openHSM(ctx, k, b, ec)
		return k, pt, err
	}
	aead, err := s.cat.AEAD(k, b.KeyVersion)
	if errors.Is(err, catalog.ErrNotFound) {
		return nil, nil, errCiphertext
	}
	if err != nil {
		return nil, nil, internal(err)
	}
	ap := aadPool.Get().(*[]byte)
	aad := keys.AppendAAD((*ap)[:0], b.Header, ec)
	pt, err := aead.Open(nil, b.Nonce, b.Sealed, aad)
	*ap = aad
	aadPool.Put(ap)
	if err != nil {
		return nil, nil, errCiphertext
	}
	return k, pt, nil
}
