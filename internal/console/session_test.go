package console

import (
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/audit"
)

// fakeBackend stands for kmsd: one access key, and a record of the calls
// the console makes.
type fakeBackend struct {
	mu    sync.Mutex
	calls []string // "akid target"
	gone  bool     // the access key was deleted
}

func (f *fakeBackend) SignIn(akid, secret, token string) (Principal, bool) {
	if akid != "AKIDTEST" || secret != "s3cret" {
		return Principal{}, false
	}
	return f.Principal(Credentials{AccessKeyID: akid})
}

func (f *fakeBackend) Principal(c Credentials) (Principal, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return Principal{ARN: "arn:aws:iam::111122223333:user/alice", Account: "111122223333"}, !f.gone && c.AccessKeyID == "AKIDTEST"
}

func (f *fakeBackend) Call(_ *http.Request, c Credentials, target string, _ []byte) (int, []byte) {
	f.mu.Lock()
	f.calls = append(f.calls, c.AccessKeyID+" "+target)
	f.mu.Unlock()
	if target == "TrentService.DisableKey" {
		return 400, []byte(`{"__type":"AccessDeniedException","message":"User: arn:aws:iam::111122223333:user/alice is not authorized to perform: kms:DisableKey"}`)
	}
	return 200, []byte(`{}`)
}

func (f *fakeBackend) SearchAudit(*audit.Filter, func([]byte) error) error { return nil }
func (f *fakeBackend) Metrics() (MetricsSnapshot, error) {
	return MetricsSnapshot{Time: time.Now()}, nil
}

func (f *fakeBackend) called(target string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.calls {
		if strings.HasSuffix(c, " "+target) {
			return true
		}
	}
	return false
}

type fixture struct {
	t   *testing.T
	srv *httptest.Server
	b   *fakeBackend
	c   *http.Client
	now time.Time
	mu  sync.Mutex
}

func newFixture(t *testing.T) *fixture {
	f := &fixture{t: t, b: &fakeBackend{}, now: time.Unix(1_800_000_000, 0)}
	con, err := New(Config{Backend: f.b, Region: "us-east-1", IdleTimeout: 10 * time.Minute,
		Now: func() time.Time { f.mu.Lock(); defer f.mu.Unlock(); return f.now }})
	if err != nil {
		t.Fatal(err)
	}
	f.srv = httptest.NewServer(con)
	t.Cleanup(f.srv.Close)
	jar, _ := cookiejar.New(nil)
	f.c = &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	return f
}

func (f *fixture) advance(d time.Duration) { f.mu.Lock(); f.now = f.now.Add(d); f.mu.Unlock() }

