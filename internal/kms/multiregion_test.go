package kms

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/policy"
	"github.com/kmsd/kmsd/internal/storage/sqlite"
)

// The tests of multi-Region keys (spec §9), one or more per row of
// §17.11. The fixture's service has no replica delay: replicas are
// Enabled and swaps done when the call returns. slow, over the same
// catalog and clock, has an hour's delay, so Creating and Updating can be
// seen; moving the clock and SweepTransitions end them.

const (
	east = "us-east-1"
	west = "eu-west-1"
	apse = "ap-southeast-2"
)

type mrFixture struct {
	*fixture
	slow *Service
}

func newMRFixture(t *testing.T) *mrFixture {
	t.Helper()
	f := newFixture(t)
	slow := New(f.cat, WithClock(f.clock.now), WithReplicaDelay(time.Hour), WithPairPool(nil))
	t.Cleanup(slow.Close)
	return &mrFixture{fixture: f, slow: slow}
}

// in is the fixture's caller (the account root) in region.
func (f *mrFixture) in(region string) *Caller {
	c := *f.caller
	c.Region = region
	return &c
}

func (f *mrFixture) createMRK(t *testing.T, in *kmsapi.CreateKeyRequest) string {
	t.Helper()
	if in == nil {
		in = &kmsapi.CreateKeyRequest{}
	}
	in.MultiRegion = boolp(true)
	out, err := f.svc.CreateKey(context.Background(), f.in(east), in)
	if err != nil {
		t.Fatal(err)
	}
	return *out.KeyMetadata.KeyId
}

func (f *mrFixture) replicate(t *testing.T, svc *Service, id, region string) *kmsapi.ReplicateKeyResponse {
	t.Helper()
	out, err := svc.ReplicateKey(context.Background(), f.in(east), &kmsapi.ReplicateKeyRequest{KeyId: &id, ReplicaRegion: &region})
	if err != nil {
		t.Fatalf("ReplicateKey(%s): %v", region, err)
	}
	return out
}

func (f *mrFixture) describe(t *testing.T, region, id string) *kmsapi.KeyMetadata {
	t.Helper()
	out, err := f.svc.DescribeKey(context.Background(), f.in(region), &kmsapi.DescribeKeyRequest{KeyId: &id})
	if err != nil {
		t.Fatalf("DescribeKey in %s: %v", region, err)
	}
	return out.KeyMetadata
}

func (f *mrFixture) encryptIn(t *testing.T, region, id string, pt []byte) []byte {
	t.Helper()
	out, err := f.svc.Encrypt(context.Background(), f.in(region), &kmsapi.EncryptRequest{KeyId: &id, Plaintext: pt})
	if err != nil {
		t.Fatalf("Encrypt in %s: %v", region, err)
	}
	return out.CiphertextBlob
}

func (f *mrFixture) decryptIn(t *testing.T, region string, keyID *string, blob, want []byte) {
	t.Helper()
	out, err := f.svc.Decrypt(context.Background(), f.in(region), &kmsapi.DecryptRequest{KeyId: keyID, CiphertextBlob: blob})
	if err != nil {
		t.Fatalf("Decrypt in %s (KeyId %v): %v", region, derefStr(keyID), err)
	}
	if !bytes.Equal(out.Plaintext, want) {
		t.Fatalf("Decrypt in %s = %q, want %q", region, out.Plaintext, want)
	}
	if !strings.HasPrefix(*out.KeyId, keys.KeyARN(region, "111122223333", "")) {
		t.Fatalf("Decrypt in %s answered KeyId %s", region, *out.KeyId)
	}
}

