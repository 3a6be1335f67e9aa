package kms

import (
	"context"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/kmsapi"
)

// The tests of new imported material in multi-Region keys (spec §9.7):
// NEW_KEY_MATERIAL into the primary, the same bytes into each replica,
// then one rotation for all.

// importAs imports m into key id in region with the given ImportType
// (nil: omitted) and ValidTo (nil: KEY_MATERIAL_DOES_NOT_EXPIRE).
func (f *mrFixture) importAs(t *testing.T, region, id string, m []byte, typ *string, validTo *time.Time) (*kmsapi.ImportKeyMaterialResponse, error) {
	t.Helper()
	ctx := context.Background()
	p, err := f.svc.GetParametersForImport(ctx, f.in(region), &kmsapi.GetParametersForImportRequest{KeyId: &id,
		WrappingAlgorithm: kmsapi.String("RSAES_OAEP_SHA_256"), WrappingKeySpec: kmsapi.String("RSA_2048")})
	if err != nil {
		t.Fatal(err)
	}
	in := &kmsapi.ImportKeyMaterialRequest{KeyId: &id, ImportToken: p.ImportToken, ImportType: typ,
		EncryptedKeyMaterial: wrapMaterial(t, p.PublicKey, "RSAES_OAEP_SHA_256", m)}
	if validTo != nil {
		in.ValidTo = kmsapi.NewTime(*validTo)
	} else {
		in.ExpirationModel = kmsapi.String("KEY_MATERIAL_DOES_NOT_EXPIRE")
	}
	return f.svc.ImportKeyMaterial(ctx, f.in(region), in)
}

func (f *mrFixture) mustImportAs(t *testing.T, region, id string, m []byte, typ *string) string {
	t.Helper()
	out, err := f.importAs(t, region, id, m, typ, nil)
	if err != nil {
		t.Fatalf("ImportKeyMaterial in %s: %v", region, err)
	}
	return *out.KeyMaterialId
}

// materials is ListKeyRotations ALL_KEY_MATERIAL of id in region, as
// KeyMaterialId → KeyMaterialState.
func (f *mrFixture) materials(t *testing.T, region, id string) map[string]string {
	t.Helper()
	out, err := f.svc.ListKeyRotations(context.Background(), f.in(region), &kmsapi.ListKeyRotationsRequest{KeyId: &id,
		IncludeKeyMaterial: kmsapi.String("ALL_KEY_MATERIAL")})
	if err != nil {
		t.Fatalf("ListKeyRotations in %s: %v", region, err)
	}
	m := map[string]string{}
	for _, e := range out.Rotations {
		m[*e.KeyMaterialId] = *e.KeyMaterialState
	}
	return m
}

// wantMaterials checks the KeyMaterialStates id lists in each region.
func (f *mrFixture) wantMaterials(t *testing.T, id string, want map[string]map[string]string) {
	t.Helper()
	for region, w := range want {
		got := f.materials(t, region, id)
		if len(got) != len(w) {
			t.Fatalf("%s lists %v, want %v", region, got, w)
		}
		for mid, st := range w {
			if got[mid] != st {
				t.Fatalf("%s lists %v, want %v", region, got, w)
			}
		}
	}
}

func (f *mrFixture) rotateIn(region, id string) error {
	_, err := f.svc.RotateKeyOnDemand(context.Background(), f.in(region), &kmsapi.RotateKeyOnDemandRequest{KeyId: &id})
	return err
}

const (
	pendingMR = "PENDING_MULTI_REGION_IMPORT_AND_ROTATION"
	pendingR  = "PENDING_ROTATION"
)

