package xksclient

import (
	"errors"

	"github.com/kmsd/kmsd/internal/xks"
)

// ConnectionErrorCode values of external key stores (kms-custom-key-stores.md §8.1,
// §8.3; xks-proxy-api.md §2.5).
const (
	CodeInternalError           = "INTERNAL_ERROR"
	CodeNetworkErrors           = "NETWORK_ERRORS"
	CodeInvalidCredentials      = "INVALID_CREDENTIALS"
	CodeAccessDenied            = "XKS_PROXY_ACCESS_DENIED"
	CodeInvalidConfiguration    = "XKS_PROXY_INVALID_CONFIGURATION"
	CodeInvalidResponse         = "XKS_PROXY_INVALID_RESPONSE"
	CodeInvalidTLSConfiguration = "XKS_PROXY_INVALID_TLS_CONFIGURATION"
	CodeNotReachable            = "XKS_PROXY_NOT_REACHABLE"
	CodeTimedOut                = "XKS_PROXY_TIMED_OUT"
)

// KMS exception names the mapping helpers return.
const (
	ExcInternal                   = "KMSInternalException"
	ExcInvalidState               = "KMSInvalidStateException"
	ExcCustomKeyStoreInvalidState = "CustomKeyStoreInvalidStateException"
	ExcXksKeyNotFound             = "XksKeyNotFoundException"
	ExcXksKeyInvalidConfiguration = "XksKeyInvalidConfigurationException"
	ExcProxyUriUnreachable        = "XksProxyUriUnreachableException"
	ExcProxyIncorrectCredential   = "XksProxyIncorrectAuthenticationCredentialException"
	ExcProxyInvalidResponse       = "XksProxyInvalidResponseException"
	ExcProxyInvalidConfiguration  = "XksProxyInvalidConfigurationException"
)

// Message gists of §2.4, worded for KMS callers.
const (
	msgGistInternal          = "An internal error occurred while KMS called the external key store proxy."
	msgGistInvalidResponse   = "KMS cannot interpret the response from the external key store proxy."
	msgGistUnreachable       = "KMS cannot communicate with the external key store proxy."
	msgGistTLS               = "KMS cannot establish a TLS connection to the external key store proxy. Check its certificate."
	msgGistTimeout           = "The external key store proxy did not respond to KMS in the time allotted. Retry the request."
	msgGistEKMUnavailable    = "The external key store proxy reports that every external key manager is unavailable."
	msgGistKeyConfiguration  = "The external key does not meet the requirements of a KMS key (AES_256, ENABLED, ENCRYPT and DECRYPT)."
	msgGistAuthentication    = "The external key store proxy rejected KMS's authentication credential. Verify the credential."
	msgGistAccessDenied      = "The external key store proxy denied access to the operation."
	msgGistKeyNotFound       = "The external key store proxy did not find the external key."
	msgGistURIPath           = "The external key store proxy rejected the request because of an invalid URI path. Verify XksProxyUriPath."
	msgGistKeyState          = "The external key is not enabled in the external key manager."
	msgGistCiphertext        = "The ciphertext or encryption context is corrupted, missing, or otherwise invalid."
	msgGistKeyUsage          = "The external key does not support the requested operation."
	msgGistUnsupported       = "The external key store proxy does not support the requested operation."
	msgGistDependencyTimeout = "The external key store proxy timed out waiting for the external key manager. Retry the request."
	msgGistThrottled         = "The external key store proxy rejected the request because the request rate is too high. Retry later."
	msgGistProxyInternal     = "The external key store proxy could not complete the request with the external key manager."
	msgGistCanceled          = "The request to the external key store proxy was abandoned."
	msgGistCDIV              = "The ciphertext returned by the external key store proxy is corrupt."
)

// outcome is one row of the mapping table: everything KMS does with one proxy outcome.
// Rows are keyed by Kind, and for KindProxy by error name (spec §1.9).
type outcome struct {
	code      string // ConnectionErrorCode (health; §2.5, §8.3, §10.7)
	store     string // Create/UpdateCustomKeyStore exception (§2.4, custom-key-stores §5.1)
	createKey string // CreateKey exception (§2.4, §10.7)
	crypto    string // Encrypt, Decrypt, GenerateDataKey*, ReEncrypt (§2.4)
	message   string // caller-safe message gist (§2.4 last column)
	retryable bool   // §2.4: throttling, dependency timeout, internal, unreachable, timeouts
}

