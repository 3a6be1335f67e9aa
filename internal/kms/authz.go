package kms

import (
	"context"
	"sync"

	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/policy"
)

// Scope says how an operation is authorised.
type Scope uint8

const (
	// KeyScope: the key policy, the caller's identity policies and the
	// key's grants decide (policy.Decide); the key may be in another
	// account if its key policy and the caller's IAM policies allow.
	KeyScope Scope = iota + 1
	// IAMScope: identity policies alone decide (policy.DecideIAMOnly);
	// the operation acts on no key (CreateKey, ListKeys, ListAliases,
	// GenerateRandom, ListRetirableGrants).
	IAMScope
	// StoreScope: identity policies alone decide, and the resource (a
	// custom key store or a CloudHSM cluster) must be in the caller's own
	// account: these operations are never allowed across accounts, whatever
	// any policy says.
	StoreScope
)

// Authorization is the entry of one operation in the authorization table.
type Authorization struct {
	Action string // IAM action, "kms:Encrypt"
	Scope  Scope
	// CrossAccount: a key in another account may be named (by key ARN or
	// alias ARN). Only the operations AWS documents as cross-account.
	CrossAccount bool
}

// Authorizations is the authorization table: every KMS operation (and,
// keyed "cloudhsm:Op", the CloudHSM v2 cluster operations, decided like
// custom key store ones) with
// its IAM action and how it is decided. ReEncrypt is authorised twice, as
// kms:ReEncryptFrom on the source key and kms:ReEncryptTo on the
// destination key.
var Authorizations = map[string]Authorization{}

func init() {
	key := func(cross bool, ops ...string) {
		for _, op := range ops {
			Authorizations[op] = Authorization{Action: "kms:" + op, Scope: KeyScope, CrossAccount: cross}
		}
	}
	key(true, "Decrypt", "Encrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext",
		"GenerateDataKeyPair", "GenerateDataKeyPairWithoutPlaintext", "GenerateMac", "VerifyMac",
		"Sign", "Verify", "GetPublicKey", "DescribeKey", "DeriveSharedSecret",
		"CreateGrant", "ListGrants", "RetireGrant", "RevokeGrant", "ReEncryptFrom", "ReEncryptTo", "GetKeyRotationStatus")
	key(false, "CancelKeyDeletion", "CreateAlias", "DeleteAlias", "DeleteImportedKeyMaterial",
		"DisableKey", "DisableKeyRotation", "EnableKey", "EnableKeyRotation", "GetKeyPolicy",
		"GetKeyLastUsage", "GetParametersForImport", "ImportKeyMaterial", "ListKeyPolicies",
		"ListKeyRotations", "ListResourceTags", "PutKeyPolicy", "ReplicateKey", "RotateKeyOnDemand",
		"ScheduleKeyDeletion", "TagResource", "UntagResource", "UpdateAlias", "UpdateKeyDescription",
		"UpdatePrimaryRegion")
	Authorizations["ReEncrypt"] = Authorization{Action: "kms:ReEncrypt*", Scope: KeyScope, CrossAccount: true}
	for _, op := range []string{"CreateKey", "ListKeys", "ListAliases", "GenerateRandom", "ListRetirableGrants"} {
		Authorizations[op] = Authorization{Action: "kms:" + op, Scope: IAMScope}
	}
	for _, op := range []string{"ConnectCustomKeyStore", "CreateCustomKeyStore", "DeleteCustomKeyStore",
		"DescribeCustomKeyStores", "DisconnectCustomKeyStore", "UpdateCustomKeyStore"} {
		Authorizations[op] = Authorization{Action: "kms:" + op, Scope: StoreScope}
	}
	for _, op := range []string{"CreateCluster", "DeleteCluster", "DescribeClusters", "InitializeCluster",
		"CreateHsm", "DeleteHsm", "DescribeBackups", "CopyBackupToRegion", "DeleteBackup", "RestoreBackup",
		"ModifyBackupAttributes", "ModifyCluster", "TagResource", "UntagResource", "ListTags",
		"GetResourcePolicy", "PutResourcePolicy", "DeleteResourcePolicy"} {
		// Keyed "cloudhsm:Op": some names (TagResource) are KMS's too.
		Authorizations["cloudhsm:"+op] = Authorization{Action: "cloudhsm:" + op, Scope: StoreScope}
	}
}

// identity is what the caller's policies contribute to a decision.
func (c *Caller) identity() policy.Identity {
	return policy.Identity{Policies: c.Policies, Session: c.SessionPolicies}
}

// principal is who the caller acts as for policy evaluation.
func (c *Caller) principal() policy.Principal {
	if c.Principal.Type != "" {
		return c.Principal
	}
	if p, err := policy.PrincipalFromARN(c.ARN); err == nil {
		return p
	}
	return policy.RootPrincipal(c.Account)
}

