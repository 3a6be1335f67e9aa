// Package catalog is the typed persistence of kmsd's KMS resources — keys
// with their versions of key material, and aliases — over the storage
// contract. Key material is only ever stored sealed by the barrier, with
// the record's identity ("key/<name>/v<n>", name as in Name) as additional
// data, so a sealed
// value moved to another record does not open.
//
// The catalog keeps a write-through cache of the records it has read or
// written, of the AES-GCM instances of opened key material, and of the
// decoded private and public keys of asymmetric and HMAC keys (Parsed), so
// the hot paths (Encrypt, Decrypt, Sign, GenerateMac, …) touch no storage
// and unseal nothing. The cache is bounded (SetCacheSize, kmsd's
// --cache-size): at most that many key records, as many per-key grant
// lists and as many aliases are kept, those least recently used evicted
// first (for key records, by CLOCK's approximation of it: clock.go);
// a key's AES-GCM instances and decoded keys go with its record. An
// evicted record is simply read again (cache.go).
//
// Several processes may write the same database (cache.go): every
// read-modify-write runs inside one storage.Update, reading the record
// from the transaction, never from the cache, so no process-wide lock is
// needed for correctness; the cache is filled and updated only after a
// commit, under per-record generations that keep an older record from
// replacing a newer one; a change-feed follower evicts what other
// processes changed (Invalidate, Reset). Reads made with WithFresh
// (control plane) come from the cache once the feed, polled at their
// request, has proved it holds every change committed before they began
// (SetReadBarrier), and from the database otherwise; others come from the
// cache as long as the feed is fresher than the bound given to
// SetFreshness, and from the database past it (data plane, failing closed
// when the database cannot answer).
//
// Every key a sweeper may act on is also listed, by due time, in a sweep
// index written in the transaction that writes its record
// (sweepindex.go), so that a sweep round reads the keys due rather than
// every key. (MULTINODE.md §7.6 calls these "sched/" entries; they are
// "sweep/<due>/<name>" here, and one entry per key covers the four
// sweepers.) Likewise every key of a custom key store is listed under its
// store, and every external key under its store and XksKeyId
// (storeindex.go), so that DeleteCustomKeyStore and CreateKey in an
// external key store read one index entry rather than every key.
//
// A key record is the JSON of its Key without the policy text when that
// is the default key policy of the key's account (record.go), as it is
// for nearly every key: a symmetric key's record is then ~480 bytes
// instead of ~810, and reading it puts back one shared copy of the text
// per account, so every reader sees the policy it would have seen inline.
// Records written before (the text inline) read as they did. An older
// kmsd would read such a record as a key without a policy, hence data
// format level 2 (package release).
package catalog

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/kmsd/kmsd/internal/barrier"
	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/storage"
)

// Errors returned by the catalog; storage errors are wrapped.
var (
	ErrNotFound = errors.New("catalog: not found")
	ErrExists   = errors.New("catalog: already exists")
	// ErrXksKeyInUse: CreateKey of an external key whose XksKeyId another
	// KMS key of its store uses (storeindex.go).
	ErrXksKeyInUse = errors.New("catalog: external key already in use")
)

// Tag is a resource tag; order of insertion is kept.
type Tag struct {
	Key   string `json:"k"`
	Value string `json:"v"`
}

// Version is one version of a key's material.
type Version struct {
	Number  uint32    `json:"n"`
	Created time.Time `json:"created"`
	Sealed  []byte    `json:"sealed"` // barrier-sealed key material
	// Public is the DER SubjectPublicKeyInfo of an asymmetric key's
	// material, kept in clear to answer GetPublicKey and Verify without
	// unsealing.
	Public []byte `json:"public,omitempty"`
	// MaterialID is the version's KeyMaterialId (64 lowercase hex),
	// Catalog.MaterialID of the key id and the material; empty in records
	// written before kmsd had it.
	MaterialID string `json:"mid,omitempty"`

	// Imported key material (origin EXTERNAL, spec §7.1). A version of an
	// EXTERNAL key is one key material: Sealed is nil while it is not
	// imported (ImportState PENDING_IMPORT). Its KeyMaterialState follows
	// from Number against the key's Current: equal CURRENT, below
	// NON_CURRENT, above PENDING_ROTATION.
	ImportState         string     `json:"importState,omitempty"` // IMPORTED or PENDING_IMPORT
	ExpirationModel     string     `json:"expirationModel,omitempty"`
	ValidTo             *time.Time `json:"validTo,omitempty"` // KEY_MATERIAL_EXPIRES only
	MaterialDescription string     `json:"materialDescription,omitempty"`
	// Derived: the version's AES-GCM key is not the sealed material but
	// HKDF of it bound to the key id and MaterialID (WorkingKey), so
	// whoever knows imported bytes cannot make or open kmsd ciphertexts
	// (spec §7.9).
	Derived bool `json:"derived,omitempty"`
}

