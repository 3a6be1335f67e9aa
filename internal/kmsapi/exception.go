package kmsapi

// Exception is an error a KMS operation returns to its caller: the
// exception name (the wire __type) and the message the caller sees. The
// message never carries key material, passwords or plaintext.
type Exception struct {
	Name    string
	Message string
}

func (e *Exception) Error() string { return e.Name + ": " + e.Message }

// NewException returns an exception named name.
func NewException(name, message string) *Exception {
	return &Exception{Name: name, Message: message}
}

// statusOverrides holds the statuses that differ from the rule in Status.
var statusOverrides = map[string]int{
	// AWS sends DryRunOperationException with 400, not the model's 412
	// (recorded from AWS; key-types spec §1.2).
	"DependencyTimeoutException":     503,
	"ServiceUnavailable":             503,
	"ThrottlingException":            400,
	"RequestEntityTooLargeException": 413,
}

// Status is the HTTP status an exception travels with: 400 for every
// client fault, 500 for server faults, and the few overrides above (the
// recommendation of spec §1.5: the status only drives retries).
func Status(name string) int {
	if s, ok := statusOverrides[name]; ok {
		return s
	}
	if Exceptions[name] || name == "InternalFailure" {
		return 500
	}
	return 400
}
