package server

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/barrier"
	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/identity"
	"github.com/kmsd/kmsd/internal/kms"
	"github.com/kmsd/kmsd/internal/sigv4"
	"github.com/kmsd/kmsd/internal/storage"
	"github.com/kmsd/kmsd/internal/storage/sqlite"
)

const (
	testAccount = "111122223333"
	testAKID    = "AKIAIOSFODNN7EXAMPLE"
	testSecret  = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
)

// newTestAPI returns the KMS, IAM and STS handler of a kmsd in verify
// mode, with one long-term access key (testAKID) for an administrator.
func newTestAPI(t testing.TB, opts ...kms.Option) *api {
	t.Helper()
	a, _ := newTestAPIWrap(t, nil, opts...)
	return a
}

// newTestAPIWrap is newTestAPI whose KMS service stores through
// wrap(store) (identities use the store itself), and the service's
// catalog.
func newTestAPIWrap(t testing.TB, wrap func(storage.Store) storage.Store, opts ...kms.Option) (*api, *catalog.Catalog) {
	t.Helper()
	ctx := context.Background()
	store, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "kmsd.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	var kstore storage.Store = store
	if wrap != nil {
		kstore = wrap(store)
	}
	b, err := barrier.New(bytes.Repeat([]byte{7}, 32))
	if err != nil {
		t.Fatal(err)
	}
	ids, err := identity.Open(ctx, store, b)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{AccountID: testAccount, AdminKeyID: testAKID, AdminSecret: testSecret}
	if _, err := bootstrapAdmin(ctx, cfg, ids); err != nil {
		t.Fatal(err)
	}
	if err := grantAdmin(ctx, cfg, ids); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	cat := catalog.New(kstore, b)
	a := &api{svc: kms.New(cat, append([]kms.Option{kms.WithLogger(log)}, opts...)...), account: testAccount, log: log, metrics: newMetrics(), ids: ids}
	a.setVerifiers(ids)
	return a, cat
}

// call serves one KMS request signed by s (with token, if any) after edit,
// which may change the request once signed, and returns the status and the
// decoded JSON answer.
func (a *api) call(t *testing.T, target, body string, s sigv4.Signer, token string, edit func(*http.Request)) (int, map[string]any) {
	t.Helper()
	r := httptest.NewRequest(http.MethodPost, "http://kms.us-east-1.amazonaws.com/", strings.NewReader(body))
	r.Header.Set("Content-Type", "application/x-amz-json-1.1")
	r.Header.Set("X-Amz-Target", "TrentService."+target)
	s.Sign(r, []byte(body), testAKID, testSecret, token, "us-east-1", "kms", time.Now())
	if edit != nil {
		edit(r)
	}
	w := httptest.NewRecorder()
	a.ServeHTTP(w, r)
	var out map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &out); err != nil {
		t.Fatalf("%s: answer is not JSON: %q", target, w.Body)
	}
	return w.Code, out
}

func wantError(t *testing.T, status int, out map[string]any, wantStatus int, wantType, wantMsg string) {
	t.Helper()
	if status != wantStatus || out["__type"] != wantType || out["message"] != wantMsg {
		t.Errorf("got %d %v\nwant %d {__type:%s message:%s}", status, out, wantStatus, wantType, wantMsg)
	}
}

