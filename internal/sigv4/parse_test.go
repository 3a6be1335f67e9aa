package sigv4

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

// parseCases are the unit cases of ParseAuthorization; FuzzParseAuthorization
// starts from them.
var parseCases = []struct {
	name    string
	h       string
	want    *Authorization // nil when an error is expected
	wantMsg string         // IncompleteSignatureException message
}{
	{
		name: "kms",
		h:    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/kms/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
		want: &Authorization{
			Algorithm:     Algorithm,
			Credential:    Credential{AccessKeyID: "AKIDEXAMPLE", Date: "20150830", Region: "us-east-1", Service: "kms", Terminator: "aws4_request"},
			SignedHeaders: []string{"content-type", "host", "x-amz-date", "x-amz-target"},
			Signature:     "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
		},
	},
	{
		name: "no spaces after commas, other order",
		h:    "AWS4-HMAC-SHA256 Signature=abc,SignedHeaders=host,Credential=AK/20240101/eu-west-1/kms-xks-proxy/aws4_request",
		want: &Authorization{
			Algorithm:     Algorithm,
			Credential:    Credential{AccessKeyID: "AK", Date: "20240101", Region: "eu-west-1", Service: "kms-xks-proxy", Terminator: "aws4_request"},
			SignedHeaders: []string{"host"},
			Signature:     "abc",
		},
	},
	{
		name: "unknown parameter ignored, trailing comma",
		h:    "AWS4-HMAC-SHA256 Credential=AK/d/r/s/t, Foo=bar, SignedHeaders=host, Signature=00,",
		want: &Authorization{
			Algorithm:     Algorithm,
			Credential:    Credential{AccessKeyID: "AK", Date: "d", Region: "r", Service: "s", Terminator: "t"},
			SignedHeaders: []string{"host"},
			Signature:     "00",
		},
	},
	{
		name: "empty values are present",
		h:    "AWS4-HMAC-SHA256 Credential=AK/d/r/s/t, SignedHeaders=, Signature=",
		want: &Authorization{
			Algorithm:     Algorithm,
			Credential:    Credential{AccessKeyID: "AK", Date: "d", Region: "r", Service: "s", Terminator: "t"},
			SignedHeaders: []string{""},
		},
	},
	{
		name:    "empty header",
		h:       "",
		wantMsg: "Authorization header requires 'Credential' parameter. Authorization header requires 'Signature' parameter. Authorization header requires 'SignedHeaders' parameter. Authorization=",
	},
	{
		name:    "basic auth",
		h:       "Basic dXNlcjpwYXNzd29yZA==",
		wantMsg: "Authorization header requires 'Credential' parameter. Authorization header requires 'Signature' parameter. Authorization header requires 'SignedHeaders' parameter. Authorization=Basic dXNlcjpwYXNzd29yZA==",
	},
	{
		name:    "bearer token",
		h:       "Bearer SomeKey",
		wantMsg: "'SomeKey' not a valid key=value pair (missing equal-sign) in Authorization header: 'Bearer SomeKey'.",
	},
	{
		name:    "space inside credential",
		h:       "AWS4-HMAC-SHA256 Credential= AK/20150830/us-east-1/kms/aws4_request, SignedHeaders=host, Signature=00",
		wantMsg: "'AK/20150830/us-east-1/kms/aws4_request' not a valid key=value pair (missing equal-sign) in Authorization header: 'AWS4-HMAC-SHA256 Credential= AK/20150830/us-east-1/kms/aws4_request, SignedHeaders=host, Signature=00'.",
	},
	{
		name:    "missing signature",
		h:       "AWS4-HMAC-SHA256 Credential=AK/20150830/us-east-1/kms/aws4_request, SignedHeaders=host",
		wantMsg: "Authorization header requires 'Signature' parameter. Authorization=AWS4-HMAC-SHA256 Credential=AK/20150830/us-east-1/kms/aws4_request, SignedHeaders=host",
	},
	{
		name:    "missing credential and signed headers",
		h:       "AWS4-HMAC-SHA256 Signature=00",
		wantMsg: "Authorization header requires 'Credential' parameter. Authorization header requires 'SignedHeaders' parameter. Authorization=AWS4-HMAC-SHA256 Signature=00",
	},
	{
		name:    "unsupported algorithm",
		h:       "AWS4-HMAC-SHA512 Credential=AK/20150830/us-east-1/kms/aws4_request, SignedHeaders=host, Signature=00",
		wantMsg: "Unsupported AWS 'algorithm': 'AWS4-HMAC-SHA512'.",
	},
	{
		name:    "four credential elements",
		h:       "AWS4-HMAC-SHA256 Credential=AK/20150830/us-east-1/aws4_request, SignedHeaders=host, Signature=00",
		wantMsg: "Credential must have exactly 5 slash-delimited elements, e.g. keyid/date/region/service/term, got 'AK/20150830/us-east-1/aws4_request'",
	},
	{
		name:    "six credential elements",
		h:       "AWS4-HMAC-SHA256 Credential=A/K/20150830/us-east-1/kms/aws4_request, SignedHeaders=host, Signature=00",
		wantMsg: "Credential must have exactly 5 slash-delimited elements, e.g. keyid/date/region/service/term, got 'A/K/20150830/us-east-1/kms/aws4_request'",
	},
}

func TestParseAuthorization(t *testing.T) {
	for _, tc := range parseCases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseAuthorization(tc.h)
			if tc.want != nil {
				if err != nil {
					t.Fatalf("err = %v", err)
				}
				if !reflect.DeepEqual(got, tc.want) {
					t.Errorf("got  %+v\nwant %+v", got, tc.want)
				}
				return
			}
			want := &Error{Code: CodeIncompleteSignature, Message: tc.wantMsg}
			if !errors.Is(err, want) {
				t.Errorf("err = %v\nwant  %v", err, want)
			}
		})
	}
}

func TestCredentialScope(t *testing.T) {
	c := Credential{AccessKeyID: "AK", Date: "20150830", Region: "us-east-1", Service: "kms", Terminator: "aws4_request"}
	if got, want := c.Scope(), "20150830/us-east-1/kms/aws4_request"; got != want {
		t.Errorf("Scope() = %q, want %q", got, want)
	}
}

// FuzzParseAuthorization checks that the parser never panics, that every
// failure is an IncompleteSignatureException, and that what it accepts is
// made of the input's own parts.
func FuzzParseAuthorization(f *testing.F) {
	for _, tc := range parseCases {
		f.Add(tc.h)
	}
	f.Fuzz(func(t *testing.T, h string) {
		a, err := ParseAuthorization(h)
		if err != nil {
			if errCode(err) != CodeIncompleteSignature {
				t.Fatalf("err = %v, want an IncompleteSignatureException", err)
			}
			return
		}
		if a.Algorithm != Algorithm || len(a.SignedHeaders) == 0 {
			t.Fatalf("accepted %q as %+v", h, a)
		}
		cred := a.AccessKeyID + "/" + a.Scope()
		if strings.Count(cred, "/") != 4 || !strings.Contains(h, "Credential="+cred) {
			t.Fatalf("credential %q not taken whole from %q", cred, h)
		}
		if !strings.Contains(h, "SignedHeaders="+strings.Join(a.SignedHeaders, ";")) ||
			!strings.Contains(h, "Signature="+a.Signature) {
			t.Fatalf("accepted %q as %+v", h, a)
		}
	})
}
