package server

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/awsjson"
	"github.com/kmsd/kmsd/internal/barrier"
	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/kms"
	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/storage/sqlite"
)

// keyTypeOps are the operations of the asymmetric, HMAC and key agreement
// keys, and the symmetric ones that also take such keys.
var keyTypeOps = []string{
	"Sign", "Verify", "GetPublicKey", "GenerateMac", "VerifyMac", "DeriveSharedSecret",
	"GenerateDataKeyPair", "GenerateDataKeyPairWithoutPlaintext", "Encrypt", "Decrypt",
	"GetParametersForImport", "ImportKeyMaterial", "DeleteImportedKeyMaterial",
}

// importSeeds are requests of the import operations, for the keys of
// origin EXTERNAL (and the others, which refuse them).
var importSeeds = []struct{ op, body string }{
	{"GetParametersForImport", `{"KeyId":"k","WrappingAlgorithm":"RSAES_OAEP_SHA_256","WrappingKeySpec":"RSA_2048"}`},
	{"GetParametersForImport", `{"KeyId":"k","WrappingAlgorithm":"RSA_AES_KEY_WRAP_SHA_1","WrappingKeySpec":"RSA_2048"}`},
	{"GetParametersForImport", `{"KeyId":"k","WrappingAlgorithm":"SM2PKE","WrappingKeySpec":"SM2"}`},
	{"GetParametersForImport", `{"KeyId":"k","WrappingAlgorithm":"RSAES_PKCS1_V1_5","WrappingKeySpec":"RSA_2048"}`},
	{"ImportKeyMaterial", `{"KeyId":"k","ImportToken":"AQID","EncryptedKeyMaterial":"AQID","ExpirationModel":"KEY_MATERIAL_DOES_NOT_EXPIRE"}`},
	{"ImportKeyMaterial", `{"KeyId":"k","ImportToken":"AQID","EncryptedKeyMaterial":"AQID","ValidTo":4102444800,"ImportType":"NEW_KEY_MATERIAL"}`},
	{"ImportKeyMaterial", `{"KeyId":"k","ImportToken":"AQID","EncryptedKeyMaterial":"AQID","ExpirationModel":"KEY_MATERIAL_DOES_NOT_EXPIRE","KeyMaterialId":"` + strings.Repeat("ab", 32) + `"}`},
	{"DeleteImportedKeyMaterial", `{"KeyId":"k"}`},
	{"DeleteImportedKeyMaterial", `{"KeyId":"k","KeyMaterialId":"` + strings.Repeat("0", 64) + `"}`},
}

