// Package xksserver is the XKS proxy: an http.Handler serving the XKS Proxy API v1
// (GetHealthStatus, GetKeyMetadata, Encrypt, Decrypt) for one or more logical key
// stores, each under its own URI path prefix with its own SigV4 credentials, key
// manager, secondary authorization and request quota. TLS is set up by tls.go; the
// key managers live in internal/xks/keyman.
package xksserver

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kmsd/kmsd/internal/sigv4"
	"github.com/kmsd/kmsd/internal/xks"
	"github.com/kmsd/kmsd/internal/xks/keyman"
)

// Service is the SigV4 service name of the XKS Proxy API.
const Service = "kms-xks-proxy"

// StoreConfig is one logical key store.
type StoreConfig struct {
	// Prefix is the URI path prefix: the API is served under Prefix+"/kms/xks/v1".
	// Empty, or "/" followed by [A-Za-z0-9/_-].
	Prefix string
	// Manager holds the keys; ManagerName names it in logs and metrics.
	Manager     keyman.Manager
	ManagerName string
	// EKMTimeout bounds the key manager work of one request (default 200ms, inside
	// the 250ms KMS allows per call); when it passes the answer is
	// DependencyTimeoutException.
	EKMTimeout time.Duration
	// CiphertextMetadata, at most 20 bytes, is returned with every Encrypt and bound
	// into the AAD. Empty by default: ciphertexts then use the spec's construction
	// exactly, so any spec-conformant proxy over the same key can decrypt them.
	CiphertextMetadata []byte
	Policy             Policy
}

// Options configure a Server.
type Options struct {
	Stores []StoreConfig
	Limits xks.Limits // zero: xks.DefaultLimits()
	// Region, when set, is the only region accepted in credential scopes.
	Region string
	// FleetSize is xksProxyFleetSize in health answers (default 1).
	FleetSize int
	Version   string
	// HealthTTL is how long a deep health result is reused (default 10s, at most 60s).
	HealthTTL time.Duration
	// HealthWait is how long a health request waits for a fresh check before
	// answering from the cache (default 150ms).
	HealthWait time.Duration
	Logger     *slog.Logger
	Registerer prometheus.Registerer // nil: no metrics
	Now        func() time.Time
}

type store struct {
	StoreConfig
	policy   atomic.Pointer[Policy]
	verifier *sigv4.Verifier
	bucket   bucket
	health   *healthCache
}

// Secret implements sigv4.SecretLookup with the store's current credentials.
func (s *store) Secret(akid string) (string, bool) { return s.policy.Load().Secret(akid) }

// Server is the XKS proxy handler.
type Server struct {
	opts    Options
	stores  map[string]*store
	health  map[keyman.Manager]*healthCache
	metrics *metrics
	log     *slog.Logger
}

