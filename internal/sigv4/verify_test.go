package sigv4

import (
	"bytes"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
)

// encryptBody is a typical KMS request body (about 200 bytes).
const encryptBody = `{"KeyId":"arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab","Plaintext":"SGVsbG8sIFdvcmxkIQ==","EncryptionContext":{"Department":"10-Accounting","Purpose":"Test"}}`

// newKMSRequest returns an unsigned Encrypt request as a net/http server
// hands it to its handler.
func newKMSRequest(body []byte) *http.Request {
	r := httptest.NewRequest(http.MethodPost, "/", bytes.NewReader(body))
	r.Host = "kms.us-east-1.amazonaws.com"
	r.Header.Set("Content-Type", "application/x-amz-json-1.1")
	r.Header.Set("X-Amz-Target", "TrentService.Encrypt")
	return r
}

// editAuthz returns a tamper function that rewrites the Authorization header.
func editAuthz(f func(string) string) func(*http.Request, []byte) []byte {
	return func(r *http.Request, body []byte) []byte {
		r.Header["Authorization"] = []string{f(r.Header.Get("Authorization"))}
		return body
	}
}

func replaceAuthz(old, new string) func(*http.Request, []byte) []byte {
	return editAuthz(func(h string) string { return strings.Replace(h, old, new, 1) })
}

func setHeader(k, v string) func(*http.Request, []byte) []byte {
	return func(r *http.Request, body []byte) []byte {
		if v == "" {
			r.Header.Del(k)
		} else {
			r.Header.Set(k, v)
		}
		return body
	}
}

type verifyCase struct {
	name string
	// The client's side: headers set before signing, the signer and what
	// it signs with (zero values: testAKID, testSecret, no token,
	// us-east-1, kms, testTime).
	prepare                              func(*http.Request)
	signer                               Signer
	akid, secret, token, region, service string
	// tamper changes the signed request (and may return another body).
	tamper   func(*http.Request, []byte) []byte
	verifier func(*Verifier) // changes the server's Verifier
	wantCode string          // "" for success
	wantMsg  string          // checked when set; every message also goes to testdata/errors.golden
}

// Signers that leave headers of newKMSRequest unsigned.
var (
	hostDate   = Signer{Headers: []string{}}                               // host;x-amz-date, as AWS KMS signs for XKS
	kmsHeaders = Signer{Headers: []string{"content-type", "x-amz-target"}} // no token
)

func requireHostDate(v *Verifier) { v.Headers = RequireHostDate }

// jsonProtocol is kmsd's KMS verifier: the JSON protocol's own
// Content-Type may be unsigned, as the AWS SDK for JavaScript v2 sends it.
func jsonProtocol(v *Verifier) { v.ProtocolContentType = "application/x-amz-json-1.1" }

// manyAmzHeaders adds ten X-Amz-* headers, which Sign signs.
func manyAmzHeaders(r *http.Request) {
	for c := 'a'; c < 'k'; c++ {
		r.Header.Set("X-Amz-Meta-"+string(c), "v")
	}
}

func hashString(s string) string { h := hashHex([]byte(s)); return string(h[:]) }

const msgHeaderRequires = "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header. "

