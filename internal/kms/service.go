// Package kms is the application service of kmsd: one method per KMS
// operation (one file each), taking and returning the wire shapes of
// package kmsapi. It decides the behaviour AWS KMS documents — key states,
// the errors each state gives, aliases, rotation, deletion windows — over
// the catalog. It knows nothing of HTTP or of any database.
//
// Time: every time the Service takes (WithClock) is on the clock kmsd gives
// it, the database's as this node estimates it (package dbclock), not the
// node's own. Deletion dates and the sweep that deletes keys when due,
// rotation dates and the sweep that rotates, imported material's ValidTo
// and its checks on use, import tokens' 24 hours, multi-Region transitions'
// due times, creation dates and aws:CurrentTime are written by one node
// and compared with "now" by another, so nodes whose clocks are minutes
// apart (issue #16) would otherwise disagree: material expired on one node
// and not on the other, a deletion run minutes early or late by the
// controller, an import token from another node expired early, a record
// "from the future". Two times stay on the node's clock, as they are not
// the Service's: the SigV4 skew check (against the client's clock) and
// the audit record's eventTime, which is also the time GetKeyLastUsage
// gives for a use (RecordUse), so that it names the audit record exactly;
// the TrackingStartDate is on the database's clock, as the creation dates
// it is compared with are.
package kms

import (
	"context"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/keystore"
	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/lastuse"
	"github.com/kmsd/kmsd/internal/material"
	"github.com/kmsd/kmsd/internal/pairpool"
	"github.com/kmsd/kmsd/internal/policy"
)

// Caller is who sent a request and where: the account and region it
// addresses (region from the SigV4 credential scope).
type Caller struct {
	Account   string
	Region    string
	ARN       string // principal ARN
	RequestID string

	// Principal is who the request acts as for authorization; when its
	// Type is empty it is derived from ARN. Policies are the principal's
	// identity policies, parsed.
	Principal policy.Principal
	Policies  []*policy.Policy
	// SessionPolicies are the session policies of a role session created
	// with AssumeRole's Policy or PolicyArns; they limit what Policies
	// (and key policies naming the role or account) allow. nil: none.
	SessionPolicies []*policy.Policy
	// Trusted skips authorization for the caller's own account (emulator
	// mode, where every caller is the account's root and may do anything
	// in it). Cross-account calls are still decided by key policies.
	Trusted bool
	// SourceIP and SecureTransport feed aws:SourceIp and
	// aws:SecureTransport.
	SourceIP        string
	SecureTransport bool

	// Resources is filled by the service: the ARNs of the keys the call
	// acted on, for the audit record.
	Resources []string
}

// Service implements the KMS operations.
type Service struct {
	cat  *catalog.Catalog
	now  func() time.Time
	rand io.Reader
	log  *slog.Logger

	stores   *keystore.Manager // custom key stores; nil without HSM support
	clusters ClusterChecker
	hsmKeys  HSMKeys
	xks      *keystore.External // external key stores; nil without them
	quota    *keystore.Quota    // request quota per custom key store; nil: none

	policies policyCache // parsed key policies, by policy text
	lastEnv  atomic.Pointer[envKeys]

	// generate makes CreateKey's asymmetric and HMAC material.
	generate func(spec string, rand io.Reader) (private, public []byte, err error)

	pairSizes map[string]pairpool.Stock // data key pairs pre-generated, by KeyPairSpec
	pairs     *pairpool.Pool

	// replicaDelay is how long a new replica stays Creating and related
	// keys stay Updating (multiregion.go); timers completes them.
	replicaDelay time.Duration
	timers       transitionTimers

	usage *lastuse.Tracker // GetKeyLastUsage (getkeylastusage.go)
}

// Option configures a Service.
type Option func(*Service)

// WithClock sets the clock of every time the Service takes (see the
// package doc): kmsd gives the database's clock (package dbclock), tests
// move time to expire deletion windows.
func WithClock(now func() time.Time) Option { return func(s *Service) { s.now = now } }

// WithRand sets the source of randomness for key material, nonces and ids.
func WithRand(r io.Reader) Option { return func(s *Service) { s.rand = r } }