// Rotation records one completed rotation.
type Rotation struct {
	Date time.Time `json:"date"`
	Type string    `json:"type"` // AUTOMATIC or ON_DEMAND
}

// Key is the stored record of one KMS key. Records handed out by the
// catalog are shared snapshots: never modify one, use UpdateKey.
type Key struct {
	ID                   string     `json:"id"`
	Account              string     `json:"account"`
	Region               string     `json:"region"`
	Created              time.Time  `json:"created"`
	Description          string     `json:"description"`
	KeyUsage             string     `json:"keyUsage"`
	KeySpec              string     `json:"keySpec"`
	Origin               string     `json:"origin"`
	CustomKeyStoreID     string     `json:"customKeyStoreId,omitempty"`
	XksKeyID             string     `json:"xksKeyId,omitempty"` // external key stores
	State                keys.State `json:"state"`
	DeletionDate         *time.Time `json:"deletionDate,omitempty"`
	PendingWindowInDays  int32      `json:"pendingWindow,omitempty"`
	Policy               string     `json:"policy,omitempty"` // omitted when the default (record.go)
	Tags                 []Tag      `json:"tags,omitempty"`
	RotationEnabled      bool       `json:"rotationEnabled,omitempty"`
	RotationPeriodInDays int32      `json:"rotationPeriod,omitempty"`
	NextRotation         *time.Time `json:"nextRotation,omitempty"`
	Rotations            []Rotation `json:"rotations,omitempty"`
	Versions             []Version  `json:"versions"`
	Current              uint32     `json:"current"`
	// Multi-Region keys (multiregion.go): the Region of the primary key
	// and those of its replicas, in creation order — the same on every
	// related key, which UpdateRelated writes together — and the
	// asynchronous change the key is going through, if any.
	PrimaryRegion  string      `json:"primaryRegion,omitempty"`
	ReplicaRegions []string    `json:"replicaRegions,omitempty"`
	Pending        *Transition `json:"pending,omitempty"`
	// LocalKMS marks a symmetric key seeded from a local-kms seed file:
	// it also decrypts ciphertext blobs in local-kms's format
	// (keys.ParseLocalKMSBlob), whose version i is the key's version i+1.
	LocalKMS bool `json:"localKms,omitempty"`
}

// ARN is the key's ARN.
func (k *Key) ARN() string { return keys.KeyARN(k.Region, k.Account, k.ID) }

// Name is the catalog's name of the key: see Name.
func (k *Key) Name() string { return Name(k.Region, k.ID) }

// Name is the name under which the catalog keeps key id of region: the
// key id itself, except for multi-Region keys ("mrk-…"), whose related
// keys in several Regions share one key id and are told apart by their
// Region ("mrk-…@eu-west-1"). Key ids of single-Region keys are random
// UUIDs, unique without their Region, so records written before
// multi-Region keys existed keep their names.
func Name(region, id string) string {
	if strings.HasPrefix(id, "mrk-") {
		return id + "@" + region
	}
	return id
}

// MaterialID is the KeyMaterialId of material for key id: hex of
// HMAC-SHA256 under a deployment secret of "kms-key-material" ‖ key id ‖
// material (spec §7.1). It is deterministic, so re-importing the same
// bytes yields the same id, and equal across related multi-Region keys,
// which share the key id; keyed, so it is no fingerprint anyone can test
// a guessed material against.
func (c *Catalog) MaterialID(keyID string, material []byte) string {
	secret := c.barrier.Derive("kms-key-material")
	defer clear(secret)
	m := hmac.New(sha256.New, secret)
	m.Write([]byte("kms-key-material"))
	m.Write([]byte(keyID))
	m.Write(material)
	return hex.EncodeToString(m.Sum(nil))
}

