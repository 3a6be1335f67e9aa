package kms

import (
	"context"
	"errors"
	"strings"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/keystore"
	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/xks/xksclient"
)

// Keys in external key stores (spec §5.7, §5.9, §10.8; xks-proxy-api.md
// §2.2–2.4). Each has AES-256 material held by kmsd (sealed by the
// barrier, like an AWS_KMS key's) and an external key behind the store's
// proxy; a ciphertext is encrypted under both (keys.KindExternal blobs).

type xksCallKey struct{}

// xksCall is what a cryptographic operation tells the proxy about itself
// (requestMetadata: the principal and kmsOperation).
type xksCall struct {
	principal, op, requestID string
}

// withCaller puts c and the KMS operation (e.g. "kms:Encrypt") in ctx for
// a proxy call further down (seal has no Caller).
func withCaller(ctx context.Context, c *Caller, action string) context.Context {
	if c == nil {
		return ctx
	}
	op := strings.TrimPrefix(action, "kms:")
	if strings.HasPrefix(op, "ReEncrypt") { // ReEncryptFrom / ReEncryptTo
		op = "ReEncrypt"
	}
	return context.WithValue(ctx, xksCallKey{}, &xksCall{principal: c.ARN, op: op, requestID: c.RequestID})
}

func (s *Service) xksMeta(ctx context.Context, k *catalog.Key, defOp string) xksclient.Meta {
	m := xksclient.Meta{KeyARN: k.ARN(), Operation: defOp, Principal: "arn:aws:iam::" + k.Account + ":root"}
	if call, ok := ctx.Value(xksCallKey{}).(*xksCall); ok {
		if call.principal != "" {
			m.Principal = call.principal
		}
		if call.op != "" {
			m.Operation = call.op
		}
		m.RequestID = xksRequestID(call.requestID)
	}
	return m
}

// xksRequestID passes kmsd's request id on when it is a UUID-like id the
// proxy accepts; otherwise the client draws one.
func xksRequestID(id string) string {
	if len(id) < 8 || len(id) > 64 {
		return ""
	}
	for _, r := range id {
		if !(r == '-' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return ""
		}
	}
	return id
}

// createExternalKey checks a CreateKey into external key store id with
// external key xksKeyID (spec §5.7; xks-proxy-api.md §2.1): the store is
// CONNECTED, no other key of the store uses xksKeyID, and the proxy's
// GetKeyMetadata says the external key is AES_256, ENABLED and allows
// ENCRYPT and DECRYPT.
//
// It returns the store as read from the database, for the check in the
// transaction that writes the key (keystore.CheckCreateKey).
func (s *Service) createExternalKey(ctx context.Context, c *Caller, id, xksKeyID *string) (*keystore.Store, error) {
	if id == nil || xksKeyID == nil {
		return nil, validation("Origin EXTERNAL_KEY_STORE needs a CustomKeyStoreId and an XksKeyId.")
	}
	m, err := s.keyStores()
	if err != nil {
		return nil, err
	}
	st, err := m.GetFresh(ctx, c.Account, c.Region, *id)
	if err != nil {
		return nil, storeErr(err)
	}
	if st.Type != keystore.TypeExternal {
		return nil, exc("UnsupportedOperationException", "Origin EXTERNAL_KEY_STORE does not match custom key store "+st.ID+" of type "+st.Type+".")
	}
	if !st.State.Allows(keystore.OpCreateKey) {
		return nil, storeErr(&keystore.StateError{Op: keystore.OpCreateKey, State: st.State, ID: st.ID})
	}
	// The catalog's store index answers from one entry, not a read of
	// every key.
	inUse, err := s.cat.XksKeyInUse(ctx, st.ID, *xksKeyID)
	if err != nil {
		return nil, internal(err)
	}
	if inUse {
		return nil, xksKeyInUse(*xksKeyID, st.ID)
	}
	cl, err := s.xks.ClientFor(m, st)
	if err != nil {
		return nil, internal(err)
	}
	md, err := cl.Metadata(ctx, *xksKeyID, xksclient.Meta{Principal: c.ARN, Operation: xksclient.OpCreateKey, RequestID: xksRequestID(c.RequestID)})
	if err == nil {
		err = xksclient.CheckKey(md)
	}
	if err != nil {
		name := xksclient.CreateKeyException(err)
		s.log.Warn("kms: XKS GetKeyMetadata failed", "store", st.ID, "xksKeyId", *xksKeyID, "exception", name, "err", err)
		if name == xksclient.ExcInternal {
			return nil, internal(err)
		}
		return nil, exc(name, xksclient.Message(err))
	}
	return st, nil
}

// xksKeyInUse is CreateKey's answer when external key xksKeyID is used by
// another KMS key of store storeID.
func xksKeyInUse(xksKeyID, storeID string) error {
	return exc("XksKeyAlreadyInUseException", "The external key "+xksKeyID+" is already associated with a KMS key in custom key store "+storeID+".")
}

