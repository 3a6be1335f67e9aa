package xks

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
)

// ErrAADTooLong reports AAD or metadata that the effective-AAD encoding cannot carry.
var ErrAADTooLong = errors.New("xks: AAD longer than 65535 bytes or ciphertextMetadata longer than 255 bytes")

// EffectiveAAD is the AAD given to AES-GCM in the EKM (spec §1.6):
//
//	uint16_be(len(aad)) || aad || uint8(len(metadata)) || metadata
//
// An absent field has length 0, so the minimum is 00 00 00. The lengths make
// "AAD=X, no metadata" and "no AAD, metadata=X" distinct.
func EffectiveAAD(aad, metadata []byte) ([]byte, error) {
	if len(aad) > 0xffff || len(metadata) > 0xff {
		return nil, ErrAADTooLong
	}
	out := make([]byte, 0, 3+len(aad)+len(metadata))
	out = binary.BigEndian.AppendUint16(out, uint16(len(aad)))
	out = append(out, aad...)
	out = append(out, byte(len(metadata)))
	return append(out, metadata...), nil
}

// CDIV is the ciphertext data integrity value (spec Appendix C): SHA-256 over the raw
// request AAD, ciphertextMetadata, IV, ciphertext and tag, concatenated without
// lengths (absent fields are empty).
func CDIV(aad, metadata, iv, ciphertext, tag []byte) []byte {
	h := sha256.New()
	h.Write(aad)
	h.Write(metadata)
	h.Write(iv)
	h.Write(ciphertext)
	h.Write(tag)
	return h.Sum(nil)
}
