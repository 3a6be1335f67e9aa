package xksclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"strconv"

	"github.com/kmsd/kmsd/internal/xks"
)

// Kind classifies the outcome of a failed proxy call. Every error a Client method
// returns is an *Error carrying exactly one Kind; the mapping helpers in mapping.go
// turn it into what KMS reports (spec xks-proxy-api.md §2.4, §2.5).
type Kind int

const (
	// KindInternal is a failure on our side: a bad argument from the layer above or a
	// request that could not be built. KMS reports it as an internal error.
	KindInternal Kind = iota
	// KindCanceled means the caller's context ended before the proxy answered; the
	// proxy is not to blame.
	KindCanceled
	// KindUnreachable means no TCP connection could be made: refused, no route, name
	// not resolvable.
	KindUnreachable
	// KindTLS means the TLS handshake failed: untrusted issuer, host name mismatch,
	// expired certificate, protocol version, or the proxy refused our client
	// certificate.
	KindTLS
	// KindTimeout means the proxy did not answer within the per-call budget (250 ms).
	KindTimeout
	// KindNetwork means the connection broke after it was made (reset, early EOF).
	KindNetwork
	// KindInvalidResponse means the proxy answered something KMS cannot interpret: a
	// body that is not JSON of the right shape, a required field missing, bad Base64,
	// wrong lengths, a CDIV mismatch, an unknown error name or an unexpected status
	// (spec §2.3, §1.9 last paragraph).
	KindInvalidResponse
	// KindProxy means the proxy answered with one of the spec's error names (§1.9);
	// Error.Name says which.
	KindProxy
	// KindEKMUnavailable means GetHealthStatus succeeded but every external key manager
	// reported UNAVAILABLE (spec §1.8).
	KindEKMUnavailable
	// KindKeyConfiguration means GetKeyMetadata answered well-formed attributes that do
	// not qualify the key for a KMS key: key spec not AES_256, usage lacking ENCRYPT or
	// DECRYPT, or status not ENABLED (spec §1.5, §2.1). Only CheckKey returns it.
	KindKeyConfiguration
)

var kindNames = [...]string{
	KindInternal:         "internal",
	KindCanceled:         "canceled",
	KindUnreachable:      "unreachable",
	KindTLS:              "tls",
	KindTimeout:          "timeout",
	KindNetwork:          "network",
	KindInvalidResponse:  "invalid-response",
	KindProxy:            "proxy-error",
	KindEKMUnavailable:   "ekm-unavailable",
	KindKeyConfiguration: "key-configuration",
}

func (k Kind) String() string {
	if k >= 0 && int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// Error is a failed proxy call. Its Error text is for logs only: it may quote the
// proxy's errorMessage (sanitized), which KMS never forwards to its callers (§0);
// use Message for what a KMS caller may see.
type Error struct {
	Op     string // XKS API: "health", "metadata", "encrypt" or "decrypt"
	Kind   Kind
	Name   string // with KindProxy: the spec error name, e.g. xks.KeyNotFoundException
	Status int    // HTTP status when the proxy answered, else 0
	// ProxyMessage is the proxy's errorMessage, sanitized to printable ASCII; for logs.
	ProxyMessage string
	Err          error // underlying cause, if any
}

func (e *Error) Error() string {
	s := "xks " + e.Op + ": " + e.Kind.String()
	if e.Name != "" {
		s += " " + e.Name
	}
	if e.Status != 0 {
		s += " (HTTP " + strconv.Itoa(e.Status) + ")"
	}
	if e.ProxyMessage != "" {
		s += ": " + e.ProxyMessage
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

// Is matches a target *Error by Kind and, when the target names one, by Name, so
// errors.Is(err, &xksclient.Error{Kind: xksclient.KindTimeout}) works.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Kind == e.Kind && (t.Name == "" || t.Name == e.Name)
}

// KindOf returns the Kind of err, or KindInternal when err is not an *Error.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return KindInternal
}

// ProxyErrorName returns the spec error name the proxy answered with, or "".
func ProxyErrorName(err error) string {
	var e *Error
	if errors.As(err, &e) && e.Kind == KindProxy {
		return e.Name
	}
	return ""
}

// dialError and handshakeError mark which phase of connection setup failed, so that
// classification does not have to guess from error text.
type dialError struct{ err error }

func (e *dialError) Error() string { return "dial: " + e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

type handshakeError struct{ err error }

func (e *handshakeError) Error() string { return "tls handshake: " + e.err.Error() }
func (e *handshakeError) Unwrap() error { return e.err }

// errBudget is the cancellation cause of a call's own deadline.
var errBudget = errors.New("xks proxy call budget exceeded")

// classifyTransport turns an error from the HTTP round trip into an *Error. callCtx
// is the call's context (with the budget); its cause tells a budget overrun from the
// caller giving up, whatever error the transport surfaced.
func classifyTransport(op string, callCtx context.Context, err error) *Error {
	if callCtx.Err() != nil {
		if errors.Is(context.Cause(callCtx), errBudget) {
			return &Error{Op: op, Kind: KindTimeout, Err: err}
		}
		return &Error{Op: op, Kind: KindCanceled, Err: context.Cause(callCtx)}
	}
	var ne net.Error
	var de *dialError
	var he *handshakeError
	var op2 *net.OpError
	var cve *tls.CertificateVerificationError
	var uae x509.UnknownAuthorityError
	var hne x509.HostnameError
	var cie x509.CertificateInvalidError
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return &Error{Op: op, Kind: KindTimeout, Err: err}
	case errors.As(err, &he), errors.As(err, &cve), errors.As(err, &uae), errors.As(err, &hne), errors.As(err, &cie):
		return &Error{Op: op, Kind: KindTLS, Err: err}
	case errors.As(err, &de):
		return &Error{Op: op, Kind: KindUnreachable, Err: err}
	case errors.As(err, &op2) && op2.Op == "remote error":
		// A TLS alert from the proxy after our side of the handshake finished: with
		// TLS 1.3 a refused client certificate surfaces on the first read.
		return &Error{Op: op, Kind: KindTLS, Err: err}
	default:
		return &Error{Op: op, Kind: KindNetwork, Err: err}
	}
}

// invalid builds a KindInvalidResponse error.
func invalid(op string, status int, err error) *Error {
	return &Error{Op: op, Kind: KindInvalidResponse, Status: status, Err: err}
}

// knownNames is the set of error names of the spec (§1.9).
var knownNames = func() map[string]bool {
	m := map[string]bool{}
	for _, n := range xks.ErrorNames() {
		m[n] = true
	}
	return m
}()
