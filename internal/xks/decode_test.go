package xks

import (
	"errors"
	"strings"
	"testing"
)

const md = `"requestMetadata":{"awsPrincipalArn":"arn:aws:iam::123456789012:user/Alice","kmsKeyArn":"arn:aws:kms:us-east-1:123456789012:key/k","kmsOperation":"Encrypt","kmsRequestId":"r-1","futureField":{"x":1}}`

// decodeCases are shared with the fuzz targets as seeds.
var decodeCases = []struct {
	name, api, body, wantErr string
}{
	{"health ok", "health", `{"requestMetadata":{"kmsRequestId":"r","kmsOperation":"KmsHealthCheck"}}`, ""},
	{"health unknown op ok", "health", `{"requestMetadata":{"kmsRequestId":"r","kmsOperation":"SomethingNew"},"extra":true}`, ""},
	{"health empty", "health", `{}`, ValidationException},
	{"health missing op", "health", `{"requestMetadata":{"kmsRequestId":"r"}}`, ValidationException},
	{"health not json", "health", `hello`, ValidationException},
	{"health array", "health", `[]`, ValidationException},
	{"health trailing", "health", `{"requestMetadata":{"kmsRequestId":"r","kmsOperation":"x"}} x`, ValidationException},
	{"metadata ok", "metadata", `{` + md + `}`, ""},
	{"metadata no principal", "metadata", `{"requestMetadata":{"kmsRequestId":"r","kmsOperation":"CreateKey"}}`, ValidationException},
	{"encrypt ok", "encrypt", `{` + md + `,"plaintext":"SGVsbG8=","encryptionAlgorithm":"AES_GCM","additionalAuthenticatedData":"YWFk","ciphertextDataIntegrityValueAlgorithm":"SHA_256"}`, ""},
	{"encrypt no key arn", "encrypt", `{"requestMetadata":{"awsPrincipalArn":"p","kmsOperation":"Encrypt","kmsRequestId":"r"},"plaintext":"SGVsbG8=","encryptionAlgorithm":"AES_GCM"}`, ValidationException},
	{"encrypt missing plaintext", "encrypt", `{` + md + `,"encryptionAlgorithm":"AES_GCM"}`, ValidationException},
	{"encrypt null plaintext", "encrypt", `{` + md + `,"plaintext":null,"encryptionAlgorithm":"AES_GCM"}`, ValidationException},
	{"encrypt empty plaintext", "encrypt", `{` + md + `,"plaintext":"","encryptionAlgorithm":"AES_GCM"}`, ValidationException},
	{"encrypt bad base64", "encrypt", `{` + md + `,"plaintext":"SGVsbG8","encryptionAlgorithm":"AES_GCM"}`, ValidationException},
	{"encrypt wrong type", "encrypt", `{` + md + `,"plaintext":5,"encryptionAlgorithm":"AES_GCM"}`, ValidationException},
	{"encrypt bad algorithm", "encrypt", `{` + md + `,"plaintext":"SGVsbG8=","encryptionAlgorithm":"AES_CBC"}`, ValidationException},
	{"encrypt no algorithm", "encrypt", `{` + md + `,"plaintext":"SGVsbG8="}`, ValidationException},
	{"encrypt bad cdiv alg", "encrypt", `{` + md + `,"plaintext":"SGVsbG8=","encryptionAlgorithm":"AES_GCM","ciphertextDataIntegrityValueAlgorithm":"MD5"}`, ValidationException},
	{"encrypt too big", "encrypt", `{` + md + `,"plaintext":"` + strings.Repeat("AAAA", 3000) + `","encryptionAlgorithm":"AES_GCM"}`, UnsupportedOperationException},
	{"encrypt aad too big", "encrypt", `{` + md + `,"plaintext":"AAAA","additionalAuthenticatedData":"` + strings.Repeat("AAAA", 6000) + `","encryptionAlgorithm":"AES_GCM"}`, UnsupportedOperationException},
	{"decrypt ok", "decrypt", `{` + md + `,"ciphertext":"SGVsbG8=","encryptionAlgorithm":"AES_GCM","initializationVector":"AAECAwQFBgcICQoL","authenticationTag":"AAAAAAAAAAAAAAAAAAAAAA==","ciphertextMetadata":"a2V5X3ZlcnNpb249MQ=="}`, ""},
	{"decrypt 16 byte iv", "decrypt", `{` + md + `,"ciphertext":"SGVsbG8=","encryptionAlgorithm":"AES_GCM","initializationVector":"AAAAAAAAAAAAAAAAAAAAAA==","authenticationTag":"AAAAAAAAAAAAAAAAAAAAAA=="}`, ""},
	{"decrypt no iv", "decrypt", `{` + md + `,"ciphertext":"SGVsbG8=","encryptionAlgorithm":"AES_GCM","authenticationTag":"AAAAAAAAAAAAAAAAAAAAAA=="}`, ValidationException},
	{"decrypt no tag", "decrypt", `{` + md + `,"ciphertext":"SGVsbG8=","encryptionAlgorithm":"AES_GCM","initializationVector":"AAECAwQFBgcICQoL"}`, ValidationException},
	{"decrypt short iv", "decrypt", `{` + md + `,"ciphertext":"SGVsbG8=","encryptionAlgorithm":"AES_GCM","initializationVector":"AAECAwQF","authenticationTag":"AAAAAAAAAAAAAAAAAAAAAA=="}`, InvalidCiphertextException},
	{"decrypt short tag", "decrypt", `{` + md + `,"ciphertext":"SGVsbG8=","encryptionAlgorithm":"AES_GCM","initializationVector":"AAECAwQFBgcICQoL","authenticationTag":"AAAA"}`, InvalidCiphertextException},
	{"decrypt long metadata", "decrypt", `{` + md + `,"ciphertext":"SGVsbG8=","encryptionAlgorithm":"AES_GCM","initializationVector":"AAECAwQFBgcICQoL","authenticationTag":"AAAAAAAAAAAAAAAAAAAAAA==","ciphertextMetadata":"` + strings.Repeat("AAAA", 7) + `"}`, ValidationException},
}

