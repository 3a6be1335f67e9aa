// Package xksclient is the KMS side of the External Key Store Proxy API v1: the
// HTTPS client that KMS operations use to call a customer's XKS proxy
// (xks-proxy-api.md §2.2). It signs every request with SigV4 as KMS does (service
// kms-xks-proxy, signed headers host;x-amz-date, raw path as canonical URI), gives
// each call a fixed budget (250 ms by default), validates every answer strictly
// (§2.3), and returns failures as *Error values whose Kind the mapping helpers turn
// into a ConnectionErrorCode or a KMS exception (§2.4, §2.5).
package xksclient

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"time"

	"github.com/google/uuid"
	"github.com/kmsd/kmsd/internal/sigv4"
	"github.com/kmsd/kmsd/internal/xks"
)

// DefaultTimeout is the time KMS gives the proxy per call (spec §0, §1.12).
const DefaultTimeout = 250 * time.Millisecond

// Service is the SigV4 service name of the XKS proxy API (spec §0).
const Service = "kms-xks-proxy"

// maxResponse bounds the bytes read from a proxy answer: far above any valid answer
// (8 KiB of Base64 plaintext plus small fields), small enough to be harmless.
const maxResponse = 1 << 20

// maxConnsPerProxy bounds the connections a client keeps and opens to its
// proxy.
const maxConnsPerProxy = 128

// Dialer opens TCP connections; *net.Dialer implements it.
type Dialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// Config describes one external key store's proxy, as the key store records it.
type Config struct {
	// Endpoint is XksProxyUriEndpoint: https://host, or https://host:port (a port
	// is accepted for self-hosted deployments; AWS always uses 443).
	Endpoint string
	// URIPath is XksProxyUriPath: [/prefix]/kms/xks/v<n> (spec §1.3).
	URIPath string
	// AccessKeyID and Secret are XksProxyAuthenticationCredential (spec §1.10).
	AccessKeyID string
	Secret      string
	// Region is the KMS Region, put in the SigV4 credential scope.
	Region string
	// CABundle holds PEM certificates trusted in addition to the system roots, for
	// proxies whose certificates come from a private CA.
	CABundle []byte
	// ClientCert, when set, is presented for mTLS (spec §1.10).
	ClientCert *tls.Certificate
	// Timeout is the per-call budget; 0 means DefaultTimeout.
	Timeout time.Duration
	// Dialer replaces the default *net.Dialer.
	Dialer Dialer
	// Addresses maps "host:port" (or "host", keeping the port) of the endpoint to the
	// address actually dialled, e.g. a VPC endpoint's address. TLS still verifies the
	// endpoint's host name.
	Addresses map[string]string
	// Now is the clock used for SigV4 dates; nil means time.Now.
	Now func() time.Time
}

var (
	uriPathRe = regexp.MustCompile(`^(/[a-zA-Z0-9/_-]+/kms/xks/v\d{1,2})$|^(/kms/xks/v\d{1,2})$`)
	akidRe    = regexp.MustCompile(`^[A-Z2-7]{20,30}$`)
	secretRe  = regexp.MustCompile(`^[a-zA-Z0-9/+=]{43,64}$`)
)

// Client calls one proxy. It is safe for concurrent use.
type Client struct {
	base    string // scheme://host[:port] + URIPath, the prefix of every request URL
	host    string // TLS server name
	cfg     Config
	httpc   *http.Client
	tr      *http.Transport
	signer  sigv4.Signer
	timeout time.Duration
	now     func() time.Time
}

