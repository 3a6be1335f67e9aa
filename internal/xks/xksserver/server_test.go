package xksserver

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kmsd/kmsd/internal/sigv4"
	"github.com/kmsd/kmsd/internal/xks"
	"github.com/kmsd/kmsd/internal/xks/keyman"
	"github.com/kmsd/kmsd/internal/xks/keyman/keyfile"
	"github.com/kmsd/kmsd/internal/xks/keyman/keymantest"
)

const (
	akid1   = "AKIDAAAAAAAAAAAAAAAAAAAA"
	secret1 = "PleaseReplaceThisWithSomeSecretOfLength43To64"
	akid2   = "AKIDBBBBBBBBBBBBBBBBBBBB"
	secret2 = "AnotherSecretThatIsLongEnoughToBeAcceptedHere=="
)

// faulty injects key manager failures for chosen key ids.
type faulty struct {
	keyman.Manager
	fail map[string]error
}

func (f *faulty) Describe(ctx context.Context, id string) (keyman.Key, error) {
	if err := f.fail[id]; err != nil {
		return keyman.Key{}, err
	}
	return f.Manager.Describe(ctx, id)
}

type harness struct {
	t   *testing.T
	srv *Server
	now time.Time
	log *bytes.Buffer
	mu  sync.Mutex
}

func (h *harness) Write(p []byte) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.log.Write(p)
}

