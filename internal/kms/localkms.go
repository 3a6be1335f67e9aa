package kms

import (
	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/keys"
)

// parseBlob parses a ciphertext blob: kmsd's own format, or else
// local-kms's (keys.ParseLocalKMSBlob), which only keys seeded from a
// local-kms seed file (catalog.Key.LocalKMS) open — see localKMSMismatch.
// This file and keys/localkms.go are the whole of kmsd's local-kms
// ciphertext compatibility.
func parseBlob(blob []byte) (*keys.Blob, error) {
	b, err := keys.ParseBlob(blob)
	if err == nil {
		return b, nil
	}
	if lb, _, lerr := keys.ParseLocalKMSBlob(blob); lerr == nil {
		return lb, nil
	}
	return nil, err
}

// localKMSMismatch reports whether a local-kms blob is offered to a key
// not seeded from a local-kms file, which never opens one.
func localKMSMismatch(b *keys.Blob, k *catalog.Key) bool {
	return b.LocalKMS && (!k.LocalKMS || k.CustomKeyStoreID != "" || k.XksKeyID != "")
}

// blobAAD appends the additional data of blob b under context ec.
func blobAAD(dst []byte, b *keys.Blob, ec map[string]string) []byte {
	if b.LocalKMS {
		return append(dst, keys.LocalKMSAAD(ec)...)
	}
	return keys.AppendAAD(dst, b.Header, ec)
}