var verifyCases = []verifyCase{
	{name: "valid"},
	{name: "valid with session token", token: "FwoGZXIvYXdzEXAMPLETOKEN"},
	{name: "valid with payload header", signer: Signer{PayloadHeader: true}},
	{name: "valid with content-length signed", signer: Signer{Headers: []string{"content-length", "content-type", "x-amz-target"}}},
	{name: "valid with session token unsigned", token: "FwoGZXIvYXdzEXAMPLETOKEN", signer: kmsHeaders},
	{name: "valid with payload header unsigned", tamper: setHeader("X-Amz-Content-Sha256", hashString(encryptBody))},
	{name: "valid with x-amz-target in upper case", signer: Signer{Headers: []string{"Content-Type", "X-Amz-Target"}}},
	{name: "host-date rule: valid with only host and date signed", signer: hostDate, verifier: requireHostDate},
	{name: "host-date rule: content-type need not be signed", signer: hostDate, tamper: setHeader("Content-Type", "application/json"), verifier: requireHostDate},
	{name: "protocol content-type unsigned", signer: Signer{Headers: []string{"x-amz-target"}}, verifier: jsonProtocol},
	{name: "protocol content-type unsigned, with charset", signer: Signer{Headers: []string{"x-amz-target"}},
		tamper: setHeader("Content-Type", "Application/X-Amz-Json-1.1; charset=utf-8"), verifier: jsonProtocol},
	{name: "unsigned header added", tamper: setHeader("User-Agent", "aws-cli/2.15.0")},
	{name: "clock 5 min ahead of request", verifier: func(v *Verifier) { v.Now = clock(testTime.Add(5 * time.Minute)) }},
	{name: "clock 5 min behind request", verifier: func(v *Verifier) { v.Now = clock(testTime.Add(-5 * time.Minute)) }},
	{name: "larger MaxSkew", verifier: func(v *Verifier) { v.Now = clock(testTime.Add(6 * time.Minute)); v.MaxSkew = 10 * time.Minute }},
	{name: "emulator mode accepts any key", akid: "ANYKEY", secret: "anything", verifier: func(v *Verifier) { v.Lookup = nil }},

	{
		name:     "no authentication",
		tamper:   setHeader("Authorization", ""),
		wantCode: CodeMissingAuthenticationToken,
		wantMsg:  "Missing Authentication Token",
	},
	{
		name: "body changed",
		tamper: func(r *http.Request, body []byte) []byte {
			return bytes.Replace(body, []byte("Test"), []byte("Prod"), 1)
		},
		wantCode: CodeInvalidSignature,
		wantMsg:  msgMismatch,
	},
	{name: "signed header changed", tamper: setHeader("X-Amz-Target", "TrentService.Decrypt"), wantCode: CodeInvalidSignature, wantMsg: msgMismatch},
	{name: "signed header removed", tamper: setHeader("Content-Type", ""), wantCode: CodeInvalidSignature, wantMsg: msgMismatch},
	{
		name:     "host changed",
		tamper:   func(r *http.Request, b []byte) []byte { r.Host = "kms.eu-west-1.amazonaws.com"; return b },
		wantCode: CodeInvalidSignature,
	},
	{
		name:     "method changed",
		tamper:   func(r *http.Request, b []byte) []byte { r.Method = http.MethodPut; return b },
		wantCode: CodeInvalidSignature,
	},
	{
		name:     "query added",
		tamper:   func(r *http.Request, b []byte) []byte { r.URL.RawQuery = "a=b"; return b },
		wantCode: CodeInvalidSignature,
	},
	{name: "wrong secret", secret: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEZ", wantCode: CodeInvalidSignature, wantMsg: msgMismatch},
	{
		name:     "unknown access key",
		akid:     "AKIDUNKNOWN",
		wantCode: CodeUnrecognizedClient,
		wantMsg:  "The security token included in the request is invalid.",
	},
	{
		name:     "request 6 min old",
		verifier: func(v *Verifier) { v.Now = clock(testTime.Add(6 * time.Minute)) },
		wantCode: CodeInvalidSignature,
		wantMsg:  "Signature expired: 20150830T123600Z is now earlier than 20150830T123700Z (20150830T124200Z - 5 min.)",
	},
	{
		name:     "request 6 min in the future",
		verifier: func(v *Verifier) { v.Now = clock(testTime.Add(-6 * time.Minute)) },
		wantCode: CodeInvalidSignature,
		wantMsg:  "Signature not yet current: 20150830T123600Z is still later than 20150830T123500Z (20150830T123000Z + 5 min.)",
	},
	{
		name:     "emulator mode checks skew",
		akid:     "ANYKEY",
		verifier: func(v *Verifier) { v.Lookup = nil; v.Now = clock(testTime.Add(time.Hour)) },
		wantCode: CodeInvalidSignature,
	},
	{
		name:     "scope service mismatch",
		service:  "s3",
		wantCode: CodeInvalidSignature,
		wantMsg:  "Credential should be scoped to correct service: 'kms'. ",
	},
	{
		name:     "emulator mode checks service",
		service:  "s3",
		verifier: func(v *Verifier) { v.Lookup = nil },
		wantCode: CodeInvalidSignature,
		wantMsg:  "Credential should be scoped to correct service: 'kms'. ",
	},
	{
		name:     "scope date mismatch",
		tamper:   replaceAuthz("/20150830/", "/20150831/"),
		wantCode: CodeInvalidSignature,
		wantMsg:  "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '20150831' != '20150830', from '20150830T123600Z'.",
	},
	{
		name:     "scope invalid region",
		region:   "us_east_1",
		wantCode: CodeInvalidSignature,
		wantMsg:  "Credential should be scoped to a valid region, not 'us_east_1'. ",
	},
	{
		name:     "scope bad terminator",
		tamper:   replaceAuthz("/aws4_request", "/aws4_reqest"),
		wantCode: CodeIncompleteSignature,
		wantMsg:  "Credential should be scoped with a valid terminator: 'aws4_request', not 'aws4_reqest'. ",
	},
	{
		name:     "credential with four elements",
		tamper:   replaceAuthz("/us-east-1", ""),
		wantCode: CodeIncompleteSignature,
		wantMsg:  "Credential must have exactly 5 slash-delimited elements, e.g. keyid/date/region/service/term, got 'AKIDEXAMPLE/20150830/kms/aws4_request'",
	},
	{
		name:     "missing X-Amz-Date",
		tamper:   setHeader("X-Amz-Date", ""),
		wantCode: CodeIncompleteSignature,
	},
	{
		name:     "malformed X-Amz-Date",
		tamper:   setHeader("X-Amz-Date", "2015-08-30T12:36:00Z"),
		wantCode: CodeIncompleteSignature,
		wantMsg:  "Date must be in ISO-8601 'basic format'. Got '2015-08-30T12:36:00Z'. See http://en.wikipedia.org/wiki/ISO_8601",
	},
	{
		name:     "impossible X-Amz-Date",
		tamper:   setHeader("X-Amz-Date", "20150230T123600Z"),
		wantCode: CodeIncompleteSignature,
	},
	{
		name:     "host not signed",
		tamper:   replaceAuthz("host;", ""),
		wantCode: CodeIncompleteSignature,
		wantMsg:  "'Host' must be a 'SignedHeader' in the AWS Authorization.",
	},
	{
		name:     "x-amz-target not signed",
		signer:   Signer{Headers: []string{"content-type"}},
		wantCode: CodeInvalidSignature,
		wantMsg:  "'X-Amz-Target' must be a 'SignedHeader' in the AWS Authorization.",
	},
	{
		name:     "content-type not signed",
		signer:   Signer{Headers: []string{"x-amz-target"}},
		wantCode: CodeInvalidSignature,
		wantMsg:  "'Content-Type' must be a 'SignedHeader' in the AWS Authorization.",
	},
	{
		// Only the protocol's own Content-Type may be unsigned: another
		// one could switch the request to another protocol.
		name:     "other content-type unsigned",
		signer:   Signer{Headers: []string{"x-amz-target"}},
		tamper:   setHeader("Content-Type", "application/x-www-form-urlencoded"),
		verifier: jsonProtocol,
		wantCode: CodeInvalidSignature,
		wantMsg:  "'Content-Type' must be a 'SignedHeader' in the AWS Authorization.",
	},
	{
		name:     "only host and date signed, protocol content-type",
		signer:   hostDate,
		verifier: jsonProtocol,
		wantCode: CodeInvalidSignature,
		wantMsg:  "'X-Amz-Target' must be a 'SignedHeader' in the AWS Authorization.",
	},
	{
		// Of several unsigned headers the first in sorted order is named.
		name:     "only host and date signed",
		signer:   hostDate,
		wantCode: CodeInvalidSignature,
		wantMsg:  "'Content-Type' must be a 'SignedHeader' in the AWS Authorization.",
	},
	{
		// The repro: a captured Encrypt signed with host;x-amz-date
		// replayed as another operation within the clock skew.
		name:     "replayed as another operation",
		signer:   Signer{Headers: []string{"content-type"}},
		tamper:   setHeader("X-Amz-Target", "TrentService.ScheduleKeyDeletion"),
		wantCode: CodeInvalidSignature,
		wantMsg:  "'X-Amz-Target' must be a 'SignedHeader' in the AWS Authorization.",
	},
	{
		name:     "x-amz-date not signed",
		tamper:   replaceAuthz(";x-amz-date", ""),
		wantCode: CodeInvalidSignature,
		wantMsg:  "'X-Amz-Date' must be a 'SignedHeader' in the AWS Authorization.",
	},
	{
		name:     "host-date rule: x-amz-date not signed",
		signer:   hostDate,
		tamper:   replaceAuthz(";x-amz-date", ""),
		verifier: requireHostDate,
		wantCode: CodeInvalidSignature,
		wantMsg:  "'X-Amz-Date' must be a 'SignedHeader' in the AWS Authorization.",
	},
	{
		name: "date header not signed",
		tamper: func(r *http.Request, b []byte) []byte {
			r.Header.Del("X-Amz-Date")
			r.Header.Set("Date", testTime.Format(http.TimeFormat))
			return b
		},
		wantCode: CodeInvalidSignature,
		wantMsg:  "'Date' must be a 'SignedHeader' in the AWS Authorization.",
	},
	{
		name:     "x-amz header added after signing",
		tamper:   setHeader("X-Amz-Foo", "bar"),
		wantCode: CodeInvalidSignature,
		wantMsg:  "'X-Amz-Foo' must be a 'SignedHeader' in the AWS Authorization.",
	},
	{
		name:     "x-amz header added in lower case",
		tamper:   func(r *http.Request, b []byte) []byte { r.Header["x-amz-foo"] = []string{"bar"}; return b },
		wantCode: CodeInvalidSignature,
		wantMsg:  "'X-Amz-Foo' must be a 'SignedHeader' in the AWS Authorization.",
	},
	{
		name:     "x-amz header with empty value added",
		tamper:   func(r *http.Request, b []byte) []byte { r.Header["X-Amz-Foo"] = []string{""}; return b },
		wantCode: CodeInvalidSignature,
		wantMsg:  "'X-Amz-Foo' must be a 'SignedHeader' in the AWS Authorization.",
	},
	{name: "valid with many x-amz headers signed", prepare: manyAmzHeaders},
	{
		// More required headers than the fast path collects.
		name:     "many x-amz headers, one added after signing",
		prepare:  manyAmzHeaders,
		tamper:   setHeader("X-Amz-Added", "1"),
		wantCode: CodeInvalidSignature,
		wantMsg:  "'X-Amz-Added' must be a 'SignedHeader' in the AWS Authorization.",
	},
	{
		name:     "emulator mode checks signed headers",
		akid:     "ANYKEY",
		signer:   hostDate,
		verifier: func(v *Verifier) { v.Lookup = nil },
		wantCode: CodeInvalidSignature,
	},
	{
		name:     "missing Signature",
		tamper:   editAuthz(func(h string) string { return h[:strings.Index(h, ", Signature=")] }),
		wantCode: CodeIncompleteSignature,
	},
	{
		name: "missing Credential and date",
		tamper: func(r *http.Request, b []byte) []byte {
			setHeader("X-Amz-Date", "")(r, b)
			return replaceAuthz("Credential=", "Cred=")(r, b)
		},
		wantCode: CodeIncompleteSignature,
	},
	{
		name:     "missing equal sign",
		tamper:   replaceAuthz(", Signature=", ", junk, Signature="),
		wantCode: CodeIncompleteSignature,
	},
	{
		name:     "bearer token",
		tamper:   setHeader("Authorization", "Bearer eyJhbGciOiJIUzI1NiJ9"),
		wantCode: CodeIncompleteSignature,
		wantMsg:  "'eyJhbGciOiJIUzI1NiJ9' not a valid key=value pair (missing equal-sign) in Authorization header: 'Bearer eyJhbGciOiJIUzI1NiJ9'.",
	},
	{
		name:     "unsupported algorithm",
		tamper:   replaceAuthz("AWS4-HMAC-SHA256", "AWS4-ECDSA-P256-SHA256"),
		wantCode: CodeIncompleteSignature,
	},
	{
		name:     "signed headers out of order",
		tamper:   replaceAuthz("content-type;host;", "host;content-type;"),
		wantCode: CodeInvalidSignature,
		wantMsg:  msgMismatch,
	},
	{
		name:     "signed header listed twice",
		tamper:   replaceAuthz("content-type;host;", "content-type;content-type;host;"),
		wantCode: CodeInvalidSignature,
		wantMsg:  msgMismatch,
	},
	{
		name:     "payload header does not match body",
		signer:   Signer{PayloadHeader: true},
		tamper:   setHeader("X-Amz-Content-Sha256", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
		wantCode: CodeInvalidSignature,
		wantMsg:  msgMismatch,
	},
	{
		name:     "unsigned payload",
		signer:   Signer{PayloadHeader: true},
		tamper:   setHeader("X-Amz-Content-Sha256", "UNSIGNED-PAYLOAD"),
		wantCode: CodeInvalidSignature,
	},
	{
		name:     "signature in uppercase",
		tamper:   editAuthz(func(h string) string { i := strings.Index(h, "Signature=") + 10; return h[:i] + strings.ToUpper(h[i:]) }),
		wantCode: CodeInvalidSignature,
	},
	{
		name:     "signature truncated",
		tamper:   editAuthz(func(h string) string { return h[:len(h)-2] }),
		wantCode: CodeInvalidSignature,
	},
	{
		name:     "signature is not hex",
		tamper:   editAuthz(func(h string) string { return h[:len(h)-1] + "g" }),
		wantCode: CodeInvalidSignature,
	},
}

// build signs and tampers the request of tc and returns it with its body
// and the server's Verifier.
func (tc *verifyCase) build() (*http.Request, []byte, *Verifier) {
	body := []byte(encryptBody)
	r := newKMSRequest(body)
	if tc.prepare != nil {
		tc.prepare(r)
	}
	tc.signer.Sign(r, body, or(tc.akid, testAKID), or(tc.secret, testSecret), tc.token, or(tc.region, "us-east-1"), or(tc.service, "kms"), testTime)
	if tc.tamper != nil {
		body = tc.tamper(r, body)
	}
	v := &Verifier{Service: "kms", Lookup: keyMap{testAKID: testSecret}, Now: clock(testTime)}
	if tc.verifier != nil {
		tc.verifier(v)
	}
	return r, body, v
}

func TestVerify(t *testing.T) {
	var messages []string
	wantErrors := 0
	for _, tc := range verifyCases {
		if tc.wantCode != "" {
			wantErrors++
		}
		t.Run(tc.name, func(t *testing.T) {
			r, body, v := tc.build()
			res, err := v.Verify(r, body)
			if got := errCode(err); got != tc.wantCode {
				t.Fatalf("Verify error = %v, want code %q", err, tc.wantCode)
			}
			if err != nil {
				var e *Error
				errors.As(err, &e)
				if tc.wantMsg != "" && e.Message != tc.wantMsg {
					t.Errorf("message:\n got: %q\nwant: %q", e.Message, tc.wantMsg)
				}
				messages = append(messages, tc.name+"\t"+e.Code+"\t"+e.Message+"\n")
				return
			}
			want := Result{AccessKeyID: or(tc.akid, testAKID), Region: or(tc.region, "us-east-1"), Service: "kms",
				Date: "20150830", Time: testTime, SessionToken: tc.token}
			if *res != want {
				t.Errorf("Verify = %+v\nwant     %+v", *res, want)
			}
		})
	}
	if len(messages) == wantErrors { // all cases ran and failed as they should
		golden(t, "testdata/errors.golden", []byte(strings.Join(messages, "")))
	}
}

// FuzzVerify feeds Verify arbitrary Authorization headers, dates, request
// targets, queries and bodies, starting from the requests of verifyCases and
// parseCases, in both canonical-URI modes. It must never panic, must fail
// only with an *Error, and must accept only what it can report.
func FuzzVerify(f *testing.F) {
	for _, tc := range verifyCases {
		r, body, _ := tc.build()
		f.Add(r.Header.Get("Authorization"), r.Header.Get("X-Amz-Date"), r.RequestURI, r.URL.RawQuery, body)
	}
	for _, tc := range parseCases {
		f.Add(tc.h, "20150830T123600Z", "/a/./b/../c//d%2F%zz", "b=2&a=1&a&=x&%41=%zz+y", []byte{})
	}
	f.Fuzz(func(t *testing.T, authz, date, target, query string, body []byte) {
		for _, raw := range []bool{false, true} {
			r := &http.Request{
				Method:        http.MethodPost,
				URL:           &url.URL{Path: target, RawQuery: query},
				RequestURI:    target,
				Host:          "kms.us-east-1.amazonaws.com",
				ContentLength: int64(len(body)),
				Header: http.Header{
					"Authorization": {authz},
					"X-Amz-Date":    {date},
					"Content-Type":  {"application/x-amz-json-1.1"},
				},
			}
			v := &Verifier{Service: "kms", Lookup: keyMap{testAKID: testSecret}, Now: clock(testTime), RawPath: raw}
			res, err := v.Verify(r, body)
			if err != nil {
				if errCode(err) == "not *Error" || errCode(err) == "" {
					t.Fatalf("Verify error %#v is not an *Error with a code", err)
				}
				continue
			}
			if res == nil || res.AccessKeyID != testAKID || res.Service != "kms" {
				t.Fatalf("Verify accepted with result %+v", res)
			}
		}
	})
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// TestVerifyMissingDateMessage pins the message AWS builds from the missing
// parameters and the header as received.
func TestVerifyMissingDateMessage(t *testing.T) {
	r := newKMSRequest(nil)
	h := "AWS4-HMAC-SHA256 SignedHeaders=host, Signature=00"
	r.Header.Set("Authorization", h)
	_, err := (&Verifier{Service: "kms"}).Verify(r, nil)
	want := &Error{Code: CodeIncompleteSignature, Message: "Authorization header requires 'Credential' parameter. " + msgHeaderRequires + "Authorization=" + h}
	if !errors.Is(err, want) {
		t.Errorf("err = %v\nwant  %v", err, want)
	}
}

// TestVerifyKeyCache checks that signing keys are cached only after they
// verified a signature, are keyed by the secret, and stay bounded.
func TestVerifyKeyCache(t *testing.T) {
	keys := keyMap{testAKID: testSecret}
	v := &Verifier{Service: "kms", Lookup: keys, Now: clock(testTime)}
	verify := func(secret string) error {
		body := []byte(encryptBody)
		r := newKMSRequest(body)
		Sign(r, body, testAKID, secret, "", "us-east-1", "kms", testTime)
		_, err := v.Verify(r, body)
		return err
	}
	if err := verify("wrong"); err == nil || len(v.keys.m) != 0 {
		t.Fatalf("bad signature: err = %v, %d cached keys", err, len(v.keys.m))
	}
	for range 2 {
		if err := verify(testSecret); err != nil || len(v.keys.m) != 1 {
			t.Fatalf("good signature: err = %v, %d cached keys", err, len(v.keys.m))
		}
	}
	// A rotated secret must not meet the old key.
	keys[testAKID] = "rotated"
	if err := verify(testSecret); errCode(err) != CodeInvalidSignature {
		t.Fatalf("old secret after rotation: err = %v", err)
	}
	if err := verify("rotated"); err != nil {
		t.Fatalf("new secret after rotation: err = %v", err)
	}
	for i := range maxCachedKeys + 10 {
		v.keys.put("s", "20150830", "r", string(rune('a'+i%26))+string(rune(i)), [32]byte{})
	}
	if n := len(v.keys.m); n > maxCachedKeys {
		t.Errorf("%d cached keys, want at most %d", n, maxCachedKeys)
	}
}

// TestVerifyDateHeader covers clients that sign with Date, not X-Amz-Date.
func TestVerifyDateHeader(t *testing.T) {
	body := []byte(encryptBody)
	r := newKMSRequest(body)
	Sign(r, body, testAKID, testSecret, "", "us-east-1", "kms", testTime)
	// Re-sign by hand with Date: the canonical request names "date".
	r.Header.Del("X-Amz-Date")
	r.Header.Set("Date", testTime.Format(http.TimeFormat))
	payload := hashHex(body)
	signed := "content-type;date;host;x-amz-target"
	creq := appendCanonicalRequest(nil, r, body, signed, false, false, payload[:])
	key := deriveKey(testSecret, "20150830", "us-east-1", "kms")
	h := hashOf(creq)
	sig := hmacSum(key[:], appendStringToSign(hmacStart(nil, key[:]), "20150830T123600Z", "20150830/us-east-1/kms/aws4_request", h[:]))
	r.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/kms/aws4_request, SignedHeaders="+signed+", Signature="+hexOf(sig[:]))
	v := &Verifier{Service: "kms", Lookup: keyMap{testAKID: testSecret}, Now: clock(testTime)}
	if _, err := v.Verify(r, body); err != nil {
		t.Fatal(err)
	}
}
