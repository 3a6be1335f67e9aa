package server

import (
	"errors"
	"sort"
	"testing"

	"github.com/kmsd/kmsd/internal/awsjson"
	"github.com/kmsd/kmsd/internal/kmsapi"
)

// decodeCases are request bodies for the decoder, with the exception each
// should give ("" for a valid input). They seed FuzzDecodeRequest.
var decodeCases = []struct {
	name, op, body, want string
}{
	{"valid encrypt", "Encrypt", `{"KeyId":"alias/a","Plaintext":"aGVsbG8="}`, ""},
	{"empty body is {}", "ListKeys", ``, ""},
	{"unknown members ignored", "ListKeys", `{"Limit":5,"Bogus":{"x":[1,2]}}`, ""},
	{"not an object", "ListKeys", `[1]`, "SerializationException"},
	{"malformed json", "ListKeys", `{"Limit":`, "SerializationException"},
	{"wrong member type", "ListKeys", `{"Limit":"five"}`, "SerializationException"},
	{"bad base64", "Encrypt", `{"KeyId":"k","Plaintext":"!!!"}`, "SerializationException"},
	{"missing required", "Encrypt", `{"KeyId":"k"}`, "ValidationException"},
	{"bad enum", "CreateKey", `{"KeySpec":"NOPE"}`, "ValidationException"},
	{"range", "GenerateRandom", `{"NumberOfBytes":2000}`, "ValidationException"},
	{"fraction for integer", "GenerateRandom", `{"NumberOfBytes":1.5}`, "SerializationException"},
	{"null member", "Encrypt", `{"KeyId":null,"Plaintext":"aA=="}`, "ValidationException"},
	{"invalid UTF-8 in a string", "CreateKey", "{\"Description\":\"a\xffb\"}", "SerializationException"},
	{"invalid UTF-8 outside strings", "ListKeys", "{\"Limit\":5}\xff", "SerializationException"},
	{"lone high surrogate", "CreateKey", `{"Description":"\ud800"}`, "SerializationException"},
	{"lone low surrogate", "TagResource", `{"KeyId":"k","Tags":[{"TagKey":"\udc00","TagValue":"v"}]}`, "SerializationException"},
	{"surrogate pair", "CreateKey", `{"Description":"\ud83d\ude00"}`, ""},

	// The asymmetric, HMAC and key agreement operations.
	{"valid sign", "Sign", `{"KeyId":"k","Message":"aGVsbG8=","SigningAlgorithm":"ECDSA_SHA_256"}`, ""},
	{"sign digest", "Sign", `{"KeyId":"k","Message":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","MessageType":"DIGEST","SigningAlgorithm":"RSASSA_PSS_SHA_256"}`, ""},
	{"sign without algorithm", "Sign", `{"KeyId":"k","Message":"aGVsbG8="}`, "ValidationException"},
	{"sign bad message type", "Sign", `{"KeyId":"k","Message":"aGVsbG8=","MessageType":"HASH","SigningAlgorithm":"ECDSA_SHA_256"}`, "ValidationException"},
	{"sign empty message", "Sign", `{"KeyId":"k","Message":"","SigningAlgorithm":"ECDSA_SHA_256"}`, "ValidationException"},
	{"valid verify", "Verify", `{"KeyId":"k","Message":"aGVsbG8=","Signature":"MEUCIQ==","SigningAlgorithm":"ECDSA_SHA_256"}`, ""},
	{"verify without signature", "Verify", `{"KeyId":"k","Message":"aGVsbG8=","SigningAlgorithm":"ECDSA_SHA_256"}`, "ValidationException"},
	{"valid get public key", "GetPublicKey", `{"KeyId":"k"}`, ""},
	{"valid generate mac", "GenerateMac", `{"KeyId":"k","Message":"aGVsbG8=","MacAlgorithm":"HMAC_SHA_256"}`, ""},
	{"generate mac bad algorithm", "GenerateMac", `{"KeyId":"k","Message":"aGVsbG8=","MacAlgorithm":"HMAC_MD5"}`, "ValidationException"},
	{"valid verify mac", "VerifyMac", `{"KeyId":"k","Message":"aGVsbG8=","MacAlgorithm":"HMAC_SHA_256","Mac":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}`, ""},
	{"verify mac without mac", "VerifyMac", `{"KeyId":"k","Message":"aGVsbG8=","MacAlgorithm":"HMAC_SHA_256"}`, "ValidationException"},
	{"valid derive shared secret", "DeriveSharedSecret", `{"KeyId":"k","KeyAgreementAlgorithm":"ECDH","PublicKey":"MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEFI7EqMoSlQF6+S+qVO6Fhp6PfXIK7VSbmh1/eDUoBuClctlLo2Rl2qHmmv77Q2Vm3LQNh/q7UyfhbPcxWNL06g=="}`, ""},
	{"derive shared secret P-384 peer", "DeriveSharedSecret", `{"KeyId":"k","KeyAgreementAlgorithm":"ECDH","PublicKey":"MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAE4voiEvMvpC/g1dLvK1L6ONDM9MGcvKxa5VNFZNC0rs/9yE2pJGlW98eAwGMpQ+Kl3nkVkqnhz0giUdNoRfXxaIT91NQn+wiEhUT/tliyrrE5uFMX38cwHyHnavA20GTs"}`, ""},
	{"derive shared secret bad algorithm", "DeriveSharedSecret", `{"KeyId":"k","KeyAgreementAlgorithm":"DH","PublicKey":"AAAA"}`, "ValidationException"},
	{"valid generate data key pair", "GenerateDataKeyPair", `{"KeyId":"k","KeyPairSpec":"ECC_NIST_P256","EncryptionContext":{"a":"b"}}`, ""},
	{"generate data key pair rsa", "GenerateDataKeyPair", `{"KeyId":"k","KeyPairSpec":"RSA_2048"}`, ""},
	{"generate data key pair bad spec", "GenerateDataKeyPair", `{"KeyId":"k","KeyPairSpec":"RSA_1024"}`, "ValidationException"},
	{"valid generate data key pair without plaintext", "GenerateDataKeyPairWithoutPlaintext", `{"KeyId":"k","KeyPairSpec":"ECC_NIST_EDWARDS25519","DryRun":false}`, ""},
	{"generate data key pair without plaintext no spec", "GenerateDataKeyPairWithoutPlaintext", `{"KeyId":"k"}`, "ValidationException"},

	// Multi-Region keys.
	{"valid replicate key", "ReplicateKey", `{"KeyId":"mrk-1234abcd12ab34cd56ef1234567890ab","ReplicaRegion":"eu-west-1","Tags":[{"TagKey":"a","TagValue":"b"}]}`, ""},
	{"replicate key bad region", "ReplicateKey", `{"KeyId":"mrk-1234abcd12ab34cd56ef1234567890ab","ReplicaRegion":"EU_WEST_1"}`, "ValidationException"},
	{"replicate key without region", "ReplicateKey", `{"KeyId":"mrk-1234abcd12ab34cd56ef1234567890ab"}`, "ValidationException"},
	{"valid update primary region", "UpdatePrimaryRegion", `{"KeyId":"mrk-1234abcd12ab34cd56ef1234567890ab","PrimaryRegion":"ap-southeast-2"}`, ""},
	{"update primary region bad region", "UpdatePrimaryRegion", `{"KeyId":"k","PrimaryRegion":"x"}`, "ValidationException"},
}