// advance moves the clock past the replica delay and ends what is due.
func (f *mrFixture) advance(t *testing.T) {
	t.Helper()
	f.clock.advance(time.Hour + time.Second)
	if _, err := f.slow.SweepTransitions(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// config checks a key's MultiRegionConfiguration: its type, the primary's
// Region and the replicas' Regions in order.
func config(t *testing.T, m *kmsapi.KeyMetadata, kind, primary string, replicas ...string) {
	t.Helper()
	if m.MultiRegion == nil || !*m.MultiRegion || m.MultiRegionConfiguration == nil {
		t.Fatalf("%s: MultiRegion %v, configuration %v", *m.Arn, m.MultiRegion, m.MultiRegionConfiguration)
	}
	c := m.MultiRegionConfiguration
	if *c.MultiRegionKeyType != kind || *c.PrimaryKey.Region != primary || *c.PrimaryKey.Arn != keys.KeyARN(primary, *m.AWSAccountId, *m.KeyId) {
		t.Fatalf("%s: type %s, primary %s %s; want %s, %s", *m.Arn, *c.MultiRegionKeyType, *c.PrimaryKey.Region, *c.PrimaryKey.Arn, kind, primary)
	}
	var got []string
	for _, r := range c.ReplicaKeys {
		if *r.Arn != keys.KeyARN(*r.Region, *m.AWSAccountId, *m.KeyId) {
			t.Fatalf("replica ARN %s in %s", *r.Arn, *r.Region)
		}
		got = append(got, *r.Region)
	}
	if !slices.Equal(got, replicas) {
		t.Fatalf("%s: replicas %v, want %v", *m.Arn, got, replicas)
	}
}

// TestCreateMultiRegionKey: spec §9.2 and §4.
func TestCreateMultiRegionKey(t *testing.T) {
	f := newMRFixture(t)
	ctx := context.Background()
	id := f.createMRK(t, nil)
	if !regexp.MustCompile(`^mrk-[0-9a-f]{32}$`).MatchString(id) {
		t.Fatalf("key id %q", id)
	}
	m := f.describe(t, east, id)
	config(t, m, "PRIMARY", east)
	b, _ := json.Marshal(m)
	if !strings.Contains(string(b), `"ReplicaKeys":[]`) || !strings.Contains(string(b), `"MultiRegion":true`) {
		t.Fatalf("DescribeKey JSON %s: want MultiRegion true and ReplicaKeys []", b)
	}
	// Single-Region: MultiRegion false, no configuration.
	single := f.describe(t, east, f.createKey(t))
	if b, _ := json.Marshal(single); !strings.Contains(string(b), `"MultiRegion":false`) || strings.Contains(string(b), "MultiRegionConfiguration") {
		t.Fatalf("single-Region key: %s", b)
	}
	// Any key spec.
	out, err := f.svc.CreateKey(ctx, f.in(east), &kmsapi.CreateKeyRequest{MultiRegion: boolp(true), KeySpec: kmsapi.String("ECC_NIST_P256"), KeyUsage: kmsapi.String("SIGN_VERIFY")})
	if err != nil || !strings.HasPrefix(*out.KeyMetadata.KeyId, "mrk-") {
		t.Fatalf("ECC multi-Region key: %v", err)
	}
	// Custom key stores hold none.
	_, err = f.svc.CreateKey(ctx, f.in(east), &kmsapi.CreateKeyRequest{MultiRegion: boolp(true), Origin: kmsapi.String("AWS_CLOUDHSM"), CustomKeyStoreId: kmsapi.String("cks-1234567890abcdef0")})
	wantException(t, err, "UnsupportedOperationException")
	// A key id of another Region is not found; an ARN of another Region
	// is "Invalid arn <region>".
	_, err = f.svc.DescribeKey(ctx, f.in(west), &kmsapi.DescribeKeyRequest{KeyId: &id})
	wantMessage(t, err, "NotFoundException", "Key '"+keys.KeyARN(west, "111122223333", id)+"' does not exist")
	arn := keys.KeyARN(east, "111122223333", id)
	_, err = f.svc.DescribeKey(ctx, f.in(west), &kmsapi.DescribeKeyRequest{KeyId: &arn})
	wantMessage(t, err, "NotFoundException", "Invalid arn us-east-1")
}

// TestReplicateKey: the response, the primary's immediate view, Creating
// and what works in it, then Enabled with the primary's material.
func TestReplicateKey(t *testing.T) {
	f := newMRFixture(t)
	ctx := context.Background()
	id := f.createMRK(t, &kmsapi.CreateKeyRequest{Description: kmsapi.String("primary"), Tags: tag("team", "a")})
	out := f.replicate(t, f.slow, id, west)
	m := out.ReplicaKeyMetadata
	if *m.KeyState != "Creating" || *m.Enabled || *m.Description != "" || m.CurrentKeyMaterialId != nil || *m.Arn != keys.KeyARN(west, "111122223333", id) {
		t.Fatalf("ReplicaKeyMetadata: state %s, enabled %v, description %q, material id %v, arn %s", *m.KeyState, *m.Enabled, *m.Description, m.CurrentKeyMaterialId, *m.Arn)
	}
	config(t, m, "REPLICA", east, west)
	if *out.ReplicaPolicy != policy.DefaultKeyPolicy("111122223333") {
		t.Fatalf("ReplicaPolicy = %s", *out.ReplicaPolicy)
	}
	if b, _ := json.Marshal(out); strings.Contains(string(b), "ReplicaTags") {
		t.Fatalf("ReplicaTags present without tags: %s", b)
	}
	// The primary lists the replica at once.
	config(t, f.describe(t, east, id), "PRIMARY", east, west)

	// Creating: no cryptography, no EnableKey/DisableKey; tags, policy
	// and aliases can be set.
	w := f.in(west)
	_, err := f.svc.Encrypt(ctx, w, &kmsapi.EncryptRequest{KeyId: &id, Plaintext: []byte("x")})
	wantMessage(t, err, "KMSInvalidStateException", keys.KeyARN(west, "111122223333", id)+" is creating.")
	_, err = f.svc.EnableKey(ctx, w, &kmsapi.EnableKeyRequest{KeyId: &id})
	wantMessage(t, err, "KMSInvalidStateException", keys.KeyARN(west, "111122223333", id)+" is creating.")
	_, err = f.svc.DisableKey(ctx, w, &kmsapi.DisableKeyRequest{KeyId: &id})
	wantException(t, err, "KMSInvalidStateException")
	_, err = f.svc.CreateGrant(ctx, w, &kmsapi.CreateGrantRequest{KeyId: &id, GranteePrincipal: kmsapi.String(granteeARN), Operations: []string{"Decrypt"}})
	wantException(t, err, "KMSInvalidStateException")
	if _, err := f.svc.TagResource(ctx, w, &kmsapi.TagResourceRequest{KeyId: &id, Tags: tag("env", "west")}); err != nil {
		t.Fatalf("TagResource on a Creating replica: %v", err)
	}
	if _, err := f.svc.PutKeyPolicy(ctx, w, &kmsapi.PutKeyPolicyRequest{KeyId: &id, Policy: out.ReplicaPolicy}); err != nil {
		t.Fatalf("PutKeyPolicy on a Creating replica: %v", err)
	}
	if _, err := f.svc.CreateAlias(ctx, w, &kmsapi.CreateAliasRequest{AliasName: kmsapi.String("alias/west"), TargetKeyId: &id}); err != nil {
		t.Fatalf("CreateAlias on a Creating replica: %v", err)
	}

	f.advance(t)
	rm := f.describe(t, west, id)
	if *rm.KeyState != "Enabled" || !*rm.Enabled || *rm.Description != "" {
		t.Fatalf("replica after the delay: %s, %v, %q", *rm.KeyState, *rm.Enabled, *rm.Description)
	}
	// Independent properties: not inherited.
	tags, _ := f.svc.ListResourceTags(ctx, w, &kmsapi.ListResourceTagsRequest{KeyId: &id})
	if len(tags.Tags) != 1 || *tags.Tags[0].TagKey != "env" {
		t.Fatalf("replica tags %v", tags.Tags)
	}
	// Shared material: the same versions and KeyMaterialIds, sealed
	// under each key's own name.
	p, _ := f.cat.Key(ctx, catalog.Name(east, id))
	r, _ := f.cat.Key(ctx, catalog.Name(west, id))
	if len(r.Versions) != len(p.Versions) || r.Current != p.Current || r.Versions[0].MaterialID != p.Versions[0].MaterialID ||
		bytes.Equal(r.Versions[0].Sealed, p.Versions[0].Sealed) {
		t.Fatalf("replica versions %+v, primary %+v", r.Versions, p.Versions)
	}
	if rm.CurrentKeyMaterialId == nil || *rm.CurrentKeyMaterialId != derefStr(f.describe(t, east, id).CurrentKeyMaterialId) {
		t.Fatal("CurrentKeyMaterialId differs between related keys")
	}

	// A second replica, with description, policy and tags: every related
	// key learns of it, and ReplicaTags is the replica's.
	doc := `{"Version":"2012-10-17","Statement":[` + rootAllowStatement() + `]}`
	out2, err := f.svc.ReplicateKey(ctx, f.in(east), &kmsapi.ReplicateKeyRequest{KeyId: &id, ReplicaRegion: kmsapi.String(apse),
		Description: kmsapi.String("sydney"), Policy: &doc, Tags: tag("city", "syd")})
	if err != nil {
		t.Fatal(err)
	}
	if *out2.ReplicaPolicy != doc || len(out2.ReplicaTags) != 1 || *out2.ReplicaTags[0].TagKey != "city" || *out2.ReplicaKeyMetadata.Description != "sydney" {
		t.Fatalf("second replica: %+v", out2)
	}
	config(t, f.describe(t, east, id), "PRIMARY", east, west, apse)
	config(t, f.describe(t, west, id), "REPLICA", east, west, apse)
	config(t, f.describe(t, apse, id), "REPLICA", east, west, apse)
	if *f.describe(t, apse, id).KeyState != "Enabled" {
		t.Fatal("replica made without delay is not Enabled")
	}
}

// TestReplicateKeyChecks: the rows of spec §9.3 in order.
func TestReplicateKeyChecks(t *testing.T) {
	f := newMRFixture(t)
	ctx := context.Background()
	id := f.createMRK(t, nil)
	f.replicate(t, f.svc, id, west)
	rep := func(c *Caller, keyID, region string) error {
		_, err := f.svc.ReplicateKey(ctx, c, &kmsapi.ReplicateKeyRequest{KeyId: &keyID, ReplicaRegion: &region})
		return err
	}
	wantMessage(t, rep(f.in(west), id, apse), "UnsupportedOperationException", keys.KeyARN(west, "111122223333", id)+" is not a multi-region primary key.")
	wantException(t, rep(f.in(east), id, west), "AlreadyExistsException")
	wantException(t, rep(f.in(east), id, east), "AlreadyExistsException")
	single := f.createKey(t)
	wantException(t, rep(f.in(east), single, west), "UnsupportedOperationException")
	wantException(t, rep(f.in(east), id, "cn-north-1"), "UnsupportedOperationException")
	wantMessage(t, rep(f.in(east), "alias/x", apse), "NotFoundException", "Invalid keyId 'alias/x'")
	// A replica pending deletion still counts.
	if _, err := f.svc.ScheduleKeyDeletion(ctx, f.in(west), &kmsapi.ScheduleKeyDeletionRequest{KeyId: &id, PendingWindowInDays: i32(7)}); err != nil {
		t.Fatal(err)
	}
	wantException(t, rep(f.in(east), id, west), "AlreadyExistsException")
	// A disabled primary.
	if _, err := f.svc.DisableKey(ctx, f.in(east), &kmsapi.DisableKeyRequest{KeyId: &id}); err != nil {
		t.Fatal(err)
	}
	wantMessage(t, rep(f.in(east), id, apse), "DisabledException", keys.KeyARN(east, "111122223333", id)+" is disabled.")
	// Disabling the primary leaves replicas alone (and a disabled key's
	// replica keeps working).
	id2 := f.createMRK(t, nil)
	f.replicate(t, f.svc, id2, apse)
	if _, err := f.svc.DisableKey(ctx, f.in(east), &kmsapi.DisableKeyRequest{KeyId: &id2}); err != nil {
		t.Fatal(err)
	}
	if st := *f.describe(t, apse, id2).KeyState; st != "Enabled" {
		t.Fatalf("replica of a disabled primary: %s", st)
	}
	blob := f.encryptIn(t, apse, id2, []byte("still works"))
	f.decryptIn(t, apse, nil, blob, []byte("still works"))
}

// TestReplicateKeyAuthorization: kms:ReplicateKey on the primary's key
// policy and kms:CreateKey (kms:TagResource with tags) in an IAM policy.
func TestReplicateKeyAuthorization(t *testing.T) {
	f := newMRFixture(t)
	ctx := context.Background()
	id := f.createMRK(t, nil)
	doc := func(actions ...string) string {
		b, _ := json.Marshal(map[string]any{"Version": "2012-10-17", "Statement": []any{map[string]any{"Effect": "Allow", "Action": actions, "Resource": "*"}}})
		return string(b)
	}
	for _, tc := range []struct {
		name    string
		actions []string
		tags    []kmsapi.Tag
		ok      bool
	}{
		{"replicate only", []string{"kms:ReplicateKey"}, nil, false},
		{"create only", []string{"kms:CreateKey"}, nil, false},
		{"both", []string{"kms:ReplicateKey", "kms:CreateKey"}, nil, true},
		{"tags without TagResource", []string{"kms:ReplicateKey", "kms:CreateKey"}, tag("a", "b"), false},
		{"tags", []string{"kms:ReplicateKey", "kms:CreateKey", "kms:TagResource"}, tag("a", "b"), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := userCaller(t, "111122223333", "alice", doc(tc.actions...))
			region := apse
			if tc.ok && tc.tags == nil {
				region = west
			}
			_, err := f.svc.ReplicateKey(ctx, c, &kmsapi.ReplicateKeyRequest{KeyId: &id, ReplicaRegion: &region, Tags: tc.tags})
			if tc.ok && err != nil {
				t.Fatalf("denied: %v", err)
			}
			if !tc.ok {
				wantException(t, err, "AccessDeniedException")
			}
		})
	}
}

// TestMultiRegionCiphertexts: spec §9.5 — ciphertexts decrypt in every
// Region, before and after rotations, also in a replica made after them.
func TestMultiRegionCiphertexts(t *testing.T) {
	f := newMRFixture(t)
	ctx := context.Background()
	id := f.createMRK(t, nil)
	early := f.encryptIn(t, east, id, []byte("before the replica"))
	f.replicate(t, f.svc, id, west)
	westARN := keys.KeyARN(west, "111122223333", id)
	for _, keyID := range []*string{nil, &id, &westARN} {
		f.decryptIn(t, west, keyID, early, []byte("before the replica"))
	}
	// An ARN of another Region is refused, even for a related key.
	eastARN := keys.KeyARN(east, "111122223333", id)
	_, err := f.svc.Decrypt(ctx, f.in(west), &kmsapi.DecryptRequest{KeyId: &eastARN, CiphertextBlob: early})
	wantMessage(t, err, "NotFoundException", "Invalid arn us-east-1")
	// West to east.
	fromWest := f.encryptIn(t, west, id, []byte("from the west"))
	f.decryptIn(t, east, nil, fromWest, []byte("from the west"))
	// GenerateDataKey in west, Decrypt in east.
	dk, err := f.svc.GenerateDataKey(ctx, f.in(west), &kmsapi.GenerateDataKeyRequest{KeyId: &id, KeySpec: kmsapi.String("AES_256")})
	if err != nil {
		t.Fatal(err)
	}
	f.decryptIn(t, east, &id, dk.CiphertextBlob, dk.Plaintext)

	// On-demand rotation of the primary reaches the replica.
	if _, err := f.svc.RotateKeyOnDemand(ctx, f.in(east), &kmsapi.RotateKeyOnDemandRequest{KeyId: &id}); err != nil {
		t.Fatal(err)
	}
	rotated := f.encryptIn(t, east, id, []byte("after rotation"))
	if b, _ := keys.ParseBlob(rotated); b.KeyVersion != 2 {
		t.Fatalf("blob after rotation has version %d", b.KeyVersion)
	}
	f.decryptIn(t, west, nil, rotated, []byte("after rotation"))
	wb := f.encryptIn(t, west, id, []byte("west after rotation"))
	if b, _ := keys.ParseBlob(wb); b.KeyVersion != 2 {
		t.Fatalf("replica encrypts with version %d", b.KeyVersion)
	}
	// Rotation is set on the primary only.
	_, err = f.svc.RotateKeyOnDemand(ctx, f.in(west), &kmsapi.RotateKeyOnDemandRequest{KeyId: &id})
	wantMessage(t, err, "UnsupportedOperationException", westARN+" is not a multi-region primary key.")
	_, err = f.svc.EnableKeyRotation(ctx, f.in(west), &kmsapi.EnableKeyRotationRequest{KeyId: &id})
	wantMessage(t, err, "UnsupportedOperationException", westARN+" is not a multi-region primary key.")
	_, err = f.svc.DisableKeyRotation(ctx, f.in(west), &kmsapi.DisableKeyRotationRequest{KeyId: &id})
	wantException(t, err, "UnsupportedOperationException")

	// Automatic rotation: set on the primary, seen on the replica, run
	// once (by the primary) for all.
	if _, err := f.svc.EnableKeyRotation(ctx, f.in(east), &kmsapi.EnableKeyRotationRequest{KeyId: &id, RotationPeriodInDays: i32(90)}); err != nil {
		t.Fatal(err)
	}
	st, err := f.svc.GetKeyRotationStatus(ctx, f.in(west), &kmsapi.GetKeyRotationStatusRequest{KeyId: &id})
	if err != nil || !*st.KeyRotationEnabled || *st.RotationPeriodInDays != 90 {
		t.Fatalf("replica's rotation status: %+v, %v", st, err)
	}
	f.clock.advance(91 * day)
	if n, err := f.svc.SweepRotations(ctx); err != nil || n != 1 {
		t.Fatalf("SweepRotations = %d, %v; want 1 (the primary, for all)", n, err)
	}
	p, _ := f.cat.Key(ctx, catalog.Name(east, id))
	r, _ := f.cat.Key(ctx, catalog.Name(west, id))
	if p.Current != 3 || r.Current != 3 || len(r.Versions) != 3 || len(r.Rotations) != 2 {
		t.Fatalf("after automatic rotation: primary v%d, replica v%d with %d versions, %d rotations", p.Current, r.Current, len(r.Versions), len(r.Rotations))
	}
	for i := range p.Versions {
		if p.Versions[i].Number != r.Versions[i].Number || p.Versions[i].MaterialID != r.Versions[i].MaterialID {
			t.Fatalf("version %d differs: %+v / %+v", i, p.Versions[i], r.Versions[i])
		}
	}
	if _, err := f.svc.DisableKeyRotation(ctx, f.in(east), &kmsapi.DisableKeyRotationRequest{KeyId: &id}); err != nil {
		t.Fatal(err)
	}
	if st, _ := f.svc.GetKeyRotationStatus(ctx, f.in(west), &kmsapi.GetKeyRotationStatusRequest{KeyId: &id}); *st.KeyRotationEnabled {
		t.Fatal("DisableKeyRotation on the primary did not reach the replica")
	}

	// A replica made after the rotations has every version.
	f.replicate(t, f.svc, id, apse)
	for _, tc := range []struct {
		blob []byte
		pt   string
	}{{early, "before the replica"}, {rotated, "after rotation"}, {fromWest, "from the west"}, {wb, "west after rotation"}} {
		f.decryptIn(t, apse, nil, tc.blob, []byte(tc.pt))
	}
	late := f.encryptIn(t, apse, id, []byte("from sydney"))
	f.decryptIn(t, east, nil, late, []byte("from sydney"))
	f.decryptIn(t, west, nil, late, []byte("from sydney"))
}

// TestMultiRegionSignatures: a replica's signature verifies with the
// primary and with the public key, which is the same bytes everywhere.
func TestMultiRegionSignatures(t *testing.T) {
	f := newMRFixture(t)
	ctx := context.Background()
	id := f.createMRK(t, &kmsapi.CreateKeyRequest{KeySpec: kmsapi.String("ECC_NIST_P256"), KeyUsage: kmsapi.String("SIGN_VERIFY")})
	f.replicate(t, f.svc, id, west)
	msg := []byte("signed in the west")
	sig, err := f.svc.Sign(ctx, f.in(west), &kmsapi.SignRequest{KeyId: &id, Message: msg, SigningAlgorithm: kmsapi.String("ECDSA_SHA_256")})
	if err != nil {
		t.Fatal(err)
	}
	v, err := f.svc.Verify(ctx, f.in(east), &kmsapi.VerifyRequest{KeyId: &id, Message: msg, Signature: sig.Signature, SigningAlgorithm: kmsapi.String("ECDSA_SHA_256")})
	if err != nil || !*v.SignatureValid {
		t.Fatalf("primary's Verify of the replica's signature: %v", err)
	}
	pubE, err := f.svc.GetPublicKey(ctx, f.in(east), &kmsapi.GetPublicKeyRequest{KeyId: &id})
	if err != nil {
		t.Fatal(err)
	}
	pubW, err := f.svc.GetPublicKey(ctx, f.in(west), &kmsapi.GetPublicKeyRequest{KeyId: &id})
	if err != nil || !bytes.Equal(pubE.PublicKey, pubW.PublicKey) {
		t.Fatalf("public keys differ: %v", err)
	}
	pk, err := x509.ParsePKIXPublicKey(pubE.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256(msg)
	if !ecdsa.VerifyASN1(pk.(*ecdsa.PublicKey), h[:], sig.Signature) {
		t.Fatal("the replica's signature does not verify with the public key")
	}
}

// TestUpdatePrimaryRegion: spec §9.4.
func TestUpdatePrimaryRegion(t *testing.T) {
	f := newMRFixture(t)
	ctx := context.Background()
	id := f.createMRK(t, nil)
	f.replicate(t, f.svc, id, west)
	f.replicate(t, f.svc, id, apse)
	upd := func(svc *Service, region, target string) error {
		_, err := svc.UpdatePrimaryRegion(ctx, f.in(region), &kmsapi.UpdatePrimaryRegionRequest{KeyId: &id, PrimaryRegion: &target})
		return err
	}
	// Checks.
	wantMessage(t, upd(f.svc, west, east), "UnsupportedOperationException", keys.KeyARN(west, "111122223333", id)+" is not a multi-region primary key.")
	wantMessage(t, upd(f.svc, east, "us-west-2"), "NotFoundException", "Key '"+keys.KeyARN("us-west-2", "111122223333", id)+"' does not exist")
	single := f.createKey(t)
	_, err := f.svc.UpdatePrimaryRegion(ctx, f.in(east), &kmsapi.UpdatePrimaryRegionRequest{KeyId: &single, PrimaryRegion: kmsapi.String(west)})
	wantException(t, err, "UnsupportedOperationException")
	if _, err := f.svc.DisableKey(ctx, f.in(apse), &kmsapi.DisableKeyRequest{KeyId: &id}); err != nil {
		t.Fatal(err)
	}
	wantException(t, upd(f.svc, east, apse), "DisabledException")

	out, err := f.slow.UpdatePrimaryRegion(ctx, f.in(east), &kmsapi.UpdatePrimaryRegionRequest{KeyId: &id, PrimaryRegion: kmsapi.String(west)})
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := json.Marshal(out); string(b) != "{}" {
		t.Fatalf("response %s", b)
	}
	for _, r := range []string{east, west} {
		m := f.describe(t, r, id)
		if *m.KeyState != "Updating" || *m.Enabled {
			t.Fatalf("%s during the update: %s", r, *m.KeyState)
		}
		config(t, m, map[string]string{east: "PRIMARY", west: "REPLICA"}[r], east, west, apse) // old roles until the swap
	}
	// Cryptography works while Updating; state changes do not.
	blob := f.encryptIn(t, east, id, []byte("during the update"))
	f.decryptIn(t, west, nil, blob, []byte("during the update"))
	eastARN := keys.KeyARN(east, "111122223333", id)
	_, err = f.svc.DisableKey(ctx, f.in(east), &kmsapi.DisableKeyRequest{KeyId: &id})
	wantMessage(t, err, "KMSInvalidStateException", eastARN+" is updating.")
	_, err = f.svc.EnableKey(ctx, f.in(west), &kmsapi.EnableKeyRequest{KeyId: &id})
	wantException(t, err, "KMSInvalidStateException")
	_, err = f.svc.ScheduleKeyDeletion(ctx, f.in(east), &kmsapi.ScheduleKeyDeletionRequest{KeyId: &id})
	wantMessage(t, err, "KMSInvalidStateException", eastARN+" is updating.")
	_, err = f.svc.ReplicateKey(ctx, f.in(east), &kmsapi.ReplicateKeyRequest{KeyId: &id, ReplicaRegion: kmsapi.String("us-west-2")})
	wantMessage(t, err, "KMSInvalidStateException", eastARN+" is updating.")
	wantMessage(t, upd(f.svc, east, west), "KMSInvalidStateException", eastARN+" is updating.")
	if _, err := f.svc.RotateKeyOnDemand(ctx, f.in(east), &kmsapi.RotateKeyOnDemandRequest{KeyId: &id}); err != nil {
		t.Fatalf("RotateKeyOnDemand while Updating: %v", err)
	}

	f.advance(t)
	// Roles swapped in every related key; states restored.
	config(t, f.describe(t, east, id), "REPLICA", west, east, apse)
	config(t, f.describe(t, west, id), "PRIMARY", west, east, apse)
	config(t, f.describe(t, apse, id), "REPLICA", west, east, apse)
	for _, r := range []string{east, west} {
		if st := *f.describe(t, r, id).KeyState; st != "Enabled" {
			t.Fatalf("%s after the update: %s", r, st)
		}
	}
	if st := *f.describe(t, apse, id).KeyState; st != "Disabled" {
		t.Fatalf("bystander replica: %s", st)
	}
	// The new primary replicates and rotates; the old one cannot.
	_, err = f.svc.ReplicateKey(ctx, f.in(east), &kmsapi.ReplicateKeyRequest{KeyId: &id, ReplicaRegion: kmsapi.String("us-west-2")})
	wantMessage(t, err, "UnsupportedOperationException", eastARN+" is not a multi-region primary key.")
	if _, err := f.svc.ReplicateKey(ctx, f.in(west), &kmsapi.ReplicateKeyRequest{KeyId: &id, ReplicaRegion: kmsapi.String("us-west-2")}); err != nil {
		t.Fatalf("ReplicateKey from the new primary: %v", err)
	}
	config(t, f.describe(t, "us-west-2", id), "REPLICA", west, east, apse, "us-west-2")
	if _, err := f.svc.RotateKeyOnDemand(ctx, f.in(west), &kmsapi.RotateKeyOnDemandRequest{KeyId: &id}); err != nil {
		t.Fatalf("RotateKeyOnDemand on the new primary: %v", err)
	}
	for _, r := range []string{east, west, apse, "us-west-2"} {
		if k, _ := f.cat.Key(ctx, catalog.Name(r, id)); k.Current != 3 {
			t.Fatalf("%s at version %d after two rotations", r, k.Current)
		}
	}
}

// TestUpdatePrimaryRegionAuthorization: kms:UpdatePrimaryRegion is needed
// in both keys' key policies (spec §17.12).
func TestUpdatePrimaryRegionAuthorization(t *testing.T) {
	f := newMRFixture(t)
	ctx := context.Background()
	id := f.createMRK(t, nil)
	// The replica's key policy lets the account decide everything except
	// UpdatePrimaryRegion, which it does not grant.
	replicaPolicy := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"NotAction":"kms:UpdatePrimaryRegion","Resource":"*"}]}`
	if _, err := f.svc.ReplicateKey(ctx, f.in(east), &kmsapi.ReplicateKeyRequest{KeyId: &id, ReplicaRegion: kmsapi.String(west),
		Policy: &replicaPolicy, BypassPolicyLockoutSafetyCheck: boolp(true)}); err != nil {
		t.Fatal(err)
	}
	alice := userCaller(t, "111122223333", "alice", allowAll)
	_, err := f.svc.UpdatePrimaryRegion(ctx, alice, &kmsapi.UpdatePrimaryRegionRequest{KeyId: &id, PrimaryRegion: kmsapi.String(west)})
	wantException(t, err, "AccessDeniedException")
	if st := *f.describe(t, east, id).KeyState; st != "Enabled" {
		t.Fatalf("denied update changed the primary: %s", st)
	}
}

// TestMultiRegionDeletion: spec §9.6.
func TestMultiRegionDeletion(t *testing.T) {
	f := newMRFixture(t)
	ctx := context.Background()
	id := f.createMRK(t, nil)
	f.replicate(t, f.svc, id, west)
	f.replicate(t, f.svc, id, apse)
	eastARN := keys.KeyARN(east, "111122223333", id)
	schedule := func(region string, days int32) *kmsapi.ScheduleKeyDeletionResponse {
		t.Helper()
		out, err := f.svc.ScheduleKeyDeletion(ctx, f.in(region), &kmsapi.ScheduleKeyDeletionRequest{KeyId: &id, PendingWindowInDays: &days})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	out := schedule(east, 7)
	if *out.KeyState != "PendingReplicaDeletion" || out.DeletionDate != nil || *out.PendingWindowInDays != 7 || *out.KeyId != eastARN {
		t.Fatalf("ScheduleKeyDeletion of a primary with replicas: %+v", out)
	}
	m := f.describe(t, east, id)
	if *m.KeyState != "PendingReplicaDeletion" || m.DeletionDate != nil || m.PendingDeletionWindowInDays == nil || *m.PendingDeletionWindowInDays != 7 || *m.Enabled {
		t.Fatalf("DescribeKey: %+v", m)
	}
	_, err := f.svc.Encrypt(ctx, f.in(east), &kmsapi.EncryptRequest{KeyId: &id, Plaintext: []byte("x")})
	wantMessage(t, err, "KMSInvalidStateException", eastARN+" is pending replica deletion.")
	_, err = f.svc.ReplicateKey(ctx, f.in(east), &kmsapi.ReplicateKeyRequest{KeyId: &id, ReplicaRegion: kmsapi.String("us-west-2")})
	wantException(t, err, "KMSInvalidStateException")
	_, err = f.svc.ScheduleKeyDeletion(ctx, f.in(east), &kmsapi.ScheduleKeyDeletionRequest{KeyId: &id})
	wantException(t, err, "KMSInvalidStateException")
	// Replicas keep working.
	blob := f.encryptIn(t, west, id, []byte("west works"))
	f.decryptIn(t, apse, nil, blob, []byte("west works"))
	// Cancel: Disabled.
	if _, err := f.svc.CancelKeyDeletion(ctx, f.in(east), &kmsapi.CancelKeyDeletionRequest{KeyId: &id}); err != nil {
		t.Fatal(err)
	}
	if m := f.describe(t, east, id); *m.KeyState != "Disabled" || m.PendingDeletionWindowInDays != nil {
		t.Fatalf("after CancelKeyDeletion: %s", *m.KeyState)
	}
	schedule(east, 7)

	// The replicas are deleted one by one; the primary's window starts
	// at the last one's deletion.
	if out := schedule(west, 7); *out.KeyState != "PendingDeletion" || out.DeletionDate == nil {
		t.Fatalf("replica deletion: %+v", out)
	}
	schedule(apse, 30)
	config(t, f.describe(t, east, id), "PRIMARY", east, west, apse) // listed until deleted
	f.clock.advance(8 * day)
	if n, err := f.svc.SweepDeletions(ctx); err != nil || n != 1 {
		t.Fatalf("SweepDeletions = %d, %v", n, err)
	}
	_, err = f.svc.DescribeKey(ctx, f.in(west), &kmsapi.DescribeKeyRequest{KeyId: &id})
	wantException(t, err, "NotFoundException")
	config(t, f.describe(t, east, id), "PRIMARY", east, apse)
	config(t, f.describe(t, apse, id), "REPLICA", east, apse)
	if st := *f.describe(t, east, id).KeyState; st != "PendingReplicaDeletion" {
		t.Fatalf("primary with a replica left: %s", st)
	}
	f.clock.advance(23 * day)
	deletedAt := f.clock.now().UTC().Truncate(time.Millisecond)
	if n, err := f.svc.SweepDeletions(ctx); err != nil || n != 1 {
		t.Fatalf("SweepDeletions = %d, %v", n, err)
	}
	m = f.describe(t, east, id)
	if *m.KeyState != "PendingDeletion" || m.DeletionDate == nil || !m.DeletionDate.Time.Equal(deletedAt.Add(7*day)) || m.PendingDeletionWindowInDays != nil {
		t.Fatalf("primary after its last replica: %s, %v", *m.KeyState, m.DeletionDate)
	}
	config(t, m, "PRIMARY", east)
	f.clock.advance(7 * day)
	if n, err := f.svc.SweepDeletions(ctx); err != nil || n != 1 {
		t.Fatalf("SweepDeletions = %d, %v", n, err)
	}
	_, err = f.svc.DescribeKey(ctx, f.in(east), &kmsapi.DescribeKeyRequest{KeyId: &id})
	wantException(t, err, "NotFoundException")

	// A primary without replicas goes straight to PendingDeletion; a
	// deleted replica can be made again, with every version.
	id2 := f.createMRK(t, nil)
	f.replicate(t, f.svc, id2, west)
	if _, err := f.svc.RotateKeyOnDemand(ctx, f.in(east), &kmsapi.RotateKeyOnDemandRequest{KeyId: &id2}); err != nil {
		t.Fatal(err)
	}
	old := f.encryptIn(t, east, id2, []byte("v2"))
	if _, err := f.svc.ScheduleKeyDeletion(ctx, f.in(west), &kmsapi.ScheduleKeyDeletionRequest{KeyId: &id2, PendingWindowInDays: i32(7)}); err != nil {
		t.Fatal(err)
	}
	f.clock.advance(8 * day)
	if _, err := f.svc.SweepDeletions(ctx); err != nil {
		t.Fatal(err)
	}
	f.replicate(t, f.svc, id2, west)
	f.decryptIn(t, west, nil, old, []byte("v2"))
	id3 := f.createMRK(t, nil)
	id = id3
	if out := schedule(east, 7); *out.KeyState != "PendingDeletion" || out.DeletionDate == nil {
		t.Fatalf("primary without replicas: %+v", out)
	}
}

// TestMultiRegionLookups: spec §9.8 — ListKeys and aliases per Region.
func TestMultiRegionLookups(t *testing.T) {
	f := newMRFixture(t)
	ctx := context.Background()
	id := f.createMRK(t, nil)
	f.replicate(t, f.svc, id, west)
	for _, r := range []string{east, west} {
		out, err := f.svc.ListKeys(ctx, f.in(r), &kmsapi.ListKeysRequest{})
		if err != nil || len(out.Keys) != 1 || *out.Keys[0].KeyArn != keys.KeyARN(r, "111122223333", id) {
			t.Fatalf("ListKeys in %s: %+v, %v", r, out, err)
		}
	}
	if _, err := f.svc.CreateAlias(ctx, f.in(east), &kmsapi.CreateAliasRequest{AliasName: kmsapi.String("alias/app"), TargetKeyId: &id}); err != nil {
		t.Fatal(err)
	}
	_, err := f.svc.DescribeKey(ctx, f.in(west), &kmsapi.DescribeKeyRequest{KeyId: kmsapi.String("alias/app")})
	wantException(t, err, "NotFoundException")
	if _, err := f.svc.CreateAlias(ctx, f.in(west), &kmsapi.CreateAliasRequest{AliasName: kmsapi.String("alias/app"), TargetKeyId: &id}); err != nil {
		t.Fatal(err)
	}
	m, err := f.svc.DescribeKey(ctx, f.in(west), &kmsapi.DescribeKeyRequest{KeyId: kmsapi.String("alias/app")})
	if err != nil || *m.KeyMetadata.Arn != keys.KeyARN(west, "111122223333", id) {
		t.Fatalf("alias in west: %v", err)
	}
	// Deleting the west replica drops west's alias only.
	if _, err := f.svc.ScheduleKeyDeletion(ctx, f.in(west), &kmsapi.ScheduleKeyDeletionRequest{KeyId: &id, PendingWindowInDays: i32(7)}); err != nil {
		t.Fatal(err)
	}
	f.clock.advance(8 * day)
	if _, err := f.svc.SweepDeletions(ctx); err != nil {
		t.Fatal(err)
	}
	for r, want := range map[string]int{east: 1, west: 0} {
		out, _ := f.svc.ListAliases(ctx, f.in(r), &kmsapi.ListAliasesRequest{})
		n := 0
		for _, a := range out.Aliases {
			if *a.AliasName == "alias/app" {
				n++
			}
		}
		if n != want {
			t.Fatalf("alias/app in %s: %d, want %d", r, n, want)
		}
	}
}

// TestTransitionsSurviveRestart: a replica left Creating and keys left
// Updating by a process that stopped (its timers gone) are completed by
// SweepTransitions of a new process over the same storage, once due —
// and not before.
func TestTransitionsSurviveRestart(t *testing.T) {
	f := newMRFixture(t)
	ctx := context.Background()
	id := f.createMRK(t, nil)
	f.replicate(t, f.slow, id, west)
	f.slow.Close() // the process dies: no timer runs

	restart := func() *Service {
		st, err := sqlite.Open(ctx, filepath.Join(f.dir, "kmsd.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		s := New(catalog.New(st, f.barrier), WithClock(f.clock.now), WithReplicaDelay(time.Hour), WithPairPool(nil))
		t.Cleanup(s.Close)
		return s
	}
	s := restart()
	if n, err := s.SweepTransitions(ctx); err != nil || n != 0 {
		t.Fatalf("SweepTransitions before due = %d, %v", n, err)
	}
	f.clock.advance(time.Hour)
	if n, err := s.SweepTransitions(ctx); err != nil || n != 1 {
		t.Fatalf("SweepTransitions = %d, %v", n, err)
	}
	k, _ := s.cat.Key(ctx, catalog.Name(west, id))
	if k.State != keys.Enabled || k.Pending != nil || len(k.Versions) != 1 {
		t.Fatalf("replica after restart: %s, %+v", k.State, k.Pending)
	}
	if _, err := s.UpdatePrimaryRegion(ctx, f.in(east), &kmsapi.UpdatePrimaryRegionRequest{KeyId: &id, PrimaryRegion: kmsapi.String(west)}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = restart()
	f.clock.advance(time.Hour)
	if n, err := s.SweepTransitions(ctx); err != nil || n != 1 {
		t.Fatalf("SweepTransitions = %d, %v (the second key's transition is done with the first)", n, err)
	}
	for _, r := range []string{east, west} {
		k, _ := s.cat.Key(ctx, catalog.Name(r, id))
		if k.State != keys.Enabled || k.Pending != nil || k.PrimaryRegion != west {
			t.Fatalf("%s after restart: %s, pending %+v, primary %s", r, k.State, k.Pending, k.PrimaryRegion)
		}
	}
	// Idempotent: nothing left.
	if n, err := s.SweepTransitions(ctx); err != nil || n != 0 {
		t.Fatalf("second SweepTransitions = %d, %v", n, err)
	}
}

// TestReplicaTimer: with a real delay, a timer ends Creating without any
// sweep.
func TestReplicaTimer(t *testing.T) {
	f := newFixture(t)
	svc := New(f.cat, WithReplicaDelay(20*time.Millisecond), WithPairPool(nil))
	t.Cleanup(svc.Close)
	ctx := context.Background()
	out, err := svc.CreateKey(ctx, f.caller, &kmsapi.CreateKeyRequest{MultiRegion: boolp(true)})
	if err != nil {
		t.Fatal(err)
	}
	c := *f.caller
	if _, err := svc.ReplicateKey(ctx, &c, &kmsapi.ReplicateKeyRequest{KeyId: out.KeyMetadata.KeyId, ReplicaRegion: kmsapi.String(west)}); err != nil {
		t.Fatal(err)
	}
	c.Region = west
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		m, err := svc.DescribeKey(ctx, &c, &kmsapi.DescribeKeyRequest{KeyId: out.KeyMetadata.KeyId})
		if err != nil {
			t.Fatal(err)
		}
		if *m.KeyMetadata.KeyState == "Enabled" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("replica still %s", *m.KeyMetadata.KeyState)
		}
	}
}
