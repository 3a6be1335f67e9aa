package kms

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"strconv"
	"time"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/kwp"
	"github.com/kmsd/kmsd/internal/material"
	"github.com/kmsd/kmsd/internal/policy"
)

// ImportKeyMaterial unwraps key material with the private key inside an
// import token and makes it a material of an EXTERNAL key (spec §7.4),
// checking in the order of that section. The key record changes in one
// durable write: a crash leaves the key as before or as after, never
// enabled without its material.
func (s *Service) ImportKeyMaterial(ctx context.Context, c *Caller, in *kmsapi.ImportKeyMaterialRequest) (*kmsapi.ImportKeyMaterialResponse, error) {
	model := materialExpires
	if in.ExpirationModel != nil {
		model = *in.ExpirationModel
	}
	now := s.now().UTC()
	var validTo *time.Time
	if in.ValidTo != nil {
		t := in.ValidTo.Time.UTC()
		validTo = &t
	}
	switch {
	case model == materialExpires && validTo == nil:
		return nil, exc("ValidationException", "A validTo date must be set if the ExpirationModel is KEY_MATERIAL_EXPIRES")
	case model == materialDoesNotExpire && validTo != nil:
		// [U] text.
		return nil, exc("ValidationException", "A validTo date must not be set if the ExpirationModel is KEY_MATERIAL_DOES_NOT_EXPIRE")
	case validTo != nil && (!validTo.After(now) || validTo.After(now.Add(365*day))):
		// [U] text.
		return nil, exc("ValidationException", "The validTo date must be in the future and no more than 365 days from the date of the request.")
	case in.KeyMaterialId != nil && in.ImportType != nil && *in.ImportType == importNew:
		// [U] text and exception.
		return nil, exc("ValidationException", "A KeyMaterialId cannot be specified with ImportType NEW_KEY_MATERIAL.")
	}
	k, err := s.resolveKeyID(ctx, c, *in.KeyId)
	if err != nil {
		return nil, err
	}
	if err := s.authorizeKey(ctx, c, "kms:ImportKeyMaterial", k, nil, func(r *policy.Request) {
		r.Set(policy.KeyExpirationModel, model)
		if validTo != nil {
			r.Set(policy.KeyValidTo, strconv.FormatInt(validTo.Unix(), 10))
		}
	}); err != nil {
		return nil, err
	}
	if err := requireExternal(k); err != nil {
		return nil, err
	}
	if err := importStateCheck(k, "ImportKeyMaterial"); err != nil {
		return nil, err
	}
	symmetric := k.KeySpec == keys.Symmetric
	if !symmetric && (in.ImportType != nil || in.KeyMaterialId != nil || in.KeyMaterialDescription != nil) {
		// [G] "rejected"; [U] exception and text.
		return nil, exc("ValidationException", "ImportType, KeyMaterialId and KeyMaterialDescription are supported only for symmetric encryption KMS keys.")
	}
	tok, err := s.cat.OpenImportToken(in.ImportToken)
	if err != nil {
		return nil, errImportToken
	}
	defer clear(tok.Private)
	if tok.Account != k.Account || tok.Region != k.Region || tok.KeyID != k.ID {
		return nil, errImportToken
	}
	if !now.Before(tok.Issued.Add(importTokenLifetime)) {
		// [U] text.
		return nil, exc("ExpiredImportTokenException", "The import token has expired. Call GetParametersForImport for a new one.")
	}
	plain, err := unwrapMaterial(tok, in.EncryptedKeyMaterial)
	if err != nil {
		return nil, err
	}
	defer clear(plain)
	private, public, err := s.importedEncoding(k, plain)
	if err != nil {
		return nil, err
	}
	defer clear(private)
	// The id of asymmetric material is that of its public key: PKCS #8
	// can encode one private key in several ways.
	idOf := private
	if public != nil {
		idOf = public
	}
	mid := s.cat.MaterialID(k.ID, idOf)
	im := importedMaterial{private: private, public: public, id: mid, model: model, validTo: validTo, now: now.Truncate(time.Millisecond)}
	if k.IsReplica() {
		if err := s.replicaMaterial(ctx, k, in, &im); err != nil {
			return nil, err
		}
	}
	// Related keys are read and written in the same transaction, so what
	// the primary holds cannot change between the check and the import.
	ks, err := s.cat.UpdateRelated(ctx, k.Name(), func(ks []*catalog.Key, _ *catalog.Batch) error {
		k, m := ks[0], im
		expire(k, now)
		if err := importStateCheck(k, "ImportKeyMaterial"); err != nil {
			return err
		}
		switch {
		case k.IsReplica():
			i := slices.IndexFunc(ks, func(x *catalog.Key) bool { return x.Region == k.PrimaryRegion })
			if i < 0 {
				return errIncorrectMaterial(k)
			}
			v := ks[i].Version(m.number)
			if v == nil || v.MaterialID != m.id {
				return errIncorrectMaterial(k) // deleted from the primary meanwhile
			}
			m.primaryCurrent = ks[i].Current
		case k.IsPrimary():
			primaryMaterial(k, ks[1:], &m)
		}
		return s.applyImport(k, in, m)
	})
	if err != nil {
		return nil, internal(err)
	}
	k = ks[0]
	out := &kmsapi.ImportKeyMaterialResponse{KeyId: kmsapi.String(k.ARN())}
	if symmetric {
		out.KeyMaterialId = kmsapi.String(mid)
	}
	return out, nil
}