// WithKeyGenerator sets how CreateKey makes the material of asymmetric
// and HMAC keys (default material.Generate, whose shape gen has).
// Benchmarks that count instructions give one that returns a fixed RSA
// key: an RSA key generation's cost is random, so two runs of the same
// setup would not cost the same.
func WithKeyGenerator(gen func(spec string, rand io.Reader) (private, public []byte, err error)) Option {
	return func(s *Service) { s.generate = gen }
}

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(s *Service) { s.log = l } }

// PairPool gives the stock of every KeyPairSpec worth pooling; n > 0
// turns the pool on, n ≤ 0 off.
//
// RSA specs keep n pairs filled in the background: an RSA_2048 pair takes
// tens of milliseconds to make, RSA_4096 hundreds.
//
// The EC, Ed25519 and SM2 specs are made in batches (pairpool's batch
// mode): a request that finds the stock empty makes pairBatch[spec] pairs
// in one loop and stocks all but its own, so that the generator's tables
// and code are warm for all but the first (P-256 key generation inside a
// handler cost ~1 µs more above the bare generation than Encrypt's
// overhead, the cache misses of its ~88 KB table and cold code). No
// background CPU is spent on them: their pairs take tens to hundreds of
// microseconds, too little to be worth making for requests that may
// never come.
func PairPool(n int) map[string]pairpool.Stock {
	if n <= 0 {
		return nil
	}
	m := map[string]pairpool.Stock{"RSA_2048": {Size: n}, "RSA_3072": {Size: n}, "RSA_4096": {Size: n}}
	for spec, b := range pairBatch {
		m[spec] = pairpool.Stock{Size: b - 1, Batch: b}
	}
	return m
}

// pairBatch is the batch size of each spec made in batches: 1 + the pairs
// that fit in ~250 µs of one generation each (material's
// BenchmarkGeneratePair on a shared 2-core Xeon: P-256 16 µs, Ed25519
// 22 µs, SM2 27 µs, secp256k1 90 µs, P-384 135 µs), at most 16. P-521
// (330 µs a pair) is not batched: a second pair alone would cost the
// request more than that, and its generation dwarfs the overhead.
var pairBatch = map[string]int{
	"ECC_NIST_P256":         16,
	"ECC_NIST_EDWARDS25519": 12,
	"SM2":                   10,
	"ECC_SECG_P256K1":       3,
	"ECC_NIST_P384":         2,
}

// DefaultPairPoolSize is the per-spec pool size a Service has unless
// WithPairPool says otherwise: enough to absorb a short burst.
const DefaultPairPoolSize = 4

// WithPairPool sets how many data key pairs of each KeyPairSpec are kept
// pre-generated for GenerateDataKeyPair(WithoutPlaintext), and how
// (PairPool gives the default); nil or an empty map turns the pool off.
// A spec is filled only after its first use. The pairs live in memory
// only and each is used once.
func WithPairPool(sizes map[string]pairpool.Stock) Option {
	return func(s *Service) { s.pairSizes = sizes }
}

// New returns a Service over cat. Close releases what it runs in the
// background.
func New(cat *catalog.Catalog, opts ...Option) *Service {
	s := &Service{cat: cat, now: time.Now, rand: rand.Reader, log: slog.Default(), generate: material.Generate, pairSizes: PairPool(DefaultPairPoolSize)}
	for _, o := range opts {
		o(s)
	}
	if len(s.pairSizes) > 0 {
		s.pairs = pairpool.New(material.GeneratePair, s.rand, s.pairSizes)
	}
	s.usage = lastuse.New(cat, s.log, s.now())
	return s
}

// Close stops the Service's background work — the data key pair fillers,
// the transition timers and the key-usage flusher — clears the
// pre-generated private keys and writes the key uses not yet stored.
// Requests still in flight generate their pairs inline.
func (s *Service) Close() {
	s.pairs.Close()
	s.timers.stop()
	s.closeUsage()
}

// Exception constructors used across operations.
func exc(name, msg string) error { return kmsapi.NewException(name, msg) }

func validation(msg string) error {
	return exc("ValidationException", "1 validation error detected: "+msg)
}

func internal(err error) error {
	if err == nil {
		return nil
	}
	var e *kmsapi.Exception
	if errors.As(err, &e) {
		return e
	}
	return &internalError{err}
}

// internalError hides its cause from the caller; the server logs the cause.
type internalError struct{ cause error }

