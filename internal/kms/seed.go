package kms

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/identity"
	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/material"
	"github.com/kmsd/kmsd/internal/policy"
)

// SeedKey is a key a seed file declares (package seed reads the file).
// Where names its place in the file ("seed.yaml:12") for messages.
type SeedKey struct {
	Where           string
	Account, Region string
	ID              string
	Description     string
	KeySpec         string // default SYMMETRIC_DEFAULT
	KeyUsage        string // default ENCRYPT_DECRYPT for symmetric keys
	Policy          string // empty: the default key policy
	Tags            []catalog.Tag
	Disabled        bool
	// RotationPeriodInDays > 0 enables automatic rotation (90–2560);
	// NextRotation, if set, is when the next one is due.
	RotationPeriodInDays int32
	NextRotation         *time.Time
	// Material is the fixed key material, empty for material made here:
	// for symmetric and HMAC keys one or more versions, oldest first (the
	// last is current, the others as if rotated away from); for
	// asymmetric keys one DER PKCS #8 private key, or for ECC_SECG_P256K1
	// also the 32-byte private scalar.
	Material [][]byte
	// LocalKMS: from a local-kms seed file; the key also opens
	// local-kms's ciphertext blobs (localkms.go).
	LocalKMS bool
}

// SeedAlias is an alias a seed file declares.
type SeedAlias struct {
	Where           string
	Account, Region string
	Name            string
	TargetKeyID     string
}

// SeedGrant is a grant a seed file declares on one of its keys or an
// existing key. A grant has no name of its own: one with the same
// attributes on the key is the same grant; one with the same Name and
// other attributes is reported as a difference.
type SeedGrant struct {
	Where                               string
	Account, Region                     string
	KeyID                               string
	Name                                string
	GranteePrincipal, RetiringPrincipal string
	Operations                          []string
	ECEquals, ECSubset                  map[string]string
}

// SeedReport says what applying a seed did: the ARNs of the resources it
// created, and for those that already existed how they differ from the
// file (they are left as they are).
type SeedReport struct {
	Created     []string
	Existing    []string
	Differences []string
}

// Seed applies a seed file's keys and aliases: every one is checked
// first (AWS's rules for CreateKey and CreateAlias, and the material
// against its key spec), then those not yet present are created in one
// transaction, so an error leaves nothing of the file applied. Resources
// already present are left as they are and their differences from the
// file reported.
func (s *Service) Seed(ctx context.Context, ks []SeedKey, as []SeedAlias, gs []SeedGrant) (*SeedReport, error) {
	rep := &SeedReport{}
	var newKeys []*catalog.Key
	declared := map[string]bool{}
	now := s.now().UTC().Truncate(time.Millisecond)
	for i := range ks {
		sk := &ks[i]
		name := catalog.Name(sk.Region, sk.ID)
		if declared[name] {
			return nil, fmt.Errorf("%s: key %s is declared twice", sk.Where, sk.ID)
		}
		declared[name] = true
		cur, err := s.cat.Key(ctx, name)
		if err != nil && !errors.Is(err, catalog.ErrNotFound) {
			return nil, err
		}
		// An existing key is only compared: its declaration is checked
		// but no material is made or sealed for it.
		k, kerr := s.seedKey(sk, now, cur == nil)
		if kerr != nil {
			return nil, fmt.Errorf("%s: key %s: %w", sk.Where, sk.ID, seedMessage(kerr))
		}
		if cur != nil {
			rep.Existing = append(rep.Existing, cur.ARN())
			for _, d := range keyDifferences(cur, k) {
				rep.Differences = append(rep.Differences, cur.ARN()+": "+d)
			}
			continue
		}
		newKeys = append(newKeys, k)
		rep.Created = append(rep.Created, k.ARN())
	}
	var newAliases []*catalog.Alias
	seen := map[string]bool{}
	for _, sa := range as {
		if err := checkAliasName(sa.Name); err != nil {
			return nil, fmt.Errorf("%s: alias %s: %w", sa.Where, sa.Name, seedMessage(err))
		}
		arn := keys.AliasARN(sa.Region, sa.Account, sa.Name)
		if seen[arn] {
			return nil, fmt.Errorf("%s: alias %s is declared twice", sa.Where, sa.Name)
		}
		seen[arn] = true
		target, err := s.seedTarget(ctx, sa, newKeys)
		if err != nil {
			return nil, fmt.Errorf("%s: alias %s: %w", sa.Where, sa.Name, err)
		}
		cur, err := s.cat.Alias(ctx, sa.Account, sa.Region, sa.Name)
		if err == nil {
			rep.Existing = append(rep.Existing, arn)
			if cur.KeyID != target {
				rep.Differences = append(rep.Differences, arn+": TargetKeyId is "+cur.KeyID+", the seed file says "+target)
			}
			continue
		}
		if !errors.Is(err, catalog.ErrNotFound) {
			return nil, err
		}
		newAliases = append(newAliases, &catalog.Alias{Name: sa.Name, Account: sa.Account, Region: sa.Region, KeyID: target, Created: now, Updated: now})
		rep.Created = append(rep.Created, arn)
	}
	var newGrants []*catalog.Grant
	for _, sg := range gs {
		g, err := s.seedGrant(ctx, sg, newKeys, now, rep)
		if err != nil {
			return nil, fmt.Errorf("%s: grant on %s: %w", sg.Where, sg.KeyID, seedMessage(err))
		}
		if g != nil {
			newGrants = append(newGrants, g)
		}
	}
	if len(newKeys) == 0 && len(newAliases) == 0 && len(newGrants) == 0 {
		return rep, nil
	}
	if err := s.cat.CreateAll(ctx, newKeys, newAliases, newGrants); err != nil {
		return nil, err
	}
	return rep, nil
}