// TestMultiRegionNewMaterial: the flow of spec §9.7 with a primary and two
// replicas — the new material is PENDING_MULTI_REGION_IMPORT_AND_ROTATION
// in every key that has it until the last replica imports it, rotation is
// refused until then, and one RotateKeyOnDemand makes it current in all,
// so ciphertexts made after it in any Region decrypt in every other.
func TestMultiRegionNewMaterial(t *testing.T) {
	f := newMRFixture(t)
	id := f.createMRK(t, &kmsapi.CreateKeyRequest{Origin: kmsapi.String("EXTERNAL")})
	m1, m2 := random(32), random(32)
	newType, existing := kmsapi.String("NEW_KEY_MATERIAL"), kmsapi.String("EXISTING_KEY_MATERIAL")
	first := f.mustImportAs(t, east, id, m1, nil)
	f.replicate(t, f.svc, id, west)
	f.replicate(t, f.svc, id, apse)
	f.mustImportAs(t, west, id, m1, nil)
	f.mustImportAs(t, apse, id, m1, existing)
	before := f.encryptIn(t, west, id, []byte("before"))

	// New material goes into the primary only.
	_, err := f.importAs(t, west, id, m2, newType, nil)
	wantMessage(t, err, "UnsupportedOperationException", keys.KeyARN(west, f.caller.Account, id)+" is a multi-Region replica key. Import new key material into its primary key.")
	second := f.mustImportAs(t, east, id, m2, newType)
	f.wantMaterials(t, id, map[string]map[string]string{
		east: {first: "CURRENT", second: pendingMR},
		west: {first: "CURRENT"},
		apse: {first: "CURRENT"},
	})
	wantMessage(t, f.rotateIn(east, id), "KMSInvalidStateException", "Key material (id: "+second+") of the key: "+keys.KeyARN(east, f.caller.Account, id)+
		" is pending import into its related multi-Region keys in eu-west-1, ap-southeast-2 and cannot be rotated yet.")
	// Other material is not the primary's.
	_, err = f.importAs(t, west, id, random(32), existing, nil)
	wantException(t, err, "IncorrectKeyMaterialException")

	// ImportType omitted is EXISTING_KEY_MATERIAL after the first import.
	if got := f.mustImportAs(t, west, id, m2, nil); got != second {
		t.Fatalf("the replica's KeyMaterialId %s, the primary's %s", got, second)
	}
	f.wantMaterials(t, id, map[string]map[string]string{
		east: {first: "CURRENT", second: pendingMR},
		west: {first: "CURRENT", second: pendingMR},
	})
	wantException(t, f.rotateIn(east, id), "KMSInvalidStateException")
	wantMessage(t, f.rotateIn(west, id), "UnsupportedOperationException", keys.KeyARN(west, f.caller.Account, id)+" is not a multi-region primary key.")
	f.mustImportAs(t, apse, id, m2, existing)
	all := map[string]map[string]string{}
	for _, r := range []string{east, west, apse} {
		all[r] = map[string]string{first: "CURRENT", second: pendingR}
		// The pending material encrypts nothing yet.
		if md := f.describe(t, r, id); *md.CurrentKeyMaterialId != first || *md.KeyState != "Enabled" {
			t.Fatalf("%s before the rotation: %s %s", r, *md.CurrentKeyMaterialId, *md.KeyState)
		}
	}
	f.wantMaterials(t, id, all)

	// Rotation is the primary's; it reaches every related key at once.
	wantMessage(t, f.rotateIn(west, id), "UnsupportedOperationException", keys.KeyARN(west, f.caller.Account, id)+" is not a multi-region primary key.")
	if err := f.rotateIn(east, id); err != nil {
		t.Fatal(err)
	}
	blobs := map[string][]byte{}
	for _, r := range []string{east, west, apse} {
		all[r] = map[string]string{first: "NON_CURRENT", second: "CURRENT"}
		if md := f.describe(t, r, id); *md.CurrentKeyMaterialId != second || *md.KeyState != "Enabled" {
			t.Fatalf("%s after the rotation: %s %s", r, *md.CurrentKeyMaterialId, *md.KeyState)
		}
		out, err := f.svc.ListKeyRotations(context.Background(), f.in(r), &kmsapi.ListKeyRotationsRequest{KeyId: &id})
		if err != nil || len(out.Rotations) != 1 || *out.Rotations[0].KeyMaterialId != second || *out.Rotations[0].RotationType != "ON_DEMAND" {
			t.Fatalf("ROTATIONS_ONLY in %s: %+v %v", r, out, err)
		}
		blobs[r] = f.encryptIn(t, r, id, []byte("after in "+r))
	}
	f.wantMaterials(t, id, all)
	for from, blob := range blobs {
		for _, to := range []string{east, west, apse} {
			f.decryptIn(t, to, nil, blob, []byte("after in "+from))
			f.decryptIn(t, to, nil, before, []byte("before"))
		}
	}
}