// request builds the policy request of a call with the global condition
// keys kmsd knows. The keys that follow from the principal alone, and
// those of the environment (time, Region, transport), are shared maps
// made once per principal and once per second (policy.Request.Shared):
// a request copies none of them, and its own map holds only the keys of
// the call.
//
// A caller that holds the request no longer once it has decided (as
// authorizeKey, the path of every cryptographic operation) hands it back
// with release, and a later call reuses it and its map.
func (s *Service) request(c *Caller, action, resource string) *policy.Request {
	p := c.principal()
	r := requestPool.Get().(*policy.Request)
	r.Principal, r.Action, r.Resource = p, action, resource
	r.Shared = append(r.Shared, principalKeys(&p), s.envKeys(c.Region, c.SecureTransport))
	if c.SourceIP != "" {
		r.Context[policy.KeySourceIP] = []string{c.SourceIP}
	}
	return r
}

var requestPool = sync.Pool{New: func() any {
	return &policy.Request{Context: make(map[string][]string, 8), Shared: make([]map[string][]string, 0, 2)}
}}

// pooledKeys bounds the condition keys of a request release keeps for
// reuse: a map keeps the room it grew to, and a request with a large
// encryption context would leave every later one a large map to scan.
const pooledKeys = 16

// release hands r, which no one uses any more, back to request.
func release(r *policy.Request) {
	if len(r.Context) > pooledKeys {
		return
	}
	clear(r.Context)
	clear(r.Shared[:cap(r.Shared)])
	*r = policy.Request{Context: r.Context, Shared: r.Shared[:0]}
	requestPool.Put(r)
}

var (
	trueValue  = []string{"true"}
	falseValue = []string{"false"}
)

// principalKeys caches, by principal ARN, the condition keys that follow
// from the principal alone (policy.NewRequest's). The maps are shared and
// never modified; a principal's keys change only with its ARN or id, or
// with its tags, which bypass the cache.
func principalKeys(p *policy.Principal) map[string][]string {
	if len(p.Tags) > 0 || p.SourceIdentity != "" {
		// Session tags and source identity belong to one session, not to
		// its ARN (a role may be assumed again under the same session
		// name with other tags): never cache them.
		return policy.NewRequest(*p, "", "").Context
	}
	key := string(p.Type) + "\x00" + p.ARN + "\x00" + p.UserID + "\x00" + p.RoleARN
	if m, ok := principalKeyCache.Load(key); ok {
		return m.(map[string][]string)
	}
	m := policy.NewRequest(*p, "", "").Context
	principalKeyCache.Store(key, m)
	return m
}

var principalKeyCache sync.Map

// envKeys are the condition keys of a second, a Region and a transport:
// aws:CurrentTime, aws:EpochTime, aws:RequestedRegion and
// aws:SecureTransport.
type envKeys struct {
	sec    int64
	region string
	secure bool
	m      map[string][]string // shared: never modified
}

// envKeys returns the condition keys of now for a call to region over a
// transport that is secure or not, made once per second (for the last
// Region and transport asked).
func (s *Service) envKeys(region string, secure bool) map[string][]string {
	now := s.now()
	if e := s.lastEnv.Load(); e != nil && e.sec == now.Unix() && e.region == region && e.secure == secure {
		return e.m
	}
	r := policy.Request{}
	r.SetTime(now)
	r.Context[policy.KeyRequestedRegion] = []string{region}
	if secure {
		r.Context[policy.KeySecureTransport] = trueValue
	} else {
		r.Context[policy.KeySecureTransport] = falseValue
	}
	s.lastEnv.Store(&envKeys{sec: now.Unix(), region: region, secure: secure, m: r.Context})
	return r.Context
}

func accessDenied(r *policy.Request, reason policy.Reason) error {
	return exc("AccessDeniedException", policy.AccessDeniedMessage(r, reason))
}

// policyCacheSize bounds the parsed key policies kept: distinct policy
// texts, which on a large store are far fewer than keys (most keys have
// their account's default policy).
const policyCacheSize = 4096

// policyCache keeps parsed key policies by their text, so that a key read
// for the first time (on a store of a million keys, most keys of a random
// request) reuses the parse of an equal policy, and memory is bounded by
// policyCacheSize texts whatever the number of keys. A policy is a pure
// function of its text, so an entry never goes stale: PutKeyPolicy stores
// another text. (It was kept by key id, holding each key's record, which
// grew with every key ever read.)
type policyCache struct {
	once sync.Once
	c    *lru.Cache[string, *policy.Policy]
}

func (pc *policyCache) cache() *lru.Cache[string, *policy.Policy] {
	pc.once.Do(func() {
		c, err := lru.New[string, *policy.Policy](policyCacheSize)
		if err != nil {
			panic(err) // only for a size <= 0
		}
		pc.c = c
	})
	return pc.c
}

