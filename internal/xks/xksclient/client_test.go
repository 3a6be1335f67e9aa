package xksclient

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/sigv4"
	"github.com/kmsd/kmsd/internal/xks"
)

const (
	testAKID   = "AKIDAAAAAAAAAAAAAAAAAAAA"
	testSecret = "PleaseReplaceThisWithSomeSecretOfLength43To64"
)

type secrets map[string]string

func (s secrets) Secret(id string) (string, bool) { v, ok := s[id]; return v, ok }

// seen is what a fake proxy recorded of one request.
type seen struct {
	path, signed string
	header       http.Header
	body         map[string]json.RawMessage
	meta         map[string]string
	verifyErr    error
}

// fake starts a TLS server answering every request with handler, after verifying its
// signature as a proxy would; it returns a client for it and the recorded requests.
func fake(t *testing.T, handler func(w http.ResponseWriter, r *http.Request), edit func(*Config)) (*Client, func() []seen) {
	t.Helper()
	var mu sync.Mutex
	var got []seen
	// A proxy's rule: the client signs only host and x-amz-date, as AWS KMS does.
	v := &sigv4.Verifier{Service: Service, Lookup: secrets{testAKID: testSecret}, RawPath: true, Headers: sigv4.RequireHostDate}
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		s := seen{path: r.URL.EscapedPath(), header: r.Header.Clone()}
		_, s.verifyErr = v.Verify(r, body)
		if a := r.Header.Get("Authorization"); strings.Contains(a, "SignedHeaders=") {
			s.signed = strings.SplitN(strings.SplitN(a, "SignedHeaders=", 2)[1], ",", 2)[0]
		}
		json.Unmarshal(body, &s.body)
		json.Unmarshal(s.body["requestMetadata"], &s.meta)
		mu.Lock()
		got = append(got, s)
		mu.Unlock()
		handler(w, r)
	}))
	t.Cleanup(srv.Close)
	cfg := Config{Endpoint: srv.URL, URIPath: "/tenant/kms/xks/v1", AccessKeyID: testAKID, Secret: testSecret,
		Region: "us-east-1", CABundle: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}),
		Timeout: 5 * time.Second} // generous: a loaded CI machine must not turn answers into timeouts
	if edit != nil {
		edit(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c, func() []seen { mu.Lock(); defer mu.Unlock(); return append([]seen(nil), got...) }
}

func answer(status int, body string) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		io.WriteString(w, body)
	}
}

var keyMeta = Meta{Principal: "arn:aws:iam::111122223333:user/alice", RequestID: "req-1",
	KeyARN: "arn:aws:kms:us-east-1:111122223333:key/k", ViaService: "ebs", SourceVPCE: "vpce-1"}

// TestRequestShape: paths, SigV4 as KMS signs (host;x-amz-date only, verifiable with
// the raw path), and the requestMetadata fields of each API (spec §1.4).
func TestRequestShape(t *testing.T) {
	c, got := fake(t, answer(400, `{"errorName":"ValidationException"}`), nil)
	ctx := context.Background()
	c.Health(ctx, Meta{Principal: "ignored", KeyARN: "ignored"})
	c.Metadata(ctx, "key-1", keyMeta)
	c.Encrypt(ctx, "key-1", EncryptInput{Plaintext: []byte("p"), AAD: []byte("a")}, keyMeta)
	c.Decrypt(ctx, "key-1", DecryptInput{Ciphertext: []byte("c"), IV: make([]byte, 12), Tag: make([]byte, 16)}, keyMeta)
	s := got()
	if len(s) != 4 {
		t.Fatalf("%d requests", len(s))
	}
	for i, want := range []struct {
		path string
		meta map[string]string
	}{
		{"/tenant/kms/xks/v1/health", map[string]string{"kmsOperation": "KmsHealthCheck"}},
		{"/tenant/kms/xks/v1/keys/key-1/metadata", map[string]string{"kmsOperation": "CreateKey", "awsPrincipalArn": keyMeta.Principal, "awsSourceVpce": "vpce-1", "kmsRequestId": "req-1"}},
		{"/tenant/kms/xks/v1/keys/key-1/encrypt", map[string]string{"kmsOperation": "Encrypt", "awsPrincipalArn": keyMeta.Principal, "kmsKeyArn": keyMeta.KeyARN, "kmsViaService": "ebs", "awsSourceVpce": "vpce-1", "kmsRequestId": "req-1"}},
		{"/tenant/kms/xks/v1/keys/key-1/decrypt", map[string]string{"kmsOperation": "Decrypt", "awsPrincipalArn": keyMeta.Principal, "kmsKeyArn": keyMeta.KeyARN, "kmsViaService": "ebs", "awsSourceVpce": "vpce-1", "kmsRequestId": "req-1"}},
	} {
		r := s[i]
		if r.path != want.path || r.verifyErr != nil || r.signed != "host;x-amz-date" {
			t.Errorf("request %d: path %s, signed %q, verify %v", i, r.path, r.signed, r.verifyErr)
		}
		if _, ok := r.header["Idempotency-Key"]; ok {
			t.Errorf("request %d: Idempotency-Key sent", i)
		}
		if r.meta["kmsRequestId"] == "" {
			t.Errorf("request %d: no kmsRequestId", i)
		}
		if i == 0 {
			delete(r.meta, "kmsRequestId")
		}
		if len(r.meta) != len(want.meta) {
			t.Errorf("request %d: metadata %v, want %v", i, r.meta, want.meta)
		}
		for k, v := range want.meta {
			if r.meta[k] != v {
				t.Errorf("request %d: %s = %q, want %q", i, k, r.meta[k], v)
			}
		}
	}
	if string(s[2].body["ciphertextDataIntegrityValueAlgorithm"]) != `"SHA_256"` || string(s[2].body["encryptionAlgorithm"]) != `"AES_GCM"` {
		t.Errorf("encrypt body %v", s[2].body)
	}
}