func newHarness(t *testing.T, edit func(*Options)) *harness {
	t.Helper()
	path := filepath.Join(t.TempDir(), "keys.json")
	pass := []byte("pass")
	for _, k := range []struct {
		id, usage string
		m         []byte
	}{{"both", "ENCRYPT,DECRYPT", nil}, {"enc", "ENCRYPT", nil}, {"dec", "DECRYPT", nil},
		{"none", "", nil}, {"vector", "ENCRYPT,DECRYPT", keymantest.VectorKey()}, {"off", "ENCRYPT,DECRYPT", nil}} {
		u, _ := keyfile.ParseUsage(k.usage)
		if err := keyfile.CreateKey(path, pass, keyfile.MinIterations, k.id, u, k.m, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	keyfile.SetEnabled(path, pass, "off", false)
	km, err := keyfile.Open(path, pass, keyfile.Options{PollInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { km.Close() })
	fm := &faulty{Manager: km, fail: map[string]error{
		"broken": keyman.ErrUnavailable, "slow": keyman.ErrTimeout,
	}}
	h := &harness{t: t, now: time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC), log: &bytes.Buffer{}}
	cred := []Credential{{akid1, secret1}}
	opts := Options{
		Stores: []StoreConfig{
			{Prefix: "/example/uri/path/prefix", Manager: fm, ManagerName: "file", Policy: Policy{Credentials: cred}},
			{Prefix: "", Manager: fm, ManagerName: "file", CiphertextMetadata: []byte("key_version=1"),
				Policy: Policy{Credentials: cred, Keys: []string{"both", "vector"}, DisabledKeys: []string{"vector"}}},
			{Prefix: "/authz", Manager: fm, ManagerName: "file", Policy: Policy{Credentials: cred, Rules: []Rule{
				{Name: "alice", Principals: []string{"arn:aws:iam::111122223333:user/alice"}},
				{Name: "vpc", Operations: []string{"Decrypt"}, SourceVPCs: []string{"vpc-1*"}},
				{Name: "no-reencrypt", Effect: Deny, Operations: []string{"ReEncrypt"}},
			}}},
			{Prefix: "/throttled", Manager: fm, ManagerName: "file", Policy: Policy{Credentials: cred, RateLimit: 1, Burst: 2}},
			{Prefix: "/off", Manager: fm, ManagerName: "file", Policy: Policy{Credentials: cred, Disabled: true}},
		},
		Logger:     slog.New(slog.NewJSONHandler(h, nil)),
		Registerer: prometheus.NewRegistry(),
		Now:        func() time.Time { return h.now },
		Version:    "test",
	}
	if edit != nil {
		edit(&opts)
	}
	h.srv, err = New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func md(op string) map[string]any {
	return map[string]any{"awsPrincipalArn": "arn:aws:iam::111122223333:user/alice",
		"kmsKeyArn": "arn:aws:kms:us-east-1:111122223333:key/k", "kmsOperation": op, "kmsRequestId": "req-" + op}
}

// do signs body as KMS does (host;x-amz-date) and serves it.
func (h *harness) do(method, path string, body any, akid, secret string) (int, map[string]any) {
	h.t.Helper()
	raw, _ := json.Marshal(body)
	if s, ok := body.(string); ok {
		raw = []byte(s)
	}
	r := httptest.NewRequest(method, "https://xks.example.com"+path, bytes.NewReader(raw))
	r.Header.Set("Content-Type", "application/json")
	if akid != "" {
		(&sigv4.Signer{RawPath: true, Headers: []string{}}).Sign(r, raw, akid, secret, "", "us-east-1", Service, h.now)
	}
	w := httptest.NewRecorder()
	h.srv.ServeHTTP(w, r)
	var out map[string]any
	json.Unmarshal(w.Body.Bytes(), &out)
	return w.Code, out
}

func (h *harness) post(path string, body any) (int, map[string]any) {
	h.t.Helper()
	return h.do(http.MethodPost, path, body, akid1, secret1)
}

const base = "/example/uri/path/prefix/kms/xks/v1"

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

func unb64(t *testing.T, v any) []byte {
	t.Helper()
	s, _ := v.(string)
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		t.Fatalf("bad base64 %q", v)
	}
	return b
}

func TestSpecSigV4Vector(t *testing.T) {
	h := newHarness(t, nil)
	body := `{"requestMetadata":{"kmsRequestId":"4112f4d6-db54-4af4-ae30-c55a22a8dfae","kmsOperation":"KmsHealthCheck"}}`
	r := httptest.NewRequest(http.MethodPost, "https://xks.example.com"+base+"/health", strings.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	r.Header.Set("X-Amz-Date", "20240101T000000Z")
	r.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential=BETWEEN2TENAND3TENCHARACTERS/20240101/us-east-1/kms-xks-proxy/aws4_request, SignedHeaders=host;x-amz-date, Signature=f338fdbb793cd84268a09b94b3add0f7e3a6abaf6ba936bf300a2192f7b447ea")
	h.srv.SetPolicy("/example/uri/path/prefix", Policy{Credentials: []Credential{{"BETWEEN2TENAND3TENCHARACTERS", secret1}}})
	w := httptest.NewRecorder()
	h.srv.ServeHTTP(w, r)
	if w.Code != 200 {
		t.Fatalf("spec vector: %d %s", w.Code, w.Body)
	}
	// One byte of body changed: the signature no longer holds.
	r = httptest.NewRequest(http.MethodPost, "https://xks.example.com"+base+"/health", strings.NewReader(strings.Replace(body, "4112", "4113", 1)))
	r.Header.Set("Content-Type", "application/json")
	r.Header.Set("X-Amz-Date", "20240101T000000Z")
	r.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential=BETWEEN2TENAND3TENCHARACTERS/20240101/us-east-1/kms-xks-proxy/aws4_request, SignedHeaders=host;x-amz-date, Signature=f338fdbb793cd84268a09b94b3add0f7e3a6abaf6ba936bf300a2192f7b447ea")
	w = httptest.NewRecorder()
	h.srv.ServeHTTP(w, r)
	if w.Code != 401 {
		t.Fatalf("tampered body: %d %s", w.Code, w.Body)
	}
}

func TestRoundTripAndCDIV(t *testing.T) {
	h := newHarness(t, nil)
	for _, tc := range []struct {
		name, prefix string
		aad          []byte
		cdiv         bool
	}{
		{"aad+cdiv", base, []byte("project=nile"), true},
		{"no aad", base, nil, false},
		{"with metadata", "/kms/xks/v1", []byte("ctx"), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := map[string]any{"requestMetadata": md("Encrypt"), "plaintext": b64([]byte("Hello World!")),
				"encryptionAlgorithm": "AES_GCM", "unknownField": 1}
			if tc.aad != nil {
				req["additionalAuthenticatedData"] = b64(tc.aad)
			}
			if tc.cdiv {
				req["ciphertextDataIntegrityValueAlgorithm"] = "SHA_256"
			}
			code, out := h.post(tc.prefix+"/keys/both/encrypt", req)
			if code != 200 {
				t.Fatalf("encrypt: %d %v", code, out)
			}
			ct, iv, tag := unb64(t, out["ciphertext"]), unb64(t, out["initializationVector"]), unb64(t, out["authenticationTag"])
			if len(ct) != 12 || len(iv) != 12 || len(tag) != 16 {
				t.Fatalf("shapes: %v", out)
			}
			var meta []byte
			if m, ok := out["ciphertextMetadata"]; ok {
				meta = unb64(t, m)
			}
			if tc.prefix == "/kms/xks/v1" && string(meta) != "key_version=1" {
				t.Fatalf("metadata = %q", meta)
			}
			if tc.cdiv {
				want := xks.CDIV(tc.aad, meta, iv, ct, tag)
				if !bytes.Equal(unb64(t, out["ciphertextDataIntegrityValue"]), want) {
					t.Fatal("CDIV mismatch")
				}
			} else if _, ok := out["ciphertextDataIntegrityValue"]; ok {
				t.Fatal("CDIV not requested but returned")
			}
			dreq := map[string]any{"requestMetadata": md("Decrypt"), "ciphertext": out["ciphertext"],
				"initializationVector": out["initializationVector"], "authenticationTag": out["authenticationTag"],
				"encryptionAlgorithm": "AES_GCM"}
			if tc.aad != nil {
				dreq["additionalAuthenticatedData"] = b64(tc.aad)
			}
			if meta != nil {
				dreq["ciphertextMetadata"] = b64(meta)
			}
			code, dout := h.post(tc.prefix+"/keys/both/decrypt", dreq)
			if code != 200 || string(unb64(t, dout["plaintext"])) != "Hello World!" {
				t.Fatalf("decrypt: %d %v", code, dout)
			}
			// Moving AAD into metadata (or dropping the metadata) must fail.
			if meta != nil {
				delete(dreq, "ciphertextMetadata")
				if code, dout := h.post(tc.prefix+"/keys/both/decrypt", dreq); dout["errorName"] != xks.InvalidCiphertextException {
					t.Fatalf("metadata dropped: %d %v", code, dout)
				}
			} else if tc.aad != nil {
				delete(dreq, "additionalAuthenticatedData")
				dreq["ciphertextMetadata"] = b64(tc.aad)
				if code, dout := h.post(tc.prefix+"/keys/both/decrypt", dreq); dout["errorName"] != xks.InvalidCiphertextException {
					t.Fatalf("AAD as metadata: %d %v", code, dout)
				}
			}
		})
	}
}

func TestSpecVectorsThroughProxy(t *testing.T) {
	h := newHarness(t, nil)
	for _, v := range []struct{ aad, meta, ct, tag string }{
		{"project=nile,department=marketing", "key_version=1", "D2e6d6rFlXT/LfOq", "z16Jpi+YEVrPfy7xOkRNVw=="},
		{"project=nile,department=marketing", "", "D2e6d6rFlXT/LfOq", "oD3KqtYrMSdh/L3FQun+ag=="},
		{"", "", "D2e6d6rFlXT/LfOq", "+DX8ZJOvQVMTeK7gwOAsdg=="},
	} {
		req := map[string]any{"requestMetadata": md("Decrypt"), "ciphertext": v.ct, "initializationVector": "AAECAwQFBgcICQoL",
			"authenticationTag": v.tag, "encryptionAlgorithm": "AES_GCM"}
		if v.aad != "" {
			req["additionalAuthenticatedData"] = b64([]byte(v.aad))
		}
		if v.meta != "" {
			req["ciphertextMetadata"] = b64([]byte(v.meta))
		}
		code, out := h.post(base+"/keys/vector/decrypt", req)
		if code != 200 || out["plaintext"] != "SGVsbG8gV29ybGQh" {
			t.Errorf("vector %q/%q: %d %v", v.aad, v.meta, code, out)
		}
	}
}

// withCDIV adds ciphertextDataIntegrityValueAlgorithm, and aad when not
// nil, to an encrypt request.
func withCDIV(req map[string]any, aad []byte) map[string]any {
	out := map[string]any{"ciphertextDataIntegrityValueAlgorithm": "SHA_256"}
	for k, v := range req {
		out[k] = v
	}
	if aad != nil {
		out["additionalAuthenticatedData"] = b64(aad)
	}
	return out
}

func TestErrors(t *testing.T) {
	h := newHarness(t, nil)
	enc := func(op string) map[string]any {
		return map[string]any{"requestMetadata": md(op), "plaintext": "AAAA", "encryptionAlgorithm": "AES_GCM"}
	}
	dec := map[string]any{"requestMetadata": md("Decrypt"), "ciphertext": "AAAA", "encryptionAlgorithm": "AES_GCM",
		"initializationVector": "AAECAwQFBgcICQoL", "authenticationTag": "AAAAAAAAAAAAAAAAAAAAAA=="}
	tests := []struct {
		name       string
		method     string
		path       string
		body       any
		akid, sec  string
		wantStatus int
		wantName   string
	}{
		{"unknown prefix", "POST", "/nope/kms/xks/v1/health", map[string]any{}, "", "", 404, xks.InvalidURIPathException},
		{"unknown route", "POST", base + "/keys/both/sign", map[string]any{}, "", "", 404, xks.InvalidURIPathException},
		{"bad key id", "POST", base + "/keys/a%2Fb/encrypt", map[string]any{}, "", "", 404, xks.InvalidURIPathException},
		{"GET api", "GET", base + "/health", nil, "", "", 405, ""},
		{"no signature", "POST", base + "/health", map[string]any{"requestMetadata": md("KmsHealthCheck")}, "", "", 401, xks.AuthenticationFailedException},
		{"wrong secret", "POST", base + "/health", map[string]any{"requestMetadata": md("KmsHealthCheck")}, akid1, secret2, 401, xks.AuthenticationFailedException},
		{"unknown akid", "POST", base + "/health", map[string]any{"requestMetadata": md("KmsHealthCheck")}, akid2, secret2, 401, xks.AuthenticationFailedException},
		{"health missing metadata", "POST", base + "/health", map[string]any{}, akid1, secret1, 400, xks.ValidationException},
		{"health not json", "POST", base + "/health", "not json", akid1, secret1, 400, xks.ValidationException},
		{"missing plaintext", "POST", base + "/keys/both/encrypt", map[string]any{"requestMetadata": md("Encrypt"), "encryptionAlgorithm": "AES_GCM"}, akid1, secret1, 400, xks.ValidationException},
		{"key not found", "POST", base + "/keys/nope/encrypt", enc("Encrypt"), akid1, secret1, 404, xks.KeyNotFoundException},
		{"not in allow-list", "POST", "/kms/xks/v1/keys/enc/encrypt", enc("Encrypt"), akid1, secret1, 404, xks.KeyNotFoundException},
		{"encrypt with decrypt-only", "POST", base + "/keys/dec/encrypt", enc("Encrypt"), akid1, secret1, 400, xks.InvalidKeyUsageException},
		{"encrypt with no usage", "POST", base + "/keys/none/encrypt", enc("Encrypt"), akid1, secret1, 400, xks.InvalidKeyUsageException},
		{"decrypt with encrypt-only", "POST", base + "/keys/enc/decrypt", dec, akid1, secret1, 400, xks.InvalidKeyUsageException},
		// A CDIV needs the trial decrypt an encrypt-only key cannot do.
		{"CDIV with encrypt-only", "POST", base + "/keys/enc/encrypt", withCDIV(enc("Encrypt"), nil), akid1, secret1, 400, xks.InvalidKeyUsageException},
		{"CDIV with encrypt-only and AAD", "POST", base + "/keys/enc/encrypt", withCDIV(enc("Encrypt"), []byte("aad")), akid1, secret1, 400, xks.InvalidKeyUsageException},
		{"encrypt-only without CDIV", "POST", base + "/keys/enc/encrypt", enc("Encrypt"), akid1, secret1, 200, ""},
		{"CDIV with both", "POST", base + "/keys/both/encrypt", withCDIV(enc("Encrypt"), []byte("aad")), akid1, secret1, 200, ""},
		{"disabled key (file)", "POST", base + "/keys/off/encrypt", enc("Encrypt"), akid1, secret1, 400, xks.InvalidStateException},
		{"disabled key (policy)", "POST", "/kms/xks/v1/keys/vector/encrypt", enc("Encrypt"), akid1, secret1, 400, xks.InvalidStateException},
		{"disabled store", "POST", "/off/kms/xks/v1/health", map[string]any{"requestMetadata": md("KmsHealthCheck")}, akid1, secret1, 400, xks.InvalidStateException},
		{"wrong tag", "POST", base + "/keys/both/decrypt", dec, akid1, secret1, 400, xks.InvalidCiphertextException},
		{"short iv", "POST", base + "/keys/both/decrypt", func() map[string]any {
			d := map[string]any{}
			for k, v := range dec {
				d[k] = v
			}
			d["initializationVector"] = "AAAA"
			return d
		}(), akid1, secret1, 400, xks.InvalidCiphertextException},
		{"too large", "POST", base + "/keys/both/encrypt", map[string]any{"requestMetadata": md("Encrypt"), "plaintext": b64(make([]byte, 9000)), "encryptionAlgorithm": "AES_GCM"}, akid1, secret1, 501, xks.UnsupportedOperationException},
		{"key manager failure", "POST", base + "/keys/broken/encrypt", enc("Encrypt"), akid1, secret1, 500, xks.InternalException},
		{"key manager timeout", "POST", base + "/keys/slow/encrypt", enc("Encrypt"), akid1, secret1, 503, xks.DependencyTimeoutException},
		{"authz other principal", "POST", "/authz/kms/xks/v1/keys/both/encrypt", map[string]any{"requestMetadata": map[string]any{"awsPrincipalArn": "arn:aws:iam::999:user/eve", "kmsKeyArn": "k", "kmsOperation": "Encrypt", "kmsRequestId": "r"}, "plaintext": "AAAA", "encryptionAlgorithm": "AES_GCM"}, akid1, secret1, 403, xks.AccessDeniedException},
		{"authz deny rule", "POST", "/authz/kms/xks/v1/keys/both/encrypt", enc("ReEncrypt"), akid1, secret1, 403, xks.AccessDeniedException},
		{"authz metadata", "POST", "/authz/kms/xks/v1/keys/both/metadata", map[string]any{"requestMetadata": map[string]any{"awsPrincipalArn": "arn:aws:iam::999:user/eve", "kmsOperation": "CreateKey", "kmsRequestId": "r"}}, akid1, secret1, 403, xks.AccessDeniedException},
		{"authz allowed", "POST", "/authz/kms/xks/v1/keys/both/encrypt", enc("Encrypt"), akid1, secret1, 200, ""},
		{"authz vpc rule", "POST", "/authz/kms/xks/v1/keys/both/decrypt", map[string]any{"requestMetadata": map[string]any{"awsPrincipalArn": "arn:aws:iam::999:user/eve", "kmsKeyArn": "k", "kmsOperation": "Decrypt", "kmsRequestId": "r", "awsSourceVpc": "vpc-123"}, "ciphertext": "AAAA", "encryptionAlgorithm": "AES_GCM", "initializationVector": "AAECAwQFBgcICQoL", "authenticationTag": "AAAAAAAAAAAAAAAAAAAAAA=="}, akid1, secret1, 400, xks.InvalidCiphertextException},
		{"health exempt from authz", "POST", "/authz/kms/xks/v1/health", map[string]any{"requestMetadata": map[string]any{"kmsOperation": "KmsHealthCheck", "kmsRequestId": "r"}}, akid1, secret1, 200, ""},
	}
	seen := map[string]bool{}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out := h.do(tc.method, tc.path, tc.body, tc.akid, tc.sec)
			if code != tc.wantStatus {
				t.Fatalf("status %d, want %d (%v)", code, tc.wantStatus, out)
			}
			if tc.wantName != "" && out["errorName"] != tc.wantName {
				t.Fatalf("errorName %v, want %s", out["errorName"], tc.wantName)
			}
			seen[tc.wantName] = true
		})
	}
	// Throttling: burst 2 at 1/s, the clock stands still.
	for i := range 3 {
		code, out := h.post("/throttled/kms/xks/v1/health", map[string]any{"requestMetadata": md("KmsHealthCheck")})
		if i < 2 && code != 200 || i == 2 && (code != 429 || out["errorName"] != xks.ThrottlingException) {
			t.Fatalf("request %d: %d %v", i, code, out)
		}
	}
	h.now = h.now.Add(time.Second)
	if code, _ := h.post("/throttled/kms/xks/v1/health", map[string]any{"requestMetadata": md("KmsHealthCheck")}); code != 200 {
		t.Fatalf("after refill: %d", code)
	}
	seen[xks.ThrottlingException] = true
	for _, n := range xks.ErrorNames() {
		if !seen[n] {
			t.Errorf("error %s not covered", n)
		}
	}
	if strings.Contains(h.log.String(), "SGVsbG8") || strings.Contains(h.log.String(), "AAAAAAAAAAAAAAAAAAAAAA==") {
		t.Errorf("log contains payload data:\n%s", h.log.String())
	}
}