// keyPolicy returns k's parsed key policy, parsing each policy text once
// while it stays cached. A stored policy that no longer parses allows
// nothing.
func (s *Service) keyPolicy(k *catalog.Key) *policy.Policy {
	c := s.policies.cache()
	if p, ok := c.Get(k.Policy); ok {
		return p
	}
	p, err := policy.Parse(k.Policy, policy.KeyPolicy)
	if err != nil {
		s.log.Error("stored key policy does not parse", "key", k.ID, "err", err)
		p = nil
	} else if err := policy.CheckConditionKeys(p); err != nil {
		// Stored before kmsd refused such keys: the key evaluates as
		// absent. Refusing the policy would lock everyone out of the key.
		s.log.Warn("stored key policy names a condition key kmsd cannot fill", "key", k.ID, "err", err)
	}
	c.Add(k.Policy, p)
	return p
}

// authorizeKey decides a call of action on key k (KeyScope). ec is the
// encryption context of cryptographic operations (nil for others); extra,
// if not nil, adds operation-specific condition keys. Grants are consulted
// only when the policies do not allow, and never override an explicit
// deny. The key's ARN is recorded on the caller for the audit record.
func (s *Service) authorizeKey(ctx context.Context, c *Caller, action string, k *catalog.Key, ec map[string]string, extra func(*policy.Request)) error {
	arn := k.ARN()
	c.addResource(arn)
	if c.Trusted && k.Account == c.Account {
		return nil
	}
	r := s.request(c, action, arn)
	defer release(r)
	kp := s.keyPolicy(k)
	if err := s.setKeyConditions(ctx, r, k, readers{kp, c.Policies, c.SessionPolicies}); err != nil {
		return err
	}
	if ec != nil {
		r.SetEncryptionContext(ec)
	}
	if extra != nil {
		extra(r)
	}
	ok, reason := policy.Decide(kp, c.identity(), policy.NoGrant, r)
	if ok {
		return nil
	}
	if reason.GrantMayAllow() {
		g, err := s.grantsAllow(ctx, c, k, action, ec)
		if err != nil {
			return err
		}
		if ok, _ := policy.Decide(s.keyPolicy(k), c.identity(), g, r); ok && g != policy.NoGrant {
			return nil
		}
	}
	return accessDenied(r, reason)
}

// authorizeIAM decides an operation on no key from identity policies.
func (s *Service) authorizeIAM(c *Caller, action string, extra func(*policy.Request)) error {
	if c.Trusted {
		return nil
	}
	r := s.request(c, action, "*")
	if extra != nil {
		extra(r)
	}
	if ok, reason := policy.DecideIAMOnly(c.identity(), r); !ok {
		return accessDenied(r, reason)
	}
	return nil
}

// AuthorizeStore decides a custom key store or CloudHSM cluster operation
// (StoreScope): from identity policies alone, and never across accounts —
// a resource whose account is not the caller's is refused whatever any
// policy says. resource is the store's or cluster's ARN ("*" for list
// operations); resourceAccount its account ("" for list operations).
func (s *Service) AuthorizeStore(c *Caller, op, resource, resourceAccount string) error {
	a, ok := Authorizations[op]
	if !ok || a.Scope != StoreScope {
		return internal(errUnknownOperation(op))
	}
	return authorizeStore(s, c, a.Action, resource, resourceAccount)
}

func authorizeStore(s *Service, c *Caller, action, resource, resourceAccount string) error {
	if resource == "" {
		resource = "*"
	}
	return decideStore(c, s.request(c, action, resource), resourceAccount)
}

// decideStore is the StoreScope decision of a built request: never across
// accounts, trusted callers allowed in their own, else identity policies
// (and session policies) alone.
func decideStore(c *Caller, r *policy.Request, resourceAccount string) error {
	if resourceAccount != "" && resourceAccount != c.Account {
		return accessDenied(r, policy.NoIAMAllows)
	}
	if c.Trusted {
		return nil
	}
	if ok, reason := policy.DecideIAMOnly(c.identity(), r); !ok {
		return accessDenied(r, reason)
	}
	return nil
}

type errUnknownOperation string

func (e errUnknownOperation) Error() string {
	return "kms: no authorization for operation " + string(e)
}

// addResource records a key the call acted on, once.
func (c *Caller) addResource(arn string) {
	for _, r := range c.Resources {
		if r == arn {
			return
		}
	}
	c.Resources = append(c.Resources, arn)
}

// AuthorizeUnsupported decides, from identity policies, an operation kmsd
// does not implement yet but whose authorization needs no key (IAMScope
// and StoreScope operations), so that a caller without permission hears
// AccessDeniedException before UnsupportedOperationException, as the
// order of checks will be once the operation exists. Other operations
// are not decided (nil).
func (s *Service) AuthorizeUnsupported(c *Caller, op string) error {
	a, ok := Authorizations[op]
	if !ok {
		return nil
	}
	switch a.Scope {
	case IAMScope:
		return s.authorizeIAM(c, a.Action, nil)
	case StoreScope:
		return authorizeStore(s, c, a.Action, "*", "")
	}
	return nil
}