// xksStore returns the CONNECTED store of external key k and its client,
// or the KMSInvalidStateException of a key that cannot be used.
func (s *Service) xksStore(k *catalog.Key) (*keystore.Store, *xksclient.Client, error) {
	st := s.keyStore(k)
	if st == nil || st.State != keystore.Connected || st.Type != keystore.TypeExternal {
		return nil, nil, exc("KMSInvalidStateException", k.ARN()+" is in a custom key store that is not connected to its external key store proxy. Connect the custom key store and retry.")
	}
	if err := s.throttle(st); err != nil {
		return nil, nil, err
	}
	cl, err := s.xks.ClientFor(s.stores, st)
	if err != nil {
		return nil, nil, internal(err)
	}
	return st, cl, nil
}

// xksCryptoErr is the exception of a failed proxy call of a cryptographic
// operation: KMSInvalidStateException for any proxy-side outcome (spec
// §5.9), with one stable message per cause.
func (s *Service) xksCryptoErr(st *keystore.Store, k *catalog.Key, err error) error {
	name := xksclient.CryptoException(err)
	s.log.Warn("kms: XKS proxy call failed", "store", st.ID, "keyId", k.ID, "xksKeyId", k.XksKeyID, "exception", name, "err", err)
	if name == xksclient.ExcInternal {
		return internal(err)
	}
	return exc(name, xksclient.Message(err))
}

// sealXKS double-encrypts plaintext for external key k: under kmsd's own
// material first, then through the proxy's Encrypt with the external key.
func (s *Service) sealXKS(ctx context.Context, k *catalog.Key, plaintext []byte, ec map[string]string) ([]byte, error) {
	st, cl, err := s.xksStore(k)
	if err != nil {
		return nil, err
	}
	aead, err := s.cat.AEAD(k, k.Current)
	if err != nil {
		return nil, internal(err)
	}
	hdr := keys.AppendExternalHeader(nil, k.ID, k.Current)
	inner := make([]byte, keys.NonceSize, keys.NonceSize+len(plaintext)+keys.TagSize)
	if _, err := s.rand.Read(inner); err != nil {
		return nil, internal(err)
	}
	inner = aead.Seal(inner, inner[:keys.NonceSize], plaintext, keys.AppendAAD(nil, hdr, ec))
	out, err := cl.Encrypt(ctx, k.XksKeyID, xksclient.EncryptInput{Plaintext: inner, AAD: keys.ExternalAAD(hdr, ec)}, s.xksMeta(ctx, k, xksclient.OpEncrypt))
	if err != nil {
		return nil, s.xksCryptoErr(st, k, err)
	}
	return keys.AppendExternal(hdr, &keys.ExternalLayer{IV: out.IV, Metadata: out.Metadata, Tag: out.Tag, Ciphertext: out.Ciphertext}), nil
}

// openXKS reverses sealXKS: the proxy's Decrypt removes the outer layer,
// kmsd's material the inner one.
func (s *Service) openXKS(ctx context.Context, k *catalog.Key, b *keys.Blob, ec map[string]string) ([]byte, error) {
	if k.XksKeyID == "" || b.External == nil {
		return nil, errCiphertext
	}
	aead, err := s.cat.AEAD(k, b.KeyVersion)
	if errors.Is(err, catalog.ErrNotFound) {
		return nil, errCiphertext
	}
	if err != nil {
		return nil, internal(err)
	}
	st, cl, err := s.xksStore(k)
	if err != nil {
		return nil, err
	}
	x := b.External
	inner, err := cl.Decrypt(ctx, k.XksKeyID, xksclient.DecryptInput{Ciphertext: x.Ciphertext, IV: x.IV, Tag: x.Tag,
		AAD: keys.ExternalAAD(b.Header, ec), Metadata: x.Metadata}, s.xksMeta(ctx, k, xksclient.OpDecrypt))
	if err != nil {
		return nil, s.xksCryptoErr(st, k, err)
	}
	if len(inner) < keys.NonceSize+keys.TagSize {
		return nil, exc("KMSInvalidStateException", "The ciphertext returned by the external key store proxy, or the encryption context, is invalid.")
	}
	pt, err := aead.Open(nil, inner[:keys.NonceSize], inner[keys.NonceSize:], keys.AppendAAD(nil, b.Header, ec))
	if err != nil {
		// The proxy authenticated the outer layer, so the inner one is
		// what it returned: its answer (or the context) is wrong.
		return nil, exc("KMSInvalidStateException", "The ciphertext returned by the external key store proxy, or the encryption context, is invalid.")
	}
	return pt, nil
}

// xksKeyConfiguration is KeyMetadata.XksKeyConfiguration of k.
func xksKeyConfiguration(k *catalog.Key) *kmsapi.XksKeyConfigurationType {
	if k.XksKeyID == "" {
		return nil
	}
	return &kmsapi.XksKeyConfigurationType{Id: kmsapi.String(k.XksKeyID)}
}