// New validates cfg and builds a Client. Errors are configuration errors, not *Error.
func New(cfg Config) (*Client, error) {
	u, err := url.Parse(cfg.Endpoint)
	switch {
	case err != nil:
		return nil, fmt.Errorf("xksclient: endpoint: %w", err)
	case u.Scheme != "https" || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" ||
		(u.Path != "" && u.Path != "/"):
		return nil, errors.New("xksclient: endpoint must be https://host or https://host:port")
	case len(cfg.URIPath) > xks.MaxURIPathLen || !uriPathRe.MatchString(cfg.URIPath):
		return nil, errors.New("xksclient: URI path must be [/prefix]/kms/xks/v<n>, at most 128 characters of [A-Za-z0-9/_-]")
	case !akidRe.MatchString(cfg.AccessKeyID):
		return nil, errors.New("xksclient: access key id must be 20-30 characters of A-Z2-7")
	case !secretRe.MatchString(cfg.Secret):
		return nil, errors.New("xksclient: secret must be 43-64 characters of A-Za-z0-9/+=")
	case cfg.Region == "":
		return nil, errors.New("xksclient: region is required")
	case cfg.Timeout < 0:
		return nil, errors.New("xksclient: negative timeout")
	}
	roots, err := x509.SystemCertPool()
	if err != nil || roots == nil {
		roots = x509.NewCertPool()
	}
	if len(cfg.CABundle) > 0 && !roots.AppendCertsFromPEM(cfg.CABundle) {
		return nil, errors.New("xksclient: CA bundle holds no PEM certificate")
	}
	host := u.Hostname()
	tc := &tls.Config{
		MinVersion: tls.VersionTLS12, // spec §1.2
		RootCAs:    roots,
		ServerName: host,
		NextProtos: []string{"http/1.1"},
	}
	if cfg.ClientCert != nil {
		tc.Certificates = []tls.Certificate{*cfg.ClientCert}
	}
	dialer := cfg.Dialer
	if dialer == nil {
		dialer = &net.Dialer{KeepAlive: 30 * time.Second}
	}
	c := &Client{
		base:    "https://" + u.Host + cfg.URIPath,
		host:    host,
		cfg:     cfg,
		signer:  sigv4.Signer{RawPath: true, Headers: []string{}}, // exactly host;x-amz-date, as KMS signs
		timeout: cfg.Timeout,
		now:     cfg.Now,
	}
	if c.timeout == 0 {
		c.timeout = DefaultTimeout
	}
	if c.now == nil {
		c.now = time.Now
	}
	c.tr = &http.Transport{
		Proxy: nil, // KMS talks to the proxy directly, whatever HTTPS_PROXY says
		DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return dialTLS(ctx, dialer, cfg.Addresses, tc, network, addr)
		},
		// Keep as many connections as run at once: a connection closed for
		// want of an idle slot costs the next request a TLS handshake on
		// both sides, which under load pushes calls past the 250 ms budget.
		// The cap bounds what one store can open to its proxy; requests
		// beyond it wait for a connection within their budget.
		MaxIdleConnsPerHost: maxConnsPerProxy,
		MaxConnsPerHost:     maxConnsPerProxy,
		IdleConnTimeout:     60 * time.Second,
		DisableCompression:  true,
		TLSNextProto:        map[string]func(string, *tls.Conn) http.RoundTripper{}, // HTTP/1.1
	}
	c.httpc = &http.Client{
		Transport: c.tr,
		// A redirect is not an XKS answer: hand the 3xx to validation, which rejects it.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return c, nil
}

// dialTLS dials (through the address map) and completes the TLS handshake itself, so
// that a failure is attributed to the right phase: dialError or handshakeError.
func dialTLS(ctx context.Context, d Dialer, addrs map[string]string, tc *tls.Config, network, addr string) (net.Conn, error) {
	target := addr
	if a, ok := addrs[addr]; ok {
		target = a
	} else if host, port, err := net.SplitHostPort(addr); err == nil {
		if a, ok := addrs[host]; ok {
			if _, _, err := net.SplitHostPort(a); err != nil {
				a = net.JoinHostPort(a, port)
			}
			target = a
		}
	}
	raw, err := d.DialContext(ctx, network, target)
	if err != nil {
		return nil, &dialError{err}
	}
	conn := tls.Client(raw, tc)
	if err := conn.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, &handshakeError{err}
	}
	return conn, nil
}

// CloseIdleConnections closes pooled connections, e.g. after the store's
// configuration changed.
func (c *Client) CloseIdleConnections() { c.tr.CloseIdleConnections() }

// call POSTs body (JSON of req) to the API path suffix and returns the 200 answer's
// body; any other outcome is an *Error for op.
func (c *Client) call(ctx context.Context, op, suffix string, req any) ([]byte, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, &Error{Op: op, Kind: KindInternal, Err: err}
	}
	callCtx, cancel := context.WithTimeoutCause(ctx, c.timeout, errBudget)
	defer cancel()
	hreq, err := http.NewRequestWithContext(callCtx, http.MethodPost, c.base+suffix, bytes.NewReader(body))
	if err != nil {
		return nil, &Error{Op: op, Kind: KindInternal, Err: err}
	}
	hreq.Header.Set("Content-Type", "application/json")
	// A nil Idempotency-Key is not sent but lets net/http retry the request on a fresh
	// connection when a pooled one turns out to be closed by the proxy (e.g. after a
	// proxy restart). Every XKS call is safe to repeat: none changes proxy state.
	hreq.Header["Idempotency-Key"] = nil
	c.signer.Sign(hreq, body, c.cfg.AccessKeyID, c.cfg.Secret, "", c.cfg.Region, Service, c.now())
	resp, err := c.httpc.Do(hreq)
	if err != nil {
		return nil, classifyTransport(op, callCtx, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse+1))
	if err != nil {
		return nil, classifyTransport(op, callCtx, err)
	}
	if callCtx.Err() != nil {
		// net/http returns a response that races the context's end rather than the
		// cancellation. Such an answer may be the proxy's reaction to the closed
		// connection (an empty 200), so a call whose caller gave up or whose budget
		// ran out ends as canceled or timed out, whatever came back.
		return nil, classifyTransport(op, callCtx, context.Cause(callCtx))
	}
	if len(data) > maxResponse {
		return nil, invalid(op, resp.StatusCode, errors.New("response body too large"))
	}
	if resp.StatusCode != http.StatusOK {
		return nil, errorAnswer(op, resp.StatusCode, data)
	}
	return data, nil
}