func TestMetadataAndHealth(t *testing.T) {
	h := newHarness(t, nil)
	code, out := h.post(base+"/keys/both/metadata", map[string]any{"requestMetadata": md("CreateKey")})
	if code != 200 || out["keySpec"] != "AES_256" || out["keyStatus"] != "ENABLED" || fmt.Sprint(out["keyUsage"]) != "[DECRYPT ENCRYPT]" {
		t.Fatalf("metadata: %d %v", code, out)
	}
	_, out = h.post(base+"/keys/off/metadata", map[string]any{"requestMetadata": md("CreateKey")})
	if out["keyStatus"] != "DISABLED" {
		t.Fatalf("disabled metadata: %v", out)
	}
	_, out = h.post(base+"/keys/none/metadata", map[string]any{"requestMetadata": md("CreateKey")})
	if fmt.Sprint(out["keyUsage"]) != "[]" {
		t.Fatalf("no-usage metadata: %v", out)
	}
	code, out = h.post(base+"/health", map[string]any{"requestMetadata": map[string]any{"kmsRequestId": "r", "kmsOperation": "KmsHealthCheck"}})
	if code != 200 || out["xksProxyFleetSize"] != 1.0 || out["ekmVendor"] != "kmsd" || out["xksProxyVendor"] != "kmsd" {
		t.Fatalf("health: %d %v", code, out)
	}
	det := out["ekmFleetDetails"].([]any)[0].(map[string]any)
	if det["healthStatus"] != "ACTIVE" || det["id"] == "" || det["model"] == "" {
		t.Fatalf("fleet details: %v", det)
	}
	for path, want := range map[string]int{"/ping": 200, "/healthz": 200} {
		w := httptest.NewRecorder()
		h.srv.ServeHTTP(w, httptest.NewRequest("GET", path, nil))
		if w.Code != want {
			t.Errorf("GET %s = %d", path, w.Code)
		}
	}
}

