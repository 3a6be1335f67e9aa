package sigv4

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	sdkv4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/smithy-go"
)

// The tests in this file cross-check against aws-sdk-go-v2: requests it
// signs go through a real net/http server (which strips Host and
// Content-Length from the header map) into Verify.

// verifyServer is an httptest server that verifies every request and
// answers like a KMS endpoint.
type verifyServer struct {
	*httptest.Server
	v *Verifier

	mu  sync.Mutex
	res *Result
	err error
}

func newVerifyServer(t *testing.T, v *Verifier) *verifyServer {
	s := &verifyServer{v: v}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	return s
}

func (s *verifyServer) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	res, err := s.v.Verify(r, body)
	s.mu.Lock()
	s.res, s.err = res, err
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	var e *Error
	if errors.As(err, &e) {
		w.WriteHeader(http.StatusBadRequest)
		_ = json.NewEncoder(w).Encode(map[string]string{"__type": e.Code, "message": e.Message})
		return
	}
	_, _ = io.WriteString(w, `{"CiphertextBlob":"AAAA","KeyId":"arn:aws:kms:eu-west-1:111122223333:key/k","EncryptionAlgorithm":"SYMMETRIC_DEFAULT"}`)
}

func (s *verifyServer) last() (*Result, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.res, s.err
}

// TestSDKClient calls Encrypt with the real KMS client of aws-sdk-go-v2,
// with its own middleware, headers and clock.
func TestSDKClient(t *testing.T) {
	srv := newVerifyServer(t, &Verifier{Service: "kms", Lookup: keyMap{testAKID: testSecret}})
	tests := []struct {
		name, akid, secret, token string
		wantCode                  string
	}{
		{name: "long-term key", akid: testAKID, secret: testSecret},
		{name: "session token", akid: testAKID, secret: testSecret, token: "FwoGZXIvYXdzEXAMPLE"},
		{name: "wrong secret", akid: testAKID, secret: "not-the-secret", wantCode: CodeInvalidSignature},
		{name: "unknown key", akid: "AKIDUNKNOWN", secret: testSecret, wantCode: CodeUnrecognizedClient},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			client := kms.New(kms.Options{
				Region:           "eu-west-1",
				BaseEndpoint:     aws.String(srv.URL),
				Credentials:      credentials.NewStaticCredentialsProvider(tc.akid, tc.secret, tc.token),
				HTTPClient:       srv.Client(),
				RetryMaxAttempts: 1,
			})
			_, err := client.Encrypt(context.Background(), &kms.EncryptInput{
				KeyId:             aws.String("alias/test"),
				Plaintext:         []byte("Hello, World!"),
				EncryptionContext: map[string]string{"Department": "10-Accounting"},
			})
			res, verr := srv.last()
			if errCode(verr) != tc.wantCode {
				t.Fatalf("Verify error = %v, want code %q", verr, tc.wantCode)
			}
			if tc.wantCode != "" {
				// The SDK reads the exception back by name.
				var apiErr smithy.APIError
				if !errors.As(err, &apiErr) || apiErr.ErrorCode() != tc.wantCode {
					t.Errorf("SDK error = %v, want %s", err, tc.wantCode)
				}
				return
			}
			if err != nil {
				t.Fatalf("Encrypt: %v", err)
			}
			if res.AccessKeyID != tc.akid || res.Region != "eu-west-1" || res.Service != "kms" || res.SessionToken != tc.token {
				t.Errorf("Verify = %+v", res)
			}
		})
	}
}

// TestSDKSigner signs assorted requests with the SDK's v4 signer, checks
// that Verify accepts them and that Signer, told the same headers, produces
// the same Authorization header.
func TestSDKSigner(t *testing.T) {
	srv := newVerifyServer(t, &Verifier{Service: "kms", Lookup: keyMap{testAKID: testSecret}, Now: clock(testTime)})
	tests := []struct {
		name, method, target, body, token string
		headers                           map[string][]string
	}{
		{name: "kms post", method: "POST", target: "/", body: encryptBody,
			headers: map[string][]string{"Content-Type": {"application/x-amz-json-1.1"}, "X-Amz-Target": {"TrentService.Encrypt"}}},
		{name: "session token", method: "POST", target: "/", body: "{}", token: "FwoGZXIvYXdzEXAMPLE"},
		{name: "empty get", method: "GET", target: "/"},
		{name: "escaped path", method: "POST", target: "/kms/xks/v1/keys/a%2Fb%20c/encrypt", body: "{}"},
		{name: "utf-8 path", method: "GET", target: "/caf%C3%A9/%E1%88%B4"},
		{name: "query", method: "GET", target: "/?b=2&a=1&a=%2F&c=d+e&e=&f=%7E~"},
		{name: "header values", method: "POST", target: "/", body: "x",
			headers: map[string][]string{"X-Custom": {"  a   b  ", "c"}, "Content-Type": {"text/plain; charset=utf-8"}}},
	}
	signer := sdkv4.NewSigner()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			newReq := func() *http.Request {
				r, err := http.NewRequest(tc.method, srv.URL+tc.target, strings.NewReader(tc.body))
				if err != nil {
					t.Fatal(err)
				}
				for k, vs := range tc.headers {
					r.Header[k] = vs
				}
				return r
			}
			payload := hashHex([]byte(tc.body))
			r := newReq()
			creds := aws.Credentials{AccessKeyID: testAKID, SecretAccessKey: testSecret, SessionToken: tc.token}
			if err := signer.SignHTTP(context.Background(), creds, r, string(payload[:]), "kms", "us-east-1", testTime); err != nil {
				t.Fatal(err)
			}
			sdkAuthz := r.Header.Get("Authorization")

			a, err := ParseAuthorization(sdkAuthz)
			if err != nil {
				t.Fatal(err)
			}
			mine := newReq()
			(&Signer{Headers: a.SignedHeaders}).Sign(mine, []byte(tc.body), testAKID, testSecret, tc.token, "us-east-1", "kms", testTime)
			if got := mine.Header.Get("Authorization"); got != sdkAuthz {
				t.Errorf("Signer differs from the SDK:\n got: %s\nwant: %s", got, sdkAuthz)
			}

			resp, err := srv.Client().Do(r)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if res, err := srv.last(); err != nil || res.SessionToken != tc.token {
				t.Errorf("Verify = %+v, %v", res, err)
			}
		})
	}
}