func (f *fixture) do(method, path string, form url.Values, hdr map[string]string) (*http.Response, string) {
	f.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, _ := http.NewRequest(method, f.srv.URL+path, body)
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := f.c.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

var csrfField = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// signIn signs in and returns the session's CSRF token.
func (f *fixture) signIn() string {
	f.t.Helper()
	_, page := f.do("GET", "/console/login", nil, nil)
	m := csrfField.FindStringSubmatch(page)
	if m == nil {
		f.t.Fatalf("no sign-in token in\n%s", page)
	}
	resp, _ := f.do("POST", "/console/login", url.Values{"csrf": {m[1]}, "access_key_id": {"AKIDTEST"}, "secret_access_key": {"s3cret"}}, nil)
	if resp.StatusCode != http.StatusSeeOther {
		f.t.Fatalf("sign-in: %d", resp.StatusCode)
	}
	var session *http.Cookie
	for _, c := range resp.Cookies() {
		if c.Name == sessionCookie {
			session = c
		}
	}
	if session == nil || !session.HttpOnly || session.Secure || session.SameSite != http.SameSiteStrictMode || session.Path != Prefix {
		f.t.Fatalf("session cookie %+v", session)
	}
	_, page = f.do("GET", "/console/stores", nil, nil)
	if m = csrfField.FindStringSubmatch(page); m == nil {
		f.t.Fatalf("no CSRF token on a signed-in page:\n%s", page)
	}
	return m[1]
}

func TestSignIn(t *testing.T) {
	f := newFixture(t)
	resp, _ := f.do("GET", "/console/keys", nil, nil)
	if resp.StatusCode != http.StatusSeeOther || !strings.HasPrefix(resp.Header.Get("Location"), "/console/login?next=") {
		t.Fatalf("signed out: %d %s", resp.StatusCode, resp.Header.Get("Location"))
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "frame-ancestors 'none'") {
		t.Fatalf("CSP %q", csp)
	}
	_, page := f.do("GET", "/console/login", nil, nil)
	tok := csrfField.FindStringSubmatch(page)[1]
	t.Run("wrong secret", func(t *testing.T) {
		resp, page := f.do("POST", "/console/login", url.Values{"csrf": {tok}, "access_key_id": {"AKIDTEST"}, "secret_access_key": {"nope"}}, nil)
		if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(page, "not valid") {
			t.Fatalf("%d", resp.StatusCode)
		}
	})
	t.Run("without the form's token", func(t *testing.T) {
		resp, _ := f.do("POST", "/console/login", url.Values{"access_key_id": {"AKIDTEST"}, "secret_access_key": {"s3cret"}}, nil)
		if resp.StatusCode != http.StatusForbidden {
			t.Fatalf("%d", resp.StatusCode)
		}
	})
	t.Run("open redirect", func(t *testing.T) {
		_, page := f.do("GET", "/console/login?next=//evil.example/", nil, nil)
		if !strings.Contains(page, `name="next" value="/console/"`) {
			t.Fatal("next not reset to the console")
		}
	})
	f.signIn()
}

func TestPostNeedsCSRF(t *testing.T) {
	f := newFixture(t)
	csrf := f.signIn()
	connect := url.Values{"action": {"connect"}}
	other := "x" + csrf[1:]
	if other == csrf {
		other = "y" + csrf[1:]
	}
	for _, c := range []struct {
		name string
		form url.Values
		hdr  map[string]string
	}{
		{"no token", connect, nil},
		{"another token", url.Values{"action": {"connect"}, "csrf": {other}}, nil},
		{"another origin", url.Values{"action": {"connect"}, "csrf": {csrf}}, map[string]string{"Origin": "http://evil.example"}},
		{"opaque origin", url.Values{"action": {"connect"}, "csrf": {csrf}}, map[string]string{"Origin": "null"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			resp, _ := f.do("POST", "/console/stores/cks-1234567890abcdefg", c.form, c.hdr)
			if resp.StatusCode != http.StatusForbidden || f.b.called("TrentService.ConnectCustomKeyStore") {
				t.Fatalf("%d, called %v", resp.StatusCode, f.b.calls)
			}
		})
	}
	// With the token: the call is made, as the session's access key.
	resp, _ := f.do("POST", "/console/stores/cks-1234567890abcdefg", url.Values{"action": {"connect"}, "csrf": {csrf}},
		map[string]string{"Origin": f.srv.URL})
	if resp.StatusCode != http.StatusSeeOther || !f.b.called("TrentService.ConnectCustomKeyStore") {
		t.Fatalf("%d, calls %v", resp.StatusCode, f.b.calls)
	}
	// A refusal is AWS's exception, shown once on the next page.
	resp, _ = f.do("POST", "/console/keys/1234abcd-12ab-34cd-56ef-1234567890ab", url.Values{"action": {"disable"}, "csrf": {csrf}}, nil)
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("disable: %d", resp.StatusCode)
	}
	_, page := f.do("GET", "/console/stores", nil, nil)
	if !strings.Contains(page, "AccessDeniedException</strong>: User: arn:aws:iam::111122223333:user/alice is not authorized to perform: kms:DisableKey") {
		t.Fatalf("no refusal shown:\n%s", page)
	}
	if _, page = f.do("GET", "/console/stores", nil, nil); strings.Contains(page, "AccessDeniedException") {
		t.Fatal("the refusal is shown twice")
	}
}

