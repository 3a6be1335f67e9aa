package catalog

import (
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
)

// WorkingKey is the AES-256 key of a version of imported symmetric
// material (spec §7.9): HKDF-SHA256 with the material as input keying
// material, a deployment secret of the barrier as salt, and "kmsd blob
// v1" ‖ key id ‖ KeyMaterialId as info. Knowing the imported bytes is not
// enough to make or open a kmsd ciphertext; two keys with the same bytes
// have different working keys; related multi-Region keys, which share key
// id and KeyMaterialId, have the same one. The caller clears the result.
func (c *Catalog) WorkingKey(keyID, materialID string, material []byte) []byte {
	salt := c.barrier.Derive("kmsd imported-material working key")
	defer clear(salt)
	info := make([]byte, 0, 64+len(keyID)+len(materialID))
	info = append(info, "kmsd blob v1"...)
	info = append(info, 0)
	info = append(info, keyID...)
	info = append(info, 0)
	info = append(info, materialID...)
	k, err := hkdf.Key(sha256.New, material, salt, string(info), 32)
	if err != nil {
		panic(err) // only for lengths far beyond 32 bytes
	}
	return k
}

// derivedAEAD is the cached AES-GCM of a Derived version, remembering the
// material it was made from: imported material can be deleted and, for a
// pending version, replaced by other material, and the cache must not
// outlive either.
type derivedAEAD struct {
	cipher.AEAD
	mid string
}

// fresh reports whether a cached AEAD may serve version v of k: always for
// generated material, which never changes; for imported material only
// while the version is imported with the same material.
func fresh(a cipher.AEAD, k *Key, v uint32) bool {
	d, ok := a.(*derivedAEAD)
	if !ok {
		return true
	}
	ver := k.Version(v)
	return ver != nil && ver.Sealed != nil && ver.MaterialID == d.mid
}
