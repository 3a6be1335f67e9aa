package kms

import (
	"context"
	"errors"
	"slices"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/kmsapi"
)

// DeleteImportedKeyMaterial deletes one imported material of an EXTERNAL
// key, by default the current one (spec §7.7). A permanently associated
// material keeps its id, so the same bytes can be imported again and its
// ciphertexts decrypt again; the key is PendingImport meanwhile (unless
// pending deletion). A PENDING_ROTATION material is removed entirely.
func (s *Service) DeleteImportedKeyMaterial(ctx context.Context, c *Caller, in *kmsapi.DeleteImportedKeyMaterialRequest) (*kmsapi.DeleteImportedKeyMaterialResponse, error) {
	k, err := s.resolveKeyID(ctx, c, *in.KeyId)
	if err != nil {
		return nil, err
	}
	if err := s.authorizeKey(ctx, c, "kms:DeleteImportedKeyMaterial", k, nil, nil); err != nil {
		return nil, err
	}
	if err := requireExternal(k); err != nil {
		return nil, err
	}
	if err := importStateCheck(k, "DeleteImportedKeyMaterial"); err != nil {
		return nil, err
	}
	var deleted string
	ks, err := s.cat.UpdateRelated(ctx, k.Name(), func(ks []*catalog.Key, _ *catalog.Batch) error {
		k := ks[0]
		if err := importStateCheck(k, "DeleteImportedKeyMaterial"); err != nil {
			return err
		}
		expire(k, s.now())
		deleted = ""
		var target *catalog.Version
		if in.KeyMaterialId != nil {
			for i := range k.Versions {
				if k.Versions[i].MaterialID == *in.KeyMaterialId {
					target = &k.Versions[i]
				}
			}
			if target == nil {
				// [U] exception and text.
				return exc("NotFoundException", "Key material "+*in.KeyMaterialId+" does not belong to "+k.ARN()+".")
			}
		} else if target = k.Version(k.Current); target == nil {
			return errUnchanged // nothing was ever imported
		}
		deleted = target.MaterialID
		if target.Number > k.Current {
			// Material pending rotation is not permanent: it goes
			// entirely, and from a multi-Region primary it goes from
			// every replica too (spec §7.7); from a replica, only there.
			related := ks[:1]
			if k.IsPrimary() {
				related = ks
			}
			for _, x := range related {
				x.Versions = slices.DeleteFunc(x.Versions, func(v catalog.Version) bool {
					return v.MaterialID == deleted && v.Number > x.Current
				})
			}
		} else {
			if target.ImportState != importStateImported {
				return errUnchanged
			}
			unimport(target)
		}
		settle(k)
		return nil
	})
	switch {
	case errors.Is(err, errUnchanged): // nothing to delete: k as it was
	case err != nil:
		return nil, internal(err)
	default:
		k = ks[0]
	}
	out := &kmsapi.DeleteImportedKeyMaterialResponse{KeyId: kmsapi.String(k.ARN())}
	if k.KeySpec == keys.Symmetric && deleted != "" {
		out.KeyMaterialId = kmsapi.String(deleted)
	}
	return out, nil
}
