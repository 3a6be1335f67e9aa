package multiregion

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go"
)

// TestExternalMultiRegionKey is the EXTERNAL row of spec §17.11 against the
// real kmsd through aws-sdk-go-v2 (Debian's aws CLI 2.9.19 predates
// ImportType, ListKeyRotations' IncludeKeyMaterial and
// CurrentKeyMaterialId): a primary with imported material, replicated —
// the replica ends PendingImport; other material is refused by the
// replica, the same material enables it and ciphertexts cross Regions
// both ways; new material imported into the primary is
// PENDING_MULTI_REGION_IMPORT_AND_ROTATION until the replica holds it,
// then PENDING_ROTATION in both; RotateKeyOnDemand on the primary makes
// it current in both.
func TestExternalMultiRegionKey(t *testing.T) {
	ctx := context.Background()
	e := start(t, "300ms")
	c := map[string]*kms.Client{east: e.sdk(east), west: e.sdk(west)}
	ck, err := c[east].CreateKey(ctx, &kms.CreateKeyInput{Origin: types.OriginTypeExternal, MultiRegion: ptr(true)})
	if err != nil {
		t.Fatal(err)
	}
	id := *ck.KeyMetadata.KeyId
	m1, m2 := random(t), random(t)
	first := importInto(ctx, t, c[east], id, m1, "")
	if _, err := c[east].ReplicateKey(ctx, &kms.ReplicateKeyInput{KeyId: &id, ReplicaRegion: ptr(west)}); err != nil {
		t.Fatal(err)
	}
	md := waitSDKState(ctx, t, c[west], id, types.KeyStatePendingImport)
	if md.CurrentKeyMaterialId != nil {
		t.Fatalf("replica without material has CurrentKeyMaterialId %s", *md.CurrentKeyMaterialId)
	}
	if _, err := tryImport(ctx, t, c[west], id, random(t), ""); apiCode(err) != "IncorrectKeyMaterialException" {
		t.Fatalf("other material into the replica: %v", err)
	}
	if got := importInto(ctx, t, c[west], id, m1, ""); got != first {
		t.Fatalf("replica's KeyMaterialId %s, primary's %s", got, first)
	}
	waitSDKState(ctx, t, c[west], id, types.KeyStateEnabled)
	crossDecrypt(ctx, t, c, id, "before the rotation")

	// New material: into the primary, then the replica, then rotation.
	second := importInto(ctx, t, c[east], id, m2, types.ImportTypeNewKeyMaterial)
	wantStates(ctx, t, c[east], id, map[string]types.KeyMaterialState{first: types.KeyMaterialStateCurrent,
		second: types.KeyMaterialStatePendingMultiRegionImportAndRotation})
	if _, err := c[east].RotateKeyOnDemand(ctx, &kms.RotateKeyOnDemandInput{KeyId: &id}); apiCode(err) != "KMSInvalidStateException" {
		t.Fatalf("rotation before the replica has the material: %v", err)
	}
	if _, err := tryImport(ctx, t, c[west], id, m2, types.ImportTypeNewKeyMaterial); apiCode(err) != "UnsupportedOperationException" {
		t.Fatalf("NEW_KEY_MATERIAL into the replica: %v", err)
	}
	if got := importInto(ctx, t, c[west], id, m2, types.ImportTypeExistingKeyMaterial); got != second {
		t.Fatalf("replica's id of the new material %s, primary's %s", got, second)
	}
	for _, r := range []string{east, west} {
		wantStates(ctx, t, c[r], id, map[string]types.KeyMaterialState{first: types.KeyMaterialStateCurrent,
			second: types.KeyMaterialStatePendingRotation})
	}
	if _, err := c[east].RotateKeyOnDemand(ctx, &kms.RotateKeyOnDemandInput{KeyId: &id}); err != nil {
		t.Fatal(err)
	}
	for _, r := range []string{east, west} {
		d, err := c[r].DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: &id})
		if err != nil {
			t.Fatal(err)
		}
		if d.KeyMetadata.CurrentKeyMaterialId == nil || *d.KeyMetadata.CurrentKeyMaterialId != second {
			t.Fatalf("CurrentKeyMaterialId in %s after the rotation: %v, want %s", r, d.KeyMetadata.CurrentKeyMaterialId, second)
		}
		wantStates(ctx, t, c[r], id, map[string]types.KeyMaterialState{first: types.KeyMaterialStateNonCurrent,
			second: types.KeyMaterialStateCurrent})
	}
	crossDecrypt(ctx, t, c, id, "after the rotation")

	// The audit log has AWS's two records of the replication (spec §9.3):
	// ReplicateKey in the primary's Region, CreateKey of the replica in
	// the replica's, one request id, two event ids.
	e.k.Stop() // flushes the audit log
	log, err := os.ReadFile(filepath.Join(e.k.DataDir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	type record struct {
		EventName, AWSRegion, RequestID, EventID string
		Resources                                []struct{ ARN string }
	}
	byRequest := map[string][]record{}
	for _, line := range bytes.Split(log, []byte("\n")) {
		var r record
		if json.Unmarshal(line, &r) == nil && (r.EventName == "ReplicateKey" || r.EventName == "CreateKey") {
			byRequest[r.RequestID] = append(byRequest[r.RequestID], r)
		}
	}
	replica := *ck.KeyMetadata.Arn
	replica = strings.Replace(replica, ":"+east+":", ":"+west+":", 1)
	found := false
	for _, rs := range byRequest {
		if len(rs) == 2 && rs[0].EventName == "ReplicateKey" && rs[0].AWSRegion == east {
			found = true
			if r := rs[1]; r.EventName != "CreateKey" || r.AWSRegion != west || len(r.Resources) != 1 || r.Resources[0].ARN != replica || r.EventID == rs[0].EventID {
				t.Fatalf("the replica Region's record of ReplicateKey: %+v", r)
			}
		}
	}
	if !found {
		t.Fatalf("no ReplicateKey with a CreateKey record in %s in the audit log", west)
	}
}

func ptr[T any](v T) *T { return &v }

func random(t *testing.T) []byte {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func apiCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

// tryImport gets parameters in c's Region and imports material into key
// id, wrapped with RSAES-OAEP SHA-256 by Go's crypto/rsa, with ImportType
// typ ("" omits it).
func tryImport(ctx context.Context, t *testing.T, c *kms.Client, id string, material []byte, typ types.ImportType) (*kms.ImportKeyMaterialOutput, error) {
	t.Helper()
	p, err := c.GetParametersForImport(ctx, &kms.GetParametersForImportInput{KeyId: &id,
		WrappingAlgorithm: types.AlgorithmSpecRsaesOaepSha256, WrappingKeySpec: types.WrappingKeySpecRsa2048})
	if err != nil {
		t.Fatal(err)
	}
	pk, err := x509.ParsePKIXPublicKey(p.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	wrapped, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, pk.(*rsa.PublicKey), material, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c.ImportKeyMaterial(ctx, &kms.ImportKeyMaterialInput{KeyId: &id, ImportToken: p.ImportToken, EncryptedKeyMaterial: wrapped,
		ExpirationModel: types.ExpirationModelTypeKeyMaterialDoesNotExpire, ImportType: typ})
}

// importInto imports material that must be accepted and returns its
// KeyMaterialId.
func importInto(ctx context.Context, t *testing.T, c *kms.Client, id string, material []byte, typ types.ImportType) string {
	t.Helper()
	out, err := tryImport(ctx, t, c, id, material, typ)
	if err != nil {
		t.Fatal(err)
	}
	return *out.KeyMaterialId
}

// waitSDKState polls DescribeKey until the key is in state.
func waitSDKState(ctx context.Context, t *testing.T, c *kms.Client, id string, state types.KeyState) *types.KeyMetadata {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		d, err := c.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: &id})
		if err != nil {
			t.Fatal(err)
		}
		if d.KeyMetadata.KeyState == state {
			return d.KeyMetadata
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still %s, want %s", id, d.KeyMetadata.KeyState, state)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// wantStates checks ListKeyRotations ALL_KEY_MATERIAL of key id in c's
// Region: exactly the materials of want, in those KeyMaterialStates.
func wantStates(ctx context.Context, t *testing.T, c *kms.Client, id string, want map[string]types.KeyMaterialState) {
	t.Helper()
	out, err := c.ListKeyRotations(ctx, &kms.ListKeyRotationsInput{KeyId: &id, IncludeKeyMaterial: types.IncludeKeyMaterialAllKeyMaterial})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]types.KeyMaterialState{}
	for _, r := range out.Rotations {
		got[*r.KeyMaterialId] = r.KeyMaterialState
	}
	if len(got) != len(want) {
		t.Fatalf("%s lists %v, want %v", c.Options().Region, got, want)
	}
	for mid, st := range want {
		if got[mid] != st {
			t.Fatalf("%s lists %v, want %v", c.Options().Region, got, want)
		}
	}
}

// crossDecrypt encrypts in each Region and decrypts in every Region.
func crossDecrypt(ctx context.Context, t *testing.T, c map[string]*kms.Client, id, text string) {
	t.Helper()
	for from, cf := range c {
		enc, err := cf.Encrypt(ctx, &kms.EncryptInput{KeyId: &id, Plaintext: []byte(text + " in " + from)})
		if err != nil {
			t.Fatalf("Encrypt in %s: %v", from, err)
		}
		for to, ct := range c {
			dec, err := ct.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: enc.CiphertextBlob})
			if err != nil || string(dec.Plaintext) != text+" in "+from {
				t.Fatalf("Decrypt in %s of a ciphertext of %s: %v", to, from, err)
			}
		}
	}
}