// New validates the options and builds a Server.
func New(opts Options) (*Server, error) {
	if opts.Limits == (xks.Limits{}) {
		opts.Limits = xks.DefaultLimits()
	}
	if err := opts.Limits.Validate(); err != nil {
		return nil, err
	}
	if opts.FleetSize <= 0 {
		opts.FleetSize = 1
	}
	if opts.HealthTTL <= 0 {
		opts.HealthTTL = 10 * time.Second
	}
	if opts.HealthTTL > time.Minute {
		return nil, errors.New("health cache TTL must be at most one minute")
	}
	if opts.HealthWait <= 0 {
		opts.HealthWait = 150 * time.Millisecond
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Version == "" {
		opts.Version = "dev"
	}
	if len(opts.Stores) == 0 {
		return nil, errors.New("at least one key store is required")
	}
	s := &Server{opts: opts, stores: map[string]*store{}, health: map[keyman.Manager]*healthCache{},
		log: opts.Logger, metrics: newMetrics(opts.Registerer, opts.Version)}
	for _, sc := range opts.Stores {
		if !xks.ValidPrefix(sc.Prefix) {
			return nil, fmt.Errorf("key store prefix %q: empty or /[A-Za-z0-9/_-]… without a trailing slash, at most %d characters with /kms/xks/v1", sc.Prefix, xks.MaxURIPathLen)
		}
		if _, dup := s.stores[sc.Prefix]; dup {
			return nil, fmt.Errorf("key store prefix %q configured twice", sc.Prefix)
		}
		if sc.Manager == nil {
			return nil, fmt.Errorf("key store %q has no key manager", sc.Prefix)
		}
		if len(sc.CiphertextMetadata) > xks.MaxCiphertextMetadata {
			return nil, fmt.Errorf("key store %q: ciphertext metadata longer than 20 bytes", sc.Prefix)
		}
		if sc.EKMTimeout <= 0 {
			sc.EKMTimeout = 200 * time.Millisecond
		}
		if sc.ManagerName == "" {
			sc.ManagerName = "default"
		}
		st := &store{StoreConfig: sc}
		if err := st.setPolicy(sc.Policy, opts.Now()); err != nil {
			return nil, fmt.Errorf("key store %q: %w", sc.Prefix, err)
		}
		// AWS KMS signs only host and x-amz-date on its requests to a proxy.
		st.verifier = &sigv4.Verifier{Service: Service, Lookup: st, Now: opts.Now, RawPath: true, Headers: sigv4.RequireHostDate}
		hc, ok := s.health[sc.Manager]
		if !ok {
			hc = &healthCache{manager: sc.Manager, name: sc.ManagerName}
			s.health[sc.Manager] = hc
		}
		st.health = hc
		s.stores[sc.Prefix] = st
	}
	return s, nil
}

func (st *store) setPolicy(p Policy, now time.Time) error {
	if err := p.Validate(); err != nil {
		return err
	}
	p.Credentials = append([]Credential(nil), p.Credentials...)
	st.policy.Store(&p)
	st.bucket.configure(p.RateLimit, p.Burst, now)
	return nil
}

// SetPolicy replaces a key store's policy (credentials, keys, rules, quota) while
// requests are served; a request sees either the old or the new policy whole.
func (s *Server) SetPolicy(prefix string, p Policy) error {
	st, ok := s.stores[prefix]
	if !ok {
		return fmt.Errorf("no key store with prefix %q", prefix)
	}
	if err := st.setPolicy(p, s.opts.Now()); err != nil {
		return fmt.Errorf("key store %q: %w", prefix, err)
	}
	return nil
}

// Prefixes lists the configured key store prefixes.
func (s *Server) Prefixes() []string {
	out := make([]string, 0, len(s.stores))
	for p := range s.stores {
		out = append(out, p)
	}
	return out
}

// route splits an escaped request path into key store, operation and key id.
func (s *Server) route(path string) (st *store, op, keyID string, ok bool) {
	if prefix, found := strings.CutSuffix(path, xks.HealthSuffix); found {
		st = s.stores[prefix]
		return st, xks.OpHealth, "", st != nil
	}
	i := strings.LastIndexByte(path, '/')
	if i < 0 {
		return nil, "", "", false
	}
	op = path[i+1:]
	if op != xks.OpMetadata && op != xks.OpEncrypt && op != xks.OpDecrypt {
		return nil, "", "", false
	}
	rest := path[:i]
	j := strings.LastIndexByte(rest, '/')
	if j < 0 {
		return nil, "", "", false
	}
	keyID, rest = rest[j+1:], rest[:j+1]
	prefix, found := strings.CutSuffix(rest, xks.KeysSegment)
	if !found || !xks.ValidKeyID(keyID) {
		return nil, "", "", false
	}
	st = s.stores[prefix]
	return st, op, keyID, st != nil
}

// request carries what the access log needs about one request.
type request struct {
	store    *store
	op       string
	keyID    string
	md       *xks.RequestMetadata
	akid     string
	denyRule string
	cause    error
}

// ServeHTTP serves the API and the load-balancer health paths.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	path := r.URL.EscapedPath()
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		switch path {
		case "/ping":
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			io.WriteString(w, "pong from xks-proxy "+s.opts.Version+"\n")
			return
		case "/healthz":
			s.ServeReadiness(w, r)
			return
		}
	}
	st, op, keyID, ok := s.route(path)
	rq := &request{store: st, op: op, keyID: keyID}
	var resp any
	var xerr *xks.Error
	switch {
	case !ok || len(r.RequestURI) > xks.MaxURILen:
		xerr = xks.Errorf(xks.InvalidURIPathException, "no XKS API at this path")
		rq.op = "unknown"
	case r.Method != http.MethodPost:
		w.Header().Set("Allow", http.MethodPost)
		s.writeJSON(w, http.StatusMethodNotAllowed, xks.ErrorResponse{ErrorName: xks.UnsupportedOperationException,
			ErrorMessage: "method " + xks.SanitizeMessage(r.Method) + " not allowed; the XKS API uses POST"})
		s.finish(r, rq, http.StatusMethodNotAllowed, "MethodNotAllowed", start)
		return
	default:
		resp, xerr = s.serve(r, rq)
	}
	if xerr != nil {
		s.writeJSON(w, xerr.Status(), xerr.Response())
		s.finish(r, rq, xerr.Status(), xerr.Name, start)
		return
	}
	s.writeJSON(w, http.StatusOK, resp)
	s.finish(r, rq, http.StatusOK, "OK", start)
}

