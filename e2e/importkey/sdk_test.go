package importkey

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go"
	"github.com/kmsd/kmsd/e2e/e2etest"
)

// sdk is an aws-sdk-go-v2 client for k, which (unlike Debian's aws CLI
// 2.9.19 and boto3 1.26) knows ImportType, KeyMaterialId,
// KeyMaterialDescription, ListKeyRotations and RotateKeyOnDemand.
func sdk(t *testing.T, k *e2etest.KMSD) *kms.Client {
	t.Helper()
	cfg, err := config.LoadDefaultConfig(context.Background(),
		config.WithSharedCredentialsFiles([]string{k.Creds}),
		config.WithSharedConfigFiles([]string{filepath.Join(t.TempDir(), "no-config")}),
		config.WithSharedConfigProfile("kmsd"), config.WithRegion(region),
		config.WithRetryer(e2etest.ClosedConnRetryer))
	if err != nil {
		t.Fatal(err)
	}
	return kms.NewFromConfig(cfg, func(o *kms.Options) { o.BaseEndpoint = aws.String(k.Endpoint) })
}

// wrapOAEP wraps material for a GetParametersForImport answer with Go's
// RSAES-OAEP SHA-256.
func wrapOAEP(t *testing.T, p *kms.GetParametersForImportOutput, material []byte) []byte {
	t.Helper()
	pk, err := x509.ParsePKIXPublicKey(p.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	ct, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, pk.(*rsa.PublicKey), material, nil)
	if err != nil {
		t.Fatal(err)
	}
	return ct
}

func apiCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

// importWith gets parameters and imports material into key id.
func importWith(ctx context.Context, t *testing.T, c *kms.Client, id string, material []byte, mod func(*kms.ImportKeyMaterialInput)) (*kms.ImportKeyMaterialOutput, error) {
	t.Helper()
	p, err := c.GetParametersForImport(ctx, &kms.GetParametersForImportInput{KeyId: &id,
		WrappingAlgorithm: types.AlgorithmSpecRsaesOaepSha256, WrappingKeySpec: types.WrappingKeySpecRsa2048})
	if err != nil {
		t.Fatal(err)
	}
	in := &kms.ImportKeyMaterialInput{KeyId: &id, ImportToken: p.ImportToken, EncryptedKeyMaterial: wrapOAEP(t, p, material),
		ExpirationModel: types.ExpirationModelTypeKeyMaterialDoesNotExpire}
	if mod != nil {
		mod(in)
	}
	return c.ImportKeyMaterial(ctx, in)
}

// TestRotationWithSDK: new material imported for an on-demand rotation of
// an imported symmetric key (spec §7.8), through aws-sdk-go-v2.
func TestRotationWithSDK(t *testing.T) {
	e := start(t)
	c := sdk(t, e.k)
	ctx := context.Background()
	ck, err := c.CreateKey(ctx, &kms.CreateKeyInput{Origin: types.OriginTypeExternal})
	if err != nil {
		t.Fatal(err)
	}
	id := *ck.KeyMetadata.KeyId
	first := make([]byte, 32)
	rand.Read(first)
	one, err := importWith(ctx, t, c, id, first, func(in *kms.ImportKeyMaterialInput) { in.KeyMaterialDescription = aws.String("first") })
	if err != nil {
		t.Fatal(err)
	}
	old, err := c.Encrypt(ctx, &kms.EncryptInput{KeyId: &id, Plaintext: []byte("old")})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.RotateKeyOnDemand(ctx, &kms.RotateKeyOnDemandInput{KeyId: &id})
	if apiCode(err) != "KMSInvalidStateException" {
		t.Fatalf("rotate with nothing pending: %v", err)
	}
	second := make([]byte, 32)
	rand.Read(second)
	two, err := importWith(ctx, t, c, id, second, func(in *kms.ImportKeyMaterialInput) {
		in.ImportType = types.ImportTypeNewKeyMaterial
		in.KeyMaterialDescription = aws.String("second")
	})
	if err != nil {
		t.Fatal(err)
	}
	if *two.KeyMaterialId == *one.KeyMaterialId || len(*two.KeyMaterialId) != 64 {
		t.Fatalf("KeyMaterialIds %s, %s", *one.KeyMaterialId, *two.KeyMaterialId)
	}
	all, err := c.ListKeyRotations(ctx, &kms.ListKeyRotationsInput{KeyId: &id, IncludeKeyMaterial: types.IncludeKeyMaterialAllKeyMaterial})
	if err != nil {
		t.Fatal(err)
	}
	if len(all.Rotations) != 2 || all.Rotations[1].KeyMaterialState != types.KeyMaterialStatePendingRotation ||
		*all.Rotations[1].KeyMaterialDescription != "second" || all.Rotations[0].KeyMaterialState != types.KeyMaterialStateCurrent {
		t.Fatalf("ALL_KEY_MATERIAL: %+v", all.Rotations)
	}
	if _, err := c.RotateKeyOnDemand(ctx, &kms.RotateKeyOnDemandInput{KeyId: &id}); err != nil {
		t.Fatal(err)
	}
	rot, err := c.ListKeyRotations(ctx, &kms.ListKeyRotationsInput{KeyId: &id})
	if err != nil {
		t.Fatal(err)
	}
	if len(rot.Rotations) != 1 || *rot.Rotations[0].KeyMaterialId != *two.KeyMaterialId || rot.Rotations[0].RotationType != types.RotationTypeOnDemand ||
		rot.Rotations[0].ImportState != types.ImportStateImported || rot.Rotations[0].ExpirationModel != types.ExpirationModelTypeKeyMaterialDoesNotExpire {
		t.Fatalf("ROTATIONS_ONLY: %+v", rot.Rotations)
	}
	for _, blob := range [][]byte{old.CiphertextBlob} {
		if _, err := c.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: blob}); err != nil {
			t.Fatalf("old ciphertext after rotation: %v", err)
		}
	}
	// EXISTING_KEY_MATERIAL with the id of the first material re-imports it.
	if _, err := importWith(ctx, t, c, id, first, func(in *kms.ImportKeyMaterialInput) {
		in.ImportType, in.KeyMaterialId = types.ImportTypeExistingKeyMaterial, one.KeyMaterialId
	}); err != nil {
		t.Fatal(err)
	}
	_, err = c.GetParametersForImport(ctx, &kms.GetParametersForImportInput{KeyId: &id,
		WrappingAlgorithm: types.AlgorithmSpecRsaesPkcs1V15, WrappingKeySpec: types.WrappingKeySpecRsa2048})
	if apiCode(err) != "ValidationException" {
		t.Fatalf("RSAES_PKCS1_V1_5: %v", err)
	}
}