// FuzzKeyTypeOperations runs random requests of keyTypeOps through the
// server's decoder and a real kms.Service, against keys of every kind
// (RSA, NIST and secp256k1 EC, Ed25519, ML-DSA, HMAC, key agreement,
// symmetric, disabled), and requires that each either succeeds or fails
// with an AWS exception — never KMSInternalException (a 500), a panic or
// a hang. The seeds are decodeCases' cases of these operations, once
// with every key.
func FuzzKeyTypeOperations(f *testing.F) {
	ctx := context.Background()
	store, err := sqlite.Open(ctx, filepath.Join(f.TempDir(), "kmsd.db"))
	if err != nil {
		f.Fatal(err)
	}
	defer store.Close()
	b, err := barrier.New(make([]byte, 32))
	if err != nil {
		f.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	svc := kms.New(catalog.New(store, b), kms.WithLogger(log))
	defer svc.Close()
	caller := func() *kms.Caller {
		return &kms.Caller{Account: testAccount, Region: "us-east-1", ARN: "arn:aws:iam::" + testAccount + ":root", Trusted: true}
	}
	var keyIDs []string
	for _, k := range []struct{ spec, usage, origin string }{
		{"SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT", ""},
		{"RSA_2048", "SIGN_VERIFY", ""},
		{"RSA_2048", "ENCRYPT_DECRYPT", ""},
		{"ECC_NIST_P256", "SIGN_VERIFY", ""},
		{"ECC_NIST_P384", "KEY_AGREEMENT", ""},
		{"ECC_NIST_P256", "KEY_AGREEMENT", ""},
		{"ECC_SECG_P256K1", "SIGN_VERIFY", ""},
		{"ECC_NIST_EDWARDS25519", "SIGN_VERIFY", ""},
		{"ML_DSA_44", "SIGN_VERIFY", ""},
		{"HMAC_256", "GENERATE_VERIFY_MAC", ""},
		{"HMAC_512", "GENERATE_VERIFY_MAC", ""},
		{"SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT", "EXTERNAL"},
		{"HMAC_256", "GENERATE_VERIFY_MAC", "EXTERNAL"},
		{"ECC_NIST_P256", "SIGN_VERIFY", "EXTERNAL"},
		{"ECC_NIST_P256", "SIGN_VERIFY", ""}, // disabled below
	} {
		spec, usage := k.spec, k.usage
		var origin *string
		if k.origin != "" {
			origin = &k.origin
		}
		out, err := svc.CreateKey(ctx, caller(), &kmsapi.CreateKeyRequest{KeySpec: &spec, KeyUsage: &usage, Origin: origin})
		if err != nil {
			f.Fatalf("CreateKey %s %s: %v", spec, usage, err)
		}
		keyIDs = append(keyIDs, *out.KeyMetadata.KeyId)
	}
	// A disabled key and an alias that names nothing take the refusal
	// paths before the cryptography.
	disabled := keyIDs[len(keyIDs)-1]
	if _, err := svc.DisableKey(ctx, caller(), &kmsapi.DisableKeyRequest{KeyId: &disabled}); err != nil {
		f.Fatal(err)
	}
	keyIDs = append(keyIDs, "alias/none")

	for _, c := range decodeCases {
		op := slices.Index(keyTypeOps, c.op)
		if op < 0 {
			continue
		}
		for k := range keyIDs {
			f.Add(uint8(op), uint8(k), []byte(c.body))
		}
	}
	for _, c := range importSeeds {
		op := slices.Index(keyTypeOps, c.op)
		for k := range keyIDs {
			f.Add(uint8(op), uint8(k), []byte(c.body))
		}
	}
	f.Fuzz(func(t *testing.T, op, key uint8, body []byte) {
		name := keyTypeOps[int(op)%len(keyTypeOps)]
		// A body that is a JSON object names one of the keys, unless key
		// is 255, which leaves the fuzzer's own KeyId.
		var m map[string]any
		if key != 255 && json.Unmarshal(body, &m) == nil && m != nil {
			m["KeyId"] = keyIDs[int(key)%len(keyIDs)]
			// RSA_3072 and RSA_4096 pairs take up to a second each to
			// generate, which would starve the fuzzer; their path is
			// RSA_2048's with a larger number.
			if s, _ := m["KeyPairSpec"].(string); strings.HasPrefix(s, "RSA_") {
				m["KeyPairSpec"] = "RSA_2048"
			}
			if s, _ := m["WrappingKeySpec"].(string); strings.HasPrefix(s, "RSA_") {
				m["WrappingKeySpec"] = "RSA_2048"
			}
			body, _ = json.Marshal(m)
		}
		fuzzCall(t, ctx, svc, caller(), name, body)
	})
}

// fuzzCall decodes body as operation name and runs it on svc for c, and
// fails t unless the answer is a success or an AWS exception: an untyped
// decode error, KMSInternalException (a 500), no answer in 30 s, or no
// output without an error all fail.
func fuzzCall(t *testing.T, ctx context.Context, svc *kms.Service, c *kms.Caller, name string, body []byte) {
	t.Helper()
	h := handlers[name]
	in, err := h.decode(body)
	if err != nil {
		var we *awsjson.Error
		var ke *kmsapi.Exception
		if !errors.As(err, &we) && !errors.As(err, &ke) {
			t.Fatalf("%s %s: untyped decode error %v", name, body, err)
		}
		return
	}
	done := make(chan struct{})
	var out any
	go func() {
		defer close(done)
		out, err = h.call(ctx, svc, c, in)
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatalf("%s %s: no answer in 30s", name, body)
	}
	if err != nil {
		if e := kms.Exception(err); e.Name == "KMSInternalException" {
			t.Fatalf("%s %s: KMSInternalException: %v", name, body, err)
		}
		return
	}
	if out == nil {
		t.Fatalf("%s %s: no output and no error", name, body)
	}
}
