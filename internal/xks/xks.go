// Package xks holds the wire shapes of the AWS KMS External Key Store (XKS) Proxy API
// v1: request and response bodies, error names and their HTTP statuses, the effective
// AAD construction and the ciphertext data integrity value. It is data and pure
// functions only, shared by the proxy (xksserver) and the KMS-side client.
package xks

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"regexp"
)

// Path pieces of the API. Every API path is {prefix}/kms/xks/v1/...
const (
	APIRoot       = "/kms/xks/v1"
	HealthSuffix  = APIRoot + "/health"
	KeysSegment   = APIRoot + "/keys/"
	OpMetadata    = "metadata"
	OpEncrypt     = "encrypt"
	OpDecrypt     = "decrypt"
	OpHealth      = "health"
	AlgorithmGCM  = "AES_GCM"
	CDIVAlgorithm = "SHA_256"
)

// Key attributes as they appear in GetKeyMetadata responses.
const (
	KeySpecAES256 = "AES_256"
	UsageEncrypt  = "ENCRYPT"
	UsageDecrypt  = "DECRYPT"
	StatusEnabled = "ENABLED"
	// StatusDisabled reports an external key that exists but may not be used.
	StatusDisabled = "DISABLED"
)

// EKM health states reported in ekmFleetDetails.
const (
	HealthActive      = "ACTIVE"
	HealthDegraded    = "DEGRADED"
	HealthUnavailable = "UNAVAILABLE"
)

// Size rules of the spec (raw, decoded bytes).
const (
	MinPlaintextSupport   = 4300 // a proxy must accept at least this much plaintext/ciphertext
	MinAADSupport         = 8192 // and at least this much AAD
	MaxCiphertextMetadata = 20
	TagSize               = 16
	MaxKeyIDLen           = 128
	MaxURILen             = 256
	MaxURIPathLen         = 128
)

var (
	keyIDRe  = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)
	prefixRe = regexp.MustCompile(`^(/[A-Za-z0-9/_-]+)?$`)
)

// ValidKeyID reports whether id is a well-formed externalKeyId.
func ValidKeyID(id string) bool { return keyIDRe.MatchString(id) }

// ValidPrefix reports whether p is a well-formed URI path prefix: empty, or a path of
// [A-Za-z0-9/_-] starting with "/" and not ending with "/", such that the full
// XksProxyUriPath p+"/kms/xks/v1" is at most 128 characters.
func ValidPrefix(p string) bool {
	if p == "" {
		return true
	}
	return prefixRe.MatchString(p) && p[len(p)-1] != '/' &&
		len(p)+len(APIRoot) <= MaxURIPathLen
}

// RequestMetadata is present in every request. KMS may add fields; unknown ones are
// ignored by decoding.
type RequestMetadata struct {
	AWSPrincipalARN string `json:"awsPrincipalArn,omitempty"`
	AWSSourceVPC    string `json:"awsSourceVpc,omitempty"`
	AWSSourceVPCE   string `json:"awsSourceVpce,omitempty"`
	KMSKeyARN       string `json:"kmsKeyArn,omitempty"`
	KMSOperation    string `json:"kmsOperation"`
	KMSRequestID    string `json:"kmsRequestId"`
	KMSViaService   string `json:"kmsViaService,omitempty"`
}

// HealthRequest is the body of POST …/health.
type HealthRequest struct {
	RequestMetadata *RequestMetadata `json:"requestMetadata"`
}

// EKMDetail is one entry of ekmFleetDetails.
type EKMDetail struct {
	ID           string `json:"id"`
	Model        string `json:"model"`
	HealthStatus string `json:"healthStatus"`
}

// HealthResponse is the 200 body of GetHealthStatus.
type HealthResponse struct {
	XksProxyFleetSize int         `json:"xksProxyFleetSize"`
	XksProxyVendor    string      `json:"xksProxyVendor"`
	XksProxyModel     string      `json:"xksProxyModel"`
	EkmVendor         string      `json:"ekmVendor"`
	EkmFleetDetails   []EKMDetail `json:"ekmFleetDetails"`
}