// kindTable maps the kinds that are not a proxy error name.
var kindTable = map[Kind]outcome{
	// Our own failure: INTERNAL_ERROR / KMSInternalException (§8.1, custom-key-stores §5.1).
	KindInternal: {CodeInternalError, ExcInternal, ExcInternal, ExcInternal, msgGistInternal, true},
	// The caller gave up: not the proxy's fault; KMS-internal, retryable.
	KindCanceled: {CodeInternalError, ExcInternal, ExcInternal, ExcInternal, msgGistCanceled, true},
	// §2.4 "TCP connect fails"; §2.5 / §8.3 XKS_PROXY_NOT_REACHABLE.
	KindUnreachable: {CodeNotReachable, ExcProxyUriUnreachable, ExcCustomKeyStoreInvalidState, ExcInvalidState, msgGistUnreachable, true},
	// §2.4 "TLS handshake fails": Create/Update get XksProxyUriUnreachableException (the
	// spec's column; the dev guide groups TLS under InvalidConfiguration), Connect gets
	// XKS_PROXY_INVALID_TLS_CONFIGURATION (§2.5, §8.3, §10.7).
	KindTLS: {CodeInvalidTLSConfiguration, ExcProxyUriUnreachable, ExcCustomKeyStoreInvalidState, ExcInvalidState, msgGistTLS, false},
	// §2.4 "socket timeout (250 ms)"; §8.3 XKS_PROXY_TIMED_OUT.
	KindTimeout: {CodeTimedOut, ExcProxyUriUnreachable, ExcCustomKeyStoreInvalidState, ExcInvalidState, msgGistTimeout, true},
	// A connection that broke after it was made: §8.1 NETWORK_ERRORS; for Create/Update
	// the proxy could not be reached through the call (§5.1 "TCP/TLS failure").
	KindNetwork: {CodeNetworkErrors, ExcProxyUriUnreachable, ExcCustomKeyStoreInvalidState, ExcInvalidState, msgGistUnreachable, true},
	// §2.4 "malformed/non-JSON response", §2.3 response validation; §8.3
	// XKS_PROXY_INVALID_RESPONSE. For crypto operations this includes "proxy returns a
	// ciphertext KMS then rejects" (CDIV mismatch).
	KindInvalidResponse: {CodeInvalidResponse, ExcProxyInvalidResponse, ExcCustomKeyStoreInvalidState, ExcInvalidState, msgGistInvalidResponse, false},
	// §1.8 / §2.4 last row / §8.3: every EKM UNAVAILABLE → XksProxyUriUnreachableException
	// and XKS_PROXY_NOT_REACHABLE. Only health reports it; the other columns are our
	// choice for completeness.
	KindEKMUnavailable: {CodeNotReachable, ExcProxyUriUnreachable, ExcCustomKeyStoreInvalidState, ExcInvalidState, msgGistEKMUnavailable, true},
	// §2.1 CreateKey: wrong key spec, not ENABLED, usage lacking ENCRYPT+DECRYPT →
	// XksKeyInvalidConfigurationException. Only CheckKey reports it.
	KindKeyConfiguration: {CodeInvalidResponse, ExcProxyInvalidResponse, ExcXksKeyInvalidConfiguration, ExcInvalidState, msgGistKeyConfiguration, false},
}

// nameTable maps the proxy's error names (§1.9) following xks-proxy-api.md §2.4 and
// kms-custom-key-stores.md §5.1, §8.3, §10.7. Where the spec tables have "–" (the
// outcome cannot happen for that KMS operation, e.g. KeyNotFoundException from
// GetHealthStatus) we pick the closest documented exception and say so.
var nameTable = map[string]outcome{
	// §2.4: Create/Update → XksProxyInvalidResponseException; §10.7 Connect →
	// XKS_PROXY_INVALID_RESPONSE; CreateKey → CustomKeyStoreInvalidStateException.
	xks.ValidationException: {CodeInvalidResponse, ExcProxyInvalidResponse, ExcCustomKeyStoreInvalidState, ExcInvalidState, msgGistInvalidResponse, false},
	// §2.4: CreateKey → XksKeyInvalidConfigurationException. Health "–": the proxy says
	// the logical key store is disabled, a proxy configuration matter (our choice).
	xks.InvalidStateException: {CodeInvalidConfiguration, ExcProxyInvalidConfiguration, ExcXksKeyInvalidConfiguration, ExcInvalidState, msgGistKeyState, false},
	// §2.4: crypto (Decrypt, ReEncrypt) only; other columns "–" → treated as an answer
	// KMS cannot interpret for that call (our choice).
	xks.InvalidCiphertextException: {CodeInvalidResponse, ExcProxyInvalidResponse, ExcCustomKeyStoreInvalidState, ExcInvalidState, msgGistCiphertext, false},
	// §2.4: CreateKey → XksKeyInvalidConfigurationException; health "–" (our choice:
	// invalid response).
	xks.InvalidKeyUsageException: {CodeInvalidResponse, ExcProxyInvalidResponse, ExcXksKeyInvalidConfiguration, ExcInvalidState, msgGistKeyUsage, false},
	// §2.4 / §5.1: XksProxyIncorrectAuthenticationCredentialException; §8.3 INVALID_CREDENTIALS.
	xks.AuthenticationFailedException: {CodeInvalidCredentials, ExcProxyIncorrectCredential, ExcCustomKeyStoreInvalidState, ExcInvalidState, msgGistAuthentication, false},
	// §8.3 XKS_PROXY_ACCESS_DENIED; CreateKey → CustomKeyStoreInvalidStateException (dev
	// guide, §2.4 note). Create/Update "–" (health is exempt from secondary
	// authorization, §1.8): the proxy's configuration refuses KMS (our choice).
	xks.AccessDeniedException: {CodeAccessDenied, ExcProxyInvalidConfiguration, ExcCustomKeyStoreInvalidState, ExcInvalidState, msgGistAccessDenied, false},
	// §2.4: CreateKey → XksKeyNotFoundException; crypto → KMSInvalidStateException.
	// Health "–" (no key involved): an answer KMS cannot interpret (our choice).
	xks.KeyNotFoundException: {CodeInvalidResponse, ExcProxyInvalidResponse, ExcXksKeyNotFound, ExcInvalidState, msgGistKeyNotFound, false},
	// §2.4 / §5.1: XksProxyInvalidConfigurationException; §8.3 XKS_PROXY_INVALID_CONFIGURATION.
	xks.InvalidURIPathException: {CodeInvalidConfiguration, ExcProxyInvalidConfiguration, ExcCustomKeyStoreInvalidState, ExcInvalidState, msgGistURIPath, false},
	// §2.4 / §5.1: XksProxyUriUnreachableException; Connect: custom-key-stores §10.7 and
	// §8.3 [R] give XKS_PROXY_TIMED_OUT (xks-proxy-api §2.5's inference said
	// NOT_REACHABLE; the later, more specific table wins).
	xks.ThrottlingException: {CodeTimedOut, ExcProxyUriUnreachable, ExcCustomKeyStoreInvalidState, ExcInvalidState, msgGistThrottled, true},
	// §2.4: Create/Update → XksProxyInvalidResponseException; §10.7 Connect →
	// XKS_PROXY_INVALID_RESPONSE [R].
	xks.InternalException: {CodeInvalidResponse, ExcProxyInvalidResponse, ExcCustomKeyStoreInvalidState, ExcInvalidState, msgGistProxyInternal, true},
	// §2.4: CreateKey → "XksKeyInvalidResponseException" (no such shape) →
	// CustomKeyStoreInvalidStateException per §10.7 [R]; health "–": a proxy without
	// GetHealthStatus is not a usable proxy (invalid response, our choice).
	xks.UnsupportedOperationException: {CodeInvalidResponse, ExcProxyInvalidResponse, ExcCustomKeyStoreInvalidState, ExcInvalidState, msgGistUnsupported, false},
	// Same row as ThrottlingException (§2.4 / §5.1 / §10.7 "503 / 429 / socket timeout").
	xks.DependencyTimeoutException: {CodeTimedOut, ExcProxyUriUnreachable, ExcCustomKeyStoreInvalidState, ExcInvalidState, msgGistDependencyTimeout, true},
}

