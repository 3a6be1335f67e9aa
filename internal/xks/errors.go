package xks

import (
	"fmt"
	"net/http"
)

// Error names of the XKS Proxy API (spec §1.9).
const (
	ValidationException            = "ValidationException"
	InvalidStateException          = "InvalidStateException"
	InvalidCiphertextException     = "InvalidCiphertextException"
	InvalidKeyUsageException       = "InvalidKeyUsageException"
	AuthenticationFailedException  = "AuthenticationFailedException"
	AccessDeniedException          = "AccessDeniedException"
	KeyNotFoundException           = "KeyNotFoundException"
	InvalidURIPathException        = "InvalidUriPathException"
	ThrottlingException            = "ThrottlingException"
	InternalException              = "InternalException"
	UnsupportedOperationException  = "UnsupportedOperationException"
	DependencyTimeoutException     = "DependencyTimeoutException"
	maxErrorMessage                = 511
	errorMessagePrintableASCIILow  = 0x20
	errorMessagePrintableASCIIHigh = 0x7e
)

// statuses maps every error name to its HTTP status. It is the single table; a test
// keeps it complete.
var statuses = map[string]int{
	ValidationException:           http.StatusBadRequest,
	InvalidStateException:         http.StatusBadRequest,
	InvalidCiphertextException:    http.StatusBadRequest,
	InvalidKeyUsageException:      http.StatusBadRequest,
	AuthenticationFailedException: http.StatusUnauthorized,
	AccessDeniedException:         http.StatusForbidden,
	KeyNotFoundException:          http.StatusNotFound,
	InvalidURIPathException:       http.StatusNotFound,
	ThrottlingException:           http.StatusTooManyRequests,
	InternalException:             http.StatusInternalServerError,
	UnsupportedOperationException: http.StatusNotImplemented,
	DependencyTimeoutException:    http.StatusServiceUnavailable,
}

// ErrorNames lists every error name of the spec, in the spec's table order.
func ErrorNames() []string {
	return []string{
		ValidationException, InvalidStateException, InvalidCiphertextException,
		InvalidKeyUsageException, AuthenticationFailedException, AccessDeniedException,
		KeyNotFoundException, InvalidURIPathException, ThrottlingException,
		InternalException, UnsupportedOperationException, DependencyTimeoutException,
	}
}

// Status returns the HTTP status for an error name; unknown names are 500.
func Status(name string) int {
	if s, ok := statuses[name]; ok {
		return s
	}
	return http.StatusInternalServerError
}

// Error is an XKS API error: the wire name and a message safe to show the caller
// (never key material or plaintext).
type Error struct {
	Name    string
	Message string
}

func (e *Error) Error() string {
	if e.Message == "" {
		return e.Name
	}
	return e.Name + ": " + e.Message
}

// Status is the HTTP status of e.
func (e *Error) Status() int { return Status(e.Name) }

// Response renders e as a wire body, with the message cut to the spec's limits
// (under 512 characters of printable ASCII).
func (e *Error) Response() ErrorResponse {
	return ErrorResponse{ErrorName: e.Name, ErrorMessage: SanitizeMessage(e.Message)}
}

// Errorf builds an *Error with a formatted message.
func Errorf(name, format string, args ...any) *Error {
	return &Error{Name: name, Message: fmt.Sprintf(format, args...)}
}

// SanitizeMessage replaces non-printable or non-ASCII bytes by '?' and truncates to
// 511 characters, as errorMessage must be.
func SanitizeMessage(s string) string {
	b := []byte(s)
	if len(b) > maxErrorMessage {
		b = b[:maxErrorMessage]
	}
	for i, c := range b {
		if c < errorMessagePrintableASCIILow || c > errorMessagePrintableASCIIHigh {
			b[i] = '?'
		}
	}
	return string(b)
}