func (s *Server) writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		status, body = http.StatusInternalServerError, []byte(`{"errorName":"InternalException"}`)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", fmt.Sprint(len(body)))
	w.WriteHeader(status)
	w.Write(body)
}

// serve authenticates, throttles, decodes and dispatches one API request.
func (s *Server) serve(r *http.Request, rq *request) (any, *xks.Error) {
	st := rq.store
	limits := s.opts.Limits
	body, err := io.ReadAll(io.LimitReader(r.Body, limits.MaxBody()+1))
	if err != nil {
		return nil, xks.Errorf(xks.ValidationException, "cannot read request body")
	}
	if int64(len(body)) > limits.MaxBody() {
		return nil, xks.Errorf(xks.UnsupportedOperationException, "request body larger than %d bytes", limits.MaxBody())
	}
	if xerr := s.authenticate(r, body, rq); xerr != nil {
		return nil, xerr
	}
	policy := st.policy.Load()
	if xerr := checkSource(r, rq, policy); xerr != nil { // network rule: every API, health too
		return nil, xerr
	}
	if !st.bucket.allow(s.opts.Now()) {
		return nil, xks.Errorf(xks.ThrottlingException, "request quota of this key store exceeded")
	}
	if policy.Disabled {
		return nil, xks.Errorf(xks.InvalidStateException, "key store is disabled")
	}
	switch rq.op {
	case xks.OpHealth:
		req, err := xks.ParseHealthRequest(body)
		if err != nil {
			return nil, asXKS(err)
		}
		rq.md = req.RequestMetadata
		return s.healthResponse(r.Context(), st), nil
	case xks.OpMetadata:
		req, err := xks.ParseMetadataRequest(body)
		if err != nil {
			return nil, asXKS(err)
		}
		rq.md = req.RequestMetadata
		return s.keyMetadata(r.Context(), rq, policy)
	case xks.OpEncrypt:
		req, err := xks.ParseEncryptRequest(body, limits)
		if err != nil {
			return nil, asXKS(err)
		}
		rq.md = req.RequestMetadata
		return s.encrypt(r.Context(), rq, policy, req)
	case xks.OpDecrypt:
		req, err := xks.ParseDecryptRequest(body, limits)
		if err != nil {
			return nil, asXKS(err)
		}
		rq.md = req.RequestMetadata
		return s.decrypt(r.Context(), rq, policy, req)
	}
	return nil, xks.Errorf(xks.InvalidURIPathException, "no XKS API at this path")
}