// lookup finds the row for err. Errors that are not *Error are our own (internal).
func lookup(err error) outcome {
	var e *Error
	if !errors.As(err, &e) {
		return kindTable[KindInternal]
	}
	if e.Kind == KindProxy {
		if o, ok := nameTable[e.Name]; ok {
			return o
		}
		return kindTable[KindInvalidResponse]
	}
	if o, ok := kindTable[e.Kind]; ok {
		return o
	}
	return kindTable[KindInternal]
}

// ConnectionErrorCode is the ConnectionErrorCode a failed GetHealthStatus puts on a
// store that ConnectCustomKeyStore (or the background health check) leaves FAILED
// (xks-proxy-api.md §2.5; kms-custom-key-stores.md §8.3, §10.7). It returns "" for a
// nil error.
func ConnectionErrorCode(err error) string {
	if err == nil {
		return ""
	}
	return lookup(err).code
}

// StoreException is the exception CreateCustomKeyStore (public endpoint) and
// UpdateCustomKeyStore return when their GetHealthStatus call fails
// (xks-proxy-api.md §2.4; kms-custom-key-stores.md §5.1, §10.7). "" for nil.
func StoreException(err error) string {
	if err == nil {
		return ""
	}
	return lookup(err).store
}

// CreateKeyException is the exception CreateKey returns when GetKeyMetadata (or
// CheckKey) fails (xks-proxy-api.md §2.4 CreateKey column, §2.1). "" for nil.
func CreateKeyException(err error) string {
	if err == nil {
		return ""
	}
	return lookup(err).createKey
}

// CryptoException is the exception Encrypt, Decrypt, GenerateDataKey(WithoutPlaintext)
// and ReEncrypt return when their proxy call fails: KMSInvalidStateException for every
// proxy-side outcome, since KMS cannot add exceptions to old APIs (xks-proxy-api.md
// §2.4), and KMSInternalException only for our own failures. "" for nil.
func CryptoException(err error) string {
	if err == nil {
		return ""
	}
	return lookup(err).crypto
}

// Message is the descriptive, caller-safe message for the exception (§2.4 "message
// gist"). It never contains the proxy's errorMessage, which KMS only logs.
func Message(err error) string {
	if err == nil {
		return ""
	}
	if KindOf(err) == KindInvalidResponse && errors.Is(err, errCDIV) {
		return msgGistCDIV
	}
	return lookup(err).message
}

// Retryable reports whether KMS counts the failure as retryable in its metrics
// (§2.4: throttling, dependency timeout, internal errors, unreachable and timeouts).
func Retryable(err error) bool {
	return err != nil && lookup(err).retryable
}
