package kms

import (
	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/kmsapi"
)

// hasMaterialID says whether AWS reports KeyMaterialIds for k: symmetric
// encryption keys whose material KMS holds, origin AWS_KMS or EXTERNAL
// (model documentation of KeyMetadata.CurrentKeyMaterialId and of the
// KeyMaterialId members, "present only when the operation uses a
// symmetric encryption KMS key"; spec §4). Keys in custom key stores have
// none: DescribeKey shows no CurrentKeyMaterialId for them (custom key
// stores spec §5.8), and [R] §5.9 omits KeyMaterialId from their
// cryptographic responses too.
func hasMaterialID(k *catalog.Key) bool {
	return k.KeySpec == keys.Symmetric && k.CustomKeyStoreID == "" && (k.Origin == "AWS_KMS" || k.Origin == "EXTERNAL")
}

// materialID is the KeyMaterialId of version v of k for a response, nil
// when k has none (hasMaterialID) or no such version (a key still pending
// its first import).
func (s *Service) materialID(k *catalog.Key, v uint32) (*string, error) {
	if !hasMaterialID(k) || k.Version(v) == nil {
		return nil, nil
	}
	id, err := s.cat.VersionMaterialID(k, v)
	if err != nil {
		return nil, internal(err)
	}
	return &id, nil
}

// withMaterialID sets KeyMetadata.CurrentKeyMaterialId of k in m and
// returns m.
func (s *Service) withMaterialID(k *catalog.Key, m *kmsapi.KeyMetadata) (*kmsapi.KeyMetadata, error) {
	id, err := s.materialID(k, k.Current)
	if err != nil {
		return nil, err
	}
	m.CurrentKeyMaterialId = id
	return m, nil
}

// blobMaterialID is the KeyMaterialId of the version of k that encrypted
// blob, a kmsd symmetric ciphertext blob already opened with k; nil when
// k has none.
func (s *Service) blobMaterialID(k *catalog.Key, blob []byte) (*string, error) {
	if !hasMaterialID(k) {
		return nil, nil
	}
	b, err := parseBlob(blob)
	if err != nil {
		return nil, nil // opened, so parsed before; never here
	}
	return s.materialID(k, b.KeyVersion)
}
