// Package console is kmsd's web console, served at /console/ on kmsd's
// main listener: custom key stores with their connection state updated
// live, HSM clusters, keys, the audit log and an overview of request
// rates, errors and latencies.
//
// The console is a client of the API, not a back door. Sign-in checks an
// access key's secret (Backend.SignIn, constant time); the session then
// holds that access key, and every page and every button is one or more
// KMS or CloudHSM v2 requests run by Backend.Call through kmsd's own
// request path, with the session's principal as the caller — so the same
// authorization decides, the same audit records are written, and a
// refusal shows AWS's own exception and message.
//
// No framework: pages are server-rendered html/template (auto-escaping
// is the XSS defence), every action is a plain HTML form POST answered by
// a redirect, and about 150 lines of plain JavaScript (static/console.js)
// add what forms cannot: the key store table polls its JSON (every second
// while a store is connecting or disconnecting, else every three) and
// updates in place, the overview's charts refresh, the policy editor
// checks JSON as it is typed. Without JavaScript every page still works
// (reload to refresh). A framework would bring a build step, a
// dependency tree and kilobytes the browser must trust, for a dozen
// tables and forms; everything here is embedded with go:embed, and
// nothing is loaded from the internet (the Content-Security-Policy
// allows only the console's own origin).
//
// Sessions: a random 256-bit id in an HttpOnly, SameSite=Strict cookie
// (Secure when the request came over TLS), kept in memory only and ended
// after Config.IdleTimeout without a request; each session has a CSRF
// token that every POST must carry (compared in constant time), and a
// POST whose Origin header names another origin is refused as well.
// Sign-in itself is protected by a double-submit token.
package console

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/base64"
	"encoding/json"
	"errors"
	"html/template"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/kmsd/kmsd/internal/audit"
)

// Credentials are what a session acts with: an access key (and the
// session token of temporary credentials) and the Region its requests
// are for.
type Credentials struct {
	AccessKeyID, SessionToken, Region string
}

// Principal is who signed in.
type Principal struct {
	ARN, Account string
	// Admin: the account's administrator (root or kmsd-admin), who may
	// read the audit log, as only it may use kmsd's admin API.
	Admin bool
}

// Bucket is one cumulative histogram bucket.
type Bucket struct{ UpperBound, Count float64 }

// OpMetrics are one operation's cumulative request and error counts and
// latency histogram.
type OpMetrics struct {
	Requests, Errors float64
	Buckets          []Bucket
}

// MetricsSnapshot is the request metrics at one time.
type MetricsSnapshot struct {
	Time time.Time
	Ops  map[string]*OpMetrics
}

// ErrNoAuditLog is SearchAudit's error when kmsd keeps no audit log file.
var ErrNoAuditLog = errors.New("kmsd keeps no audit log file (--audit-log is off or standard output)")

// Backend is what the console needs of kmsd (internal/server).
type Backend interface {
	// SignIn verifies an access key's secret key (and session token),
	// in constant time.
	SignIn(accessKeyID, secret, sessionToken string) (Principal, bool)
	// Principal is who c acts as now; false once its key is gone.
	Principal(c Credentials) (Principal, bool)
	// Call runs one API request (X-Amz-Target target, JSON body) as c,
	// through kmsd's request path, and returns the HTTP status and body.
	Call(from *http.Request, c Credentials, target string, body []byte) (int, []byte)
	// SearchAudit calls fn with every audit record f matches, oldest first.
	SearchAudit(f *audit.Filter, fn func(line []byte) error) error
	// Metrics is a snapshot of the request metrics.
	Metrics() (MetricsSnapshot, error)
}

// Config configures a Console.
type Config struct {
	Backend Backend
	// Region is the Region of the console's requests.
	Region string
	// IdleTimeout ends a session without requests (default 15 minutes).
	IdleTimeout time.Duration
	// SampleEvery is how often the overview samples the metrics (default
	// 2s); History how many samples it keeps (default 150).
	SampleEvery time.Duration
	History     int
	Log         *slog.Logger
	Now         func() time.Time // default time.Now
	Rand        io.Reader        // default crypto/rand
}