// errorAnswer classifies a non-200 answer (spec §1.9). A known error name with its
// spec status is a proxy error. A 404 without an XKS error body is what a wrong
// XksProxyUriPath looks like behind an ordinary web server, so it counts as
// InvalidUriPathException. Anything else cannot be interpreted.
func errorAnswer(op string, status int, data []byte) *Error {
	var er xks.ErrorResponse
	if err := json.Unmarshal(data, &er); err != nil || er.ErrorName == "" {
		if status == http.StatusNotFound {
			return &Error{Op: op, Kind: KindProxy, Name: xks.InvalidURIPathException, Status: status,
				Err: errors.New("HTTP 404 without an XKS error body")}
		}
		return invalid(op, status, fmt.Errorf("HTTP %d without an XKS error body", status))
	}
	msg := xks.SanitizeMessage(er.ErrorMessage)
	if !knownNames[er.ErrorName] || xks.Status(er.ErrorName) != status {
		return &Error{Op: op, Kind: KindInvalidResponse, Status: status, ProxyMessage: msg,
			Err: fmt.Errorf("error name %q with HTTP %d is not in the spec's table", xks.SanitizeMessage(er.ErrorName), status)}
	}
	return &Error{Op: op, Kind: KindProxy, Name: er.ErrorName, Status: status, ProxyMessage: msg}
}

// Meta is what KMS knows about the request that causes a proxy call; the client
// turns it into requestMetadata with the fields each API takes (spec §1.4).
type Meta struct {
	Principal  string // awsPrincipalArn (key APIs)
	Operation  string // kmsOperation; empty means the API's usual caller
	RequestID  string // kmsRequestId; empty means a fresh UUID
	KeyARN     string // kmsKeyArn (Encrypt, Decrypt)
	ViaService string // kmsViaService (Encrypt, Decrypt)
	SourceVPC  string // awsSourceVpc (key APIs)
	SourceVPCE string // awsSourceVpce (key APIs)
}

// Operations KMS names in kmsOperation (spec §1.4).
const (
	OpKmsHealthCheck        = "KmsHealthCheck"
	OpCreateCustomKeyStore  = "CreateCustomKeyStore"
	OpConnectCustomKeyStore = "ConnectCustomKeyStore"
	OpUpdateCustomKeyStore  = "UpdateCustomKeyStore"
	OpCreateKey             = "CreateKey"
	OpEncrypt               = "Encrypt"
	OpDecrypt               = "Decrypt"
)

// apiKind says which requestMetadata fields an API carries (§1.4 table).
type apiKind int

const (
	apiHealth apiKind = iota
	apiMetadata
	apiCrypto
)

// requestMetadata builds the metadata for an API, failing (KindInternal) when a field
// the spec requires is missing: the proxy would answer ValidationException, which
// would wrongly be blamed on the proxy.
func (m Meta) requestMetadata(op string, api apiKind, defaultOp string) (*xks.RequestMetadata, error) {
	rm := &xks.RequestMetadata{KMSOperation: m.Operation, KMSRequestID: m.RequestID}
	if rm.KMSOperation == "" {
		rm.KMSOperation = defaultOp
	}
	if rm.KMSRequestID == "" {
		rm.KMSRequestID = uuid.NewString()
	}
	if api == apiHealth {
		return rm, nil
	}
	if m.Principal == "" {
		return nil, &Error{Op: op, Kind: KindInternal, Err: errors.New("awsPrincipalArn is required")}
	}
	rm.AWSPrincipalARN, rm.AWSSourceVPC, rm.AWSSourceVPCE = m.Principal, m.SourceVPC, m.SourceVPCE
	if api == apiCrypto {
		if m.KeyARN == "" {
			return nil, &Error{Op: op, Kind: KindInternal, Err: errors.New("kmsKeyArn is required")}
		}
		rm.KMSKeyARN, rm.KMSViaService = m.KeyARN, m.ViaService
	}
	return rm, nil
}

// keyPath checks an externalKeyId and returns the API path suffix for it.
func keyPath(op, keyID string) (string, error) {
	if !xks.ValidKeyID(keyID) {
		return "", &Error{Op: op, Kind: KindInternal, Err: errors.New("invalid external key id")}
	}
	return "/keys/" + keyID + "/" + op, nil
}