func code(err error) string {
	if err == nil {
		return ""
	}
	var we *awsjson.Error
	if errors.As(err, &we) {
		return we.Code
	}
	var ke *kmsapi.Exception
	if errors.As(err, &ke) {
		return ke.Name
	}
	return "?"
}

func TestDecode(t *testing.T) {
	for _, tt := range decodeCases {
		t.Run(tt.name, func(t *testing.T) {
			_, err := handlers[tt.op].decode([]byte(tt.body))
			if got := code(err); got != tt.want {
				t.Fatalf("decode(%s) = %q (%v), want %q", tt.body, got, err, tt.want)
			}
		})
	}
}

// TestEveryOperationRouted checks that every operation of the model has a
// handler (none is left to the UnsupportedOperationException fallback),
// and that no handler names an operation outside the model.
func TestEveryOperationRouted(t *testing.T) {
	for name := range handlers {
		if kmsapi.Operations[name] == nil {
			t.Errorf("handler for %s, which is not in the model", name)
		}
	}
	u := unsupported()
	sort.Strings(u)
	if len(u)+len(handlers) != len(kmsapi.Operations) {
		t.Fatalf("%d handled + %d unsupported != %d", len(handlers), len(u), len(kmsapi.Operations))
	}
	if len(u) > 0 {
		t.Errorf("operations of the model without a handler: %v", u)
	}
}

func FuzzDecodeRequest(f *testing.F) {
	var ops []string
	for name := range handlers {
		ops = append(ops, name)
	}
	sort.Strings(ops)
	for _, c := range decodeCases {
		for i, name := range ops {
			if name == c.op {
				f.Add(uint8(i), []byte(c.body))
			}
		}
	}
	f.Fuzz(func(t *testing.T, op uint8, body []byte) {
		name := ops[int(op)%len(ops)]
		in, err := handlers[name].decode(body)
		if err == nil && in == nil {
			t.Fatal("no input and no error")
		}
		if err != nil && code(err) == "?" {
			t.Fatalf("untyped error %v", err)
		}
	})
}