// unhealthy reports UNAVAILABLE, counting its checks.
type unhealthy struct {
	keyman.Manager
	mu    sync.Mutex
	calls int
	delay time.Duration
}

func (u *unhealthy) Health(context.Context) keyman.Health {
	time.Sleep(u.delay)
	u.mu.Lock()
	u.calls++
	u.mu.Unlock()
	return keyman.Health{Vendor: "v", EKMs: []keyman.EKM{{ID: "e", Model: "m", Status: keyman.Unavailable}}}
}

func TestHealthCachingAndUnavailable(t *testing.T) {
	u := &unhealthy{}
	h := newHarness(t, func(o *Options) {
		o.Stores = o.Stores[:1]
		u.Manager = o.Stores[0].Manager
		o.Stores[0].Manager = u
	})
	for range 3 {
		code, out := h.post(base+"/health", map[string]any{"requestMetadata": md("KmsHealthCheck")})
		if code != 200 || out["ekmFleetDetails"].([]any)[0].(map[string]any)["healthStatus"] != "UNAVAILABLE" {
			t.Fatalf("health: %d %v", code, out)
		}
	}
	if u.calls != 1 {
		t.Fatalf("deep checks = %d, want 1 (cached)", u.calls)
	}
	w := httptest.NewRecorder()
	h.srv.ServeHTTP(w, httptest.NewRequest("GET", "/healthz", nil))
	if w.Code != 503 {
		t.Fatalf("/healthz = %d", w.Code)
	}
}