// Prefix is where the console is served.
const Prefix = "/console/"

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Console serves the web console.
type Console struct {
	cfg   Config
	pages map[string]*template.Template
	files http.Handler

	mu       sync.Mutex
	sessions map[[32]byte]*session // by SHA-256 of the session id
	logins   map[[32]byte]loginToken
	failed   map[string]*failures // failed sign-ins by remote address

	metrics *sampler
}

type session struct {
	creds     Credentials
	principal Principal
	csrf      string
	lastSeen  time.Time
	flash     *flash // shown once by the next page
}

type flash struct {
	OK      bool   `json:"ok"`
	Code    string `json:"code,omitempty"`
	Message string `json:"message"`
	Draft   string `json:"-"` // a key policy PutKeyPolicy refused, to edit again
}

// New makes a Console.
func New(cfg Config) (*Console, error) {
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 15 * time.Minute
	}
	if cfg.SampleEvery <= 0 {
		cfg.SampleEvery = 2 * time.Second
	}
	if cfg.History <= 0 {
		cfg.History = 150
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	pages, err := parsePages()
	if err != nil {
		return nil, err
	}
	sub, err := fs.Sub(staticFS, "static")
	if err != nil {
		return nil, err
	}
	c := &Console{cfg: cfg, pages: pages, sessions: map[[32]byte]*session{}, logins: map[[32]byte]loginToken{}, failed: map[string]*failures{},
		files: http.StripPrefix(Prefix+"static/", http.FileServer(http.FS(sub)))}
	c.metrics = newSampler(cfg.Backend, cfg.History)
	return c, nil
}

const (
	sessionCookie = "kmsd_console"
	loginCookie   = "kmsd_console_login"
)

// ServeHTTP serves everything under Prefix.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin") // not no-referrer: with it, browsers send "Origin: null" on the console's own POSTs
	h.Set("X-Frame-Options", "DENY")
	h.Set("Cache-Control", "no-store")
	path := strings.TrimPrefix(r.URL.Path, Prefix)
	if r.URL.Path == strings.TrimSuffix(Prefix, "/") {
		http.Redirect(w, r, Prefix, http.StatusSeeOther)
		return
	}
	if strings.HasPrefix(path, "static/") {
		h.Set("Cache-Control", "max-age=300")
		c.files.ServeHTTP(w, r)
		return
	}
	h.Set("Content-Type", "text/html; charset=utf-8")
	if r.Method == http.MethodPost && !sameOrigin(r) {
		c.refuse(w, r, "The request came from another site (its Origin header names another origin) and was refused.")
		return
	}
	switch path {
	case "login":
		c.serveLogin(w, r)
		return
	case "login/token":
		c.serveLoginToken(w, r)
		return
	}
	s := c.session(r)
	if s == nil {
		if r.Method == http.MethodGet && !strings.HasPrefix(path, "api/") {
			http.Redirect(w, r, Prefix+"login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
			return
		}
		writeJSONError(w, http.StatusUnauthorized, "Your console session has ended; sign in again.")
		return
	}
	if r.Method == http.MethodPost {
		if err := r.ParseForm(); err != nil {
			c.refuse(w, r, "The form could not be read.")
			return
		}
		if subtle.ConstantTimeCompare([]byte(r.PostForm.Get("csrf")), []byte(s.csrf)) != 1 {
			c.refuse(w, r, "The form's CSRF token is missing or wrong: the request was refused and nothing changed.")
			return
		}
	}
	c.route(w, r, s, path)
}

// sameOrigin reports whether a POST's Origin header, when present, names
// this server.
func sameOrigin(r *http.Request) bool {
	o := r.Header.Get("Origin")
	if o == "" {
		return true
	}
	u, err := url.Parse(o)
	return err == nil && u.Host == r.Host
}

// refuse answers a request that fails the CSRF checks.
func (c *Console) refuse(w http.ResponseWriter, r *http.Request, msg string) {
	c.cfg.Log.Warn("console request refused", "path", r.URL.Path, "remote", r.RemoteAddr, "reason", msg)
	if r.Header.Get("Accept") == "application/json" {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusForbidden)
		json.NewEncoder(w).Encode(&flash{Code: "InvalidCsrfToken", Message: msg})
		return
	}
	w.WriteHeader(http.StatusForbidden)
	c.render(w, "refused", map[string]any{"Title": "Request refused", "Message": msg})
}

