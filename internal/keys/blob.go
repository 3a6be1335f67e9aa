package keys

import (
	"encoding/binary"
	"errors"
	"sort"
)

// Ciphertext blob format, version 1 (all integers big-endian):
//
//	byte    format version (1)
//	byte    kind (KindSymmetric)
//	byte    length of the key id, then the key id (ASCII)
//	uint32  key-material version
//	[12]    nonce
//	[...]   AES-GCM ciphertext followed by its 16-byte tag
//
// Everything before the nonce is the header. The header and the
// encryption context are bound as additional authenticated data, so no
// bit of the blob can change without decryption failing.
const (
	BlobVersion   = 1
	KindSymmetric = 1
	NonceSize     = 12
	TagSize       = 16
)

// ErrMalformedBlob means the bytes are not a ciphertext blob of ours.
var ErrMalformedBlob = errors.New("keys: malformed ciphertext blob")

// Blob is a parsed ciphertext blob. Its slices alias the parsed bytes.
type Blob struct {
	KeyID      string
	KeyVersion uint32
	Header     []byte // bytes bound as AAD along with the context
	Nonce      []byte
	Sealed     []byte // ciphertext || tag
	// External is the proxy layer of a KindExternal blob (Nonce and
	// Sealed are then nil: the inner layer is the proxy's plaintext).
	External *ExternalLayer
	// LocalKMS: a blob in local-kms's format (ParseLocalKMSBlob), whose
	// additional data is LocalKMSAAD of the context, not AppendAAD.
	LocalKMS bool
}

// ParseBlob parses b without decrypting it.
func ParseBlob(b []byte) (*Blob, error) {
	if len(b) >= 2 && b[0] == BlobVersion && b[1] == KindExternal {
		return parseExternal(b)
	}
	if len(b) < 3 || b[0] != BlobVersion || b[1] != KindSymmetric {
		return nil, ErrMalformedBlob
	}
	n := int(b[2])
	hdr := 3 + n + 4
	if n == 0 || len(b) < hdr+NonceSize+TagSize {
		return nil, ErrMalformedBlob
	}
	id := string(b[3 : 3+n])
	if !IsKeyID(id) {
		return nil, ErrMalformedBlob
	}
	return &Blob{
		KeyID:      id,
		KeyVersion: binary.BigEndian.Uint32(b[3+n:]),
		Header:     b[:hdr],
		Nonce:      b[hdr : hdr+NonceSize],
		Sealed:     b[hdr+NonceSize:],
	}, nil
}

// AppendHeader appends the header of a blob for key id at version to dst.
func AppendHeader(dst []byte, keyID string, version uint32) []byte {
	dst = append(dst, BlobVersion, KindSymmetric, byte(len(keyID)))
	dst = append(dst, keyID...)
	return binary.BigEndian.AppendUint32(dst, version)
}

// AppendAAD appends the additional authenticated data for a blob with the
// given header and encryption context: a domain label, the header, then
// the context as a count and sorted, length-prefixed key/value pairs —
// an encoding in which {"ab":"c"} and {"a":"bc"} differ.
func AppendAAD(dst, header []byte, ctx map[string]string) []byte {
	dst = append(dst, "kmsd/blob/v1\x00"...)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(header)))
	dst = append(dst, header...)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(ctx)))
	if len(ctx) == 0 {
		return dst
	}
	var stack [8]string
	names := stack[:0]
	for k := range ctx {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		v := ctx[k]
		dst = binary.BigEndian.AppendUint32(dst, uint32(len(k)))
		dst = append(dst, k...)
		dst = binary.BigEndian.AppendUint32(dst, uint32(len(v)))
		dst = append(dst, v...)
	}
	return dst
}