func TestCredentialRotation(t *testing.T) {
	h := newHarness(t, nil)
	hb := map[string]any{"requestMetadata": md("KmsHealthCheck")}
	both := Policy{Credentials: []Credential{{akid1, secret1}, {akid2, secret2}}}
	if err := h.srv.SetPolicy("/example/uri/path/prefix", both); err != nil {
		t.Fatal(err)
	}
	for _, c := range [][2]string{{akid1, secret1}, {akid2, secret2}} {
		if code, out := h.do("POST", base+"/health", hb, c[0], c[1]); code != 200 {
			t.Fatalf("%s during rotation: %d %v", c[0], code, out)
		}
	}
	h.srv.SetPolicy("/example/uri/path/prefix", Policy{Credentials: []Credential{{akid2, secret2}}})
	if code, _ := h.do("POST", base+"/health", hb, akid1, secret1); code != 401 {
		t.Fatalf("old credential after rotation: %d", code)
	}
	if err := h.srv.SetPolicy("/example/uri/path/prefix", Policy{Credentials: []Credential{{"short", "x"}}}); err == nil {
		t.Fatal("invalid credential accepted")
	}
}

func TestClockSkew(t *testing.T) {
	h := newHarness(t, nil)
	raw := []byte(`{"requestMetadata":{"kmsRequestId":"r","kmsOperation":"KmsHealthCheck"}}`)
	for skew, want := range map[time.Duration]int{4 * time.Minute: 200, -4 * time.Minute: 200, 6 * time.Minute: 401, -6 * time.Minute: 401} {
		r := httptest.NewRequest("POST", "https://xks.example.com"+base+"/health", bytes.NewReader(raw))
		(&sigv4.Signer{RawPath: true, Headers: []string{}}).Sign(r, raw, akid1, secret1, "", "us-east-1", Service, h.now.Add(skew))
		w := httptest.NewRecorder()
		h.srv.ServeHTTP(w, r)
		if w.Code != want {
			t.Errorf("skew %v: %d, want %d", skew, w.Code, want)
		}
	}
}