// TestMultiRegionDeletePendingMaterial: deleting material pending
// rotation from a primary deletes it from every replica; from a replica,
// only there (spec §7.7).
func TestMultiRegionDeletePendingMaterial(t *testing.T) {
	ctx := context.Background()
	f := newMRFixture(t)
	id := f.createMRK(t, &kmsapi.CreateKeyRequest{Origin: kmsapi.String("EXTERNAL")})
	m1, m2 := random(32), random(32)
	newType := kmsapi.String("NEW_KEY_MATERIAL")
	first := f.mustImportAs(t, east, id, m1, nil)
	f.replicate(t, f.svc, id, west)
	f.mustImportAs(t, west, id, m1, nil)
	second := f.mustImportAs(t, east, id, m2, newType)
	f.mustImportAs(t, west, id, m2, nil)
	del := func(region, mid string) {
		t.Helper()
		out, err := f.svc.DeleteImportedKeyMaterial(ctx, f.in(region), &kmsapi.DeleteImportedKeyMaterialRequest{KeyId: &id, KeyMaterialId: &mid})
		if err != nil || *out.KeyMaterialId != mid {
			t.Fatalf("DeleteImportedKeyMaterial in %s: %v", region, err)
		}
	}

	del(west, second)
	f.wantMaterials(t, id, map[string]map[string]string{
		east: {first: "CURRENT", second: pendingMR},
		west: {first: "CURRENT"},
	})
	f.mustImportAs(t, west, id, m2, nil)
	f.wantMaterials(t, id, map[string]map[string]string{
		east: {first: "CURRENT", second: pendingR},
		west: {first: "CURRENT", second: pendingR},
	})
	del(east, second)
	f.wantMaterials(t, id, map[string]map[string]string{
		east: {first: "CURRENT"},
		west: {first: "CURRENT"},
	})
	wantMessage(t, f.rotateIn(east, id), "KMSInvalidStateException", "No available key material pending rotation for the key: "+keys.KeyARN(east, f.caller.Account, id)+".")

	// Material still PENDING_MULTI_REGION_IMPORT_AND_ROTATION goes too,
	// and other new material can follow it.
	third := f.mustImportAs(t, east, id, random(32), newType)
	del(east, third)
	f.wantMaterials(t, id, map[string]map[string]string{east: {first: "CURRENT"}})
	f.mustImportAs(t, east, id, random(32), newType)
	for _, r := range []string{east, west} {
		if md := f.describe(t, r, id); *md.KeyState != "Enabled" {
			t.Fatalf("%s after deleting pending material: %s", r, *md.KeyState)
		}
	}
}

// TestReplicaOfKeyWithPendingMaterial: a replica made while its primary
// has new material pending needs that material too — the primary's state
// for it goes back to PENDING_MULTI_REGION_IMPORT_AND_ROTATION — and
// until it has imported the primary's current material it stays
// PendingImport, whatever it imported first.
func TestReplicaOfKeyWithPendingMaterial(t *testing.T) {
	ctx := context.Background()
	f := newMRFixture(t)
	id := f.createMRK(t, &kmsapi.CreateKeyRequest{Origin: kmsapi.String("EXTERNAL")})
	m1, m2 := random(32), random(32)
	first := f.mustImportAs(t, east, id, m1, nil)
	second := f.mustImportAs(t, east, id, m2, kmsapi.String("NEW_KEY_MATERIAL"))
	f.wantMaterials(t, id, map[string]map[string]string{east: {first: "CURRENT", second: pendingR}})
	f.replicate(t, f.svc, id, west)
	f.wantMaterials(t, id, map[string]map[string]string{east: {first: "CURRENT", second: pendingMR}})

	f.mustImportAs(t, west, id, m2, nil) // the pending material first
	if md := f.describe(t, west, id); *md.KeyState != "PendingImport" {
		t.Fatalf("replica holding only pending material: %s", *md.KeyState)
	}
	_, err := f.svc.Encrypt(ctx, f.in(west), &kmsapi.EncryptRequest{KeyId: &id, Plaintext: []byte("x")})
	wantMessage(t, err, "KMSInvalidStateException", keys.KeyARN(west, f.caller.Account, id)+" is pending import.")
	f.mustImportAs(t, west, id, m1, nil)
	f.wantMaterials(t, id, map[string]map[string]string{
		east: {first: "CURRENT", second: pendingR},
		west: {first: "CURRENT", second: pendingR},
	})
	if err := f.rotateIn(east, id); err != nil {
		t.Fatal(err)
	}
	blob := f.encryptIn(t, west, id, []byte("rotated"))
	f.decryptIn(t, east, nil, blob, []byte("rotated"))
	if a, b := f.describe(t, east, id).CurrentKeyMaterialId, f.describe(t, west, id).CurrentKeyMaterialId; *a != second || *b != second {
		t.Fatalf("CurrentKeyMaterialId %s and %s, want %s", *a, *b, second)
	}
}