// TestUnsignedTargetReplay is the replay of a captured Encrypt as another
// operation: with X-Amz-Target unsigned it used to run as the new target.
func TestUnsignedTargetReplay(t *testing.T) {
	a := newTestAPI(t)
	status, out := a.call(t, "CreateKey", `{}`, sigv4.Signer{}, "", nil)
	if status != 200 {
		t.Fatalf("CreateKey: %d %v", status, out)
	}
	keyID := out["KeyMetadata"].(map[string]any)["KeyId"].(string)
	encrypt := `{"KeyId":"` + keyID + `","Plaintext":"aGVsbG8="}`
	toDeletion := func(r *http.Request) { r.Header.Set("X-Amz-Target", "TrentService.ScheduleKeyDeletion") }

	for _, tc := range []struct {
		name    string
		signer  sigv4.Signer
		edit    func(*http.Request)
		status  int
		typ     string
		message string
	}{
		{name: "signed as sent", status: 200},
		{name: "host and date signed, target changed", signer: sigv4.Signer{Headers: []string{}}, edit: toDeletion,
			status: 400, typ: "InvalidSignatureException", message: "'X-Amz-Target' must be a 'SignedHeader' in the AWS Authorization."},
		// The JSON protocol's own Content-Type may go unsigned, as the AWS
		// SDK for JavaScript v2 sends it; no other value may.
		{name: "content-type unsigned, as sent", signer: sigv4.Signer{Headers: []string{"x-amz-target"}}, status: 200},
		{name: "content-type unsigned, changed", signer: sigv4.Signer{Headers: []string{"x-amz-target"}},
			edit:   func(r *http.Request) { r.Header.Set("Content-Type", "application/json") },
			status: 400, typ: "InvalidSignatureException", message: "'Content-Type' must be a 'SignedHeader' in the AWS Authorization."},
		{name: "target unsigned, target changed", signer: sigv4.Signer{Headers: []string{"content-type"}}, edit: toDeletion,
			status: 400, typ: "InvalidSignatureException", message: "'X-Amz-Target' must be a 'SignedHeader' in the AWS Authorization."},
		{name: "target signed, target changed", edit: toDeletion,
			status: 400, typ: "InvalidSignatureException", message: "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details."},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, out := a.call(t, "Encrypt", encrypt, tc.signer, "", tc.edit)
			if tc.status == 200 {
				if status != 200 || out["CiphertextBlob"] == nil {
					t.Fatalf("Encrypt: %d %v", status, out)
				}
				return
			}
			wantError(t, status, out, tc.status, tc.typ, tc.message)
		})
	}
	status, out = a.call(t, "DescribeKey", `{"KeyId":"`+keyID+`"}`, sigv4.Signer{}, "", nil)
	if state := out["KeyMetadata"].(map[string]any)["KeyState"]; status != 200 || state != "Enabled" {
		t.Errorf("after the replays the key is %v (%d)", state, status)
	}
}

// TestSecurityToken: a long-term access key comes without a session
// token; any token with it is refused as AWS refuses it.
func TestSecurityToken(t *testing.T) {
	a := newTestAPI(t)
	const invalid = "The security token included in the request is invalid."
	kmsHeaders := sigv4.Signer{Headers: []string{"content-type", "x-amz-target"}} // leaves the token unsigned
	for _, tc := range []struct {
		name   string
		signer sigv4.Signer
		token  string
		ok     bool
	}{
		{name: "no token", ok: true},
		{name: "signed bogus token", token: "bogus"},
		{name: "unsigned bogus token", signer: kmsHeaders, token: "bogus"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, out := a.call(t, "ListKeys", `{}`, tc.signer, tc.token, nil)
			if tc.ok {
				if status != 200 {
					t.Fatalf("ListKeys: %d %v", status, out)
				}
				return
			}
			wantError(t, status, out, 400, "UnrecognizedClientException", invalid)
		})
	}

	// The IAM and STS query APIs apply the same rule.
	body := "Action=ListUsers&Version=2010-05-08"
	r := httptest.NewRequest(http.MethodPost, "http://iam.amazonaws.com/", strings.NewReader(body))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")
	sigv4.Sign(r, []byte(body), testAKID, testSecret, "bogus", "us-east-1", "iam", time.Now())
	w := httptest.NewRecorder()
	a.ServeHTTP(w, r)
	if w.Code != 403 || !strings.Contains(w.Body.String(), "<Code>InvalidClientTokenId</Code><Message>"+invalid+"</Message>") {
		t.Errorf("IAM with a bogus token: %d %s", w.Code, w.Body)
	}
}