func (e *internalError) Error() string { return "KMSInternalException: " + e.cause.Error() }
func (e *internalError) Unwrap() error { return e.cause }

// Exception is what the caller sees for any error returned by the service.
func Exception(err error) *kmsapi.Exception {
	var e *kmsapi.Exception
	if errors.As(err, &e) {
		return e
	}
	return kmsapi.NewException("KMSInternalException", "The request failed because of an internal error. Retry the request.")
}

// resolve finds the key a KeyId parameter names, in the caller's account
// and region. Aliases are followed.
func (s *Service) resolve(ctx context.Context, c *Caller, keyID string) (*catalog.Key, error) {
	return s.resolveIn(ctx, c, keyID, false)
}

// resolveCross is resolve for the operations that may use a key of
// another account, named by its key ARN or alias ARN; the authorization
// check that follows decides whether the caller may.
func (s *Service) resolveCross(ctx context.Context, c *Caller, keyID string) (*catalog.Key, error) {
	return s.resolveIn(ctx, c, keyID, true)
}

func (s *Service) resolveIn(ctx context.Context, c *Caller, keyID string, cross bool) (*catalog.Key, error) {
	ref, err := keys.Parse(keyID)
	if err != nil {
		return nil, exc("NotFoundException", "Invalid keyId '"+keyID+"'")
	}
	account := c.Account
	if cross && ref.Account != "" && ref.Region == c.Region {
		account = ref.Account
	}
	if ref.Account != "" && (ref.Account != account || ref.Region != c.Region) {
		if ref.Kind == keys.KindAliasARN {
			return nil, exc("NotFoundException", "Alias "+keyID+" is not found.")
		}
		if ref.Region != c.Region {
			// AWS names the ARN's Region, even when a related
			// multi-Region key exists here (spec §1.3, §1.6).
			return nil, exc("NotFoundException", "Invalid arn "+ref.Region)
		}
		return nil, exc("NotFoundException", "Key '"+keyID+"' does not exist")
	}
	id := ref.ID
	if ref.Kind == keys.KindAlias || ref.Kind == keys.KindAliasARN {
		a, err := s.cat.Alias(ctx, account, c.Region, ref.AliasName)
		if errors.Is(err, catalog.ErrNotFound) {
			return nil, exc("NotFoundException", "Alias "+keys.AliasARN(c.Region, account, ref.AliasName)+" is not found.")
		}
		if err != nil {
			return nil, internal(err)
		}
		id = a.KeyID
	}
	k, err := s.cat.Key(ctx, catalog.Name(c.Region, id))
	if errors.Is(err, catalog.ErrNotFound) || (err == nil && (k.Account != account || k.Region != c.Region)) {
		return nil, exc("NotFoundException", "Key '"+keys.KeyARN(c.Region, account, id)+"' does not exist")
	}
	if err != nil {
		return nil, internal(err)
	}
	return s.view(k), nil
}

// resolveKeyID is resolve for operations that accept only a key id or key
// ARN, not an alias.
func (s *Service) resolveKeyID(ctx context.Context, c *Caller, keyID string) (*catalog.Key, error) {
	if ref, err := keys.Parse(keyID); err == nil && (ref.Kind == keys.KindAlias || ref.Kind == keys.KindAliasARN) {
		return nil, exc("NotFoundException", "Invalid keyId '"+keyID+"'")
	}
	return s.resolve(ctx, c, keyID)
}

// resolveKeyIDCross is resolveKeyID for the operations that take a key id
// or key ARN and may use a key of another account, named by its key ARN
// (GetKeyRotationStatus).
func (s *Service) resolveKeyIDCross(ctx context.Context, c *Caller, keyID string) (*catalog.Key, error) {
	if ref, err := keys.Parse(keyID); err == nil && (ref.Kind == keys.KindAlias || ref.Kind == keys.KindAliasARN) {
		return nil, exc("NotFoundException", "Invalid keyId '"+keyID+"'")
	}
	return s.resolveCross(ctx, c, keyID)
}