func parse(api string, body []byte) error {
	var err error
	switch api {
	case "health":
		_, err = ParseHealthRequest(body)
	case "metadata":
		_, err = ParseMetadataRequest(body)
	case "encrypt":
		_, err = ParseEncryptRequest(body, DefaultLimits())
	case "decrypt":
		_, err = ParseDecryptRequest(body, DefaultLimits())
	}
	return err
}

func TestParse(t *testing.T) {
	for _, tc := range decodeCases {
		t.Run(tc.name, func(t *testing.T) {
			err := parse(tc.api, []byte(tc.body))
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			var xe *Error
			if !errors.As(err, &xe) || xe.Name != tc.wantErr {
				t.Fatalf("err = %v, want %s", err, tc.wantErr)
			}
		})
	}
}

func TestLimits(t *testing.T) {
	if err := DefaultLimits().Validate(); err != nil {
		t.Fatal(err)
	}
	if err := (Limits{MaxPlaintext: 100, MaxAAD: 9000}).Validate(); err == nil {
		t.Fatal("small limit accepted")
	}
	if DefaultLimits().MaxBody() < 8192*4/3+16384*4/3 {
		t.Fatal("MaxBody too small")
	}
}

func TestValidNames(t *testing.T) {
	for id, ok := range map[string]bool{"foo": true, "a.b-c_D9": true, "": false, "a/b": false, strings.Repeat("a", 129): false, "é": false} {
		if ValidKeyID(id) != ok {
			t.Errorf("ValidKeyID(%q) = %v", id, !ok)
		}
	}
	for p, ok := range map[string]bool{"": true, "/a": true, "/example/uri/path/prefix": true, "a": false, "/a/": false, "/a b": false, "/" + strings.Repeat("a", 120): false} {
		if ValidPrefix(p) != ok {
			t.Errorf("ValidPrefix(%q) = %v", p, !ok)
		}
	}
}
