//go:build cgo

package pkcs11

import (
	"slices"

	p11 "github.com/miekg/pkcs11"

	"github.com/kmsd/kmsd/internal/ecbgcm"
	"github.com/kmsd/kmsd/internal/xks/keyman"
)

// hasGCM reports whether the token in slot lists CKM_AES_GCM. A module that
// cannot list its mechanisms is taken at its word that it has GCM (the call
// itself will say otherwise).
func hasGCM(ctx *p11.Ctx, slot uint) bool {
	ms, err := ctx.GetMechanismList(slot)
	if err != nil {
		return true
	}
	return slices.ContainsFunc(ms, func(m *p11.Mechanism) bool { return m.Mechanism == p11.CKM_AES_GCM })
}

// composedGCM runs AES-GCM for a token without CKM_AES_GCM (openCryptoki's
// software token as Debian ships it): the token encrypts GCM's counter
// blocks with CKM_AES_ECB and ecbgcm does the rest, so the key stays in the
// token. CTR mode encrypts in both directions, so the key's CKA_DECRYPT is
// checked here for a decryption; a decrypt-only key cannot be used (the
// token refuses ECB encryption with it: ErrKeyUsage).
func (m *Manager) composedGCM(s *session, h p11.ObjectHandle, iv, aad, in []byte, decrypt bool) ([]byte, error) {
	ecb := func(blocks []byte) ([]byte, error) {
		if err := m.ctx.EncryptInit(s.h, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_ECB, nil)}, h); err != nil {
			return nil, err
		}
		return m.ctx.Encrypt(s.h, blocks)
	}
	if !decrypt {
		return ecbgcm.Seal(ecb, iv, in, aad)
	}
	attrs, err := m.ctx.GetAttributeValue(s.h, h, []*p11.Attribute{p11.NewAttribute(p11.CKA_DECRYPT, nil)})
	if err != nil {
		return nil, err
	}
	if len(attrs) != 1 || len(attrs[0].Value) != 1 || attrs[0].Value[0] == 0 {
		return nil, p11.Error(p11.CKR_KEY_FUNCTION_NOT_PERMITTED)
	}
	out, err := ecbgcm.Open(ecb, iv, in, aad)
	if err == ecbgcm.ErrOpen {
		return nil, keyman.ErrInvalidCiphertext
	}
	return out, err
}