// seedGrant checks a declared grant as CreateGrant does and returns its
// new record, or nil if the key has it already.
func (s *Service) seedGrant(ctx context.Context, sg SeedGrant, newKeys []*catalog.Key, now time.Time, rep *SeedReport) (*catalog.Grant, error) {
	id, err := s.seedTarget(ctx, SeedAlias{Account: sg.Account, Region: sg.Region, TargetKeyID: sg.KeyID}, newKeys)
	if err != nil {
		return nil, err
	}
	var k *catalog.Key
	for _, nk := range newKeys {
		if nk.ID == id && nk.Region == sg.Region {
			k = nk
		}
	}
	if k == nil {
		if k, err = s.cat.Key(ctx, catalog.Name(sg.Region, id)); err != nil {
			return nil, err
		}
	}
	g := &catalog.Grant{
		KeyID: k.ID, Region: k.Region, Name: sg.Name, GranteePrincipal: sg.GranteePrincipal,
		RetiringPrincipal: sg.RetiringPrincipal, IssuingAccount: "arn:aws:iam::" + sg.Account + ":root",
		Operations: slices.Clone(sg.Operations), ECEquals: sg.ECEquals, ECSubset: sg.ECSubset, Created: now,
	}
	if len(g.Operations) == 0 {
		return nil, errors.New("a grant needs Operations")
	}
	if g.ECEquals != nil && g.ECSubset != nil {
		return nil, errors.New("give EncryptionContextEquals or EncryptionContextSubset, not both")
	}
	constrained := g.ECEquals != nil || g.ECSubset != nil
	if constrained && k.KeySpec != keys.Symmetric {
		return nil, errors.New("grant constraints are not supported for asymmetric or HMAC KMS keys")
	}
	allowed := grantOperations
	if k.KeySpec != keys.Symmetric {
		allowed = keys.GrantOperations(k.KeySpec, k.KeyUsage)
	}
	for _, op := range g.Operations {
		if !slices.Contains(allowed, op) {
			return nil, fmt.Errorf("grant operation %s is not valid for the key spec %s and key usage %s", op, k.KeySpec, k.KeyUsage)
		}
		if constrained && !slices.Contains(ecOperations, op) {
			return nil, fmt.Errorf("grant constraints are not supported for the %s operation", op)
		}
	}
	if !validGrantPrincipal(g.GranteePrincipal) {
		return nil, fmt.Errorf("invalid GranteePrincipal %q", g.GranteePrincipal)
	}
	if g.RetiringPrincipal != "" && !validGrantPrincipal(g.RetiringPrincipal) {
		return nil, fmt.Errorf("invalid RetiringPrincipal %q", g.RetiringPrincipal)
	}
	existing, err := s.cat.Grants(ctx, k.Name())
	if err != nil {
		return nil, err
	}
	for _, e := range existing {
		same := e.GranteePrincipal == g.GranteePrincipal && e.RetiringPrincipal == g.RetiringPrincipal &&
			slices.Equal(e.Operations, g.Operations) && mapsEqual(e.ECEquals, g.ECEquals) && mapsEqual(e.ECSubset, g.ECSubset)
		switch {
		case e.Name == g.Name && same:
			rep.Existing = append(rep.Existing, "grant "+e.ID+" on "+k.ARN())
			return nil, nil
		case g.Name != "" && e.Name == g.Name:
			rep.Existing = append(rep.Existing, "grant "+e.ID+" on "+k.ARN())
			rep.Differences = append(rep.Differences, "grant "+e.ID+" ("+g.Name+") on "+k.ARN()+": its grantee, operations or constraints differ from the seed file's")
			return nil, nil
		}
	}
	if g.ID, err = s.newGrantID(); err != nil {
		return nil, err
	}
	if g.Token, err = s.newGrantToken(); err != nil {
		return nil, err
	}
	rep.Created = append(rep.Created, "grant "+g.ID+" on "+k.ARN())
	return g, nil
}

