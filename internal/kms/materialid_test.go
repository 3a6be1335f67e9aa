package kms

import (
	"context"
	"regexp"
	"testing"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/kmsapi"
)

var materialIDPattern = regexp.MustCompile(`^[a-f0-9]{64}$`)

// TestKeyMaterialIDs follows the KeyMaterialId of a symmetric key through
// every response the current model gives one (spec §4, §5.4, §5.5): equal
// to CurrentKeyMaterialId for new ciphertexts, the id of the version a
// blob names for Decrypt and ReEncrypt's source, and a new id after a
// rotation.
func TestKeyMaterialIDs(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	out, err := f.svc.CreateKey(ctx, f.caller, &kmsapi.CreateKeyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	id := *out.KeyMetadata.KeyId
	first := derefStr(out.KeyMetadata.CurrentKeyMaterialId)
	if !materialIDPattern.MatchString(first) {
		t.Fatalf("CreateKey: CurrentKeyMaterialId = %q, want 64 lowercase hex digits", first)
	}
	if got := f.currentMaterialID(t, id); got != first {
		t.Fatalf("DescribeKey: CurrentKeyMaterialId = %q, want CreateKey's %q", got, first)
	}
	old := f.encrypt(t, id, []byte("before"), nil)

	rot, err := f.svc.RotateKeyOnDemand(ctx, f.caller, &kmsapi.RotateKeyOnDemandRequest{KeyId: &id})
	if err != nil {
		t.Fatal(err)
	}
	second := f.currentMaterialID(t, id)
	if !materialIDPattern.MatchString(second) || second == first {
		t.Fatalf("after rotation: CurrentKeyMaterialId = %q, want a new id (was %q)", second, first)
	}
	if *rot.KeyId != "arn:aws:kms:us-east-1:111122223333:key/"+id {
		t.Errorf("RotateKeyOnDemand: KeyId = %q, want the key ARN", *rot.KeyId)
	}
	fresh := f.encrypt(t, id, []byte("after"), nil)

	other := f.createKey(t)
	otherID := f.currentMaterialID(t, other)
	gdk, err := f.svc.GenerateDataKey(ctx, f.caller, &kmsapi.GenerateDataKeyRequest{KeyId: &id, NumberOfBytes: kmsapi.Int32(16)})
	if err != nil {
		t.Fatal(err)
	}
	gdkw, err := f.svc.GenerateDataKeyWithoutPlaintext(ctx, f.caller, &kmsapi.GenerateDataKeyWithoutPlaintextRequest{KeyId: &id, NumberOfBytes: kmsapi.Int32(16)})
	if err != nil {
		t.Fatal(err)
	}
	pair, err := f.svc.GenerateDataKeyPair(ctx, f.caller, &kmsapi.GenerateDataKeyPairRequest{KeyId: &id, KeyPairSpec: kmsapi.String("ECC_NIST_P256")})
	if err != nil {
		t.Fatal(err)
	}
	pairw, err := f.svc.GenerateDataKeyPairWithoutPlaintext(ctx, f.caller, &kmsapi.GenerateDataKeyPairWithoutPlaintextRequest{KeyId: &id, KeyPairSpec: kmsapi.String("ECC_NIST_P256")})
	if err != nil {
		t.Fatal(err)
	}
	decOld, err := f.svc.Decrypt(ctx, f.caller, &kmsapi.DecryptRequest{CiphertextBlob: old})
	if err != nil {
		t.Fatal(err)
	}
	decNew, err := f.svc.Decrypt(ctx, f.caller, &kmsapi.DecryptRequest{CiphertextBlob: fresh})
	if err != nil {
		t.Fatal(err)
	}
	re, err := f.svc.ReEncrypt(ctx, f.caller, &kmsapi.ReEncryptRequest{CiphertextBlob: old, DestinationKeyId: &other})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		got, want *string
	}{
		{"GenerateDataKey", gdk.KeyMaterialId, &second},
		{"GenerateDataKeyWithoutPlaintext", gdkw.KeyMaterialId, &second},
		{"GenerateDataKeyPair", pair.KeyMaterialId, &second},
		{"GenerateDataKeyPairWithoutPlaintext", pairw.KeyMaterialId, &second},
		{"Decrypt of a blob made before the rotation", decOld.KeyMaterialId, &first},
		{"Decrypt of a blob made after the rotation", decNew.KeyMaterialId, &second},
		{"ReEncrypt SourceKeyMaterialId", re.SourceKeyMaterialId, &first},
		{"ReEncrypt DestinationKeyMaterialId", re.DestinationKeyMaterialId, &otherID},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.got == nil || *tc.got != *tc.want {
				t.Errorf("KeyMaterialId = %q, want %q", derefStr(tc.got), *tc.want)
			}
		})
	}
}

// currentMaterialID is DescribeKey's CurrentKeyMaterialId of key id, ""
// if it has none.
func (f *fixture) currentMaterialID(t *testing.T, id string) string {
	t.Helper()
	d, err := f.svc.DescribeKey(context.Background(), f.caller, &kmsapi.DescribeKeyRequest{KeyId: &id})
	if err != nil {
		t.Fatal(err)
	}
	return derefStr(d.KeyMetadata.CurrentKeyMaterialId)
}

