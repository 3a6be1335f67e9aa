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
	"github.com/kmsd/kmsd/internal/keystore"
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
	// Origin AWS_CLOUDHSM or EXTERNAL_KEY_STORE: a key in the custom key
	// store StoreName (or StoreID), with XksKeyID its key in the external
	// store's proxy. Seed only checks such a key; SeedKeyStores makes it,
	// once its store is connected. Empty: AWS_KMS.
	Origin             string
	StoreName, StoreID string
	XksKeyID           string
}

// custom reports whether sk is a key in a custom key store.
func (sk *SeedKey) custom() bool {
	return sk.Origin == "AWS_CLOUDHSM" || sk.Origin == "EXTERNAL_KEY_STORE"
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
	pending := map[string]bool{} // new keys in custom key stores
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
		if sk.custom() {
			pending[name] = true
			continue // made by SeedKeyStores in its connected store
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
		if pendingTarget(pending, sa.Region, sa.TargetKeyID) {
			return nil, fmt.Errorf("%s: alias %s: %w", sa.Where, sa.Name, errPendingTarget)
		}
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
		if pendingTarget(pending, sg.Region, sg.KeyID) {
			return nil, fmt.Errorf("%s: grant on %s: %w", sg.Where, sg.KeyID, errPendingTarget)
		}
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

var errPendingTarget = errors.New("keys of the seed file in custom key stores are made once their stores are connected, after its aliases and grants, which cannot name them at the first start")

// pendingTarget reports whether target (a key id or ARN) is a key of the
// file to be made in a custom key store.
func pendingTarget(pending map[string]bool, region, target string) bool {
	if ref, err := keys.Parse(target); err == nil && ref.Kind == keys.KindKeyARN {
		region, target = ref.Region, ref.ID
	}
	return pending[catalog.Name(region, target)]
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
		if e.Message == "" {
			return errors.New(e.Name) // e.g. an HSM's failure, logged apart
		}
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
	origin := "AWS_KMS"
	switch {
	case sk.custom():
		origin = sk.Origin
		switch {
		case spec != keys.Symmetric:
			return nil, fmt.Errorf("KeySpec %s is not supported for KMS keys in a custom key store. only SYMMETRIC_DEFAULT keys are", spec)
		case len(sk.Material) > 0:
			return nil, errors.New("a key in a custom key store has its material in the store: no KeyMaterial")
		case sk.RotationPeriodInDays != 0:
			return nil, errors.New("keys in custom key stores do not support automatic rotation")
		case sk.StoreName == "" && sk.StoreID == "":
			return nil, fmt.Errorf("a key of Origin %s needs CustomKeyStoreName or CustomKeyStoreId", origin)
		case (sk.Origin == "EXTERNAL_KEY_STORE") != (sk.XksKeyID != ""):
			return nil, errors.New("XksKeyId is required with Origin EXTERNAL_KEY_STORE, and only there")
		}
	case sk.Origin != "" && sk.Origin != "AWS_KMS":
		return nil, fmt.Errorf("the Origin %s is not supported in seed files (AWS_KMS, AWS_CLOUDHSM or EXTERNAL_KEY_STORE)", sk.Origin)
	case sk.StoreName != "" || sk.StoreID != "" || sk.XksKeyID != "":
		return nil, errors.New("CustomKeyStoreName, CustomKeyStoreId and XksKeyId need Origin AWS_CLOUDHSM or EXTERNAL_KEY_STORE")
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
		Description: sk.Description, KeyUsage: usage, KeySpec: spec, Origin: origin, XksKeyID: sk.XksKeyID,
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
		if !withMaterial || sk.custom() {
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
	diff("Origin", cur.Origin, want.Origin)
	diff("XksKeyId", cur.XksKeyID, want.XksKeyID)
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

// SeedKeyStore is a custom key store a seed file declares, optionally
// connected at start: a CloudHSM key store (Type AWS_CLOUDHSM or empty)
// over a cluster (one the file declares, or any other), whose Password
// is kmsuser's current password, or an external key store
// (EXTERNAL_KEY_STORE) behind the xks proxy XKS names, whose Secret is
// the proxy credential's. Package seed resolves both from their
// references; they are never shown.
type SeedKeyStore struct {
	Where           string
	Account, Region string
	Name            string
	Type            string
	ClusterID       string
	TrustAnchor     string // PEM
	Password        string
	XKS             SeedXKS
	Connect         bool
}

// SeedXKS is an external key store's proxy, in CreateCustomKeyStore's
// terms.
type SeedXKS struct {
	Endpoint, Path, Connectivity string
	VpcServiceName               string
	AccessKeyID, Secret          string
}

func (sk *SeedKeyStore) external() bool { return sk.Type == keystore.TypeExternal }

// request is the CreateCustomKeyStore request that makes sk.
func (sk *SeedKeyStore) request() *kmsapi.CreateCustomKeyStoreRequest {
	in := &kmsapi.CreateCustomKeyStoreRequest{CustomKeyStoreName: kmsapi.String(sk.Name)}
	if !sk.external() {
		in.CloudHsmClusterId, in.TrustAnchorCertificate, in.KeyStorePassword = kmsapi.String(sk.ClusterID), kmsapi.String(sk.TrustAnchor), kmsapi.String(sk.Password)
		return in
	}
	x := sk.XKS
	in.CustomKeyStoreType = kmsapi.String(keystore.TypeExternal)
	in.XksProxyUriEndpoint, in.XksProxyUriPath, in.XksProxyConnectivity = kmsapi.String(x.Endpoint), kmsapi.String(x.Path), kmsapi.String(x.Connectivity)
	if x.VpcServiceName != "" {
		in.XksProxyVpcEndpointServiceName = kmsapi.String(x.VpcServiceName)
	}
	in.XksProxyAuthenticationCredential = &kmsapi.XksProxyAuthenticationCredentialType{AccessKeyId: kmsapi.String(x.AccessKeyID), RawSecretAccessKey: kmsapi.String(x.Secret)}
	return in
}

// CheckSeedKeyStores checks the declared external key stores by
// CreateCustomKeyStore's own rules (the request's model and AWS's rules
// for the proxy's parameters) without contacting the proxy or writing
// anything, so a broken entry stops kmsd before any of the file is
// applied. Their proxies are contacted when SeedKeyStores creates them.
func (s *Service) CheckSeedKeyStores(ks []SeedKeyStore) error {
	for _, sk := range ks {
		if !sk.external() {
			continue
		}
		in := sk.request()
		var errs kmsapi.Errors
		in.Validate(&errs, "")
		if errs.Len() > 0 {
			return fmt.Errorf("%s: custom key store %s: %s", sk.Where, sk.Name, errs.Message())
		}
		root := &Caller{Account: sk.Account, Region: sk.Region, ARN: identity.Root(sk.Account).ARN, Trusted: true}
		if _, _, err := s.checkExternalRequest(root, in); err != nil {
			return fmt.Errorf("%s: custom key store %s: %w", sk.Where, sk.Name, seedMessage(err))
		}
	}
	return nil
}

// SeedConnectTimeout bounds how long SeedKeyStores waits for a store to
// be CONNECTED before it makes the file's keys in it.
var SeedConnectTimeout = 60 * time.Second

// SeedKeyStores creates the declared key stores that do not exist (by
// name) and starts connecting those marked Connect that are not
// connected; then it makes the declared keys in custom key stores that
// do not exist, each once its store is CONNECTED. They are applied after
// the keys' transaction, once the HSM clusters and external stores are
// open, through CreateCustomKeyStore's and CreateKey's own checks; an
// error stops kmsd's start.
func (s *Service) SeedKeyStores(ctx context.Context, ks []SeedKeyStore, sks []SeedKey) (*SeedReport, error) {
	rep := &SeedReport{}
	for _, sk := range ks {
		root := &Caller{Account: sk.Account, Region: sk.Region, ARN: identity.Root(sk.Account).ARN, Trusted: true}
		var id, state string
		out, err := s.DescribeCustomKeyStores(ctx, root, &kmsapi.DescribeCustomKeyStoresRequest{CustomKeyStoreName: kmsapi.String(sk.Name)})
		if err == nil && len(out.CustomKeyStores) == 1 {
			st := out.CustomKeyStores[0]
			id, state = derefStr(st.CustomKeyStoreId), derefStr(st.ConnectionState)
			rep.Existing = append(rep.Existing, "custom key store "+id+" ("+sk.Name+")")
			for _, d := range storeDifferences(&sk, &st) {
				rep.Differences = append(rep.Differences, "custom key store "+id+": "+d)
			}
		} else {
			created, err := s.CreateCustomKeyStore(ctx, root, sk.request())
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
	for i := range sks {
		sk := &sks[i]
		if !sk.custom() {
			continue
		}
		if _, err := s.cat.Key(ctx, catalog.Name(sk.Region, sk.ID)); err == nil {
			continue // reported by Seed
		} else if !errors.Is(err, catalog.ErrNotFound) {
			return nil, err
		}
		arn, err := s.seedStoreKey(ctx, sk)
		if err != nil {
			return nil, fmt.Errorf("%s: key %s: %w", sk.Where, sk.ID, err)
		}
		rep.Created = append(rep.Created, arn)
	}
	return rep, nil
}

// storeDifferences lists how an existing store differs from the file's;
// secrets are never compared nor shown.
func storeDifferences(sk *SeedKeyStore, st *kmsapi.CustomKeyStoresListEntry) []string {
	var out []string
	diff := func(field, have, file string) {
		if have != file {
			out = append(out, fmt.Sprintf("%s is %q, the seed file says %q", field, have, file))
		}
	}
	typ := sk.Type
	if typ == "" {
		typ = keystore.TypeCloudHSM
	}
	diff("CustomKeyStoreType", derefStr(st.CustomKeyStoreType), typ)
	if !sk.external() {
		diff("CloudHsmClusterId", derefStr(st.CloudHsmClusterId), sk.ClusterID)
		return out
	}
	x := st.XksProxyConfiguration
	if x == nil {
		x = &kmsapi.XksProxyConfigurationType{}
	}
	diff("XksProxyConnectivity", derefStr(x.Connectivity), sk.XKS.Connectivity)
	diff("XksProxyUriEndpoint", derefStr(x.UriEndpoint), sk.XKS.Endpoint)
	diff("XksProxyUriPath", derefStr(x.UriPath), sk.XKS.Path)
	diff("XksProxyVpcEndpointServiceName", derefStr(x.VpcEndpointServiceName), sk.XKS.VpcServiceName)
	diff("XksProxyAuthenticationCredential.AccessKeyId", derefStr(x.AccessKeyId), sk.XKS.AccessKeyID)
	return out
}

// seedStoreKey makes a declared key in its custom key store through
// CreateKey's own checks, with the file's key id, once the store is
// CONNECTED (within SeedConnectTimeout), and returns its ARN.
func (s *Service) seedStoreKey(ctx context.Context, sk *SeedKey) (string, error) {
	root := &Caller{Account: sk.Account, Region: sk.Region, ARN: identity.Root(sk.Account).ARN, Trusted: true}
	req := &kmsapi.DescribeCustomKeyStoresRequest{}
	what := sk.StoreID
	if sk.StoreID != "" {
		req.CustomKeyStoreId = kmsapi.String(sk.StoreID)
	} else {
		req.CustomKeyStoreName, what = kmsapi.String(sk.StoreName), sk.StoreName
	}
	deadline := time.Now().Add(SeedConnectTimeout)
	var storeID string
	for {
		out, err := s.DescribeCustomKeyStores(ctx, root, req)
		if err != nil || len(out.CustomKeyStores) != 1 {
			return "", fmt.Errorf("custom key store %s does not exist", what)
		}
		st := out.CustomKeyStores[0]
		storeID = derefStr(st.CustomKeyStoreId)
		state := derefStr(st.ConnectionState)
		if state == "CONNECTED" {
			break
		}
		if state == "FAILED" {
			return "", fmt.Errorf("custom key store %s is FAILED (%s): keys are made in a CONNECTED store", what, derefStr(st.ConnectionErrorCode))
		}
		if state == "DISCONNECTED" {
			return "", fmt.Errorf("custom key store %s is DISCONNECTED: keys are made in a CONNECTED store (give it Connect: true)", what)
		}
		if !time.Now().Before(deadline) {
			return "", fmt.Errorf("custom key store %s is still %s after %s: keys are made in a CONNECTED store", what, state, SeedConnectTimeout)
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	in := &kmsapi.CreateKeyRequest{Origin: kmsapi.String(sk.Origin), CustomKeyStoreId: kmsapi.String(storeID)}
	if sk.XksKeyID != "" {
		in.XksKeyId = kmsapi.String(sk.XksKeyID)
	}
	if sk.Description != "" {
		in.Description = kmsapi.String(sk.Description)
	}
	if sk.Policy != "" {
		in.Policy = kmsapi.String(sk.Policy)
	}
	for _, t := range sk.Tags {
		in.Tags = append(in.Tags, kmsapi.Tag{TagKey: kmsapi.String(t.Key), TagValue: kmsapi.String(t.Value)})
	}
	out, err := s.createKey(ctx, root, in, sk.ID)
	if err != nil {
		return "", seedMessage(err)
	}
	if sk.Disabled {
		if _, err := s.DisableKey(ctx, root, &kmsapi.DisableKeyRequest{KeyId: kmsapi.String(sk.ID)}); err != nil {
			return "", seedMessage(err)
		}
	}
	return derefStr(out.KeyMetadata.Arn), nil
}
