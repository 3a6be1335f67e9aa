// Package kmsapi holds the AWS KMS wire shapes: request and response
// structures, enum value sets, exception names and the operation table,
// generated from the botocore KMS model (facts only), plus the small
// runtime the generated validators use.
//
// Validation follows AWS's ValidationException wording:
//
//	1 validation error detected: Value '' at 'keyId' failed to satisfy constraint: Member must have length greater than or equal to 1
package kmsapi

//go:generate go run ../apigen -service kms -package kmsapi -out zz_generated.go

import (
	"math"
	"strconv"
	"strings"
	"time"
)

// Operation describes one operation of the model.
type Operation struct {
	Name   string
	Input  string // input shape name
	Output string // output shape name
	Errors []string
}

// Time is a timestamp that travels as epoch seconds (with milliseconds as
// a fraction), the awsJson encoding.
type Time struct{ time.Time }

// NewTime returns t as a wire timestamp.
func NewTime(t time.Time) *Time { return &Time{t} }

// MarshalJSON writes seconds since the epoch with millisecond precision.
func (t Time) MarshalJSON() ([]byte, error) {
	ms := t.UnixMilli()
	b := strconv.AppendInt(nil, ms/1000, 10)
	if frac := ms % 1000; frac != 0 {
		b = append(b, '.')
		f := strconv.AppendInt(nil, 1000+frac, 10)[1:]
		b = append(b, strings.TrimRight(string(f), "0")...)
	}
	return b, nil
}

// UnmarshalJSON reads epoch seconds, integral or fractional.
func (t *Time) UnmarshalJSON(b []byte) error {
	f, err := strconv.ParseFloat(string(b), 64)
	if err != nil {
		return err
	}
	t.Time = time.UnixMilli(int64(math.Round(f * 1000))).UTC()
	return nil
}

// String returns a pointer to s, for building responses.
func String(s string) *string { return &s }

// Bool returns a pointer to b.
func Bool(b bool) *bool { return &b }

// Int32 returns a pointer to n.
func Int32(n int32) *int32 { return &n }

// Errors collects validation failures in AWS's phrasing.
type Errors struct{ msgs []string }

// Len reports how many violations were found.
func (e *Errors) Len() int { return len(e.msgs) }

// Message is the whole ValidationException message, or "" if there were no
// violations.
func (e *Errors) Message() string {
	switch len(e.msgs) {
	case 0:
		return ""
	case 1:
		return "1 validation error detected: " + e.msgs[0]
	}
	return strconv.Itoa(len(e.msgs)) + " validation errors detected: " + strings.Join(e.msgs, "; ")
}

// Add records a free-form violation at path.
func (e *Errors) Add(msg string) { e.msgs = append(e.msgs, msg) }

func value(path, v string, sensitive bool) string {
	if sensitive {
		return "Value at '" + path + "'"
	}
	return "Value '" + v + "' at '" + path + "'"
}

const failed = " failed to satisfy constraint: "

// Null records a missing required member.
func (e *Errors) Null(path string) {
	e.Add("Value null at '" + path + "'" + failed + "Member must not be null")
}

// MinLength records a value shorter than min.
func (e *Errors) MinLength(path, v string, sensitive bool, min int) {
	e.Add(value(path, v, sensitive) + failed + "Member must have length greater than or equal to " + strconv.Itoa(min))
}

// MaxLength records a value longer than max.
func (e *Errors) MaxLength(path, v string, sensitive bool, max int) {
	e.Add(value(path, v, sensitive) + failed + "Member must have length less than or equal to " + strconv.Itoa(max))
}

// Pattern records a value that does not match the model's pattern.
func (e *Errors) Pattern(path, v string, sensitive bool, pattern string) {
	e.Add(value(path, v, sensitive) + failed + "Member must satisfy regular expression pattern: " + pattern)
}

// Enum records a value outside the enum's value set.
func (e *Errors) Enum(path, v string, set []string) {
	e.Add(value(path, v, false) + failed + "Member must satisfy enum value set: [" + strings.Join(set, ", ") + "]")
}

// MinValue records a number below min.
func (e *Errors) MinValue(path string, v, min int64) {
	e.Add(value(path, strconv.FormatInt(v, 10), false) + failed + "Member must have value greater than or equal to " + strconv.FormatInt(min, 10))
}

// MaxValue records a number above max.
func (e *Errors) MaxValue(path string, v, max int64) {
	e.Add(value(path, strconv.FormatInt(v, 10), false) + failed + "Member must have value less than or equal to " + strconv.FormatInt(max, 10))
}

func inEnum(set []string, v string) bool {
	for _, s := range set {
		if s == v {
			return true
		}
	}
	return false
}

// listString is ListString for the generated validators.
func listString[T any](l []T) string { return ListString(l) }

// ListString renders a list as Java's List.toString does, which is how AWS
// echoes list values in validation messages.
func ListString[T any](l []T) string {
	var b strings.Builder
	b.WriteByte('[')
	for i, v := range l {
		if i > 0 {
			b.WriteString(", ")
		}
		switch x := any(v).(type) {
		case string:
			b.WriteString(x)
		default:
			b.WriteString("…")
		}
	}
	b.WriteByte(']')
	return b.String()
}

func itoa(i int) string { return strconv.Itoa(i) }

// Validator is implemented by every generated input shape.
type Validator interface {
	Validate(errs *Errors, path string)
}

// Validate runs v's checks and returns the ValidationException message, or
// "" when the input satisfies the model.
func Validate(v Validator) string {
	var errs Errors
	v.Validate(&errs, "")
	return errs.Message()
}