func TestRegion(t *testing.T) {
	h := newHarness(t, func(o *Options) { o.Region = "eu-west-1" })
	if code, _ := h.post(base+"/health", map[string]any{"requestMetadata": md("KmsHealthCheck")}); code != 401 {
		t.Fatalf("wrong region accepted: %d", code)
	}
}

func TestNewValidates(t *testing.T) {
	km := &faulty{}
	good := Policy{Credentials: []Credential{{akid1, secret1}}}
	for name, o := range map[string]Options{
		"no stores":  {},
		"bad prefix": {Stores: []StoreConfig{{Prefix: "nope", Manager: km, Policy: good}}},
		"duplicate":  {Stores: []StoreConfig{{Prefix: "/a", Manager: km, Policy: good}, {Prefix: "/a", Manager: km, Policy: good}}},
		"no creds":   {Stores: []StoreConfig{{Prefix: "/a", Manager: km}}},
		"long meta":  {Stores: []StoreConfig{{Prefix: "/a", Manager: km, Policy: good, CiphertextMetadata: make([]byte, 21)}}},
		"bad rule":   {Stores: []StoreConfig{{Prefix: "/a", Manager: km, Policy: Policy{Credentials: good.Credentials, Rules: []Rule{{Effect: "maybe"}}}}}},
	} {
		if _, err := New(o); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestGlob(t *testing.T) {
	for _, tc := range []struct {
		p, s string
		want bool
	}{
		{"*", "", true}, {"*", "arn:aws:iam::1:role/x", true}, {"arn:aws:iam::*:role/*", "arn:aws:iam::1:role/a/b", true},
		{"arn:aws:iam::1:*", "arn:aws:iam::2:x", false}, {"vpc-1?3", "vpc-123", true}, {"vpc-1?3", "vpc-13", false},
		{"a*b*c", "axxbyyc", true}, {"a*b*c", "axxbyy", false}, {"", "", true}, {"", "x", false},
	} {
		if got := glob(tc.p, tc.s); got != tc.want {
			t.Errorf("glob(%q, %q) = %v", tc.p, tc.s, got)
		}
	}
}

func TestMethodNotAllowedBody(t *testing.T) {
	h := newHarness(t, nil)
	w := httptest.NewRecorder()
	h.srv.ServeHTTP(w, httptest.NewRequest("GET", base+"/keys/both/encrypt", nil))
	body, _ := io.ReadAll(w.Body)
	if w.Code != 405 || w.Header().Get("Allow") != "POST" || !json.Valid(body) {
		t.Fatalf("GET: %d %q %s", w.Code, w.Header().Get("Allow"), body)
	}
}