// TestReplicaListsSharedRotations: rotation history is shared by related
// keys (spec §9.1): a replica made after rotations lists the primary's,
// with their dates, and later rotations reach every related key.
func TestReplicaListsSharedRotations(t *testing.T) {
	ctx := context.Background()
	f := newMRFixture(t)
	list := func(region, id string) []kmsapi.RotationsListEntry {
		t.Helper()
		out, err := f.svc.ListKeyRotations(ctx, f.in(region), &kmsapi.ListKeyRotationsRequest{KeyId: &id})
		if err != nil {
			t.Fatal(err)
		}
		return out.Rotations
	}
	same := func(id string, regions ...string) {
		t.Helper()
		want := list(east, id)
		for _, r := range regions {
			got := list(r, id)
			if len(got) != len(want) {
				t.Fatalf("%s lists %d rotations, %s %d", r, len(got), east, len(want))
			}
			for i := range got {
				if !got[i].RotationDate.Equal(want[i].RotationDate.Time) || *got[i].RotationType != *want[i].RotationType ||
					derefStr(got[i].KeyMaterialId) != derefStr(want[i].KeyMaterialId) {
					t.Fatalf("rotation %d in %s: %+v, in %s %+v", i, r, got[i], east, want[i])
				}
			}
		}
	}

	// Material made by KMS.
	id := f.createMRK(t, nil)
	for range 2 {
		if err := f.rotateIn(east, id); err != nil {
			t.Fatal(err)
		}
		f.clock.advance(time.Minute)
	}
	f.replicate(t, f.svc, id, west)
	same(id, west)
	if err := f.rotateIn(east, id); err != nil {
		t.Fatal(err)
	}
	if n := len(list(west, id)); n != 3 {
		t.Fatalf("replica lists %d rotations, want 3", n)
	}
	same(id, west)

	// Imported material: the replica lists a rotation once it holds the
	// material that rotation made current.
	ext := f.createMRK(t, &kmsapi.CreateKeyRequest{Origin: kmsapi.String("EXTERNAL")})
	m1, m2 := random(32), random(32)
	f.mustImportAs(t, east, ext, m1, nil)
	f.mustImportAs(t, east, ext, m2, kmsapi.String("NEW_KEY_MATERIAL"))
	if err := f.rotateIn(east, ext); err != nil {
		t.Fatal(err)
	}
	f.replicate(t, f.svc, ext, west)
	f.mustImportAs(t, west, ext, m2, nil)
	same(ext, west)
	if md := f.describe(t, west, ext); *md.KeyState != "Enabled" {
		t.Fatalf("replica with its primary's current material: %s", *md.KeyState)
	}
}

