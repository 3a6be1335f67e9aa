package xks

import (
	"encoding/json"
	"errors"
)

// Limits are the largest inputs a proxy accepts (raw, decoded bytes). Inputs above
// them are answered with UnsupportedOperationException, as the spec asks for inputs
// beyond what an implementation supports.
type Limits struct {
	MaxPlaintext int // plaintext of Encrypt and ciphertext of Decrypt
	MaxAAD       int
}

// DefaultLimits are twice the spec's minimums, rounded.
func DefaultLimits() Limits { return Limits{MaxPlaintext: 8192, MaxAAD: 16384} }

// Validate checks l against the spec minimums.
func (l Limits) Validate() error {
	if l.MaxPlaintext < MinPlaintextSupport {
		return errors.New("xks: plaintext limit below the spec minimum of 4300 bytes")
	}
	if l.MaxAAD < MinAADSupport {
		return errors.New("xks: AAD limit below the spec minimum of 8192 bytes")
	}
	if l.MaxAAD > 0xffff {
		return errors.New("xks: AAD limit above 65535 bytes, which the AAD encoding cannot carry")
	}
	return nil
}

// MaxBody is the largest request body worth reading: every binary field at its limit
// in Base64, plus generous room for metadata (ARNs up to 2048 characters each and
// fields KMS may add later).
func (l Limits) MaxBody() int64 {
	b64 := func(n int) int { return (n + 2) / 3 * 4 }
	return int64(b64(l.MaxPlaintext)+b64(l.MaxAAD)+b64(MaxCiphertextMetadata)+b64(16)+b64(TagSize)) + 64<<10
}

// ParseHealthRequest decodes and validates a GetHealthStatus body.
func ParseHealthRequest(body []byte) (*HealthRequest, error) {
	var r HealthRequest
	if err := decode(body, &r); err != nil {
		return nil, err
	}
	if err := checkMetadata(r.RequestMetadata, false, false); err != nil {
		return nil, err
	}
	return &r, nil
}

// ParseMetadataRequest decodes and validates a GetKeyMetadata body.
func ParseMetadataRequest(body []byte) (*MetadataRequest, error) {
	var r MetadataRequest
	if err := decode(body, &r); err != nil {
		return nil, err
	}
	if err := checkMetadata(r.RequestMetadata, true, false); err != nil {
		return nil, err
	}
	return &r, nil
}

// ParseEncryptRequest decodes and validates an Encrypt body.
func ParseEncryptRequest(body []byte, l Limits) (*EncryptRequest, error) {
	var r EncryptRequest
	if err := decode(body, &r); err != nil {
		return nil, err
	}
	if err := checkMetadata(r.RequestMetadata, true, true); err != nil {
		return nil, err
	}
	switch {
	case r.Plaintext == nil:
		return nil, missing("plaintext")
	case len(r.Plaintext) == 0:
		return nil, Errorf(ValidationException, "plaintext must not be empty")
	case r.EncryptionAlgorithm == "":
		return nil, missing("encryptionAlgorithm")
	case r.EncryptionAlgorithm != AlgorithmGCM:
		return nil, Errorf(ValidationException, "encryptionAlgorithm must be AES_GCM")
	case r.CiphertextDataIntegrityValueAlgorithm != "" && r.CiphertextDataIntegrityValueAlgorithm != CDIVAlgorithm:
		return nil, Errorf(ValidationException, "ciphertextDataIntegrityValueAlgorithm must be SHA_256")
	case len(r.Plaintext) > l.MaxPlaintext:
		return nil, Errorf(UnsupportedOperationException, "plaintext longer than %d bytes", l.MaxPlaintext)
	case len(r.AdditionalAuthenticatedData) > l.MaxAAD:
		return nil, Errorf(UnsupportedOperationException, "additionalAuthenticatedData longer than %d bytes", l.MaxAAD)
	}
	return &r, nil
}

// ParseDecryptRequest decodes and validates a Decrypt body. A wrong IV or tag length
// is InvalidCiphertextException: the fields are present but cannot be a ciphertext
// this API produced.
func ParseDecryptRequest(body []byte, l Limits) (*DecryptRequest, error) {
	var r DecryptRequest
	if err := decode(body, &r); err != nil {
		return nil, err
	}
	if err := checkMetadata(r.RequestMetadata, true, true); err != nil {
		return nil, err
	}
	switch {
	case r.Ciphertext == nil:
		return nil, missing("ciphertext")
	case len(r.Ciphertext) == 0:
		return nil, Errorf(ValidationException, "ciphertext must not be empty")
	case r.EncryptionAlgorithm == "":
		return nil, missing("encryptionAlgorithm")
	case r.EncryptionAlgorithm != AlgorithmGCM:
		return nil, Errorf(ValidationException, "encryptionAlgorithm must be AES_GCM")
	case r.InitializationVector == nil:
		return nil, missing("initializationVector")
	case r.AuthenticationTag == nil:
		return nil, missing("authenticationTag")
	case len(r.CiphertextMetadata) > MaxCiphertextMetadata:
		return nil, Errorf(ValidationException, "ciphertextMetadata longer than 20 bytes")
	case len(r.Ciphertext) > l.MaxPlaintext:
		return nil, Errorf(UnsupportedOperationException, "ciphertext longer than %d bytes", l.MaxPlaintext)
	case len(r.AdditionalAuthenticatedData) > l.MaxAAD:
		return nil, Errorf(UnsupportedOperationException, "additionalAuthenticatedData longer than %d bytes", l.MaxAAD)
	case len(r.InitializationVector) != 12 && len(r.InitializationVector) != 16:
		return nil, Errorf(InvalidCiphertextException, "initializationVector must be 12 or 16 bytes")
	case len(r.AuthenticationTag) != TagSize:
		return nil, Errorf(InvalidCiphertextException, "authenticationTag must be 16 bytes")
	}
	return &r, nil
}

func missing(field string) *Error {
	return Errorf(ValidationException, "missing required field %s", field)
}

// decode unmarshals body into v, ignoring unknown fields, and turns every decoding
// failure into a ValidationException whose message never quotes the input.
func decode(body []byte, v any) error {
	err := json.Unmarshal(body, v)
	if err == nil {
		return nil
	}
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &te) && te.Field != "":
		return Errorf(ValidationException, "field %s has the wrong type", te.Field)
	case errors.Is(err, errBase64):
		return Errorf(ValidationException, "a binary field is not standard padded Base64")
	default:
		return Errorf(ValidationException, "request body is not a valid JSON object")
	}
}

// checkMetadata enforces the required requestMetadata fields: kmsRequestId and
// kmsOperation always, awsPrincipalArn for key operations, kmsKeyArn for Encrypt and
// Decrypt. Values are opaque: unknown kmsOperation values are accepted.
func checkMetadata(m *RequestMetadata, principal, keyARN bool) error {
	switch {
	case m == nil:
		return missing("requestMetadata")
	case m.KMSRequestID == "":
		return missing("requestMetadata.kmsRequestId")
	case m.KMSOperation == "":
		return missing("requestMetadata.kmsOperation")
	case principal && m.AWSPrincipalARN == "":
		return missing("requestMetadata.awsPrincipalArn")
	case keyARN && m.KMSKeyARN == "":
		return missing("requestMetadata.kmsKeyArn")
	}
	return nil
}
