package kmsapi

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestValidateMessages(t *testing.T) {
	tests := []struct {
		name string
		in   Validator
		want string
	}{
		{"valid", &EncryptRequest{KeyId: String("k"), Plaintext: []byte("x")}, ""},
		{"empty key id", &DescribeKeyRequest{KeyId: String("")},
			"1 validation error detected: Value '' at 'keyId' failed to satisfy constraint: Member must have length greater than or equal to 1"},
		{"missing key id", &DescribeKeyRequest{},
			"1 validation error detected: Value null at 'keyId' failed to satisfy constraint: Member must not be null"},
		{"plaintext too long is not echoed", &EncryptRequest{KeyId: String("k"), Plaintext: make([]byte, 4097)},
			"1 validation error detected: Value at 'plaintext' failed to satisfy constraint: Member must have length less than or equal to 4096"},
		{"enum", &CreateKeyRequest{KeyUsage: String("BOGUS")},
			"1 validation error detected: Value 'BOGUS' at 'keyUsage' failed to satisfy constraint: Member must satisfy enum value set: [" + strings.Join(EnumKeyUsageType, ", ") + "]"},
		{"range", &GenerateRandomRequest{NumberOfBytes: Int32(0)},
			"1 validation error detected: Value '0' at 'numberOfBytes' failed to satisfy constraint: Member must have value greater than or equal to 1"},
		{"pattern", &CreateAliasRequest{AliasName: String("alias/bad name"), TargetKeyId: String("k")},
			"1 validation error detected: Value 'alias/bad name' at 'aliasName' failed to satisfy constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9:/_-]+$"},
		{"two errors", &EncryptRequest{},
			"2 validation errors detected: Value null at 'keyId' failed to satisfy constraint: Member must not be null; Value null at 'plaintext' failed to satisfy constraint: Member must not be null"},
		{"nested list member", &TagResourceRequest{KeyId: String("k"), Tags: []Tag{{TagKey: String("a")}}},
			"1 validation error detected: Value null at 'tags.1.member.tagValue' failed to satisfy constraint: Member must not be null"},
		{"list too long", &EncryptRequest{KeyId: String("k"), Plaintext: []byte("x"), GrantTokens: strings.Split("a,b,c,d,e,f,g,h,i,j,k", ",")},
			"1 validation error detected: Value '[a, b, c, d, e, f, g, h, i, j, k]' at 'grantTokens' failed to satisfy constraint: Member must have length less than or equal to 10"},
		{"unanchored model pattern is a whole match", &CreateCustomKeyStoreRequest{CustomKeyStoreName: String("n"), CloudHsmClusterId: String("xcluster-234567abcdefg")},
			"1 validation error detected: Value 'xcluster-234567abcdefg' at 'cloudHsmClusterId' failed to satisfy constraint: Member must satisfy regular expression pattern: cluster-[2-7a-zA-Z]{11,16}"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Validate(tt.in); got != tt.want {
				t.Fatalf("got  %q\nwant %q", got, tt.want)
			}
		})
	}
}

func TestTimeEncoding(t *testing.T) {
	tests := []struct {
		t    time.Time
		want string
	}{
		{time.Unix(1499288695, 918e6), "1499288695.918"},
		{time.Unix(1499288695, 0), "1499288695"},
		{time.Unix(1499288695, 50e6), "1499288695.05"},
	}
	for _, tt := range tests {
		b, err := json.Marshal(Time{tt.t})
		if err != nil || string(b) != tt.want {
			t.Errorf("Marshal(%v) = %s, %v; want %s", tt.t, b, err, tt.want)
		}
		var back Time
		if err := json.Unmarshal(b, &back); err != nil || back.UnixMilli() != tt.t.UnixMilli() {
			t.Errorf("Unmarshal(%s) = %v, %v", b, back.Time, err)
		}
	}
}

// TestStatusTable checks that every modelled exception maps to a status,
// with the server faults on 5xx and DryRun on 400, as AWS sends it.
func TestStatusTable(t *testing.T) {
	if len(Exceptions) < 40 {
		t.Fatalf("only %d exceptions in the model table", len(Exceptions))
	}
	for name, fault := range Exceptions {
		s := Status(name)
		switch {
		case fault && s < 500, !fault && s != 400:
			t.Errorf("%s (server fault %v): status %d", name, fault, s)
		}
	}
	for _, name := range []string{"MissingAuthenticationTokenException", "ValidationException", "UnrecognizedClientException", "InvalidSignatureException", "IncompleteSignatureException", "UnknownOperationException", "SerializationException", "AccessDeniedException", "DryRunOperationException"} {
		if Status(name) != 400 {
			t.Errorf("%s: %d", name, Status(name))
		}
	}
}

func TestOperationTable(t *testing.T) {
	if len(Operations) != 54 {
		t.Fatalf("model has %d operations, want 54", len(Operations))
	}
	for name, op := range Operations {
		if op.Name != name || op.Input == "" {
			t.Errorf("%s: %+v", name, op)
		}
	}
}

// TestEmptyListsKept checks the encoding rule for members: absent (nil)
// members are left out, but a list that was set stays even when empty, as
// AWS answers "Keys":[] for an account with no keys.
func TestEmptyListsKept(t *testing.T) {
	tests := []struct {
		in   any
		want string
	}{
		{&ListKeysResponse{Keys: []KeyListEntry{}, Truncated: Bool(false)}, `{"Keys":[],"Truncated":false}`},
		{&ListKeysResponse{}, `{}`},
		{&EncryptRequest{EncryptionContext: map[string]string{}}, `{"EncryptionContext":{}}`},
		{&KeyMetadata{KeyId: String("k"), Description: String("")}, `{"KeyId":"k","Description":""}`},
	}
	for _, tt := range tests {
		b, err := json.Marshal(tt.in)
		if err != nil || string(b) != tt.want {
			t.Errorf("Marshal(%T) = %s, %v; want %s", tt.in, b, err, tt.want)
		}
	}
}