// [U] text.
var errImportToken = exc("InvalidImportTokenException", "The import token is invalid or was issued for another KMS key.")

// errIncorrectMaterial is the answer to material that does not fit the
// key (spec §7.5) or is not the material the key expects (§7.4). [U] text.
func errIncorrectMaterial(k *catalog.Key) error {
	return exc("IncorrectKeyMaterialException", "The key material is not valid for KMS key "+k.ARN()+".")
}

// unwrapMaterial undoes the wrapping of spec §7.3 with the token's private
// key: RSAES-OAEP of the material, RSAES-OAEP of an AES key followed by
// AES-KWP of the material under it, or SM2PKE.
func unwrapMaterial(tok *catalog.ImportToken, wrapped []byte) ([]byte, error) {
	errSize := exc("ValidationException", "Invalid encrypted key size.")
	// [U] text; the model says "could not decrypt the encrypted key material".
	errUnwrap := exc("InvalidCiphertextException", "The encrypted key material could not be decrypted with the wrapping key of the import token.")
	n := material.ModulusLen(tok.WrappingKeySpec)
	switch tok.WrappingAlgorithm {
	case "RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256":
		if len(wrapped) != n {
			return nil, errSize
		}
		pt, err := material.DecryptOAEP(tok.WrappingKeySpec, tok.Private, tok.WrappingAlgorithm, wrapped)
		if err != nil {
			return nil, errUnwrap
		}
		return pt, nil
	case "RSA_AES_KEY_WRAP_SHA_1", "RSA_AES_KEY_WRAP_SHA_256":
		if n == 0 || len(wrapped) < n+16 || (len(wrapped)-n)%8 != 0 {
			return nil, errSize
		}
		oaep := "RSAES_OAEP_SHA_1"
		if tok.WrappingAlgorithm == "RSA_AES_KEY_WRAP_SHA_256" {
			oaep = "RSAES_OAEP_SHA_256"
		}
		kek, err := material.DecryptOAEP(tok.WrappingKeySpec, tok.Private, oaep, wrapped[:n])
		if err != nil {
			return nil, errUnwrap
		}
		defer clear(kek)
		pt, err := kwp.Unwrap(kek, wrapped[n:])
		if err != nil {
			return nil, errUnwrap
		}
		return pt, nil
	case "SM2PKE":
		pt, err := material.Decrypt("SM2", tok.Private, "SM2PKE", wrapped)
		if err != nil {
			return nil, errUnwrap
		}
		return pt, nil
	}
	return nil, errImportToken
}