func asXKS(err error) *xks.Error {
	var xe *xks.Error
	if errors.As(err, &xe) {
		return xe
	}
	return xks.Errorf(xks.ValidationException, "invalid request")
}

// authenticate verifies the SigV4 signature: the Authorization header (not a
// presigned query), service kms-xks-proxy, the region if one is configured, one of
// the store's credentials, the raw path as canonical URI, the body as received.
func (s *Server) authenticate(r *http.Request, body []byte, rq *request) *xks.Error {
	fail := func(cause error) *xks.Error {
		rq.cause = cause
		return xks.Errorf(xks.AuthenticationFailedException, "request signature could not be verified")
	}
	res, err := rq.store.verifier.Verify(r, body)
	if err != nil {
		var se *sigv4.Error
		if errors.As(err, &se) && se.Reason != "" {
			return fail(fmt.Errorf("%s: %s (%s)", se.Code, se.Message, se.Reason))
		}
		return fail(err)
	}
	rq.akid = res.AccessKeyID
	if res.Presigned {
		return fail(errors.New("presigned requests are not accepted"))
	}
	if s.opts.Region != "" && subtle.ConstantTimeCompare([]byte(res.Region), []byte(s.opts.Region)) != 1 {
		return fail(fmt.Errorf("credential scope region %q is not %q", res.Region, s.opts.Region))
	}
	return nil
}