// MetadataRequest is the body of POST …/keys/{id}/metadata.
type MetadataRequest struct {
	RequestMetadata *RequestMetadata `json:"requestMetadata"`
}

// MetadataResponse is the 200 body of GetKeyMetadata.
type MetadataResponse struct {
	KeySpec   string   `json:"keySpec"`
	KeyUsage  []string `json:"keyUsage"`
	KeyStatus string   `json:"keyStatus"`
}

// EncryptRequest is the body of POST …/keys/{id}/encrypt.
type EncryptRequest struct {
	RequestMetadata                       *RequestMetadata `json:"requestMetadata"`
	Plaintext                             Blob             `json:"plaintext"`
	EncryptionAlgorithm                   string           `json:"encryptionAlgorithm"`
	AdditionalAuthenticatedData           Blob             `json:"additionalAuthenticatedData,omitempty"`
	CiphertextDataIntegrityValueAlgorithm string           `json:"ciphertextDataIntegrityValueAlgorithm,omitempty"`
}

// EncryptResponse is the 200 body of Encrypt.
type EncryptResponse struct {
	Ciphertext                   Blob `json:"ciphertext"`
	InitializationVector         Blob `json:"initializationVector"`
	AuthenticationTag            Blob `json:"authenticationTag"`
	CiphertextMetadata           Blob `json:"ciphertextMetadata,omitempty"`
	CiphertextDataIntegrityValue Blob `json:"ciphertextDataIntegrityValue,omitempty"`
}

// DecryptRequest is the body of POST …/keys/{id}/decrypt.
type DecryptRequest struct {
	RequestMetadata             *RequestMetadata `json:"requestMetadata"`
	Ciphertext                  Blob             `json:"ciphertext"`
	EncryptionAlgorithm         string           `json:"encryptionAlgorithm"`
	InitializationVector        Blob             `json:"initializationVector"`
	AuthenticationTag           Blob             `json:"authenticationTag"`
	AdditionalAuthenticatedData Blob             `json:"additionalAuthenticatedData,omitempty"`
	CiphertextMetadata          Blob             `json:"ciphertextMetadata,omitempty"`
}

// DecryptResponse is the 200 body of Decrypt.
type DecryptResponse struct {
	Plaintext Blob `json:"plaintext"`
}

// ErrorResponse is the body of every error answer.
type ErrorResponse struct {
	ErrorName    string `json:"errorName"`
	ErrorMessage string `json:"errorMessage,omitempty"`
}

// Blob is binary data carried as standard, padded Base64 (RFC 4648 §4). After
// decoding, a nil Blob means the field was absent (or null) and a non-nil empty Blob
// means it was present as "".
type Blob []byte

var errBase64 = errors.New("not standard padded Base64")

// MarshalJSON encodes b as a standard Base64 string.
func (b Blob) MarshalJSON() ([]byte, error) {
	out := make([]byte, 0, base64.StdEncoding.EncodedLen(len(b))+2)
	out = append(out, '"')
	out = base64.StdEncoding.AppendEncode(out, b)
	return append(out, '"'), nil
}

// UnmarshalJSON accepts only a JSON string (or null) holding strict standard Base64:
// padding required, no line breaks, no URL-safe alphabet, no non-zero trailing bits.
func (b *Blob) UnmarshalJSON(data []byte) error {
	if string(data) == "null" {
		return nil
	}
	var s string
	if err := json.Unmarshal(data, &s); err != nil {
		return err
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '+' || c == '/' || c == '=') {
			return errBase64
		}
	}
	out, err := base64.StdEncoding.Strict().DecodeString(s)
	if err != nil {
		return errBase64
	}
	if out == nil {
		out = []byte{}
	}
	*b = out
	return nil
}