// TestErrorAnswers classifies what proxies answer besides 200.
func TestErrorAnswers(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status int
		body   string
		kind   Kind
		errNm  string
		code   string
	}{
		{"401", 401, `{"errorName":"AuthenticationFailedException","errorMessage":"bad sig"}`, KindProxy, xks.AuthenticationFailedException, CodeInvalidCredentials},
		{"403", 403, `{"errorName":"AccessDeniedException"}`, KindProxy, xks.AccessDeniedException, CodeAccessDenied},
		{"404 XKS", 404, `{"errorName":"InvalidUriPathException"}`, KindProxy, xks.InvalidURIPathException, CodeInvalidConfiguration},
		{"404 web server", 404, `<html>not found</html>`, KindProxy, xks.InvalidURIPathException, CodeInvalidConfiguration},
		{"429", 429, `{"errorName":"ThrottlingException"}`, KindProxy, xks.ThrottlingException, CodeTimedOut},
		{"500 junk", 500, `oops`, KindInvalidResponse, "", CodeInvalidResponse},
		{"name with wrong status", 400, `{"errorName":"KeyNotFoundException"}`, KindInvalidResponse, "", CodeInvalidResponse},
		{"unknown name", 400, `{"errorName":"TeapotException"}`, KindInvalidResponse, "", CodeInvalidResponse},
		{"201", 201, goodHealth, KindInvalidResponse, "", CodeInvalidResponse},
		{"redirect", http.StatusFound, ``, KindInvalidResponse, "", CodeInvalidResponse},
		{"200 junk", 200, `{"xksProxyFleetSize":"many"}`, KindInvalidResponse, "", CodeInvalidResponse},
		{"all EKMs unavailable", 200, strings.ReplaceAll(goodHealth, "ACTIVE", "UNAVAILABLE"), KindEKMUnavailable, "", CodeNotReachable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := answer(tc.status, tc.body)
			if tc.status == http.StatusFound {
				h = func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/elsewhere", http.StatusFound) }
			}
			c, _ := fake(t, h, nil)
			_, err := c.Health(context.Background(), Meta{})
			var e *Error
			if !errors.As(err, &e) || e.Kind != tc.kind || e.Name != tc.errNm || ConnectionErrorCode(err) != tc.code {
				t.Fatalf("err = %v (code %s), want %v %s %s", err, ConnectionErrorCode(err), tc.kind, tc.errNm, tc.code)
			}
			if strings.Contains(Message(err), "bad sig") {
				t.Fatal("proxy message leaked into the caller's message")
			}
		})
	}
}

// TestBudgetAndCancel: a slow proxy costs the call its budget (TIMED_OUT); a caller
// giving up first is not blamed on the proxy.
func TestBudgetAndCancel(t *testing.T) {
	slow := func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(2 * time.Second):
		}
	}
	c, _ := fake(t, slow, func(c *Config) { c.Timeout = 0 }) // DefaultTimeout
	start := time.Now()
	_, err := c.Health(context.Background(), Meta{})
	if KindOf(err) != KindTimeout || ConnectionErrorCode(err) != CodeTimedOut || time.Since(start) > time.Second {
		t.Fatalf("err = %v after %v", err, time.Since(start))
	}
	c, _ = fake(t, slow, func(c *Config) { c.Timeout = time.Second })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	_, err = c.Health(ctx, Meta{})
	if KindOf(err) != KindCanceled || CryptoException(err) != ExcInternal {
		t.Fatalf("err = %v", err)
	}
}

// lateAnswer is a transport that answers only once the request's context has
// ended, with what a proxy that saw the connection close may send: an empty 200.
// net/http returns such a response when it races the context's end (transport.go,
// "Check for a response racing the context close"); here it always does.
type lateAnswer struct{}

func (lateAnswer) RoundTrip(r *http.Request) (*http.Response, error) {
	<-r.Context().Done()
	return &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, Body: http.NoBody, Request: r}, nil
}