// seedMessage is the message of a KMS exception, or err.
func seedMessage(err error) error {
	var e *kmsapi.Exception
	if errors.As(err, &e) {
		return errors.New(e.Message)
	}
	return err
}

// seedTarget resolves an alias's target among the keys of its account
// and Region: those the file creates, then those already stored.
func (s *Service) seedTarget(ctx context.Context, sa SeedAlias, newKeys []*catalog.Key) (string, error) {
	id := sa.TargetKeyID
	if ref, err := keys.Parse(id); err == nil && ref.Kind == keys.KindKeyARN {
		if ref.Account != sa.Account || ref.Region != sa.Region {
			return "", fmt.Errorf("TargetKeyId %s is not a key of account %s in %s", id, sa.Account, sa.Region)
		}
		id = ref.ID
	}
	if !keys.IsKeyID(id) {
		return "", fmt.Errorf("TargetKeyId %q is not a key id or key ARN", sa.TargetKeyID)
	}
	for _, k := range newKeys {
		if k.ID == id && k.Account == sa.Account && k.Region == sa.Region {
			return id, nil
		}
	}
	k, err := s.cat.Key(ctx, catalog.Name(sa.Region, id))
	if err == nil && k.Account == sa.Account && k.Region == sa.Region {
		if k.State == keys.PendingDeletion {
			return "", fmt.Errorf("TargetKeyId %s is pending deletion", id)
		}
		return id, nil
	}
	if err != nil && !errors.Is(err, catalog.ErrNotFound) {
		return "", err
	}
	return "", fmt.Errorf("TargetKeyId %s is no key of the seed file nor of account %s in %s", id, sa.Account, sa.Region)
}

