package kms

import (
	"context"
	"errors"
	"sync"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/material"
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
	b, perr := parseBlob(blob)
	if perr != nil && keyID == nil {
		return nil, nil, errCiphertext
	}
	var k *catalog.Key
	var err error
	if keyID != nil {
		if k, err = s.resolveCross(ctx, c, *keyID); err != nil {
			if perr != nil {
				return nil, nil, errCiphertext
			}
			return nil, nil, err
		}
		if keys.IsAsymmetric(k.KeySpec) {
			// Raw RSAES-OAEP: no header, the caller names the key.
			pt, err := s.openAsymmetric(ctx, c, action, k, blob, perr == nil, ec, alg, both(cryptoKeys(keyID, alg), extra))
			return k, pt, err
		}
		if perr != nil {
			return nil, nil, errCiphertext
		}
		if k.ID != b.KeyID {
			return nil, nil, exc("IncorrectKeyException", "The key ID in the request does not identify a CMK that can perform this operation.")
		}
	} else {
		k, err = s.cat.Key(ctx, catalog.Name(c.Region, b.KeyID))
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
	if err := checkEncryptUsage(k, action); err != nil {
		return nil, nil, err
	}
	if localKMSMismatch(b, k) {
		return nil, nil, errCiphertext
	}
	if k.XksKeyID != "" || b.External != nil {
		pt, err := s.openXKS(withCaller(ctx, c, action), k, b, ec)
		return k, pt, err
	}
	if k.CustomKeyStoreID != "" {
		pt, err := s.openHSM(ctx, k, b, ec)
		return k, pt, err
	}
	if b.KeyVersion > k.Current {
		// Material pending rotation encrypts nothing yet.
		return nil, nil, errCiphertext
	}
	aead, err := s.cat.AEAD(k, b.KeyVersion)
	if errors.Is(err, catalog.ErrNotFound) {
		return nil, nil, errCiphertext
	}
	if err != nil {
		return nil, nil, internal(err)
	}
	ap := aadPool.Get().(*[]byte)
	aad := blobAAD((*ap)[:0], b, ec)
	pt, err := aead.Open(nil, b.Nonce, b.Sealed, aad)
	*ap = aad
	aadPool.Put(ap)
	if err != nil {
		return nil, nil, errCiphertext
	}
	return k, pt, nil
}

// errAsymmetricContext refuses an encryption context with an asymmetric
// key. [U] AWS's reaction is not recorded; spec §1.5 recommends this.
var errAsymmetricContext = kmsapi.NewException("ValidationException", "Encryption context is not supported for asymmetric KMS keys.")

// checkAsymmetricEncrypt makes the checks of encrypting n bytes under an
// asymmetric key with algorithm alg (already checked against the spec):
// no encryption context, and the plaintext limit of spec §5.4.
func checkAsymmetricEncrypt(k *catalog.Key, alg string, ec map[string]string, n int) error {
	if len(ec) > 0 {
		return errAsymmetricContext
	}
	if limit := material.EncryptLimit(k.KeySpec, alg); n > limit {
		return exc("ValidationException", "Algorithm "+alg+" and key spec "+k.KeySpec+" cannot encrypt data larger than "+itoa(limit)+" bytes.")
	}
	return nil
}

// sealAsymmetric encrypts plaintext under the public key of k: the raw
// RSAES-OAEP output or the SM2PKE ciphertext, with no kmsd header (spec
// §5.4).
func (s *Service) sealAsymmetric(k *catalog.Key, alg string, plaintext []byte) ([]byte, error) {
	v := k.Version(k.Current)
	if v == nil || v.Public == nil {
		return nil, internal(errNoPublicKey)
	}
	ct, err := material.Encrypt(k.KeySpec, v.Public, alg, plaintext, s.rand)
	if err != nil {
		return nil, internal(err)
	}
	return ct, nil
}

// openAsymmetric decrypts a raw RSAES-OAEP or SM2PKE ciphertext with k, after the
// checks of Decrypt (authorization, state, usage, algorithm, context).
// kmsdBlob says the bytes are one of kmsd's symmetric blobs; conds sets
// the request's condition keys.
func (s *Service) openAsymmetric(ctx context.Context, c *Caller, action string, k *catalog.Key, ct []byte, kmsdBlob bool, ec map[string]string, alg *string, conds func(*policy.Request)) ([]byte, error) {
	if err := s.authorizeKey(ctx, c, action, k, ecOrEmpty(ec), conds); err != nil {
		return nil, err
	}
	if err := usable(k); err != nil {
		return nil, err
	}
	if err := checkEncryptUsage(k, action); err != nil {
		return nil, err
	}
	if err := checkAlgorithm(k, alg); err != nil {
		return nil, err
	}
	if len(ec) > 0 {
		return nil, errAsymmetricContext
	}
	// [R] spec §5.4: a kmsd blob, or decryption failing on bytes of the
	// algorithm's shape (RSA: the modulus length; SM2: a C1C3C2
	// ciphertext), is the wrong key; other bytes a bad ciphertext.
	if kmsdBlob {
		return nil, errIncorrectKey
	}
	priv, err := s.privateKey(k)
	if err != nil {
		return nil, internal(err)
	}
	pt, err := priv.Decrypt(*alg, ct)
	if errors.Is(err, material.ErrCiphertext) {
		return nil, errCiphertext
	}
	if errors.Is(err, material.ErrDecrypt) {
		return nil, errIncorrectKey
	}
	if err != nil {
		return nil, internal(err)
	}
	return pt, nil
}

// privateKey returns the decoded private key (or HMAC key) of k's current
// version. The catalog decodes it once per record and keeps it in memory
// while k is the key's current record; callers check k's state first.
func (s *Service) privateKey(k *catalog.Key) (*material.Key, error) {
	v, err := s.cat.Parsed(k, k.Current, catalog.Private, func(b []byte) (any, error) {
		return material.ParseKey(k.KeySpec, b)
	})
	if err != nil {
		return nil, err
	}
	return v.(*material.Key), nil
}

// publicKey returns the decoded public key of k's current version, cached
// as privateKey's.
func (s *Service) publicKey(k *catalog.Key) (*material.PublicKey, error) {
	v, err := s.cat.Parsed(k, k.Current, catalog.Public, func(b []byte) (any, error) {
		return material.ParsePublic(k.KeySpec, b)
	})
	if errors.Is(err, catalog.ErrNotFound) {
		return nil, errNoPublicKey
	}
	if err != nil {
		return nil, err
	}
	return v.(*material.PublicKey), nil
}

var errIncorrectKey = kmsapi.NewException("IncorrectKeyException", "The key ID in the request does not identify a CMK that can perform this operation.")