// TestCrashDuringImport kills kmsd (SIGKILL) while ImportKeyMaterial calls
// are in flight, restarts it on the same data and requires every key to be
// as before the import (PendingImport, no material) or as after (Enabled,
// and working); an acknowledged import must have survived. Never between:
// no key Enabled without its material.
func TestCrashDuringImport(t *testing.T) {
	ctx := context.Background()
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}
	k := e2etest.StartKMSD(t, e2etest.KMSDConfig{Bin: kmsdBin, Env: env})
	dataDir := k.DataDir
	const n = 8
	for round := range 3 {
		c := sdk(t, k)
		type job struct {
			id       string
			in       *kms.ImportKeyMaterialInput
			material []byte
		}
		jobs := make([]job, n)
		for i := range jobs {
			ck, err := c.CreateKey(ctx, &kms.CreateKeyInput{Origin: types.OriginTypeExternal})
			if err != nil {
				t.Fatal(err)
			}
			id := *ck.KeyMetadata.KeyId
			p, err := c.GetParametersForImport(ctx, &kms.GetParametersForImportInput{KeyId: &id,
				WrappingAlgorithm: types.AlgorithmSpecRsaesOaepSha256, WrappingKeySpec: types.WrappingKeySpecRsa2048})
			if err != nil {
				t.Fatal(err)
			}
			m := make([]byte, 32)
			rand.Read(m)
			jobs[i] = job{id: id, material: m, in: &kms.ImportKeyMaterialInput{KeyId: &id, ImportToken: p.ImportToken,
				EncryptedKeyMaterial: wrapOAEP(t, p, m), ExpirationModel: types.ExpirationModelTypeKeyMaterialDoesNotExpire}}
		}
		acked := make([]bool, n)
		var wg sync.WaitGroup
		for i := range jobs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				time.Sleep(time.Duration(i) * 3 * time.Millisecond)
				if _, err := c.ImportKeyMaterial(ctx, jobs[i].in); err == nil {
					acked[i] = true
				}
			}()
		}
		time.Sleep(time.Duration(5+round*7) * time.Millisecond)
		k.Kill()
		wg.Wait()
		k = e2etest.StartKMSD(t, e2etest.KMSDConfig{Bin: kmsdBin, Env: env, DataDir: dataDir})
		c = sdk(t, k)
		before, after := 0, 0
		for i, j := range jobs {
			d, err := c.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: &j.id})
			if err != nil {
				t.Fatal(err)
			}
			md := d.KeyMetadata
			switch md.KeyState {
			case types.KeyStatePendingImport:
				if acked[i] {
					t.Fatalf("round %d key %d: acknowledged import lost", round, i)
				}
				if md.ExpirationModel != "" {
					t.Fatalf("round %d key %d: PendingImport with ExpirationModel %s", round, i, md.ExpirationModel)
				}
				before++
				// The import can be made now, with the same material.
				if _, err := importWith(ctx, t, c, j.id, j.material, nil); err != nil {
					t.Fatalf("round %d key %d: import after restart: %v", round, i, err)
				}
			case types.KeyStateEnabled:
				if md.ExpirationModel != types.ExpirationModelTypeKeyMaterialDoesNotExpire {
					t.Fatalf("round %d key %d: Enabled without ExpirationModel", round, i)
				}
				after++
			default:
				t.Fatalf("round %d key %d: state %s", round, i, md.KeyState)
			}
			enc, err := c.Encrypt(ctx, &kms.EncryptInput{KeyId: &j.id, Plaintext: []byte(fmt.Sprint(i))})
			if err != nil {
				t.Fatalf("round %d key %d: Encrypt: %v", round, i, err)
			}
			if dec, err := c.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: enc.CiphertextBlob}); err != nil || string(dec.Plaintext) != fmt.Sprint(i) {
				t.Fatalf("round %d key %d: Decrypt: %v", round, i, err)
			}
		}
		t.Logf("round %d: %d keys before the import, %d after", round, before, after)
	}
}