// TestKeyMaterialIDOnlyForSymmetricKeys checks that asymmetric and HMAC
// keys have no CurrentKeyMaterialId and that responses about them carry no
// KeyMaterialId (spec §4, §5.4's ReEncrypt table).
func TestKeyMaterialIDOnlyForSymmetricKeys(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	for _, tc := range []struct{ spec, usage string }{
		{"RSA_2048", "ENCRYPT_DECRYPT"}, {"ECC_NIST_P256", "SIGN_VERIFY"}, {"HMAC_256", "GENERATE_VERIFY_MAC"},
	} {
		m := f.createSpec(t, tc.spec, tc.usage)
		if m.CurrentKeyMaterialId != nil {
			t.Errorf("%s: CreateKey: CurrentKeyMaterialId = %q, want none", tc.spec, *m.CurrentKeyMaterialId)
		}
		if id := f.currentMaterialID(t, *m.KeyId); id != "" {
			t.Errorf("%s: DescribeKey: CurrentKeyMaterialId = %q, want none", tc.spec, id)
		}
	}

	rsa := f.createSpec(t, "RSA_2048", "ENCRYPT_DECRYPT")
	sym := f.createKey(t)
	symID := f.currentMaterialID(t, sym)
	oaep := kmsapi.String("RSAES_OAEP_SHA_256")
	enc, err := f.svc.Encrypt(ctx, f.caller, &kmsapi.EncryptRequest{KeyId: rsa.KeyId, Plaintext: []byte("x"), EncryptionAlgorithm: oaep})
	if err != nil {
		t.Fatal(err)
	}
	dec, err := f.svc.Decrypt(ctx, f.caller, &kmsapi.DecryptRequest{KeyId: rsa.KeyId, CiphertextBlob: enc.CiphertextBlob, EncryptionAlgorithm: oaep})
	if err != nil {
		t.Fatal(err)
	}
	if dec.KeyMaterialId != nil {
		t.Errorf("RSA Decrypt: KeyMaterialId = %q, want none", *dec.KeyMaterialId)
	}
	toSym, err := f.svc.ReEncrypt(ctx, f.caller, &kmsapi.ReEncryptRequest{CiphertextBlob: enc.CiphertextBlob, SourceKeyId: rsa.KeyId,
		SourceEncryptionAlgorithm: oaep, DestinationKeyId: &sym})
	if err != nil {
		t.Fatal(err)
	}
	if toSym.SourceKeyMaterialId != nil || derefStr(toSym.DestinationKeyMaterialId) != symID {
		t.Errorf("ReEncrypt RSA → symmetric: Source %q, Destination %q; want none, %q",
			derefStr(toSym.SourceKeyMaterialId), derefStr(toSym.DestinationKeyMaterialId), symID)
	}
	toRSA, err := f.svc.ReEncrypt(ctx, f.caller, &kmsapi.ReEncryptRequest{CiphertextBlob: toSym.CiphertextBlob,
		DestinationKeyId: rsa.KeyId, DestinationEncryptionAlgorithm: oaep})
	if err != nil {
		t.Fatal(err)
	}
	if derefStr(toRSA.SourceKeyMaterialId) != symID || toRSA.DestinationKeyMaterialId != nil {
		t.Errorf("ReEncrypt symmetric → RSA: Source %q, Destination %q; want %q, none",
			derefStr(toRSA.SourceKeyMaterialId), derefStr(toRSA.DestinationKeyMaterialId), symID)
	}
}

// TestKeyMaterialIDOfOldRecords: a key stored before kmsd kept material
// ids (versions without MaterialID) gets the same ids, computed from its
// material, that a new record of the same material would have.
func TestKeyMaterialIDOfOldRecords(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	id := f.createKey(t)
	if _, err := f.svc.RotateKeyOnDemand(ctx, f.caller, &kmsapi.RotateKeyOnDemandRequest{KeyId: &id}); err != nil {
		t.Fatal(err)
	}
	k, err := f.cat.Key(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	want := map[uint32]string{}
	for _, v := range k.Versions {
		want[v.Number] = v.MaterialID
		m, err := f.cat.Material(k, v.Number)
		if err != nil {
			t.Fatal(err)
		}
		if !materialIDPattern.MatchString(v.MaterialID) || v.MaterialID != f.cat.MaterialID(id, m) {
			t.Fatalf("version %d: stored MaterialID %q, want MaterialID of its material", v.Number, v.MaterialID)
		}
	}
	if _, err := f.cat.UpdateKey(ctx, k.Name(), func(k *catalog.Key) error {
		for i := range k.Versions {
			k.Versions[i].MaterialID = ""
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if got := f.currentMaterialID(t, id); got != want[2] {
		t.Errorf("old record: CurrentKeyMaterialId = %q, want %q", got, want[2])
	}
	k, _ = f.cat.Key(ctx, id)
	if got, err := f.svc.materialID(k, 1); err != nil || derefStr(got) != want[1] {
		t.Errorf("old record: version 1 id = %q, %v; want %q", derefStr(got), err, want[1])
	}
}
