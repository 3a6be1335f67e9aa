package sigv4

import (
	"crypto/sha256"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// XKS test credentials from spec/xks-proxy-api.md.
const (
	xksAKID   = "BETWEEN2TENAND3TENCHARACTERS"
	xksSecret = "PleaseReplaceThisWithSomeSecretOfLength43To64"
)

var xksTime = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// TestSignXKSVector reproduces the XKS health-check signature computed with
// botocore in spec/xks-proxy-api.md, KMS style: only host and x-amz-date
// signed, raw path.
func TestSignXKSVector(t *testing.T) {
	r, body := parseReq(t, readFile(t, "testdata/kmsd/xks-health.req"))
	if got := hashHex(body); string(got[:]) != "eb8474661176cc50dbf85b19fc3faa770b108791b72c832cfa2520360377436c" {
		t.Fatalf("body hash %s: the .req body is not the spec's 107 bytes (%d)", got, len(body))
	}
	(&Signer{RawPath: true, Headers: []string{}}).Sign(r, body, xksAKID, xksSecret, "", "us-east-1", "kms-xks-proxy", xksTime)
	want := "AWS4-HMAC-SHA256 Credential=BETWEEN2TENAND3TENCHARACTERS/20240101/us-east-1/kms-xks-proxy/aws4_request, " +
		"SignedHeaders=host;x-amz-date, Signature=f338fdbb793cd84268a09b94b3add0f7e3a6abaf6ba936bf300a2192f7b447ea"
	if got := r.Header.Get("Authorization"); got != want {
		t.Errorf("Authorization:\n got: %s\nwant: %s", got, want)
	}
	// An XKS proxy's rule accepts what KMS signs; kmsd's own rule wants
	// Content-Type signed too.
	v := &Verifier{Service: "kms-xks-proxy", RawPath: true, Lookup: keyMap{xksAKID: xksSecret}, Now: clock(xksTime), Headers: RequireHostDate}
	if _, err := v.Verify(r, body); err != nil {
		t.Errorf("Verify: %v", err)
	}
	v.Headers = RequireAll
	if _, err := v.Verify(r, body); !errors.Is(err, notSigned("Content-Type")) {
		t.Errorf("Verify with RequireAll: %v", err)
	}
}

// TestSignGolden signs kmsd's own requests and compares the canonical
// request, string to sign and Authorization header with golden files
// (rewritten by -update), then verifies them.
func TestSignGolden(t *testing.T) {
	tests := []struct {
		name            string
		signer          Signer
		akid, secret    string
		region, service string
		now             time.Time
	}{
		{"kms-encrypt", Signer{}, testAKID, testSecret, "us-east-1", "kms", testTime},
		{"xks-health", Signer{RawPath: true}, xksAKID, xksSecret, "us-east-1", "kms-xks-proxy", xksTime},
		{"xks-encrypt-raw-path", Signer{RawPath: true, PayloadHeader: true}, xksAKID, xksSecret, "eu-west-1", "kms-xks-proxy", xksTime},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			base := filepath.Join("testdata", "kmsd", tc.name)
			r, body := parseReq(t, readFile(t, base+".req"))
			tc.signer.Sign(r, body, tc.akid, tc.secret, "", tc.region, tc.service, tc.now)
			authz := r.Header.Get("Authorization")
			a, err := ParseAuthorization(authz)
			if err != nil {
				t.Fatal(err)
			}
			payload := hashHex(body)
			creq := appendCanonicalRequest(nil, r, body, strings.Join(a.SignedHeaders, ";"), tc.signer.RawPath, false, payload[:])
			h := sha256.Sum256(creq)
			sts := appendStringToSign(nil, r.Header.Get("X-Amz-Date"), a.Scope(), h[:])
			golden(t, base+".creq", creq)
			golden(t, base+".sts", sts)
			golden(t, base+".authz", []byte(authz))

			v := &Verifier{Service: tc.service, RawPath: tc.signer.RawPath, Lookup: keyMap{tc.akid: tc.secret}, Now: clock(tc.now)}
			if _, err := v.Verify(r, body); err != nil {
				t.Errorf("Verify: %v", err)
			}
		})
	}
}