// Alias is a stored alias.
type Alias struct {
	Name    string    `json:"name"` // "alias/…"
	Account string    `json:"account"`
	Region  string    `json:"region"`
	KeyID   string    `json:"keyId"`
	Created time.Time `json:"created"`
	Updated time.Time `json:"updated"`
}

// Catalog stores keys and aliases.
type Catalog struct {
	store   storage.Store
	barrier *barrier.Barrier
	// failpoint, if not nil, is called at the named points of fault
	// injection tests (SetFailpoint).
	failpoint func(name string)

	mu sync.RWMutex
	// The bounded caches (cache.go): read under mu.RLock (the lists each
	// have their own lock for their recency, the key cache an atomic bit
	// per entry), changed only under mu.Lock, so that their eviction
	// callbacks run with mu held.
	//
	// keys holds the cached key records by key name (Name), each entry
	// with the AES-GCM instances of the key's versions (clock.go).
	keys    *clockCache[*Key, aeadSet]
	aliases *lru.Cache[string, *Alias] // by aliasKey
	parsed  map[parsedKey]parsedEntry
	mids    sync.Map // sealed material → KeyMaterialId of versions stored without one (materialid.go)
	// parsedLimit bounds len(parsed).
	parsedLimit int
	// grants is the per-key grant cache (grant.go), bounded like keys.
	grants *lru.Cache[string, []*Grant]
	// cacheSize bounds keys, aliases and grants (SetCacheSize).
	cacheSize int
	// gens holds, under mu, the generation of every cached path that was
	// written or invalidated (cache.go).
	gens genTable
	// freshness is the change feed's horizon and its bound (cache.go).
	freshness atomic.Pointer[freshness]
	// barrier proves the caches fresh for a control-plane read
	// (SetReadBarrier, cache.go).
	readBarrier atomic.Pointer[readBarrier]
	// sweepIndexed: the store's key records are all in the sweep index
	// (sweepindex.go).
	sweepIndexed atomic.Bool
	// storeIndexed: the store's key records are all in the store index
	// (storeindex.go); storeIndexing keeps one indexing pass per process.
	storeIndexed  atomic.Bool
	storeIndexing sync.Mutex
	// policies shares the policy texts of the key records read (intern.go).
	policies policyTexts
}

// New returns a catalog over store, sealing material with b, caching at
// most DefaultCacheSize keys (SetCacheSize).
func New(store storage.Store, b *barrier.Barrier) *Catalog {
	c := &Catalog{
		store:   store,
		barrier: b,
		parsed:  map[parsedKey]parsedEntry{},
		gens:    genTable{m: map[string]uint64{}},

		parsedLimit: DefaultParsedLimit,
		cacheSize:   DefaultCacheSize,
		policies:    newPolicyTexts(),
	}
	c.keys = newClockCache[*Key, aeadSet](c.cacheSize, c.keyEvicted)
	c.aliases = mustLRU[string, *Alias](c.cacheSize, nil)
	c.grants = mustLRU[string, []*Grant](c.cacheSize, nil)
	return c
}

func keyPath(name string) string { return "key/" + name }
func keyIndexPath(account, region, id string) string {
	return "keyidx/" + account + "/" + region + "/" + id
}
func aliasPath(account, region, name string) string {
	return "alias/" + account + "/" + region + "/" + name
}
func materialAAD(name string, v uint32) string {
	return "key/" + name + "/v" + strconv.FormatUint(uint64(v), 10)
}

// Seal wraps material for version v of the key named name (Name), for a
// record about to be written with CreateKey or UpdateKey.
func (c *Catalog) Seal(name string, v uint32, material []byte) ([]byte, error) {
	return c.barrier.Seal(materialAAD(name, v), material)
}

// CreateKey stores a new key record durably.
func (c *Catalog) CreateKey(ctx context.Context, k *Key) error {
	return c.CreateKeyIf(ctx, k, nil)
}