// importedEncoding checks unwrapped material against k's spec (spec §7.5)
// and returns what kmsd seals for it — the same private encoding as for
// material kmsd makes, so every operation works alike on both — and, for
// key pairs, the public key.
func (s *Service) importedEncoding(k *catalog.Key, plain []byte) (private, public []byte, err error) {
	switch {
	case k.KeySpec == keys.Symmetric:
		want := 32
		if keys.InChina(k.Region) {
			want = 16 // SM4 material in the China Regions [G23]
		}
		if len(plain) != want {
			return nil, nil, errIncorrectMaterial(k)
		}
		return append([]byte(nil), plain...), nil, nil
	case keys.IsHMAC(k.KeySpec):
		if material.CheckImportedHMAC(k.KeySpec, plain) != nil {
			return nil, nil, errIncorrectMaterial(k)
		}
		return append([]byte(nil), plain...), nil, nil
	}
	private, public, err = material.ImportPrivate(k.KeySpec, plain, s.rand)
	if errors.Is(err, material.ErrImport) || errors.Is(err, material.ErrSpec) {
		return nil, nil, errIncorrectMaterial(k)
	}
	if err != nil {
		return nil, nil, internal(err)
	}
	return private, public, nil
}

// importedMaterial is one checked import, to apply to a key record.
type importedMaterial struct {
	private, public []byte
	id              string // KeyMaterialId
	model           string
	validTo         *time.Time
	now             time.Time
	// For a multi-Region replica: the number of the primary's version
	// with this material, and the primary's current version. 0 otherwise.
	number, primaryCurrent uint32
	// For a multi-Region primary: the highest version number any related
	// key has, and a material pending rotation in a related key that the
	// primary lacks (after UpdatePrimaryRegion made a replica primary).
	above            uint32
	pendingElsewhere string
}

// primaryMaterial prepares an import into a multi-Region primary from
// what its related keys hold. Since UpdatePrimaryRegion, a primary may
// lack material a replica has (imported while that replica's Region held
// the primary, or pending rotation): it takes such material under the
// same version number, and new material is numbered above every related
// key's and refused while other material is pending rotation in one.
func primaryMaterial(k *catalog.Key, related []*catalog.Key, im *importedMaterial) {
	for _, r := range related {
		for i := range r.Versions {
			v := &r.Versions[i]
			im.above = max(im.above, v.Number)
			if k.Version(v.Number) != nil {
				continue
			}
			switch {
			case v.MaterialID == im.id:
				im.number, im.primaryCurrent = v.Number, k.Current
			case v.Number > k.Current && v.Number > r.Current:
				im.pendingElsewhere = v.MaterialID
			}
		}
	}
}

// replicaMaterial checks an import into a multi-Region replica against its
// primary (spec §9.7): the replica takes only material the primary has,
// under the primary's version number, so that ciphertexts, which name the
// key id and version, decrypt in every Region; new material goes into the
// primary.
func (s *Service) replicaMaterial(ctx context.Context, k *catalog.Key, in *kmsapi.ImportKeyMaterialRequest, im *importedMaterial) error {
	if in.ImportType != nil && *in.ImportType == importNew {
		// [U] exception and text.
		return exc("UnsupportedOperationException", k.ARN()+" is a multi-Region replica key. Import new key material into its primary key.")
	}
	p, err := s.cat.Key(ctx, catalog.Name(k.PrimaryRegion, k.ID))
	if errors.Is(err, catalog.ErrNotFound) {
		return errIncorrectMaterial(k)
	}
	if err != nil {
		return internal(err)
	}
	for i := range p.Versions {
		if v := &p.Versions[i]; v.MaterialID == im.id {
			im.number, im.primaryCurrent = v.Number, p.Current
			return nil
		}
	}
	return errIncorrectMaterial(k)
}