// TestPresignedRefused: the KMS API takes no query-string signature.
func TestPresignedRefused(t *testing.T) {
	a := newTestAPI(t)
	now := time.Now().UTC()
	q := "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=" + testAKID + "%2F" + now.Format("20060102") +
		"%2Fus-east-1%2Fkms%2Faws4_request&X-Amz-Date=" + now.Format("20060102T150405Z") +
		"&X-Amz-SignedHeaders=content-type%3Bhost%3Bx-amz-target&X-Amz-Signature=" + strings.Repeat("0", 64)
	r := httptest.NewRequest(http.MethodPost, "http://kms.us-east-1.amazonaws.com/?"+q, strings.NewReader(`{}`))
	r.Header.Set("Content-Type", "application/x-amz-json-1.1")
	r.Header.Set("X-Amz-Target", "TrentService.ListKeys")
	w := httptest.NewRecorder()
	a.ServeHTTP(w, r)
	var out map[string]any
	json.Unmarshal(w.Body.Bytes(), &out)
	wantError(t, w.Code, out, 400, "MissingAuthenticationTokenException", "Missing Authentication Token")
}

func TestTokenMatches(t *testing.T) {
	long := &identity.Identity{AccessKeyID: "AKIAEXAMPLE"}
	temp := &identity.Identity{AccessKeyID: "ASIAEXAMPLE", SessionToken: "session-token"}
	for _, tc := range []struct {
		name  string
		id    *identity.Identity
		token string
		want  bool
	}{
		{"long-term, no token", long, "", true},
		{"long-term, any token", long, "session-token", false},
		{"temporary, its token", temp, "session-token", true},
		{"temporary, no token", temp, "", false},
		{"temporary, another token", temp, "session-tokem", false},
		{"temporary, a prefix", temp, "session", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tokenMatches(tc.id, tc.token); got != tc.want {
				t.Errorf("tokenMatches = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestQueryUTF8: the IAM and STS query APIs refuse parameter names and
// values that are not UTF-8 once percent-decoded, before anything is
// stored.
func TestQueryUTF8(t *testing.T) {
	a := newTestAPI(t)
	query := func(body string) (int, string) {
		r := httptest.NewRequest(http.MethodPost, "http://iam.amazonaws.com/", strings.NewReader(body))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")
		sigv4.Sign(r, []byte(body), testAKID, testSecret, "", "us-east-1", "iam", time.Now())
		w := httptest.NewRecorder()
		a.ServeHTTP(w, r)
		return w.Code, w.Body.String()
	}
	for _, tc := range []struct {
		name, body, want string
	}{
		{"invalid byte in a value", "Action=CreateUser&Version=2010-05-08&UserName=a%FFb",
			"<Code>ValidationError</Code><Message>1 validation error detected: Value at &#39;userName&#39; failed to satisfy constraint: Member must be valid UTF-8</Message>"},
		{"encoded surrogate in a value", "Action=CreateUser&Version=2010-05-08&UserName=a%ED%A0%80&Path=%2F",
			"<Code>ValidationError</Code><Message>1 validation error detected: Value at &#39;userName&#39; failed to satisfy constraint: Member must be valid UTF-8</Message>"},
		{"invalid byte in a name", "Action=CreateUser&Version=2010-05-08&UserName=bob&%C0x=1",
			"<Code>ValidationError</Code><Message>1 validation error detected: a parameter name is not valid UTF-8</Message>"},
		{"raw invalid byte", "Action=CreateUser&Version=2010-05-08&UserName=a\xffb",
			"<Code>ValidationError</Code>"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body := query(tc.body)
			if status != 400 || !strings.Contains(body, "<Type>Sender</Type>"+tc.want) {
				t.Errorf("got %d %s\nwant 400 with %s", status, body, tc.want)
			}
		})
	}
	if status, body := query("Action=ListUsers&Version=2010-05-08"); status != 200 || strings.Count(body, "<UserName>") != 1 {
		t.Errorf("ListUsers after the refusals: %d %s, want only kmsd-admin", status, body)
	}
	if status, body := query("Action=CreateUser&Version=2010-05-08&UserName=caf%C3%A9"); strings.Contains(body, "valid UTF-8") {
		t.Errorf("valid UTF-8 refused: %d %s", status, body)
	}
}