// CreateKeyIf is CreateKey whose transaction first runs check, when not
// nil, reading through tx: a non-nil error from it stores nothing and is
// returned unchanged. A key of a custom key store checks the store's
// record there (keystore.CheckCreateKey), so that a store disconnected or
// deleted through another node cannot get the key: whichever of the two
// transactions commits second sees the other. check may run more than
// once (storage.Store.Update) and must read only through tx.
func (c *Catalog) CreateKeyIf(ctx context.Context, k *Key, check func(ctx context.Context, tx storage.Reader) error) error {
	b, err := encodeKey(k)
	if err != nil {
		return err
	}
	p := keyPath(k.Name())
	g := c.stamp(p)
	err = c.store.Update(ctx, func(tx storage.Tx) error {
		if check != nil {
			if err := check(ctx, tx); err != nil {
				return callerError{err}
			}
		}
		if err := checkXksKeyFree(ctx, tx, k); err != nil {
			return err
		}
		if err := tx.Create(ctx, p, b); err != nil {
			return err
		}
		if err := indexRecord(ctx, tx, nil, k); err != nil {
			return err
		}
		return tx.Put(ctx, keyIndexPath(k.Account, k.Region, k.ID), []byte{})
	})
	if errors.Is(err, storage.ErrExists) {
		return ErrExists
	}
	if errors.Is(err, ErrXksKeyInUse) {
		return ErrXksKeyInUse
	}
	var ce callerError
	if errors.As(err, &ce) {
		return ce.err
	}
	if err != nil {
		return fmt.Errorf("catalog: create key: %w", err)
	}
	c.install(p, g, func() { c.putKey(k.Name(), k) })
	return nil
}

// Key returns the record of the key named id (Name: the key id, or for a
// multi-Region key its id and Region): from the cache when it may be
// trusted (see the package documentation), else from the database.
func (c *Catalog) Key(ctx context.Context, id string) (*Key, error) {
	if c.cacheOK(ctx) {
		c.mu.RLock()
		k, ok := c.keys.Get(id)
		c.mu.RUnlock()
		if ok {
			if k == nil {
				return nil, ErrNotFound
			}
			return k, nil
		}
	} else {
		var cancel context.CancelFunc
		ctx, cancel = readCtx(ctx)
		defer cancel()
	}
	p := keyPath(id)
	g := c.stamp(p)
	b, err := c.store.Get(ctx, p)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("catalog: get key: %w", err)
	}
	k, err := decodeKey(b, &c.policies)
	if err != nil {
		return nil, fmt.Errorf("catalog: decode key %s: %w", id, err)
	}
	c.fill(p, g, func() { c.putKey(id, k) })
	return k, nil
}

// SetFailpoint makes the catalog call fn at its fault injection points,
// by name: "catalog-update-key", in UpdateKey's transaction after the
// record is written, before COMMIT (a node frozen in the middle of a
// write: e2e TestPausedOldNodeMidRequest). Call it before serving.
func (c *Catalog) SetFailpoint(fn func(name string)) { c.failpoint = fn }

// UpdateKey applies fn to a copy of the record of the key named id (Name),
// read in the same transaction that stores the result durably. fn may run
// more than once (storage.Store.Update) and must keep no state between
// runs. An error from fn leaves the record unchanged and is returned.
func (c *Catalog) UpdateKey(ctx context.Context, id string, fn func(k *Key) error) (*Key, error) {
	p := keyPath(id)
	g := c.stamp(p)
	var cur, next *Key
	err := c.store.Update(ctx, func(tx storage.Tx) error {
		var err error
		if cur, err = getKey(ctx, tx, id); err != nil {
			return err
		}
		if next, err = clone(cur); err != nil {
			return err
		}
		if err := fn(next); err != nil {
			return callerError{err}
		}
		if err := c.putKeyIn(ctx, tx, id, cur, next); err != nil {
			return err
		}
		if c.failpoint != nil {
			c.failpoint("catalog-update-key")
		}
		return nil
	})
	if err != nil {
		return nil, unwrapUpdate("update key", err)
	}
	c.install(p, g, func() {
		c.forgetParsed(cur)
		c.putKey(id, next)
	})
	return next, nil
}

// KeysPerUpdate is the most keys to give UpdateKeys at once. Each key
// takes PostgreSQL's serializable read locks on about two pages of kv's
// index (its record and an index entry of its own); past 32 pages of one
// relation (the default max_pred_locks_per_relation) PostgreSQL trades
// them for one lock on the whole index, and the transaction then conflicts
// with every write to kv that overlaps it, not only those near its keys
// (TestUpdateKeysPredicateLocks). With four goroutines updating other keys
// meanwhile, batches of 64 ran 1.67–1.69 times each (serialization
// failures, then retries) and batches of 12 1.02–1.04 times
// (BenchmarkUpdateKeysContended).
const KeysPerUpdate = 12