// seedKey checks sk and builds its record, with its material sealed if
// withMaterial (given material is checked either way).
func (s *Service) seedKey(sk *SeedKey, now time.Time, withMaterial bool) (*catalog.Key, error) {
	if !keys.IsKeyID(sk.ID) || len(sk.ID) > 4 && sk.ID[:4] == "mrk-" {
		return nil, errors.New("KeyId must be a lower-case UUID such as 1234abcd-12ab-34cd-56ef-1234567890ab")
	}
	spec, usage := sk.KeySpec, sk.KeyUsage
	if spec == "" {
		spec = keys.Symmetric
	}
	info, ok := keys.Spec(spec)
	if !ok {
		return nil, fmt.Errorf("KeySpec %s is not a key spec", spec)
	}
	if usage == "" {
		if spec != keys.Symmetric {
			return nil, errors.New("KeyUsage is required for all keys except symmetric encryption keys")
		}
		usage = keys.EncryptDecrypt
	}
	if !info.Allows(usage) {
		return nil, fmt.Errorf("KeyUsage %s is not compatible with KeySpec %s", usage, spec)
	}
	if info.ChinaOnly && !keys.InChina(sk.Region) {
		return nil, fmt.Errorf("%s is not supported in %s", spec, sk.Region)
	}
	if sk.LocalKMS && spec != keys.Symmetric && len(sk.Material) == 0 {
		return nil, errors.New("local-kms asymmetric keys need PrivateKeyPem or PrivateKeyHex")
	}
	root := &Caller{Account: sk.Account, Region: sk.Region, ARN: identity.Root(sk.Account).ARN, Trusted: true}
	keyPolicy := policy.DefaultKeyPolicy(sk.Account)
	if sk.Policy != "" {
		if err := checkPolicy(root, sk.Policy, nil); err != nil {
			return nil, err
		}
		keyPolicy = sk.Policy
	}
	add := make([]kmsapi.Tag, len(sk.Tags))
	for i, t := range sk.Tags {
		add[i] = kmsapi.Tag{TagKey: kmsapi.String(t.Key), TagValue: kmsapi.String(t.Value)}
	}
	tags, err := checkTags(nil, add)
	if err != nil {
		return nil, err
	}
	k := &catalog.Key{
		ID: sk.ID, Account: sk.Account, Region: sk.Region, Created: now,
		Description: sk.Description, KeyUsage: usage, KeySpec: spec, Origin: "AWS_KMS",
		State: keys.Enabled, Policy: keyPolicy, Tags: tags, LocalKMS: sk.LocalKMS,
	}
	if sk.Disabled {
		k.State = keys.Disabled
	}
	if sk.RotationPeriodInDays != 0 {
		if spec != keys.Symmetric {
			return nil, errors.New("automatic rotation is only for symmetric encryption keys")
		}
		if sk.RotationPeriodInDays < 90 || sk.RotationPeriodInDays > 2560 {
			return nil, errors.New("RotationPeriodInDays must be from 90 to 2560")
		}
		k.RotationEnabled, k.RotationPeriodInDays = true, sk.RotationPeriodInDays
		next := now.Add(time.Duration(sk.RotationPeriodInDays) * day)
		if sk.NextRotation != nil {
			next = sk.NextRotation.UTC()
		}
		k.NextRotation = &next
	}
	if len(sk.Material) == 0 {
		if !withMaterial {
			return k, nil
		}
		v, err := s.newMaterial(k.Name(), k.ID, spec, now)
		if err != nil {
			return nil, err
		}
		k.Versions, k.Current = []catalog.Version{v}, 1
		return k, nil
	}
	if spec != keys.Symmetric && !keys.IsHMAC(spec) && len(sk.Material) != 1 {
		return nil, errors.New("an asymmetric key has one private key")
	}
	for i, m := range sk.Material {
		n := uint32(i + 1)
		priv, pub, owned := m, []byte(nil), false
		switch {
		case spec == keys.Symmetric:
			if len(m) != 32 {
				return nil, fmt.Errorf("key material %d is %d bytes; a symmetric key's is 32 bytes (64 hex digits)", n, len(m))
			}
		case keys.IsHMAC(spec):
			if err := material.CheckImportedHMAC(spec, m); err != nil {
				return nil, fmt.Errorf("key material %d is %d bytes, which does not fit %s", n, len(m), spec)
			}
		case spec == "ECC_SECG_P256K1" && len(m) == 32:
			if pub, err = material.Public(spec, m); err != nil {
				return nil, errors.New("the private key is not a valid secp256k1 scalar")
			}
		default:
			if priv, pub, err = material.ImportPrivate(spec, m, s.rand); err != nil {
				return nil, fmt.Errorf("the private key is not a key of spec %s", spec)
			}
			owned = true
		}
		sealed, err := s.cat.Seal(k.Name(), n, priv)
		if err != nil {
			return nil, internal(err)
		}
		mid := s.cat.MaterialID(k.ID, priv)
		if owned {
			clear(priv)
		}
		k.Versions = append(k.Versions, catalog.Version{Number: n, Created: now, Sealed: sealed, Public: pub, MaterialID: mid})
	}
	k.Current = uint32(len(k.Versions))
	return k, nil
}

