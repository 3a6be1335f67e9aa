package server

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/kmsd/kmsd/internal/barrier"
	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/kms"
	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/storage/sqlite"
)

// FuzzOperations runs random requests of every operation kmsd serves —
// the whole model, walked through the handler table — through the
// server's decoder and a real kms.Service, against keys of every kind and
// state, and requires that each either succeeds or fails with an AWS
// exception: never KMSInternalException (a 500), a panic or a hang. The
// seeds are decodeCases' cases, once with every key. Keys the fuzzer
// deletes, disables or changes stay changed for later inputs, so the
// corpus also reaches the state paths.
func FuzzOperations(f *testing.F) {
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
	svc := kms.New(catalog.New(store, b), kms.WithLogger(log), kms.WithPairPool(nil))
	defer svc.Close()
	caller := func() *kms.Caller {
		return &kms.Caller{Account: testAccount, Region: "us-east-1", ARN: "arn:aws:iam::" + testAccount + ":root", Trusted: true}
	}
	var ops []string
	for name := range handlers {
		ops = append(ops, name)
	}
	sort.Strings(ops)

	var keyIDs []string
	for _, k := range fuzzKeys {
		out, err := svc.CreateKey(ctx, caller(), k.request())
		if err != nil {
			f.Fatalf("CreateKey %+v: %v", k, err)
		}
		id := *out.KeyMetadata.KeyId
		keyIDs = append(keyIDs, id)
		if k.disabled {
			if _, err := svc.DisableKey(ctx, caller(), &kmsapi.DisableKeyRequest{KeyId: &id}); err != nil {
				f.Fatal(err)
			}
		}
	}
	alias := "alias/fuzz"
	if _, err := svc.CreateAlias(ctx, caller(), &kmsapi.CreateAliasRequest{AliasName: &alias, TargetKeyId: &keyIDs[0]}); err != nil {
		f.Fatal(err)
	}
	keyIDs = append(keyIDs, alias, "alias/none")

	for _, c := range decodeCases {
		for i, name := range ops {
			if name != c.op {
				continue
			}
			for k := range keyIDs {
				f.Add(uint8(i), uint8(k), []byte(c.body))
			}
		}
	}
	for _, c := range importSeeds {
		i := sort.SearchStrings(ops, c.op)
		for k := range keyIDs {
			f.Add(uint8(i), uint8(k), []byte(c.body))
		}
	}
	f.Fuzz(func(t *testing.T, op, key uint8, body []byte) {
		name := ops[int(op)%len(ops)]
		// A body that is a JSON object names one of the keys, unless key
		// is 255, which leaves the fuzzer's own KeyId.
		var m map[string]any
		if key != 255 && json.Unmarshal(body, &m) == nil && m != nil {
			id := keyIDs[int(key)%len(keyIDs)]
			for _, member := range []string{"KeyId", "TargetKeyId", "DestinationKeyId"} {
				if _, ok := m[member]; ok || member == "KeyId" {
					m[member] = id
				}
			}
			// RSA_3072 and RSA_4096 keys and pairs take up to a second
			// each to generate, which would starve the fuzzer; their path
			// is RSA_2048's with a larger number.
			for _, member := range []string{"KeyPairSpec", "KeySpec", "CustomerMasterKeySpec", "WrappingKeySpec"} {
				if s, _ := m[member].(string); strings.HasPrefix(s, "RSA_") {
					m[member] = "RSA_2048"
				}
			}
			body, _ = json.Marshal(m)
		}
		fuzzCall(t, ctx, svc, caller(), name, body)
	})
}

// fuzzKey is a key FuzzOperations starts with.
type fuzzKey struct {
	spec, usage, origin string
	multiRegion         bool
	disabled            bool
}

func (k fuzzKey) request() *kmsapi.CreateKeyRequest {
	in := &kmsapi.CreateKeyRequest{KeySpec: kmsapi.String(k.spec), KeyUsage: kmsapi.String(k.usage)}
	if k.origin != "" {
		in.Origin = kmsapi.String(k.origin)
	}
	if k.multiRegion {
		in.MultiRegion = kmsapi.Bool(true)
	}
	return in
}

// fuzzKeys covers every kind of key and the states a fresh one can have.
var fuzzKeys = []fuzzKey{
	{spec: "SYMMETRIC_DEFAULT", usage: "ENCRYPT_DECRYPT"},
	{spec: "RSA_2048", usage: "SIGN_VERIFY"},
	{spec: "RSA_2048", usage: "ENCRYPT_DECRYPT"},
	{spec: "ECC_NIST_P256", usage: "SIGN_VERIFY"},
	{spec: "ECC_NIST_P256", usage: "KEY_AGREEMENT"},
	{spec: "ECC_SECG_P256K1", usage: "SIGN_VERIFY"},
	{spec: "ECC_NIST_EDWARDS25519", usage: "SIGN_VERIFY"},
	{spec: "ML_DSA_44", usage: "SIGN_VERIFY"},
	{spec: "HMAC_256", usage: "GENERATE_VERIFY_MAC"},
	{spec: "SYMMETRIC_DEFAULT", usage: "ENCRYPT_DECRYPT", disabled: true},
	{spec: "SYMMETRIC_DEFAULT", usage: "ENCRYPT_DECRYPT", multiRegion: true},
	{spec: "ECC_NIST_P256", usage: "SIGN_VERIFY", multiRegion: true},
	{spec: "SYMMETRIC_DEFAULT", usage: "ENCRYPT_DECRYPT", origin: "EXTERNAL"}, // PendingImport
	{spec: "HMAC_256", usage: "GENERATE_VERIFY_MAC", origin: "EXTERNAL"},
	{spec: "SYMMETRIC_DEFAULT", usage: "ENCRYPT_DECRYPT", origin: "EXTERNAL", multiRegion: true},
}