// UpdateKeys is UpdateKey for several keys in one storage transaction, so
// that a sweep acting on many keys pays for one commit rather than one
// each. fn is applied to a copy of each key's record as read in that
// transaction; a key not found, or one for which fn returns ErrNoChange,
// is left as it is and the others go on. Any other error from fn leaves
// every record unchanged and is returned. Like UpdateKey it may run fn
// more than once for a key, and returns the records it wrote, in the
// order of ids. Give it at most KeysPerUpdate keys.
func (c *Catalog) UpdateKeys(ctx context.Context, ids []string, fn func(k *Key) error) ([]*Key, error) {
	gens := make([]uint64, len(ids))
	for i, id := range ids {
		gens[i] = c.stamp(keyPath(id))
	}
	type write struct {
		i         int
		cur, next *Key
	}
	var ws []write
	err := c.store.Update(ctx, func(tx storage.Tx) error {
		ws = ws[:0]
		for i, id := range ids {
			cur, err := getKey(ctx, tx, id)
			if errors.Is(err, ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			next, err := clone(cur)
			if err != nil {
				return err
			}
			if err := fn(next); errors.Is(err, ErrNoChange) {
				continue
			} else if err != nil {
				return callerError{err}
			}
			if err := c.putKeyIn(ctx, tx, id, cur, next); err != nil {
				return err
			}
			ws = append(ws, write{i, cur, next})
		}
		return nil
	})
	if err != nil {
		return nil, unwrapUpdate("update keys", err)
	}
	out := make([]*Key, len(ws))
	for j, w := range ws {
		id := ids[w.i]
		c.install(keyPath(id), gens[w.i], func() {
			c.forgetParsed(w.cur)
			c.putKey(id, w.next)
		})
		out[j] = w.next
	}
	return out, nil
}

// putKeyIn writes next as the record of the key named id, whose record in
// tx is cur, with its index entries (UpdateKey, UpdateKeys).
func (c *Catalog) putKeyIn(ctx context.Context, tx storage.Tx, id string, cur, next *Key) error {
	next.Policy = c.policies.share(next.Policy)
	b, err := encodeKey(next)
	if err != nil {
		return err
	}
	if err := indexRecord(ctx, tx, cur, next); err != nil {
		return err
	}
	return tx.Put(ctx, keyPath(id), b)
}

// getKey reads and decodes the key named id in tx.
func getKey(ctx context.Context, tx storage.Reader, id string) (*Key, error) {
	b, err := tx.Get(ctx, keyPath(id))
	if errors.Is(err, storage.ErrNotFound) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	k, err := decodeKey(b, nil)
	if err != nil {
		return nil, fmt.Errorf("catalog: decode key %s: %w", id, err)
	}
	return k, nil
}

// callerError carries an error of a caller's fn out of storage.Update, so
// that it is returned unchanged rather than wrapped as a storage error.
type callerError struct{ err error }

func (e callerError) Error() string { return e.err.Error() }

// unwrapUpdate returns what a catalog write returns for err from
// storage.Update: the caller's own error, a catalog sentinel, or the
// storage error wrapped.
func unwrapUpdate(what string, err error) error {
	var ce callerError
	switch {
	case errors.As(err, &ce):
		return ce.err
	case errors.Is(err, ErrNotFound), errors.Is(err, ErrExists):
		return err
	case errors.Is(err, storage.ErrExists):
		return ErrExists
	}
	return fmt.Errorf("catalog: %s: %w", what, err)
}

// DeleteKey removes the key named id (Name), its index entry and every
// alias of its Region that points to it — all read and written in one
// transaction, so an alias made meanwhile on another node is not left
// behind — and forgets its material.
func (c *Catalog) DeleteKey(ctx context.Context, id string) error {
	var k *Key
	var dropped []string
	err := c.store.Update(ctx, func(tx storage.Tx) error {
		var err error
		if k, err = getKey(ctx, tx, id); err != nil {
			return err
		}
		dropped, err = deleteAliasesOf(ctx, tx, k)
		if err != nil {
			return err
		}
		if err := tx.Delete(ctx, keyIndexPath(k.Account, k.Region, k.ID)); err != nil {
			return err
		}
		if err := indexRecord(ctx, tx, k, nil); err != nil {
			return err
		}
		return tx.Delete(ctx, keyPath(id))
	})
	if err != nil {
		return unwrapUpdate("delete key", err)
	}
	c.invalidate(append(dropped, keyPath(id)))
	c.mu.Lock()
	c.forgetParsed(k)
	c.mu.Unlock()
	return nil
}

// deleteAliasesOf deletes in tx the aliases of k's account and Region that
// point to k, returning their paths.
func deleteAliasesOf(ctx context.Context, tx storage.Tx, k *Key) ([]string, error) {
	entries, err := tx.List(ctx, aliasPath(k.Account, k.Region, ""), "", 0)
	if err != nil {
		return nil, err
	}
	var dropped []string
	for _, e := range entries {
		a := new(Alias)
		if err := json.Unmarshal(e.Value, a); err != nil {
			return nil, err
		}
		if a.KeyID != k.ID {
			continue
		}
		if err := tx.Delete(ctx, e.Key); err != nil {
			return nil, err
		}
		dropped = append(dropped, e.Key)
	}
	return dropped, nil
}

// ListKeys returns up to limit key ids of account and region that sort
// after the id "after" (empty: from the start).
func (c *Catalog) ListKeys(ctx context.Context, account, region, after string, limit int) ([]string, error) {
	prefix := keyIndexPath(account, region, "")
	start := ""
	if after != "" {
		start = prefix + after
	}
	entries, err := c.store.List(ctx, prefix, start, limit)
	if err != nil {
		return nil, fmt.Errorf("catalog: list keys: %w", err)
	}
	ids := make([]string, len(entries))
	for i, e := range entries {
		ids[i] = e.Key[len(prefix):]
	}
	return ids, nil
}

// AllKeys calls fn for every key record, in name order, as the database
// has it; used by sweepers.
func (c *Catalog) AllKeys(ctx context.Context, fn func(k *Key) error) error {
	after := ""
	for {
		entries, err := c.store.List(ctx, "key/", after, 500)
		if err != nil {
			return fmt.Errorf("catalog: scan keys: %w", err)
		}
		for _, e := range entries {
			k, err := decodeKey(e.Value, &c.policies)
			if err != nil {
				return fmt.Errorf("catalog: decode %s: %w", e.Key, err)
			}
			if err := fn(k); err != nil {
				return err
			}
		}
		if len(entries) < 500 {
			return nil
		}
		after = entries[len(entries)-1].Key
	}
}

// AEAD returns the AES-GCM instance of version v of k's material.
func (c *Catalog) AEAD(k *Key, v uint32) (cipher.AEAD, error) {
	name := k.Name()
	c.mu.RLock()
	_, set, _ := c.keys.Extra(name)
	c.mu.RUnlock()
	a := set.find(v)
	if a != nil && fresh(a, k, v) {
		return a, nil
	}
	ver := k.Version(v)
	if ver == nil || ver.Sealed == nil {
		return nil, ErrNotFound
	}
	material, err := c.barrier.Open(materialAAD(name, v), ver.Sealed)
	if err != nil {
		return nil, fmt.Errorf("catalog: open material of %s: %w", k.ID, err)
	}
	defer clear(material)
	key := material
	if ver.Derived {
		key = c.WorkingKey(k.ID, ver.MaterialID, material)
		defer clear(key)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	if a, err = cipher.NewGCM(block); err != nil {
		return nil, err
	}
	if ver.Derived {
		a = &derivedAEAD{AEAD: a, mid: ver.MaterialID}
	}
	c.mu.Lock()
	// Kept only beside k's record in the cache, and dropped with it, so
	// that the instances are bounded by the cache and a record read before
	// a change cannot leave an instance behind once the change evicted it.
	if cur, set, ok := c.keys.Extra(name); ok && cur == k {
		c.keys.SetExtra(name, set.with(v, a))
	}
	c.mu.Unlock()
	return a, nil
}

// Material opens version v of k's sealed material: the private encoding
// of an asymmetric key (package material) or an HMAC key. The caller
// clears it after use.
func (c *Catalog) Material(k *Key, v uint32) ([]byte, error) {
	ver := k.Version(v)
	if ver == nil {
		return nil, ErrNotFound
	}
	material, err := c.barrier.Open(materialAAD(k.Name(), v), ver.Sealed)
	if err != nil {
		return nil, fmt.Errorf("catalog: open material of %s: %w", k.ID, err)
	}
	return material, nil
}

// Version returns version v of k's material, nil if it has none.
func (k *Key) Version(v uint32) *Version {
	for i := range k.Versions {
		if k.Versions[i].Number == v {
			return &k.Versions[i]
		}
	}
	return nil
}

func aliasCacheKey(account, region, name string) string { return aliasPath(account, region, name) }

// Alias returns the alias name in account and region: from the cache
// when it may be trusted, else from the database.
func (c *Catalog) Alias(ctx context.Context, account, region, name string) (*Alias, error) {
	p := aliasCacheKey(account, region, name)
	if c.cacheOK(ctx) {
		c.mu.RLock()
		a, ok := c.aliases.Get(p)
		c.mu.RUnlock()
		if ok {
			if a == nil {
				return nil, ErrNotFound
			}
			return a, nil
		}
	} else {
		var cancel context.CancelFunc
		ctx, cancel = readCtx(ctx)
		defer cancel()
	}
	g := c.stamp(p)
	b, err := c.store.Get(ctx, p)
	if errors.Is(err, storage.ErrNotFound) {
		// Misses are not cached: names a caller invents must not grow
		// the cache.
		c.fill(p, g, func() { c.aliases.Remove(p) })
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("catalog: get alias: %w", err)
	}
	a := new(Alias)
	if err := json.Unmarshal(b, a); err != nil {
		return nil, err
	}
	c.fill(p, g, func() { c.aliases.Add(p, a) })
	return a, nil
}

// CreateAlias stores a new alias; ErrExists if the name is taken,
// ErrNotFound if its key is gone. The key is read in the transaction
// that creates the alias, so a DeleteKey on another node (which deletes
// the key's aliases in its own) cannot leave it pointing at nothing.
func (c *Catalog) CreateAlias(ctx context.Context, a *Alias) error {
	b, err := json.Marshal(a)
	if err != nil {
		return err
	}
	p := aliasPath(a.Account, a.Region, a.Name)
	g := c.stamp(p)
	err = c.store.Update(ctx, func(tx storage.Tx) error {
		if _, err := getKey(ctx, tx, Name(a.Region, a.KeyID)); err != nil {
			return err
		}
		return tx.Create(ctx, p, b)
	})
	if err != nil {
		return unwrapUpdate("create alias", err)
	}
	c.install(p, g, func() { c.aliases.Add(p, a) })
	return nil
}

// PutAlias replaces an existing alias record; ErrNotFound if it or its
// new key is gone (deleted meanwhile, perhaps through another node).
func (c *Catalog) PutAlias(ctx context.Context, a *Alias) error {
	b, err := json.Marshal(a)
	if err != nil {
		return err
	}
	p := aliasPath(a.Account, a.Region, a.Name)
	g := c.stamp(p)
	err = c.store.Update(ctx, func(tx storage.Tx) error {
		if _, err := tx.Get(ctx, p); errors.Is(err, storage.ErrNotFound) {
			return ErrNotFound
		} else if err != nil {
			return err
		}
		if _, err := getKey(ctx, tx, Name(a.Region, a.KeyID)); err != nil {
			return err // the new target is gone
		}
		return tx.Put(ctx, p, b)
	})
	if err != nil {
		return unwrapUpdate("update alias", err)
	}
	c.install(p, g, func() { c.aliases.Add(p, a) })
	return nil
}

// DeleteAlias removes an alias; ErrNotFound if it is gone already
// (deleted meanwhile, perhaps through another node), checked in the
// transaction that deletes it.
func (c *Catalog) DeleteAlias(ctx context.Context, account, region, name string) error {
	p := aliasPath(account, region, name)
	err := c.store.Update(ctx, func(tx storage.Tx) error {
		if _, err := tx.Get(ctx, p); errors.Is(err, storage.ErrNotFound) {
			return ErrNotFound
		} else if err != nil {
			return err
		}
		return tx.Delete(ctx, p)
	})
	if err != nil {
		return unwrapUpdate("delete alias", err)
	}
	c.invalidate([]string{p})
	return nil
}

// ListAliases returns the aliases of account and region in name order.
func (c *Catalog) ListAliases(ctx context.Context, account, region string) ([]*Alias, error) {
	return c.listAliases(ctx, account, region)
}

func (c *Catalog) listAliases(ctx context.Context, account, region string) ([]*Alias, error) {
	entries, err := c.store.List(ctx, aliasPath(account, region, ""), "", 0)
	if err != nil {
		return nil, fmt.Errorf("catalog: list aliases: %w", err)
	}
	out := make([]*Alias, 0, len(entries))
	for _, e := range entries {
		a := new(Alias)
		if err := json.Unmarshal(e.Value, a); err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, nil
}

// clone is a deep copy of k, sharing its policy text (strings are
// immutable).
func clone(k *Key) (*Key, error) {
	b, err := json.Marshal(k)
	if err != nil {
		return nil, err
	}
	n := new(Key)
	if err := json.Unmarshal(b, n); err != nil {
		return nil, err
	}
	n.Policy = k.Policy
	return n, nil
}

// OpenAnyMaterial opens the sealed material of one stored key, the first in
// id order that has any, and reports whether there was one. It tells at
// start whether the root key opens a database that predates the barrier's
// check value; an error wraps barrier.ErrOpen when the key does not.
func (c *Catalog) OpenAnyMaterial(ctx context.Context) (found bool, err error) {
	errFound := errors.New("found")
	err = c.AllKeys(ctx, func(k *Key) error {
		for _, v := range k.Versions {
			if v.Sealed == nil {
				continue
			}
			material, err := c.barrier.Open(materialAAD(k.Name(), v.Number), v.Sealed)
			if err != nil {
				return fmt.Errorf("catalog: open material of %s: %w", k.ID, err)
			}
			clear(material)
			return errFound
		}
		return nil
	})
	if errors.Is(err, errFound) {
		return true, nil
	}
	return false, err
}

// CreateAll stores new keys, aliases and grants together in one
// transaction, as the seed file's resources are applied: either every
// record is written or none is (ErrExists if any is already there).
func (c *Catalog) CreateAll(ctx context.Context, ks []*Key, as []*Alias, gs []*Grant) error {
	kb := make([][]byte, len(ks))
	ab := make([][]byte, len(as))
	gb := make([][]byte, len(gs))
	var err error
	for i, g := range gs {
		if gb[i], err = json.Marshal(g); err != nil {
			return err
		}
	}
	for i, k := range ks {
		if kb[i], err = encodeKey(k); err != nil {
			return err
		}
	}
	for i, a := range as {
		if ab[i], err = json.Marshal(a); err != nil {
			return err
		}
	}
	err = c.store.Update(ctx, func(tx storage.Tx) error {
		for i, k := range ks {
			if err := tx.Create(ctx, keyPath(k.Name()), kb[i]); err != nil {
				return err
			}
			if err := indexRecord(ctx, tx, nil, k); err != nil {
				return err
			}
			if err := tx.Put(ctx, keyIndexPath(k.Account, k.Region, k.ID), []byte{}); err != nil {
				return err
			}
		}
		for i, a := range as {
			if err := tx.Create(ctx, aliasPath(a.Account, a.Region, a.Name), ab[i]); err != nil {
				return err
			}
		}
		for i, g := range gs {
			if err := tx.Create(ctx, grantPath(g.KeyName(), g.ID), gb[i]); err != nil {
				return err
			}
		}
		return nil
	})
	if errors.Is(err, storage.ErrExists) {
		return ErrExists
	}
	if err != nil {
		return fmt.Errorf("catalog: create seeded resources: %w", err)
	}
	// Evicted rather than installed (read again when next asked): the
	// generations a fill would need were not taken before the commit.
	var paths []string
	for _, k := range ks {
		paths = append(paths, keyPath(k.Name()))
	}
	for _, a := range as {
		paths = append(paths, aliasPath(a.Account, a.Region, a.Name))
	}
	for _, g := range gs {
		paths = append(paths, grantPath(g.KeyName(), g.ID))
	}
	c.invalidate(paths)
	return nil
}