// session returns the request's live session, touching it, or nil.
func (c *Console) session(r *http.Request) *session {
	ck, err := r.Cookie(sessionCookie)
	if err != nil || ck.Value == "" {
		return nil
	}
	key := sha256.Sum256([]byte(ck.Value))
	now := c.cfg.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.sessions[key]
	if s == nil {
		return nil
	}
	if now.Sub(s.lastSeen) > c.cfg.IdleTimeout {
		delete(c.sessions, key)
		return nil
	}
	p, ok := c.cfg.Backend.Principal(s.creds)
	if !ok { // the access key was deleted, or the session credentials expired
		delete(c.sessions, key)
		return nil
	}
	s.principal = p
	s.lastSeen = now
	return s
}

// newSession starts a session for creds and sets its cookie.
func (c *Console) newSession(w http.ResponseWriter, r *http.Request, creds Credentials, p Principal) error {
	id, err := c.random()
	if err != nil {
		return err
	}
	csrf, err := c.random()
	if err != nil {
		return err
	}
	now := c.cfg.Now()
	c.mu.Lock()
	for k, s := range c.sessions { // sweep ended sessions
		if now.Sub(s.lastSeen) > c.cfg.IdleTimeout {
			delete(c.sessions, k)
		}
	}
	c.sessions[sha256.Sum256([]byte(id))] = &session{creds: creds, principal: p, csrf: csrf, lastSeen: now}
	c.mu.Unlock()
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: id, Path: Prefix, HttpOnly: true, Secure: r.TLS != nil,
		SameSite: http.SameSiteStrictMode})
	return nil
}

// endSession forgets the request's session and clears its cookie.
func (c *Console) endSession(w http.ResponseWriter, r *http.Request) {
	if ck, err := r.Cookie(sessionCookie); err == nil {
		c.mu.Lock()
		delete(c.sessions, sha256.Sum256([]byte(ck.Value)))
		c.mu.Unlock()
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: Prefix, MaxAge: -1, HttpOnly: true, Secure: r.TLS != nil,
		SameSite: http.SameSiteStrictMode})
}

func (c *Console) random() (string, error) {
	b := make([]byte, 32)
	if _, err := io.ReadFull(c.cfg.Rand, b); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// apiError is an API error as the console shows it: AWS's exception name
// and message.
type apiError struct {
	Code, Message string
	Status        int
}

func (e *apiError) Error() string { return e.Code + ": " + e.Message }

// call runs target as the session's principal with input in, decoding
// the answer into out (if not nil).
func (c *Console) call(r *http.Request, s *session, target string, in, out any) error {
	if in == nil {
		in = struct{}{}
	}
	body, err := json.Marshal(in)
	if err != nil {
		return err
	}
	status, resp := c.cfg.Backend.Call(r, s.creds, target, body)
	if status/100 != 2 {
		var e struct {
			Type     string `json:"__type"`
			Message  string `json:"message"`
			Message2 string `json:"Message"`
		}
		json.Unmarshal(resp, &e)
		if e.Message == "" {
			e.Message = e.Message2
		}
		if i := strings.LastIndexByte(e.Type, '#'); i >= 0 {
			e.Type = e.Type[i+1:]
		}
		if e.Type == "" {
			e.Type = "InternalFailure"
		}
		return &apiError{Code: e.Type, Message: e.Message, Status: status}
	}
	if out != nil && len(resp) > 0 {
		return json.Unmarshal(resp, out)
	}
	return nil
}

// kms calls the KMS operation op.
func (c *Console) kms(r *http.Request, s *session, op string, in, out any) error {
	return c.call(r, s, "TrentService."+op, in, out)
}

// hsm calls the CloudHSM v2 operation op.
func (c *Console) hsm(r *http.Request, s *session, op string, in, out any) error {
	return c.call(r, s, "BaldrApiService."+op, in, out)
}

func writeJSONError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]string{"message": msg})
}