// TestMissingMaterialWhileUpdating: imported material deleted or expired
// while the key is Updating leaves the state Updating, but cryptography
// answers "is pending import." (never an internal error), and the end of
// the transition leaves the key PendingImport, not Enabled.
func TestMissingMaterialWhileUpdating(t *testing.T) {
	ctx := context.Background()
	f := newMRFixture(t)
	id := f.createMRK(t, &kmsapi.CreateKeyRequest{Origin: kmsapi.String("EXTERNAL")})
	m := random(32)
	soon := f.clock.now().Add(30 * time.Minute).Truncate(time.Second)
	if _, err := f.importAs(t, east, id, m, nil, &soon); err != nil {
		t.Fatal(err)
	}
	f.replicate(t, f.svc, id, west)
	f.mustImportAs(t, west, id, m, nil)
	blob := f.encryptIn(t, east, id, []byte("x"))
	if _, err := f.slow.UpdatePrimaryRegion(ctx, f.in(east), &kmsapi.UpdatePrimaryRegionRequest{KeyId: &id, PrimaryRegion: kmsapi.String(west)}); err != nil {
		t.Fatal(err)
	}
	// The primary's material expires (not yet swept) while Updating.
	f.clock.advance(31 * time.Minute)
	eastMsg := keys.KeyARN(east, f.caller.Account, id) + " is pending import."
	_, err := f.svc.Encrypt(ctx, f.in(east), &kmsapi.EncryptRequest{KeyId: &id, Plaintext: []byte("x")})
	wantMessage(t, err, "KMSInvalidStateException", eastMsg)
	_, err = f.svc.Decrypt(ctx, f.in(east), &kmsapi.DecryptRequest{CiphertextBlob: blob})
	wantMessage(t, err, "KMSInvalidStateException", eastMsg)
	// Swept: still Updating, still pending import.
	if _, err := f.svc.SweepImports(ctx); err != nil {
		t.Fatal(err)
	}
	if md := f.describe(t, east, id); *md.KeyState != "Updating" {
		t.Fatalf("after the sweep while Updating: %s", *md.KeyState)
	}
	_, err = f.svc.GenerateDataKey(ctx, f.in(east), &kmsapi.GenerateDataKeyRequest{KeyId: &id, NumberOfBytes: kmsapi.Int32(32)})
	wantMessage(t, err, "KMSInvalidStateException", eastMsg)
	// The replica's own material is unaffected (spec §9.7).
	f.decryptIn(t, west, nil, blob, []byte("x"))

	f.advance(t)
	if md := f.describe(t, east, id); *md.KeyState != "PendingImport" {
		t.Fatalf("after Updating without material: %s", *md.KeyState)
	}
	if md := f.describe(t, west, id); *md.KeyState != "Enabled" {
		t.Fatalf("the new primary after Updating: %s", *md.KeyState)
	}
	_, err = f.svc.Encrypt(ctx, f.in(east), &kmsapi.EncryptRequest{KeyId: &id, Plaintext: []byte("x")})
	wantMessage(t, err, "KMSInvalidStateException", eastMsg)
	f.mustImportAs(t, east, id, m, nil)
	f.decryptIn(t, east, nil, blob, []byte("x"))
}

// TestNewMaterialAcrossPrimaryChange: new material imported into a
// primary that then hands its role to a replica without that material —
// the new primary takes it as EXISTING_KEY_MATERIAL under the same
// version, refuses other new material meanwhile, and its rotation makes
// it current in both.
func TestNewMaterialAcrossPrimaryChange(t *testing.T) {
	ctx := context.Background()
	f := newMRFixture(t)
	id := f.createMRK(t, &kmsapi.CreateKeyRequest{Origin: kmsapi.String("EXTERNAL")})
	m1, m2 := random(32), random(32)
	newType := kmsapi.String("NEW_KEY_MATERIAL")
	first := f.mustImportAs(t, east, id, m1, nil)
	f.replicate(t, f.svc, id, west)
	f.mustImportAs(t, west, id, m1, nil)
	second := f.mustImportAs(t, east, id, m2, newType)
	if _, err := f.svc.UpdatePrimaryRegion(ctx, f.in(east), &kmsapi.UpdatePrimaryRegionRequest{KeyId: &id, PrimaryRegion: kmsapi.String(west)}); err != nil {
		t.Fatal(err)
	}
	f.wantMaterials(t, id, map[string]map[string]string{
		east: {first: "CURRENT", second: pendingMR},
		west: {first: "CURRENT"},
	})
	_, err := f.importAs(t, west, id, random(32), newType, nil)
	wantException(t, err, "KMSInvalidStateException")
	if got := f.mustImportAs(t, west, id, m2, kmsapi.String("EXISTING_KEY_MATERIAL")); got != second {
		t.Fatalf("the new primary's id %s, want %s", got, second)
	}
	f.wantMaterials(t, id, map[string]map[string]string{
		east: {first: "CURRENT", second: pendingR},
		west: {first: "CURRENT", second: pendingR},
	})
	if err := f.rotateIn(west, id); err != nil {
		t.Fatal(err)
	}
	for _, r := range []string{east, west} {
		if md := f.describe(t, r, id); *md.CurrentKeyMaterialId != second {
			t.Fatalf("%s after the rotation: %s", r, *md.CurrentKeyMaterialId)
		}
	}
	blob := f.encryptIn(t, west, id, []byte("after"))
	f.decryptIn(t, east, nil, blob, []byte("after"))
	blob = f.encryptIn(t, east, id, []byte("back"))
	f.decryptIn(t, west, nil, blob, []byte("back"))
}
