package e2e

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/emmansun/gmsm/sm2"
	"github.com/emmansun/gmsm/smx509"
	"github.com/kmsd/kmsd/internal/barrier"
	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/storage/sqlite"
)

// TestNoSecretsAtRest checks that the data directory never holds secrets in
// clear: not a data key's plaintext, not a plaintext given to Encrypt, not
// the administrator's secret access key (outside the credentials file kmsd
// writes for the user) — in the database, its WAL and shared-memory files,
// while kmsd runs and after it stops — nor the private key or HMAC key of
// any key type, in any encoding kmsd might use. root.key is left out because it is
// the root key. The files holding secrets must be private (0600).
func TestNoSecretsAtRest(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	cr := s.Creds()
	ctx := testContext(t)
	c := sdkClient(s, cr.AccessKeyID, cr.SecretAccessKey, region)

	k := aws.ToString(createKey(t, ctx, c, "at rest").KeyId)
	dk, err := c.GenerateDataKey(ctx, &kms.GenerateDataKeyInput{KeyId: aws.String(k), KeySpec: types.DataKeySpecAes256})
	if err != nil {
		t.Fatalf("GenerateDataKey: %v", err)
	}
	marker := []byte("e2e plaintext that must never be stored 7d1c0a")
	encrypt(t, ctx, c, k, marker, map[string]string{"at": "rest"})

	// One key of every other key type; their private material is read
	// back below through the barrier, with the root key, while kmsd is
	// stopped.
	var others []string
	for _, ks := range []struct {
		spec  types.KeySpec
		usage types.KeyUsageType
	}{
		{types.KeySpecRsa2048, types.KeyUsageTypeSignVerify},
		{types.KeySpecEccNistP256, types.KeyUsageTypeSignVerify},
		{types.KeySpecEccNistP384, types.KeyUsageTypeKeyAgreement},
		{types.KeySpecEccNistP521, types.KeyUsageTypeSignVerify},
		{types.KeySpecEccSecgP256k1, types.KeyUsageTypeSignVerify},
		{types.KeySpecEccNistEdwards25519, types.KeyUsageTypeSignVerify},
		{types.KeySpecMlDsa44, types.KeyUsageTypeSignVerify},
		{types.KeySpecMlDsa65, types.KeyUsageTypeSignVerify},
		{types.KeySpecMlDsa87, types.KeyUsageTypeSignVerify},
		{types.KeySpecHmac224, types.KeyUsageTypeGenerateVerifyMac},
		{types.KeySpecHmac512, types.KeyUsageTypeGenerateVerifyMac},
	} {
		out, err := c.CreateKey(ctx, &kms.CreateKeyInput{KeySpec: ks.spec, KeyUsage: ks.usage})
		if err != nil {
			t.Fatalf("CreateKey %s: %v", ks.spec, err)
		}
		others = append(others, aws.ToString(out.KeyMetadata.KeyId))
	}
	// SM2 keys exist only in the China Regions.
	sm2Key, err := sdkClient(s, cr.AccessKeyID, cr.SecretAccessKey, "cn-north-1").CreateKey(ctx,
		&kms.CreateKeyInput{KeySpec: types.KeySpecSm2, KeyUsage: types.KeyUsageTypeSignVerify})
	if err != nil {
		t.Fatalf("CreateKey SM2 in cn-north-1: %v", err)
	}
	others = append(others, aws.ToString(sm2Key.KeyMetadata.KeyId))
	pair, err := c.GenerateDataKeyPair(ctx, &kms.GenerateDataKeyPairInput{KeyId: aws.String(k), KeyPairSpec: types.DataKeyPairSpecEccNistP256})
	if err != nil {
		t.Fatalf("GenerateDataKeyPair: %v", err)
	}
	s.Stop()
	private := privateMaterial(t, s.DataDir, others)
	s.Start()

	type secret struct {
		name  string
		value []byte
	}
	secrets := []secret{
		{"the data key plaintext", dk.Plaintext},
		{"the data key plaintext in base64", []byte(base64.StdEncoding.EncodeToString(dk.Plaintext))},
		{"the data key plaintext in hex", []byte(hex.EncodeToString(dk.Plaintext))},
		{"an Encrypt plaintext", marker},
		{"a data key pair's private key", pair.PrivateKeyPlaintext},
		{"the admin secret access key", []byte(cr.SecretAccessKey)},
	}
	for _, p := range private {
		secrets = append(secrets, secret{p.name, p.value},
			secret{p.name + " in hex", []byte(hex.EncodeToString(p.value))},
			secret{p.name + " in base64", []byte(base64.StdEncoding.EncodeToString(p.value))})
	}
	scan := func(when string) {
		t.Helper()
		var names []string
		err := filepath.WalkDir(s.DataDir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			name, _ := filepath.Rel(s.DataDir, path)
			names = append(names, name)
			if name == "root.key" {
				return nil
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			for _, sec := range secrets {
				if name == "credentials" && sec.name == "the admin secret access key" {
					continue // the file kmsd writes for the user to use it
				}
				if i := bytes.Index(b, sec.value); i >= 0 {
					t.Errorf("%s: %s holds %s in clear at offset %d", when, name, sec.name, i)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%s: walk %s: %v", when, s.DataDir, err)
		}
		t.Logf("%s: scanned %v", when, names)
		if _, err := os.Stat(filepath.Join(s.DataDir, "kmsd.db")); err != nil {
			t.Errorf("%s: kmsd.db: %v", when, err)
		}
	}
	scan("while kmsd runs")
	s.Stop()
	scan("after kmsd stopped")

	for name, want := range map[string]fs.FileMode{"credentials": 0o600, "root.key": 0o600, ".": fs.ModeDir | 0o700} {
		fi, err := os.Stat(filepath.Join(s.DataDir, name))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if got := fi.Mode(); got != want {
			t.Errorf("mode of %s in the data directory: got %v, want %v", name, got, want)
		}
	}
}

// privateMaterial opens the sealed material of keys ids in a stopped
// kmsd's data directory, through the barrier with the root key, and
// returns the secrets of each: the whole private encoding and the secret
// numbers inside it (RSA's d and p, an EC scalar, an Ed25519 seed).
func privateMaterial(t *testing.T, dataDir string, ids []string) []struct {
	name  string
	value []byte
} {
	t.Helper()
	ctx := testContext(t)
	root, _, err := barrier.LoadOrCreateRootKey(filepath.Join(dataDir, "root.key"), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := barrier.New(root)
	if err != nil {
		t.Fatal(err)
	}
	st, err := sqlite.Open(ctx, filepath.Join(dataDir, "kmsd.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	cat := catalog.New(st, b)
	var out []struct {
		name  string
		value []byte
	}
	add := func(name string, v []byte) {
		out = append(out, struct {
			name  string
			value []byte
		}{name, v})
	}
	for _, id := range ids {
		k, err := cat.Key(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		m, err := cat.Material(k, k.Current)
		if err != nil {
			t.Fatalf("open material of %s: %v", k.KeySpec, err)
		}
		add("the private material of a "+k.KeySpec+" key", m)
		if k.KeySpec == "SM2" {
			pk, err := smx509.ParsePKCS8PrivateKey(m)
			if err != nil {
				t.Fatalf("SM2 material: %v", err)
			}
			add("the SM2 private scalar", pk.(*sm2.PrivateKey).D.FillBytes(make([]byte, 32)))
		}
		if pk, err := x509.ParsePKCS8PrivateKey(m); err == nil {
			switch pk := pk.(type) {
			case *rsa.PrivateKey:
				add("the RSA private exponent", pk.D.Bytes())
				add("the RSA prime p", pk.Primes[0].Bytes())
			case *ecdsa.PrivateKey:
				d, err := pk.Bytes()
				if err != nil {
					t.Fatal(err)
				}
				add("the "+k.KeySpec+" private scalar", d)
			case ed25519.PrivateKey:
				add("the Ed25519 seed", pk.Seed())
			}
		}
	}
	return out
}