// TestSDKPresigned verifies query-string (presigned) requests made by the
// SDK's PresignHTTP.
func TestSDKPresigned(t *testing.T) {
	tests := []struct {
		name     string
		expires  string        // X-Amz-Expires, "" for none
		age      time.Duration // server clock minus signing time
		tamper   func(q url.Values)
		deny     bool // the Verifier does not allow presigned requests
		wantCode string
	}{
		{name: "fresh"},
		{name: "with expiry, within it", expires: "900", age: 10 * time.Minute},
		{name: "with expiry, past it", expires: "300", age: 6 * time.Minute, wantCode: CodeInvalidSignature},
		{name: "without expiry, past the skew", age: 6 * time.Minute, wantCode: CodeInvalidSignature},
		{name: "query changed", tamper: func(q url.Values) { q.Set("Action", "Decrypt") }, wantCode: CodeInvalidSignature},
		{name: "signature removed", tamper: func(q url.Values) { q.Del("X-Amz-Signature") }, wantCode: CodeIncompleteSignature},
		{name: "credential removed", tamper: func(q url.Values) { q.Del("X-Amz-Credential") }, wantCode: CodeIncompleteSignature},
		{name: "algorithm removed", tamper: func(q url.Values) { q.Del("X-Amz-Algorithm") }, wantCode: CodeMissingAuthenticationToken},
		{name: "not allowed", deny: true, wantCode: CodeMissingAuthenticationToken},
	}
	signer := sdkv4.NewSigner()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := newVerifyServer(t, &Verifier{Service: "kms", Lookup: keyMap{testAKID: testSecret}, Now: clock(testTime.Add(tc.age)), AllowPresigned: !tc.deny})
			target := srv.URL + "/?Action=Encrypt"
			if tc.expires != "" {
				target += "&X-Amz-Expires=" + tc.expires
			}
			r, err := http.NewRequest(http.MethodGet, target, nil)
			if err != nil {
				t.Fatal(err)
			}
			payload := hashHex(nil)
			creds := aws.Credentials{AccessKeyID: testAKID, SecretAccessKey: testSecret, SessionToken: "tok"}
			signed, hdr, err := signer.PresignHTTP(context.Background(), creds, r, string(payload[:]), "kms", "us-east-1", testTime)
			if err != nil {
				t.Fatal(err)
			}
			u, err := url.Parse(signed)
			if err != nil {
				t.Fatal(err)
			}
			if tc.tamper != nil {
				q := u.Query()
				tc.tamper(q)
				u.RawQuery = q.Encode()
			}
			req, err := http.NewRequest(http.MethodGet, u.String(), nil)
			if err != nil {
				t.Fatal(err)
			}
			for k, vs := range hdr {
				if k != "Host" {
					req.Header[k] = vs
				}
			}
			resp, err := srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			res, verr := srv.last()
			if errCode(verr) != tc.wantCode {
				t.Fatalf("Verify error = %v, want code %q", verr, tc.wantCode)
			}
			if verr == nil && (!res.Presigned || res.SessionToken != "tok" || res.AccessKeyID != testAKID) {
				t.Errorf("Verify = %+v", res)
			}
		})
	}
}

// TestSDKSignsWhatSignSigns checks the reverse direction: the SDK's
// canonicalisation of a request signed by Sign (same headers) agrees.
func TestSDKSignsWhatSignSigns(t *testing.T) {
	body := []byte(encryptBody)
	mine, err := http.NewRequest(http.MethodPost, "https://kms.us-east-1.amazonaws.com/", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	mine.Header.Set("Content-Type", "application/x-amz-json-1.1")
	mine.Header.Set("X-Amz-Target", "TrentService.Encrypt")
	sdkReq := mine.Clone(context.Background())
	sdkReq.ContentLength = 0 // so the SDK does not add content-length, which Sign leaves out
	Sign(mine, body, testAKID, testSecret, "tok", "us-east-1", "kms", testTime)

	payload := hashHex(body)
	sdkReq.Header.Set("X-Amz-Security-Token", "tok")
	creds := aws.Credentials{AccessKeyID: testAKID, SecretAccessKey: testSecret, SessionToken: "tok"}
	if err := sdkv4.NewSigner().SignHTTP(context.Background(), creds, sdkReq, string(payload[:]), "kms", "us-east-1", testTime); err != nil {
		t.Fatal(err)
	}
	if got, want := mine.Header.Get("Authorization"), sdkReq.Header.Get("Authorization"); got != want {
		t.Errorf("Sign:\n got: %s\nwant: %s", got, want)
	}
}