// TestPathModes checks that Sign and Verify agree in both canonical-URI
// modes, and that the modes differ where they should: the AWS rule
// normalises dot segments and encodes escapes again, the XKS rule takes the
// path as received.
func TestPathModes(t *testing.T) {
	tests := []struct {
		path      string
		canonical string // AWS rule
		same      bool   // the raw path is also the AWS-rule URI
	}{
		{"/", "/", true},
		{"/kms/xks/v1/keys/key-1_a.b~/encrypt", "/kms/xks/v1/keys/key-1_a.b~/encrypt", true},
		{"/kms/xks/v1/keys/../metadata", "/kms/xks/v1/metadata", false},
		{"/kms/xks/v1/keys/./k/encrypt", "/kms/xks/v1/keys/k/encrypt", false},
		{"/a%2Fb/c", "/a%252Fb/c", false},
		{"/a%20b", "/a%2520b", false},
		{"/a/b/", "/a/b/", true},
		{"/a/b/..", "/a/", false},
		{"//a//b", "/a/b", false},
	}
	for _, tc := range tests {
		t.Run(tc.path, func(t *testing.T) {
			if got := string(appendURI(nil, tc.path, false)); got != tc.canonical {
				t.Errorf("AWS rule: %q, want %q", got, tc.canonical)
			}
			if got := string(appendURI(nil, tc.path, true)); got != tc.path {
				t.Errorf("raw rule: %q, want %q", got, tc.path)
			}
			for _, signRaw := range []bool{false, true} {
				for _, verifyRaw := range []bool{false, true} {
					body := []byte(`{}`)
					r := httptest.NewRequest(http.MethodPost, tc.path, nil)
					r.Host = "xks.example.com"
					(&Signer{RawPath: signRaw}).Sign(r, body, xksAKID, xksSecret, "", "us-east-1", "kms-xks-proxy", xksTime)
					v := &Verifier{Service: "kms-xks-proxy", RawPath: verifyRaw, Lookup: keyMap{xksAKID: xksSecret}, Now: clock(xksTime)}
					_, err := v.Verify(r, body)
					if ok := signRaw == verifyRaw || tc.same; ok != (err == nil) {
						t.Errorf("signed raw=%v, verified raw=%v: err = %v", signRaw, verifyRaw, err)
					}
				}
			}
		})
	}
}

func TestCanonicalQuery(t *testing.T) {
	tests := []struct{ name, q, presigned, want string }{
		{name: "empty"},
		{name: "sorted by name then value", q: "b=2&a=2&a=1", want: "a=1&a=2&b=2"},
		{name: "encoded then sorted", q: "k=a%2Fb&k=a-b", want: "k=a%2Fb&k=a-b"},
		{name: "space and plus", q: "a=b+c&d=e%20f&g=%2B", want: "a=b%20c&d=e%20f&g=%2B"},
		{name: "reserved characters encoded", q: "a=!*'();:@$,/?[]", want: "a=%21%2A%27%28%29%3B%3A%40%24%2C%2F%3F%5B%5D"},
		{name: "lowercase escapes uppercased", q: "a=%c3%a9", want: "a=%C3%A9"},
		{name: "name without value", q: "flag&a=1", want: "a=1&flag="},
		{name: "empty pairs skipped", q: "&a=1&&", want: "a=1"},
		{name: "malformed escape kept literally", q: "a=%zz&b=%4", want: "a=%25zz&b=%254"},
		{name: "semicolon is data", q: "a=1;b=2", want: "a=1%3Bb%3D2"},
		{name: "presigned drops signature", q: "X-Amz-Signature=abc&X-Amz-Date=1", presigned: "yes", want: "X-Amz-Date=1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := string(appendQuery(nil, tc.q, tc.presigned != "")); got != tc.want {
				t.Errorf("appendQuery(%q) = %q, want %q", tc.q, got, tc.want)
			}
		})
	}
}

func TestCanonicalHeaders(t *testing.T) {
	r := httptest.NewRequest(http.MethodPost, "/", nil)
	r.Host = " Example.com:8443 "
	r.ContentLength = 13
	r.TransferEncoding = []string{"chunked"}
	r.Header["My-Header"] = []string{"  a   b  ", "c\td"}
	r.Header["x-lower"] = []string{"set directly"} // not canonicalised
	r.Header["X-Empty"] = []string{""}
	long := "x-" + strings.Repeat("long-", 20) + "name"
	r.Header.Set(long, "long")
	got := string(appendHeaders(nil, r, nil, "content-length;host;my-header;transfer-encoding;x-absent;x-empty;x-lower;"+long))
	want := "content-length:13\nhost:Example.com:8443\nmy-header:a b,c\td\ntransfer-encoding:chunked\nx-absent:\nx-empty:\nx-lower:set directly\n" + long + ":long\n"
	if got != want {
		t.Errorf("got  %q\nwant %q", got, want)
	}
}