// applyImport makes m a material of k by the import-type rules of spec
// §7.4, then settles k's state.
func (s *Service) applyImport(k *catalog.Key, in *kmsapi.ImportKeyMaterialRequest, m importedMaterial) error {
	set := func(v *catalog.Version) error {
		sealed, err := s.cat.Seal(k.Name(), v.Number, m.private)
		if err != nil {
			return internal(err)
		}
		v.Sealed, v.Public, v.MaterialID = sealed, m.public, m.id
		v.ImportState, v.ExpirationModel, v.ValidTo = importStateImported, m.model, m.validTo
		if in.KeyMaterialDescription != nil {
			v.MaterialDescription = *in.KeyMaterialDescription
		}
		v.Derived = k.KeySpec == keys.Symmetric
		return nil
	}
	if len(k.Versions) == 0 {
		// The first import, NEW or EXISTING alike: the material becomes
		// CURRENT and permanently associated.
		if in.KeyMaterialId != nil && *in.KeyMaterialId != m.id {
			return errIncorrectMaterial(k)
		}
		n := max(m.number, 1)
		k.Versions = []catalog.Version{{Number: n, Created: m.now}}
		k.Current = n
		if m.number != 0 {
			// A replica's current material is its primary's: until it
			// has imported that one (its first may be one pending
			// rotation, or an older one) it stays PendingImport.
			k.Current = m.primaryCurrent
		}
		if err := set(&k.Versions[0]); err != nil {
			return err
		}
		settle(k)
		return nil
	}
	if k.KeySpec != keys.Symmetric {
		// Asymmetric and HMAC keys have one material forever.
		v := k.Version(k.Current)
		if v == nil || v.MaterialID != m.id {
			return errIncorrectMaterial(k)
		}
		if err := set(v); err != nil {
			return err
		}
		settle(k)
		return nil
	}
	var same, pending *catalog.Version
	last := uint32(0)
	for i := range k.Versions {
		v := &k.Versions[i]
		if v.MaterialID == m.id {
			same = v
		}
		if v.Number > k.Current {
			pending = v
		}
		last = max(last, v.Number)
	}
	typ := importExisting
	if in.ImportType != nil {
		typ = *in.ImportType
	}
	switch typ {
	case importExisting:
		if in.KeyMaterialId != nil && *in.KeyMaterialId != m.id {
			return errIncorrectMaterial(k)
		}
		if same == nil && m.number != 0 && k.Version(m.number) == nil {
			// A replica takes another of its primary's materials.
			k.Versions = append(k.Versions, catalog.Version{Number: m.number, Created: m.now})
			slices.SortFunc(k.Versions, func(a, b catalog.Version) int { return cmp.Compare(a.Number, b.Number) })
			same = k.Version(m.number)
		}
		if m.number != 0 {
			// Its current material is the primary's (rotations reach
			// every related key at once, spec §9.7).
			k.Current = max(k.Current, m.primaryCurrent)
		}
		if same == nil {
			return errIncorrectMaterial(k)
		}
		if err := set(same); err != nil {
			return err
		}
	case importNew:
		if same != nil {
			return errIncorrectMaterial(k)
		}
		other := m.pendingElsewhere
		if pending != nil {
			other = pending.MaterialID
		}
		if other != "" {
			return exc("KMSInvalidStateException", "New key material (id: "+m.id+") cannot be imported into KMS key "+k.ID+
				", because another key material (id: "+other+") is pending rotation.")
		}
		k.Versions = append(k.Versions, catalog.Version{Number: max(last, m.above) + 1, Created: m.now})
		if err := set(&k.Versions[len(k.Versions)-1]); err != nil {
			return err
		}
	}
	settle(k)
	return nil
}