// keyDifferences lists how the stored key cur differs from the key a seed
// file declares (want); material is never compared nor shown.
func keyDifferences(cur, want *catalog.Key) []string {
	var out []string
	diff := func(field, have, file string) {
		if have != file {
			out = append(out, fmt.Sprintf("%s is %q, the seed file says %q", field, have, file))
		}
	}
	diff("Description", cur.Description, want.Description)
	diff("KeySpec", cur.KeySpec, want.KeySpec)
	diff("KeyUsage", cur.KeyUsage, want.KeyUsage)
	diff("KeyState", string(cur.State), string(want.State))
	if cur.Policy != want.Policy {
		out = append(out, "the key policy differs from the seed file's")
	}
	if !slices.Equal(cur.Tags, want.Tags) {
		out = append(out, "the tags differ from the seed file's")
	}
	if cur.RotationEnabled != want.RotationEnabled || cur.RotationPeriodInDays != want.RotationPeriodInDays {
		out = append(out, fmt.Sprintf("rotation is %v every %d days, the seed file says %v every %d days",
			cur.RotationEnabled, cur.RotationPeriodInDays, want.RotationEnabled, want.RotationPeriodInDays))
	}
	return out
}

// SeedKeyStore is a CloudHSM key store a seed file declares, over a
// cluster (one the file declares, or any other), optionally connected at
// start. Password is kmsuser's current password (resolved from its
// reference by package seed; never shown).
type SeedKeyStore struct {
	Where           string
	Account, Region string
	Name            string
	ClusterID       string
	TrustAnchor     string // PEM
	Password        string
	Connect         bool
}

// SeedKeyStores creates the declared key stores that do not exist (by
// name) and starts connecting those marked Connect that are not
// connected. They are applied after the keys' transaction, once the HSM
// clusters are open, through CreateCustomKeyStore's own checks; an error
// stops kmsd's start.
func (s *Service) SeedKeyStores(ctx context.Context, ks []SeedKeyStore) (*SeedReport, error) {
	rep := &SeedReport{}
	for _, sk := range ks {
		root := &Caller{Account: sk.Account, Region: sk.Region, ARN: identity.Root(sk.Account).ARN, Trusted: true}
		var id, state string
		out, err := s.DescribeCustomKeyStores(ctx, root, &kmsapi.DescribeCustomKeyStoresRequest{CustomKeyStoreName: kmsapi.String(sk.Name)})
		if err == nil && len(out.CustomKeyStores) == 1 {
			st := out.CustomKeyStores[0]
			id, state = derefStr(st.CustomKeyStoreId), derefStr(st.ConnectionState)
			rep.Existing = append(rep.Existing, "custom key store "+id+" ("+sk.Name+")")
			if c := derefStr(st.CloudHsmClusterId); c != sk.ClusterID {
				rep.Differences = append(rep.Differences, "custom key store "+id+": its cluster is "+c+", the seed file says "+sk.ClusterID)
			}
		} else {
			created, err := s.CreateCustomKeyStore(ctx, root, &kmsapi.CreateCustomKeyStoreRequest{
				CustomKeyStoreName: kmsapi.String(sk.Name), CloudHsmClusterId: kmsapi.String(sk.ClusterID),
				TrustAnchorCertificate: kmsapi.String(sk.TrustAnchor), KeyStorePassword: kmsapi.String(sk.Password),
			})
			if err != nil {
				return nil, fmt.Errorf("%s: custom key store %s: %w", sk.Where, sk.Name, seedMessage(err))
			}
			id, state = derefStr(created.CustomKeyStoreId), "DISCONNECTED"
			rep.Created = append(rep.Created, "custom key store "+id+" ("+sk.Name+")")
		}
		switch {
		case sk.Connect && state == "DISCONNECTED":
			if _, err := s.ConnectCustomKeyStore(ctx, root, &kmsapi.ConnectCustomKeyStoreRequest{CustomKeyStoreId: kmsapi.String(id)}); err != nil {
				return nil, fmt.Errorf("%s: custom key store %s: %w", sk.Where, sk.Name, seedMessage(err))
			}
		case sk.Connect && state == "FAILED":
			rep.Differences = append(rep.Differences, "custom key store "+id+" is FAILED: disconnect it, then it connects at the next start")
		}
	}
	return rep, nil
}