// TestAnswerAfterCancel: an answer that arrives after the caller gave up or the
// budget ran out does not count as the proxy's answer (CI saw the race once in
// TestBudgetAndCancel as "invalid-response (HTTP 200)").
func TestAnswerAfterCancel(t *testing.T) {
	c, _ := fake(t, answer(200, goodHealth), func(c *Config) { c.Timeout = time.Second })
	c.httpc.Transport = lateAnswer{}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	if _, err := c.Health(ctx, Meta{}); KindOf(err) != KindCanceled || CryptoException(err) != ExcInternal {
		t.Fatalf("caller gave up: err = %v", err)
	}
	c, _ = fake(t, answer(200, goodHealth), func(c *Config) { c.Timeout = 30 * time.Millisecond })
	c.httpc.Transport = lateAnswer{}
	if _, err := c.Health(context.Background(), Meta{}); KindOf(err) != KindTimeout || ConnectionErrorCode(err) != CodeTimedOut {
		t.Fatalf("budget ran out: err = %v", err)
	}
}

// TestTransportFailures: refused connections, untrusted certificates and the address
// map, without a real proxy.
func TestTransportFailures(t *testing.T) {
	t.Run("refused", func(t *testing.T) {
		l, _ := net.Listen("tcp", "127.0.0.1:0")
		addr := l.Addr().String()
		l.Close()
		c, err := New(Config{Endpoint: "https://" + addr, URIPath: "/kms/xks/v1", AccessKeyID: testAKID, Secret: testSecret, Region: "r"})
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.Health(context.Background(), Meta{})
		if KindOf(err) != KindUnreachable || StoreException(err) != ExcProxyUriUnreachable {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("untrusted", func(t *testing.T) {
		c, _ := fake(t, answer(200, goodHealth), func(c *Config) { c.CABundle = nil })
		_, err := c.Health(context.Background(), Meta{})
		if KindOf(err) != KindTLS || ConnectionErrorCode(err) != CodeInvalidTLSConfiguration {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("address map keeps the TLS name", func(t *testing.T) {
		c, _ := fake(t, answer(200, goodHealth), func(c *Config) {
			port := c.Endpoint[strings.LastIndex(c.Endpoint, ":")+1:]
			c.Endpoint = "https://example.com:" + port // in httptest's certificate
			c.Addresses = map[string]string{"example.com": "127.0.0.1"}
		})
		if _, err := c.Health(context.Background(), Meta{}); err != nil {
			t.Fatal(err)
		}
	})
}

func TestConfigAndArguments(t *testing.T) {
	good := Config{Endpoint: "https://xks.example.com", URIPath: "/kms/xks/v1", AccessKeyID: testAKID, Secret: testSecret, Region: "r"}
	for _, tc := range []struct {
		name string
		edit func(*Config)
	}{
		{"http", func(c *Config) { c.Endpoint = "http://xks.example.com" }},
		{"path in endpoint", func(c *Config) { c.Endpoint = "https://xks.example.com/x" }},
		{"path without api root", func(c *Config) { c.URIPath = "/prefix" }},
		{"path trailing slash", func(c *Config) { c.URIPath = "/kms/xks/v1/" }},
		{"short akid", func(c *Config) { c.AccessKeyID = "AKID" }},
		{"short secret", func(c *Config) { c.Secret = "short" }},
		{"no region", func(c *Config) { c.Region = "" }},
		{"junk CA", func(c *Config) { c.CABundle = []byte("junk") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := good
			tc.edit(&cfg)
			if _, err := New(cfg); err == nil {
				t.Fatal("accepted")
			}
		})
	}
	c, err := New(good)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for name, err := range map[string]error{
		"bad key id":   func() error { _, err := c.Metadata(ctx, "../x", keyMeta); return err }(),
		"no principal": func() error { _, err := c.Metadata(ctx, "k", Meta{}); return err }(),
		"no key ARN": func() error {
			_, err := c.Encrypt(ctx, "k", EncryptInput{Plaintext: []byte("p")}, Meta{Principal: "p"})
			return err
		}(),
		"empty plaintext": func() error { _, err := c.Encrypt(ctx, "k", EncryptInput{}, keyMeta); return err }(),
		"decrypt needs tag": func() error {
			_, err := c.Decrypt(ctx, "k", DecryptInput{Ciphertext: []byte("c")}, keyMeta)
			return err
		}(),
	} {
		if KindOf(err) != KindInternal || CryptoException(err) != ExcInternal {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestClock: SigV4 dates come from the injected clock.
func TestClock(t *testing.T) {
	at := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	c, got := fake(t, answer(200, goodHealth), func(c *Config) { c.Now = func() time.Time { return at } })
	c.Health(context.Background(), Meta{})
	s := got()
	if len(s) != 1 || s[0].header.Get("X-Amz-Date") != "20240101T000000Z" || s[0].verifyErr == nil {
		t.Fatalf("requests %+v", s)
	}
}
