// Package sigv4 verifies and creates AWS Signature Version 4
// (AWS4-HMAC-SHA256) request signatures.
//
// The server side, Verifier, authenticates every request kmsd serves (service
// "kms", region taken from the credential scope) and every request an XKS
// proxy serves (service "kms-xks-proxy", canonical URI taken from the raw
// path). It checks in the order AWS services do — parse, signed headers,
// date, clock skew, credential scope, access key, canonical request,
// constant-time compare — and reports a failure as an *Error carrying the
// AWS exception name and message, so the aws CLI and the SDKs see what they
// would see from AWS. The headers that choose what a request does
// (X-Amz-Target, Content-Type, any X-Amz-*) must be signed, so that a
// captured request cannot be replayed as another operation (see HeaderRule).
//
// The client side, Sign and Signer, signs the requests kmsd sends to XKS
// proxies.
//
// Verification is on the hot path of every request: signing keys are cached
// per secret, day, region and service, and the canonical request and string to
// sign are built in stack buffers, so a typical verification allocates only
// its Result.
package sigv4

import (
	"crypto/sha256"
	"encoding/hex"
	"time"
)

// Algorithm is the only signing algorithm this package speaks.
const Algorithm = "AWS4-HMAC-SHA256"

const (
	// terminator ends every credential scope.
	terminator = "aws4_request"
	// amzDateLayout is ISO 8601 basic format, as in X-Amz-Date.
	amzDateLayout = "20060102T150405Z"
	// DefaultMaxSkew is how far a request's time may be from the server's
	// clock when Verifier.MaxSkew is zero; AWS allows five minutes.
	DefaultMaxSkew = 5 * time.Minute
)

// Exception names of verification failures, as AWS JSON services send them
// in "__type". AWS answers all four with HTTP status 400.
const (
	CodeMissingAuthenticationToken = "MissingAuthenticationTokenException"
	CodeIncompleteSignature        = "IncompleteSignatureException"
	CodeInvalidSignature           = "InvalidSignatureException"
	CodeUnrecognizedClient         = "UnrecognizedClientException"
)

// Messages AWS sends with the exceptions above.
const (
	msgMissingToken = "Missing Authentication Token"
	msgUnrecognized = "The security token included in the request is invalid."
	msgMismatch     = "The request signature we calculated does not match the signature you provided. " +
		"Check your AWS Secret Access Key and signing method. Consult the service documentation for details."
	msgHostNotSigned = "'Host' must be a 'SignedHeader' in the AWS Authorization."
	// msgNotSigned follows the name of a header that the service requires
	// to be signed and that SignedHeaders leaves out, in quotes: AWS's
	// "'X-Amz-Target' must be a 'SignedHeader' in the AWS Authorization."
	msgNotSigned = "' must be a 'SignedHeader' in the AWS Authorization."
)

// Error is a verification failure as the client sees it.
type Error struct {
	Code    string // AWS exception name, one of the Code constants
	Message string // message for the client, worded as AWS words it
	// Reason says which check failed where Message does not (several
	// checks share AWS's signature-mismatch message). It is for logs and
	// is never sent to clients; it contains no secret.
	Reason string
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Is reports whether target is an *Error with the same Code and, if the
// target has one, the same Message, so that
// errors.Is(err, &sigv4.Error{Code: sigv4.CodeInvalidSignature}) works.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code && (t.Message == "" || t.Message == e.Message)
}

func incomplete(msg string) *Error { return &Error{Code: CodeIncompleteSignature, Message: msg} }
func invalid(msg string) *Error    { return &Error{Code: CodeInvalidSignature, Message: msg} }

// mismatch is the signature-mismatch error; reason tells logs which check.
func mismatch(reason string) *Error {
	return &Error{Code: CodeInvalidSignature, Message: msgMismatch, Reason: reason}
}

// notSigned is the error for a header present in the request that the
// Verifier's HeaderRule requires to be signed and SignedHeaders leaves
// out. AWS JSON services answer it as InvalidSignatureException (query
// services as SignatureDoesNotMatch), naming the header.
func notSigned(name string) *Error {
	return &Error{Code: CodeInvalidSignature, Message: "'" + name + msgNotSigned, Reason: "header not signed"}
}

// hashHex returns the lowercase hex SHA-256 of b.
func hashHex(b []byte) (out [64]byte) {
	sum := sha256.Sum256(b)
	hex.Encode(out[:], sum[:])
	return out
}