func TestSessionEnds(t *testing.T) {
	t.Run("idle timeout", func(t *testing.T) {
		f := newFixture(t)
		f.signIn()
		f.advance(9 * time.Minute)
		if resp, _ := f.do("GET", "/console/stores", nil, nil); resp.StatusCode != http.StatusOK {
			t.Fatalf("after 9 minutes: %d", resp.StatusCode)
		}
		f.advance(9 * time.Minute) // 9 minutes since the last request: still on
		if resp, _ := f.do("GET", "/console/stores", nil, nil); resp.StatusCode != http.StatusOK {
			t.Fatalf("after 9 more minutes: %d", resp.StatusCode)
		}
		f.advance(11 * time.Minute)
		if resp, _ := f.do("GET", "/console/stores", nil, nil); resp.StatusCode != http.StatusSeeOther {
			t.Fatalf("after 11 idle minutes: %d", resp.StatusCode)
		}
	})
	t.Run("access key deleted", func(t *testing.T) {
		f := newFixture(t)
		f.signIn()
		f.b.mu.Lock()
		f.b.gone = true
		f.b.mu.Unlock()
		if resp, _ := f.do("GET", "/console/stores", nil, nil); resp.StatusCode != http.StatusSeeOther {
			t.Fatalf("%d", resp.StatusCode)
		}
	})
	t.Run("sign out", func(t *testing.T) {
		f := newFixture(t)
		csrf := f.signIn()
		f.do("POST", "/console/logout", url.Values{"csrf": {csrf}}, nil)
		if resp, _ := f.do("GET", "/console/stores", nil, nil); resp.StatusCode != http.StatusSeeOther {
			t.Fatalf("%d", resp.StatusCode)
		}
	})
	t.Run("one-time URL", func(t *testing.T) {
		f := newFixture(t)
		con := f.srv.Config.Handler.(*Console)
		tok, err := con.IssueLoginToken(Credentials{AccessKeyID: "AKIDTEST"})
		if err != nil {
			t.Fatal(err)
		}
		if resp, _ := f.do("GET", "/console/login/token?token="+tok, nil, nil); resp.StatusCode != http.StatusSeeOther {
			t.Fatalf("first use: %d", resp.StatusCode)
		}
		if resp, _ := f.do("GET", "/console/login/token?token="+tok, nil, nil); resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("second use: %d", resp.StatusCode)
		}
		tok, _ = con.IssueLoginToken(Credentials{AccessKeyID: "AKIDTEST"})
		f.advance(3 * time.Minute)
		if resp, _ := f.do("GET", "/console/login/token?token="+tok, nil, nil); resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("after 3 minutes: %d", resp.StatusCode)
		}
	})
}

func TestSignInThrottle(t *testing.T) {
	f := newFixture(t)
	_, page := f.do("GET", "/console/login", nil, nil)
	tok := csrfField.FindStringSubmatch(page)[1]
	try := func(secret string) int {
		resp, _ := f.do("POST", "/console/login", url.Values{"csrf": {tok}, "access_key_id": {"AKIDTEST"}, "secret_access_key": {secret}}, nil)
		return resp.StatusCode
	}
	for i := range maxFailures {
		if got := try("guess"); got != http.StatusUnauthorized {
			t.Fatalf("guess %d: %d", i, got)
		}
	}
	if got := try("s3cret"); got != http.StatusTooManyRequests {
		t.Fatalf("after %d failures the right secret: %d, want 429", maxFailures, got)
	}
	f.advance(failureWindow)
	if got := try("s3cret"); got != http.StatusSeeOther {
		t.Fatalf("a minute later: %d", got)
	}
}
