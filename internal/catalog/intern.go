package catalog

import (
	"sync"
	"sync/atomic"

	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/policy"
)

// policyTextLimit bounds how many distinct key policy texts a catalog
// shares among the key records it reads (at most 32 KiB each), and how
// many accounts' default policies it keeps.
const policyTextLimit = 256

// policyTexts keeps one copy of each recently read key policy text. Most
// keys of an account carry the same policy (the default one, or one their
// owner applies to many keys), and a record decoded from the database
// otherwise holds a copy of its own: with the default policy (269 bytes)
// sharing it took a cached key from 2,154 to 1,866 bytes of heap
// (TestCacheMemoryPerKey); a longer custom policy saves its whole size
// per key. The default policy of each account is also kept by account, for
// the records stored without it (record.go); it is made through share, so
// records holding the text inline (written by older kmsd) share it too.
type policyTexts struct {
	c        *lru.Cache[string, string]
	defaults *lru.Cache[string, string] // account → its default policy, a text of c
}

func newPolicyTexts() policyTexts {
	return policyTexts{
		c:        mustLRU[string, string](policyTextLimit, nil),
		defaults: mustLRU[string, string](policyTextLimit, nil),
	}
}

// share returns the kept copy of text, keeping text if none is kept.
func (p *policyTexts) share(text string) string {
	if kept, ok := p.c.Get(text); ok {
		return kept
	}
	p.c.Add(text, text)
	return text
}

// defaultPolicy is policy.DefaultKeyPolicy(account), the kept copy; a
// new one when p is nil.
func (p *policyTexts) defaultPolicy(account string) string {
	if p == nil {
		return policy.DefaultKeyPolicy(account)
	}
	if text, ok := p.defaults.Get(account); ok {
		return text
	}
	text := p.share(policy.DefaultKeyPolicy(account))
	p.defaults.Add(account, text)
	return text
}

// Fields most key records hold equal.
//
// The decoder's own cache of short strings (decodeKey) is a small table
// indexed by hash, in which other records' strings evict these: over
// 20,000 records it gave each of account, Region, key usage, key spec,
// origin and state 28 to 203 copies. On a million keys that is thousands
// of copies of each, and every Encrypt on a random key compared or hashed
// six strings that were not in the CPU's caches (the key's account and
// Region against the caller's, its state, usage, origin, and its spec
// for the kms:KeySpec condition): about 0.5 µs a request (README, Scale).
// So decodeKey replaces each with one copy kept here, and the values of
// the model's enumerations start as the program's own literals, which
// compare equal to the literals the kms package tests them against by
// address alone.

// sharedFieldMax bounds the distinct values kept: accounts, Regions and
// custom key store ids are few, and past the bound a value is used as
// decoded, so no input can grow the table.
const sharedFieldMax = 4096

var (
	sharedFields     sync.Map // string → string
	sharedFieldCount atomic.Int32
)

func init() {
	for _, vs := range [][]string{kmsapi.EnumKeySpec, kmsapi.EnumKeyUsageType, kmsapi.EnumOriginType, kmsapi.EnumKeyState} {
		for _, v := range vs {
			shareField(v)
		}
	}
}

// shareField returns the kept copy of s, keeping s if none is kept and
// there is room.
func shareField(s string) string {
	if s == "" {
		return s
	}
	if kept, ok := sharedFields.Load(s); ok {
		return kept.(string)
	}
	if sharedFieldCount.Load() >= sharedFieldMax {
		return s
	}
	kept, loaded := sharedFields.LoadOrStore(s, s)
	if !loaded {
		sharedFieldCount.Add(1)
	}
	return kept.(string)
}

// shareFields points k's fields that most records hold equal at their
// kept copies.
func shareFields(k *Key) {
	k.Account = shareField(k.Account)
	k.Region = shareField(k.Region)
	k.KeyUsage = shareField(k.KeyUsage)
	k.KeySpec = shareField(k.KeySpec)
	k.Origin = shareField(k.Origin)
	k.State = keys.State(shareField(string(k.State)))
	k.CustomKeyStoreID = shareField(k.CustomKeyStoreID)
	k.PrimaryRegion = shareField(k.PrimaryRegion)
}