// managerError maps key manager failures to XKS errors. The message is generic; the
// cause goes to the log only.
func managerError(rq *request, err error) *xks.Error {
	rq.cause = err
	switch {
	case errors.Is(err, keyman.ErrKeyNotFound):
		return xks.Errorf(xks.KeyNotFoundException, "external key not found")
	case errors.Is(err, keyman.ErrInvalidCiphertext):
		return xks.Errorf(xks.InvalidCiphertextException, "ciphertext, IV, tag, AAD or metadata do not authenticate")
	case errors.Is(err, keyman.ErrKeyUsage):
		return xks.Errorf(xks.InvalidKeyUsageException, "the key manager does not permit this operation with this key")
	case errors.Is(err, keyman.ErrKeyDisabled):
		return xks.Errorf(xks.InvalidStateException, "external key is disabled")
	case errors.Is(err, keyman.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		return xks.Errorf(xks.DependencyTimeoutException, "the key manager did not answer in time")
	default:
		return xks.Errorf(xks.InternalException, "the key manager failed")
	}
}

// authorizeKey applies secondary authorization, the key allow-list, and looks the
// key up, checking its state. Health never comes here.
func (s *Server) authorizeKey(ctx context.Context, rq *request, p *Policy) (keyman.Key, *xks.Error) {
	ok, rule := p.authorize(rq.md, rq.keyID)
	rq.denyRule = rule
	if !ok {
		return keyman.Key{}, xks.Errorf(xks.AccessDeniedException, "denied by the proxy's authorization rules")
	}
	if !p.allowsKey(rq.keyID) {
		return keyman.Key{}, managerError(rq, fmt.Errorf("%w: %s is not in this key store's key list", keyman.ErrKeyNotFound, rq.keyID))
	}
	k, err := rq.store.Manager.Describe(ctx, rq.keyID)
	if err != nil {
		return keyman.Key{}, managerError(rq, err)
	}
	if p.keyDisabled(rq.keyID) {
		k.Enabled = false
	}
	return k, nil
}

func (s *Server) keyMetadata(ctx context.Context, rq *request, p *Policy) (any, *xks.Error) {
	ctx, cancel := context.WithTimeout(ctx, rq.store.EKMTimeout)
	defer cancel()
	k, xerr := s.authorizeKey(ctx, rq, p)
	if xerr != nil {
		return nil, xerr
	}
	resp := xks.MetadataResponse{KeySpec: k.Spec, KeyUsage: k.Usage, KeyStatus: xks.StatusEnabled}
	if resp.KeyUsage == nil {
		resp.KeyUsage = []string{}
	}
	if len(resp.KeyUsage) > 10 {
		resp.KeyUsage = resp.KeyUsage[:10]
	}
	if !k.Enabled {
		resp.KeyStatus = xks.StatusDisabled
	}
	return resp, nil
}

// usable checks state, spec and usage before any cryptography.
func usable(rq *request, k keyman.Key, usage string) *xks.Error {
	switch {
	case !k.Enabled:
		return xks.Errorf(xks.InvalidStateException, "external key is disabled")
	case k.Spec != xks.KeySpecAES256:
		return xks.Errorf(xks.InvalidKeyUsageException, "external key is %s, not AES_256", k.Spec)
	case !k.Can(usage):
		return xks.Errorf(xks.InvalidKeyUsageException, "external key does not permit %s", usage)
	}
	return nil
}

func (s *Server) encrypt(ctx context.Context, rq *request, p *Policy, req *xks.EncryptRequest) (any, *xks.Error) {
	ctx, cancel := context.WithTimeout(ctx, rq.store.EKMTimeout)
	defer cancel()
	k, xerr := s.authorizeKey(ctx, rq, p)
	if xerr != nil {
		return nil, xerr
	}
	if xerr := usable(rq, k, keyman.UsageEncrypt); xerr != nil {
		return nil, xerr
	}
	if req.CiphertextDataIntegrityValueAlgorithm != "" && !k.Can(keyman.UsageDecrypt) {
		// A CDIV is the proxy's promise that decrypting exactly these values
		// will succeed (spec §1.6); without DECRYPT the trial decrypt that
		// backs it cannot run, so no unverified CDIV is handed out, and
		// nothing is encrypted.
		return nil, xks.Errorf(xks.InvalidKeyUsageException,
			"external key does not permit DECRYPT, so the trial decrypt behind ciphertextDataIntegrityValue cannot be done")
	}
	meta := rq.store.CiphertextMetadata
	aad, err := xks.EffectiveAAD(req.AdditionalAuthenticatedData, meta)
	if err != nil {
		return nil, xks.Errorf(xks.UnsupportedOperationException, "additionalAuthenticatedData too long")
	}
	sealed, err := rq.store.Manager.Encrypt(ctx, rq.keyID, req.Plaintext, aad)
	if err != nil {
		return nil, managerError(rq, err)
	}
	resp := xks.EncryptResponse{Ciphertext: sealed.Ciphertext, InitializationVector: sealed.IV,
		AuthenticationTag: sealed.Tag}
	if len(meta) > 0 {
		resp.CiphertextMetadata = meta
	}
	if req.CiphertextDataIntegrityValueAlgorithm != "" {
		// Spec order: CDIV over the EKM's output first, then a trial decrypt of
		// exactly that output, so corruption in between cannot hide.
		resp.CiphertextDataIntegrityValue = xks.CDIV(req.AdditionalAuthenticatedData, meta, sealed.IV, sealed.Ciphertext, sealed.Tag)
		pt, err := rq.store.Manager.Decrypt(ctx, rq.keyID, sealed.IV, sealed.Ciphertext, sealed.Tag, aad)
		if err != nil {
			return nil, managerError(rq, fmt.Errorf("trial decrypt: %w", err))
		}
		if !bytes.Equal(pt, req.Plaintext) {
			return nil, managerError(rq, errors.New("trial decrypt returned different plaintext"))
		}
	}
	return resp, nil
}

func (s *Server) decrypt(ctx context.Context, rq *request, p *Policy, req *xks.DecryptRequest) (any, *xks.Error) {
	ctx, cancel := context.WithTimeout(ctx, rq.store.EKMTimeout)
	defer cancel()
	k, xerr := s.authorizeKey(ctx, rq, p)
	if xerr != nil {
		return nil, xerr
	}
	if xerr := usable(rq, k, keyman.UsageDecrypt); xerr != nil {
		return nil, xerr
	}
	aad, err := xks.EffectiveAAD(req.AdditionalAuthenticatedData, req.CiphertextMetadata)
	if err != nil {
		return nil, xks.Errorf(xks.UnsupportedOperationException, "additionalAuthenticatedData too long")
	}
	pt, err := rq.store.Manager.Decrypt(ctx, rq.keyID, req.InitializationVector, req.Ciphertext, req.AuthenticationTag, aad)
	if err != nil {
		return nil, managerError(rq, err)
	}
	return xks.DecryptResponse{Plaintext: pt}, nil
}

// finish writes the access log line and the metrics of one request. It never logs
// bodies: plaintext, ciphertext and AAD stay out of logs.
func (s *Server) finish(r *http.Request, rq *request, status int, outcome string, start time.Time) {
	elapsed := time.Since(start)
	prefix := "(none)"
	if rq.store != nil {
		prefix = rq.store.Prefix
	}
	s.metrics.observe(prefix, rq.op, outcome, elapsed)
	level := slog.LevelInfo
	if status >= 500 {
		level = slog.LevelError
	} else if status >= 400 {
		level = slog.LevelWarn
	}
	if !s.log.Enabled(r.Context(), level) {
		return
	}
	attrs := make([]slog.Attr, 0, 16)
	attrs = append(attrs, slog.String("prefix", prefix), slog.String("operation", rq.op),
		slog.String("outcome", outcome), slog.Int("status", status),
		slog.Float64("latency_ms", float64(elapsed.Microseconds())/1000), slog.String("remote", r.RemoteAddr))
	if rq.keyID != "" {
		attrs = append(attrs, slog.String("key", rq.keyID))
	}
	if rq.akid != "" {
		attrs = append(attrs, slog.String("access_key_id", rq.akid))
	}
	if md := rq.md; md != nil {
		attrs = append(attrs, slog.String("kmsRequestId", md.KMSRequestID), slog.String("kmsOperation", md.KMSOperation))
		if md.AWSPrincipalARN != "" {
			attrs = append(attrs, slog.String("principal", md.AWSPrincipalARN))
		}
		if md.KMSKeyARN != "" {
			attrs = append(attrs, slog.String("kmsKeyArn", md.KMSKeyARN))
		}
		if md.AWSSourceVPC != "" || md.AWSSourceVPCE != "" {
			attrs = append(attrs, slog.String("awsSourceVpc", md.AWSSourceVPC), slog.String("awsSourceVpce", md.AWSSourceVPCE))
		}
		if md.KMSViaService != "" {
			attrs = append(attrs, slog.String("kmsViaService", md.KMSViaService))
		}
	}
	if rq.denyRule != "" && outcome == xks.AccessDeniedException {
		attrs = append(attrs, slog.String("rule", rq.denyRule))
	}
	if rq.cause != nil {
		attrs = append(attrs, slog.String("cause", rq.cause.Error()))
	}
	s.log.LogAttrs(r.Context(), level, "xks request", attrs...)
}

// bucket is a token bucket; a zero rate means unlimited.
type bucket struct {
	mu     sync.Mutex
	rate   float64
	burst  float64
	tokens float64
	last   time.Time
}

func (b *bucket) configure(rate float64, burst int, now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.rate, b.burst = rate, float64(burst)
	if b.burst <= 0 {
		b.burst = max(rate, 1)
	}
	b.tokens, b.last = b.burst, now
}

func (b *bucket) allow(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.rate <= 0 {
		return true
	}
	if d := now.Sub(b.last).Seconds(); d > 0 {
		b.tokens = min(b.burst, b.tokens+d*b.rate)
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
