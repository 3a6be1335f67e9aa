package keys

import (
	"encoding/binary"
	"sort"
	"strings"
)

// local-kms (github.com/nsmithuk/local-kms, version 3) ciphertext blobs,
// accepted for keys seeded from a local-kms seed file so that ciphertexts
// local-kms made with the seeded backing keys still decrypt after a switch
// to kmsd. kmsd never writes this format. Layout:
//
//	byte    length n of the key's ARN
//	[n]     the key's ARN (arn:aws:kms:<region>:<account>:key/<key id>)
//	uint32  index of the backing key, little-endian, from 0 (the seed
//	        file's BackingKeys in order)
//	[12]    AES-GCM nonce
//	[...]   AES-GCM ciphertext followed by its 16-byte tag
//
// The additional data is LocalKMSAAD of the encryption context; nothing of
// the header is authenticated. A kmsd blob starts with BlobVersion (1),
// which is never the length of an ARN, so the two cannot be confused.

// minLocalKMSARN is the length of the shortest ARN of a key:
// "arn:aws:kms:" + a region + ":" + 12 digits + ":key/" + 36.
const minLocalKMSARN = len("arn:aws:kms:") + len("x") + 1 + 12 + len(":key/") + 36

// ParseLocalKMSBlob parses a local-kms ciphertext blob. The result's
// KeyVersion is the backing key's index plus one (kmsd's version numbers
// start at 1), its Header is nil and LocalKMS is set; ARN is the ARN the
// blob names.
func ParseLocalKMSBlob(b []byte) (blob *Blob, arn string, err error) {
	if len(b) < 1 {
		return nil, "", ErrMalformedBlob
	}
	n := int(b[0])
	hdr := 1 + n + 4
	if n < minLocalKMSARN || len(b) < hdr+NonceSize+TagSize {
		return nil, "", ErrMalformedBlob
	}
	arn = string(b[1 : 1+n])
	i := strings.LastIndex(arn, ":key/")
	if !strings.HasPrefix(arn, "arn:") || i < 0 {
		return nil, "", ErrMalformedBlob
	}
	id := arn[i+len(":key/"):]
	idx := binary.LittleEndian.Uint32(b[1+n:])
	if !IsKeyID(id) || idx == ^uint32(0) {
		return nil, "", ErrMalformedBlob
	}
	return &Blob{
		KeyID:      id,
		KeyVersion: idx + 1,
		Nonce:      b[hdr : hdr+NonceSize],
		Sealed:     b[hdr+NonceSize:],
		LocalKMS:   true,
	}, arn, nil
}

// LocalKMSAAD is local-kms's additional data for an encryption context:
// nil for none, else each key in sorted order followed by its value,
// concatenated without separators (so, unlike kmsd's AppendAAD, {"ab":"c"}
// and {"a":"bc"} are the same context — a weakness of the format, kept
// for these blobs only).
func LocalKMSAAD(ctx map[string]string) []byte {
	if len(ctx) == 0 {
		return nil
	}
	names := make([]string, 0, len(ctx))
	for k := range ctx {
		names = append(names, k)
	}
	sort.Strings(names)
	var out []byte
	for _, k := range names {
		out = append(out, k...)
		out = append(out, ctx[k]...)
	}
	return out
}
