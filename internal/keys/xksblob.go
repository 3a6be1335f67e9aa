package keys

import (
	"crypto/sha256"
	"encoding/binary"
)

// Ciphertext blob of a key in an external key store (kind KindExternal,
// same format version byte; the v1 symmetric format is unchanged):
//
//	byte    format version (1)
//	byte    kind (KindExternal)
//	byte    length of the key id, then the key id (ASCII)
//	uint32  key-material version of the inner (kmsd-held) layer
//	byte    length of the proxy's IV (12 or 16), then the IV
//	byte    length of the proxy's ciphertextMetadata (0-20), then it
//	[16]    the proxy's AES-GCM authentication tag
//	[...]   the proxy's ciphertext
//
// Double encryption: the proxy's plaintext is the inner layer — a 12-byte
// nonce and the AES-GCM ciphertext (with tag) of the caller's plaintext
// under kmsd's own material for the key, with AppendAAD(header, context)
// as AAD. The proxy's AAD is ExternalAAD(header, context). The header is
// everything before the IV length, so both layers bind it.
const (
	KindExternal      = 2
	MaxXKSMetadata    = 20
	externalAADDomain = "kmsd/xks/v1\x00"
)

// ExternalLayer is the proxy layer of a KindExternal blob.
type ExternalLayer struct {
	IV         []byte
	Metadata   []byte
	Tag        []byte
	Ciphertext []byte // the inner layer, encrypted by the proxy
}

// AppendExternalHeader appends the header of an external-key blob.
func AppendExternalHeader(dst []byte, keyID string, version uint32) []byte {
	dst = append(dst, BlobVersion, KindExternal, byte(len(keyID)))
	dst = append(dst, keyID...)
	return binary.BigEndian.AppendUint32(dst, version)
}

// AppendExternal appends the proxy layer to a header.
func AppendExternal(dst []byte, l *ExternalLayer) []byte {
	dst = append(dst, byte(len(l.IV)))
	dst = append(dst, l.IV...)
	dst = append(dst, byte(len(l.Metadata)))
	dst = append(dst, l.Metadata...)
	dst = append(dst, l.Tag...)
	return append(dst, l.Ciphertext...)
}

// ExternalAAD is the additionalAuthenticatedData kmsd gives the proxy for
// a blob: a domain label and the SHA-256 of the inner layer's AAD (header
// and encryption context), so it stays small whatever the context.
func ExternalAAD(header []byte, ctx map[string]string) []byte {
	h := sha256.Sum256(AppendAAD(nil, header, ctx))
	return append([]byte(externalAADDomain), h[:]...)
}

func parseExternal(b []byte) (*Blob, error) {
	if len(b) < 3 {
		return nil, ErrMalformedBlob
	}
	n := int(b[2])
	hdr := 3 + n + 4
	if n == 0 || len(b) < hdr+1 {
		return nil, ErrMalformedBlob
	}
	id := string(b[3 : 3+n])
	if !IsKeyID(id) {
		return nil, ErrMalformedBlob
	}
	p := hdr
	ivLen := int(b[p])
	p++
	if (ivLen != 12 && ivLen != 16) || len(b) < p+ivLen+1 {
		return nil, ErrMalformedBlob
	}
	iv := b[p : p+ivLen]
	p += ivLen
	mdLen := int(b[p])
	p++
	if mdLen > MaxXKSMetadata || len(b) < p+mdLen+TagSize+NonceSize+TagSize {
		return nil, ErrMalformedBlob
	}
	var md []byte
	if mdLen > 0 {
		md = b[p : p+mdLen]
	}
	p += mdLen
	return &Blob{
		KeyID:      id,
		KeyVersion: binary.BigEndian.Uint32(b[3+n:]),
		Header:     b[:hdr],
		External:   &ExternalLayer{IV: iv, Metadata: md, Tag: b[p : p+TagSize], Ciphertext: b[p+TagSize:]},
	}, nil
}