// usable checks that k can perform a cryptographic operation now.
func usable(k *catalog.Key) error {
	switch k.State {
	case keys.Enabled:
		if k.Origin == originExternal && !allImported(k) {
			// Never the case when settle set the state; a guard, so that
			// missing material is never an internal error.
			return exc("KMSInvalidStateException", k.ARN()+" is pending import.")
		}
		return nil
	case keys.Disabled:
		return exc("DisabledException", k.ARN()+" is disabled.")
	case keys.PendingDeletion:
		return exc("KMSInvalidStateException", k.ARN()+" is pending deletion.")
	case keys.PendingImport:
		return exc("KMSInvalidStateException", k.ARN()+" is pending import.")
	case keys.Unavailable:
		return exc("KMSInvalidStateException", k.ARN()+" is unavailable.")
	case keys.Updating:
		// Cryptography works while the primary Region changes — if the
		// key has its material: imported material deleted or expired
		// meanwhile leaves the state Updating until the change ends.
		if k.Origin == originExternal && !allImported(k) {
			return exc("KMSInvalidStateException", k.ARN()+" is pending import.")
		}
		return nil
	case keys.Creating:
		return exc("KMSInvalidStateException", k.ARN()+" is creating.")
	case keys.PendingReplicaDeletion:
		return exc("KMSInvalidStateException", k.ARN()+" is pending replica deletion.") // [U] text
	}
	return exc("KMSInvalidStateException", k.ARN()+" is in state "+string(k.State)+".")
}

// notPendingDeletion is the check of management operations that work on
// any key except one scheduled for deletion.
func notPendingDeletion(k *catalog.Key) error {
	switch k.State {
	case keys.PendingDeletion, keys.PendingReplicaDeletion:
		return usable(k)
	}
	return nil
}

func dryRun(b *bool) error {
	if b != nil && *b {
		return exc("DryRunOperationException", "The request would have succeeded, but the DryRun option is set.")
	}
	return nil
}

// checkAlgorithm checks an EncryptionAlgorithm (default SYMMETRIC_DEFAULT)
// against the key's spec, with AWS's template (spec §1.3).
func checkAlgorithm(k *catalog.Key, alg *string) error {
	a := "SYMMETRIC_DEFAULT"
	if alg != nil {
		a = *alg
	}
	if err := chinaOnly(k.Region, a); err != nil {
		return err
	}
	info, _ := keys.Spec(k.KeySpec)
	if !slices.Contains(info.Encryption, a) {
		return exc("InvalidKeyUsageException", "Algorithm "+a+" is incompatible with key spec "+k.KeySpec+".")
	}
	return nil
}

// chinaOnly refuses the SM2 algorithms outside the China Regions, as
// KeySpec SM2 is refused there (spec §2.3; [U] for AWS's answer).
func chinaOnly(region, alg string) error {
	if (alg == "SM2DSA" || alg == "SM2PKE") && !keys.InChina(region) {
		return exc("UnsupportedOperationException", alg+" is not supported in this Region.")
	}
	return nil
}

// encryptionAlgorithm is the algorithm an Encrypt-family request names,
// SYMMETRIC_DEFAULT when it names none.
func encryptionAlgorithm(alg *string) string {
	if alg == nil {
		return "SYMMETRIC_DEFAULT"
	}
	return *alg
}

// checkEncryptUsage checks that k is an encryption key; action is the IAM
// action of the operation, whose API name the message carries.
func checkEncryptUsage(k *catalog.Key, action string) error {
	return checkUsage(k, keys.EncryptDecrypt, action)
}

// checkUsage checks k's key usage, with AWS's message naming the API
// operation (spec §1.3): ReEncryptFrom and ReEncryptTo say ReEncrypt.
func checkUsage(k *catalog.Key, usage, action string) error {
	if k.KeyUsage == usage {
		return nil
	}
	op := strings.TrimPrefix(action, "kms:")
	if strings.HasPrefix(op, "ReEncrypt") {
		op = "ReEncrypt"
	}
	return exc("InvalidKeyUsageException", k.ARN()+" key usage is "+k.KeyUsage+" which is not valid for "+op+".")
}

func (s *Service) randomBytes(n int) ([]byte, error) {
	b := make([]byte, n)
	if _, err := io.ReadFull(s.rand, b); err != nil {
		return nil, internal(err)
	}
	return b, nil
}

func derefStr(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

func atoi(s string) (int, bool) {
	n := 0
	if s == "" || len(s) > 9 {
		return 0, false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return 0, false
		}
		n = n*10 + int(r-'0')
	}
	return n, true
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b [20]byte
	i := len(b)
	for n > 0 {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
	}
	return string(b[i:])
}
