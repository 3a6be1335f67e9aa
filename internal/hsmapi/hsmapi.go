// Package hsmapi holds the CloudHSM v2 wire shapes kmsd serves
// (X-Amz-Target: BaldrApiService.*): request and response structures, enum
// value sets, exception names and the operation table, generated from the
// botocore cloudhsmv2 model (facts only), plus the small runtime the
// generated validators use. It mirrors kmsapi; the two are separate so
// that neither service's shapes leak into the other.
package hsmapi

//go:generate go run ../apigen -service cloudhsmv2 -package hsmapi -out zz_generated.go

import (
	"strconv"
	"time"

	"github.com/kmsd/kmsd/internal/kmsapi"
)

// The runtime the generated code uses is kmsapi's: the same wire
// encodings and the same ValidationException phrasing for both services.
type (
	// Operation describes one operation of the model.
	Operation = kmsapi.Operation
	// Time is a timestamp that travels as epoch seconds.
	Time = kmsapi.Time
	// Errors collects validation failures in AWS's phrasing.
	Errors = kmsapi.Errors
	// Validator is implemented by every generated input shape.
	Validator = kmsapi.Validator
)

// NewTime returns t as a wire timestamp.
func NewTime(t time.Time) *Time { return kmsapi.NewTime(t) }

// String returns a pointer to s, for building responses.
func String(s string) *string { return &s }

// Validate runs v's checks and returns the ValidationException message, or
// "" when the input satisfies the model.
func Validate(v Validator) string { return kmsapi.Validate(v) }

func inEnum(set []string, v string) bool {
	for _, s := range set {
		if s == v {
			return true
		}
	}
	return false
}

func listString[T any](l []T) string { return kmsapi.ListString(l) }

func itoa(i int) string { return strconv.Itoa(i) }

// Exception is an error a CloudHSM v2 operation returns to its caller: the
// exception name (the wire __type) and the message (the wire Message).
type Exception struct {
	Name    string
	Message string
}

func (e *Exception) Error() string { return e.Name + ": " + e.Message }

// NewException returns an exception named name.
func NewException(name, message string) *Exception {
	return &Exception{Name: name, Message: message}
}

// Status is the HTTP status an exception travels with: 500 for server
// faults, 400 for everything else.
func Status(name string) int {
	if Exceptions[name] || name == "InternalFailure" {
		return 500
	}
	return 400
}
