package kms

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/policy"
)

// readers are the policies that decide one call: the key policy (nil for
// operations on no key) and the caller's identity policies. Condition
// keys that cost a lookup (aliases, tags) are computed only when one of
// them reads the key; the default key policy reads none.
type readers struct {
	key      *policy.Policy
	identity []*policy.Policy
	session  []*policy.Policy // session policies of a role session
}

// reads reports whether any of the policies refers to key (a prefix such
// as aws:ResourceTag/ stands for every key under it).
func (p readers) reads(key string) bool {
	if p.key.References(key) {
		return true
	}
	for _, ip := range p.identity {
		if ip.References(key) {
			return true
		}
	}
	for _, sp := range p.session {
		if sp.References(key) {
			return true
		}
	}
	return false
}

// setKeyConditions adds the condition keys that follow from the key a call
// acts on: kms:KeySpec, kms:KeyUsage and kms:KeyOrigin always (they are
// cheap and read by many policies), the rest only for policies that read
// them. A failed alias lookup fails the call: evaluating
// kms:ResourceAliases as absent could skip a Deny.
func (s *Service) setKeyConditions(ctx context.Context, r *policy.Request, k *catalog.Key, p readers) error {
	r.Context[policy.KeyKeySpec] = shared(k.KeySpec)
	r.Context[policy.KeyKeyUsage] = shared(k.KeyUsage)
	r.Context[policy.KeyKeyOrigin] = shared(k.Origin)
	if p.key == nil && len(p.identity) == 0 {
		return nil
	}
	if p.reads(policy.KeyCustomerMasterKeySpec) {
		r.Set(policy.KeyCustomerMasterKeySpec, k.KeySpec)
	}
	if p.reads(policy.KeyCustomerMasterKeyUsage) {
		r.Set(policy.KeyCustomerMasterKeyUsage, k.KeyUsage)
	}
	if p.reads(policy.KeyMultiRegion) {
		r.SetBool(policy.KeyMultiRegion, k.MultiRegion())
	}
	if t := multiRegionKeyType(k); t != "" && p.reads(policy.KeyMultiRegionKeyType) {
		r.Set(policy.KeyMultiRegionKeyType, t) // absent for single-Region keys
	}
	if p.reads(policy.KeyResourceAccount) {
		r.Set(policy.KeyResourceAccount, k.Account)
	}
	if k.CustomKeyStoreID != "" && p.reads(policy.KeyCustomKeyStoreID) {
		r.Set(policy.KeyCustomKeyStoreID, k.CustomKeyStoreID)
	}
	if p.reads(policy.KeyResourceTagPrefix) {
		for _, t := range k.Tags {
			r.Set(policy.KeyResourceTagPrefix+t.Key, t.Value)
		}
	}
	if p.reads(policy.KeyResourceAliases) {
		list, err := s.cat.ListAliases(ctx, k.Account, k.Region)
		if err != nil {
			return internal(err)
		}
		var names []string
		for _, a := range list {
			if a.KeyID == k.ID {
				names = append(names, a.Name)
			}
		}
		r.Set(policy.KeyResourceAliases, names...)
	}
	return nil
}

// setSymmetricDefault is the kms:EncryptionAlgorithm of a request that
// names none: symmetric keys use SYMMETRIC_DEFAULT, and AWS sets the key
// to it.
func setSymmetricDefault(r *policy.Request) {
	r.Context[policy.KeyEncryptionAlgorithm] = symmetricDefault
}

var symmetricDefault = []string{"SYMMETRIC_DEFAULT"}

// shared returns the condition value {v}, one slice per distinct v, for
// values of the model's enumerations (key specs, usages, origins,
// algorithms, message types) that every call sets: policy evaluation never
// modifies a request's values (the principal's keys are shared the same
// way), and a slice made per call is an allocation on every request.
// Past sharedMax distinct values it makes a new slice, so that no input
// can grow the table.
func shared(v string) []string {
	if s, ok := sharedValues.Load(v); ok {
		return s.([]string)
	}
	s := []string{v}
	if sharedCount.Load() < sharedMax {
		if _, loaded := sharedValues.LoadOrStore(v, s); !loaded {
			sharedCount.Add(1)
		}
	}
	return s
}

const sharedMax = 256

var (
	sharedValues sync.Map // string → []string
	sharedCount  atomic.Int32
)

// cryptoKeys returns the request's condition keys of a cryptographic
// operation: kms:EncryptionAlgorithm (SYMMETRIC_DEFAULT unless alg names
// another) and, when keyID names an alias (by name or alias ARN),
// kms:RequestAlias with the alias name.
func cryptoKeys(keyID, alg *string) func(*policy.Request) {
	alias := ""
	if keyID != nil {
		alias = requestAlias(*keyID)
	}
	if alias == "" && alg == nil {
		return setSymmetricDefault
	}
	return func(r *policy.Request) {
		if alg != nil {
			r.Set(policy.KeyEncryptionAlgorithm, *alg)
		} else {
			setSymmetricDefault(r)
		}
		if alias != "" {
			r.Set(policy.KeyRequestAlias, alias)
		}
	}
}

// requestAlias is the alias name a KeyId parameter names ("alias/x" for
// "alias/x" and for "arn:aws:kms:…:alias/x"), "" for a key id or ARN.
func requestAlias(keyID string) string {
	if strings.HasPrefix(keyID, "alias/") {
		return keyID
	}
	if strings.HasPrefix(keyID, "arn:") {
		if i := strings.Index(keyID, ":alias/"); i >= 0 {
			return keyID[i+1:]
		}
	}
	return ""
}

// aliasKey returns the kms:RequestAlias of an operation whose KeyId may
// name an alias (DescribeKey); nil when it names none.
func aliasKey(keyID string) func(*policy.Request) {
	alias := requestAlias(keyID)
	if alias == "" {
		return nil
	}
	return func(r *policy.Request) { r.Set(policy.KeyRequestAlias, alias) }
}

// both runs two condition key setters, either of which may be nil.
func both(a, b func(*policy.Request)) func(*policy.Request) {
	switch {
	case a == nil:
		return b
	case b == nil:
		return a
	}
	return func(r *policy.Request) { a(r); b(r) }
}

// notForAWSResource sets kms:GrantIsForAWSResource to false: no AWS
// service calls kmsd (CreateGrant, ListGrants, RevokeGrant).
func notForAWSResource(r *policy.Request) { r.SetBool(policy.KeyGrantIsForAWSResource, false) }

// setRequestTags sets aws:RequestTag/<key> for each tag of a request and
// aws:TagKeys to their keys (CreateKey, TagResource).
func setRequestTags(r *policy.Request, tags []kmsapi.Tag) {
	keys := make([]string, 0, len(tags))
	for _, t := range tags {
		if t.TagKey == nil {
			continue
		}
		keys = append(keys, *t.TagKey)
		r.Set(policy.KeyRequestTagPrefix+*t.TagKey, derefStr(t.TagValue))
	}
	r.Set(policy.KeyTagKeys, keys...)
}

// setBool sets a boolean condition key from an optional parameter.
func setBool(r *policy.Request, key string, v *bool) {
	r.SetBool(key, v != nil && *v)
}

// setInt sets a numeric condition key.
func setInt(r *policy.Request, key string, v int32) {
	r.Set(key, strconv.FormatInt(int64(v), 10))
}
