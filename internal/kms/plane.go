package kms

import (
	"context"
	"reflect"
	"sync"

	"github.com/kmsd/kmsd/internal/catalog"
)

// dataPlane holds the cryptographic operations, which read keys, aliases
// and grants from the catalog's cache (bounded by the change feed's
// freshness); every other operation is control plane and reads them from
// the database (MULTINODE.md §4.2).
var dataPlane = map[string]bool{
	"Encrypt": true, "Decrypt": true, "ReEncrypt": true,
	"GenerateDataKey": true, "GenerateDataKeyWithoutPlaintext": true,
	"GenerateDataKeyPair": true, "GenerateDataKeyPairWithoutPlaintext": true,
	"Sign": true, "Verify": true, "GenerateMac": true, "VerifyMac": true,
	"DeriveSharedSecret": true, "GetPublicKey": true, "GenerateRandom": true,
}

// DataPlane says whether op is served from the cache.
func DataPlane(op string) bool { return dataPlane[op] }

// ReadContext is the context operation op, with input in, runs in: a
// control-plane operation's reads are fresh from the database
// (catalog.WithFresh); a data-plane one that carries grant tokens reads
// the key's grants from the database when the cached ones do not allow
// it, the purpose AWS gives grant tokens.
func ReadContext(ctx context.Context, op string, in any) context.Context {
	if !dataPlane[op] {
		return catalog.WithFresh(ctx)
	}
	if hasGrantTokens(in) {
		return context.WithValue(ctx, grantTokensKey{}, true)
	}
	return ctx
}

type grantTokensKey struct{}

// grantTokenField caches, by input type, the index of its GrantTokens
// field (-1: none).
var grantTokenField sync.Map

func hasGrantTokens(in any) bool {
	v := reflect.ValueOf(in)
	if v.Kind() != reflect.Pointer || v.IsNil() || v.Elem().Kind() != reflect.Struct {
		return false
	}
	v = v.Elem()
	idx, ok := grantTokenField.Load(v.Type())
	if !ok {
		i := -1
		if f, found := v.Type().FieldByName("GrantTokens"); found && len(f.Index) == 1 && f.Type.Kind() == reflect.Slice {
			i = f.Index[0]
		}
		idx, _ = grantTokenField.LoadOrStore(v.Type(), i)
	}
	i := idx.(int)
	return i >= 0 && v.Field(i).Len() > 0
}
