package server

// The web console (package console) on kmsd's listener. The console is a
// client of the API, not a back door: every action it takes is one KMS or
// CloudHSM v2 request run by api.ServeHTTP — the same decoding,
// validation, authorization, metrics and audit record as a request from
// the aws CLI — with the signed-in principal as the caller. Only the
// SigV4 step differs: the console has verified the principal's secret key
// at sign-in, so its in-process requests carry the session's access key
// in their context (consoleKey, unexported: no HTTP client can set it)
// instead of a signature. The identity is looked up again on every
// request, so a deleted access key or an expired session ends the
// console's access at once.

import (
	"bytes"
	"context"
	"crypto/subtle"
	"errors"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/kmsd/kmsd/internal/audit"
	"github.com/kmsd/kmsd/internal/awsjson"
	"github.com/kmsd/kmsd/internal/console"
	"github.com/kmsd/kmsd/internal/identity"
	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/sigv4"
)

// consoleKey is the context key of a console request's credentials.
type consoleKey struct{}

// verify authenticates r with v, or takes the credentials the console put
// in its context (see the file comment).
func verify(v *sigv4.Verifier, r *http.Request, body []byte) (*sigv4.Result, error) {
	if c, ok := r.Context().Value(consoleKey{}).(console.Credentials); ok {
		return &sigv4.Result{AccessKeyID: c.AccessKeyID, Region: c.Region, Service: v.Service, SessionToken: c.SessionToken, Time: time.Now()}, nil
	}
	return v.Verify(r, body)
}

// consoleBackend is what the console needs of kmsd.
type consoleBackend struct {
	a         *api
	region    string
	auditPath string // "" when the audit log is off or on standard output
}

var _ console.Backend = (*consoleBackend)(nil)

// SignIn checks an access key's secret (and session token, for temporary
// credentials) in constant time. In emulator mode every well-formed key
// signs in as the account's root, as every signature verifies there.
func (b *consoleBackend) SignIn(akid, secret, token string) (console.Principal, bool) {
	if akid == "" || secret == "" {
		return console.Principal{}, false
	}
	if b.a.ids == nil {
		return console.Principal{ARN: identity.Root(b.a.account).ARN, Account: b.a.account, Admin: true}, true
	}
	want, ok := b.a.ids.Secret(akid)
	// Compared even for an unknown key, so that timing tells nothing.
	match := subtle.ConstantTimeCompare([]byte(secret), []byte(want)) == 1
	if !ok || !match {
		return console.Principal{}, false
	}
	return b.Principal(console.Credentials{AccessKeyID: akid, SessionToken: token})
}

// Principal is who c acts as now; ok is false once the key is gone.
func (b *consoleBackend) Principal(c console.Credentials) (console.Principal, bool) {
	if b.a.ids == nil {
		return console.Principal{ARN: identity.Root(b.a.account).ARN, Account: b.a.account, Admin: true}, true
	}
	id, ok := b.a.ids.Identity(c.AccessKeyID)
	if !ok || !tokenMatches(id, c.SessionToken) {
		return console.Principal{}, false
	}
	p := identity.Principal{Account: id.Principal.Account, ARN: id.Principal.ARN}
	return console.Principal{ARN: id.Principal.ARN, Account: id.Principal.Account, Admin: isAdmin(p)}, true
}

// Call runs one API request (target "TrentService.X" or
// "BaldrApiService.X") as c through api.ServeHTTP and returns its HTTP
// status and body. from is the browser's request: its address and user
// agent go into the audit record.
func (b *consoleBackend) Call(from *http.Request, c console.Credentials, target string, body []byte) (int, []byte) {
	if c.Region == "" {
		c.Region = b.region
	}
	ctx := context.WithValue(from.Context(), consoleKey{}, c)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "/", bytes.NewReader(body))
	if err != nil {
		return http.StatusInternalServerError, nil
	}
	req.RemoteAddr, req.TLS = from.RemoteAddr, from.TLS
	req.ContentLength = int64(len(body))
	req.Header.Set("Content-Type", awsjson.ContentType)
	req.Header.Set("X-Amz-Target", target)
	req.Header.Set("User-Agent", "kmsd-console ("+from.UserAgent()+")")
	rw := &recorder{h: http.Header{}, status: http.StatusOK}
	b.a.ServeHTTP(rw, req)
	return rw.status, rw.buf.Bytes()
}

// SearchAudit calls fn with each audit record matching f, oldest first,
// from the rotated files and then the current one.
func (b *consoleBackend) SearchAudit(f *audit.Filter, fn func(line []byte) error) error {
	if b.auditPath == "" {
		return console.ErrNoAuditLog
	}
	// Rotated files are path.N, N = 1 the newest (audit.File).
	var files []string
	for i := audit.DefaultBackups; i >= 1; i-- {
		files = append(files, b.auditPath+"."+strconv.Itoa(i))
	}
	files = append(files, b.auditPath)
	for _, p := range files {
		fh, err := os.Open(p)
		if err != nil {
			continue
		}
		err = audit.Search(fh, f, fn)
		fh.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// Metrics is a snapshot of the request metrics kmsd keeps.
func (b *consoleBackend) Metrics() (console.MetricsSnapshot, error) {
	return b.a.metrics.snapshot()
}

// recorder is the in-process ResponseWriter of a console call.
type recorder struct {
	h      http.Header
	status int
	buf    bytes.Buffer
	wrote  bool
}

func (r *recorder) Header() http.Header { return r.h }
func (r *recorder) WriteHeader(s int) {
	if !r.wrote {
		r.status, r.wrote = s, true
	}
}
func (r *recorder) Write(p []byte) (int, error) { r.wrote = true; return r.buf.Write(p) }

// withConsole serves the console's paths with con and the rest with a.
func withConsole(a http.Handler, con *console.Console) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/console" || strings.HasPrefix(r.URL.Path, console.Prefix) {
			con.ServeHTTP(w, r)
			return
		}
		a.ServeHTTP(w, r)
	})
}

// consolePrefix is the X-Amz-Target prefix of kmsctl console-login's
// request (KmsdConsole.CreateLoginUrl), signed like a KMS request.
const consolePrefix = "KmsdConsole"

// serveConsoleLogin answers KmsdConsole.CreateLoginUrl: a one-time URL
// that signs the caller into the console as the principal of the access
// key that signed the request. It reports whether the target was its.
// The URL is a credential: it is in neither the audit record nor the log.
func (a *api) serveConsoleLogin(w http.ResponseWriter, r *http.Request, body []byte, rec *audit.Record) bool {
	target := r.Header.Get("X-Amz-Target")
	if !strings.HasPrefix(target, consolePrefix+".") {
		return false
	}
	rec.EventSource, rec.EventName = "kmsd", "CreateConsoleLoginUrl"
	if target != consolePrefix+".CreateLoginUrl" {
		a.fail(w, rec, "", &awsjson.Error{Code: "UnknownOperationException", Status: 400})
		return true
	}
	op := "console:CreateLoginUrl"
	if a.console == nil {
		a.fail(w, rec, op, &awsjson.Error{Code: "UnsupportedOperationException", Message: "The web console is off (kmsd --console off).", Status: 400})
		return true
	}
	res, err := a.verifier.Verify(r, body) // never a console request: a signature only
	if err != nil {
		var se *sigv4.Error
		if errors.As(err, &se) {
			a.fail(w, rec, op, &awsjson.Error{Code: se.Code, Message: se.Message, Status: kmsapi.Status(se.Code)})
			return true
		}
		a.fail(w, rec, op, &awsjson.Error{Code: "InternalFailure", Status: 500})
		return true
	}
	rec.AWSRegion = res.Region
	if a.ids != nil {
		id, ok := a.ids.Identity(res.AccessKeyID)
		if !ok || !tokenMatches(id, res.SessionToken) {
			a.fail(w, rec, op, &awsjson.Error{Code: "UnrecognizedClientException", Message: "The security token included in the request is invalid.", Status: 400})
			return true
		}
		setIdentity(rec, id)
	} else {
		setRoot(rec, a.account, res.AccessKeyID)
	}
	tok, err := a.console.IssueLoginToken(console.Credentials{AccessKeyID: res.AccessKeyID, SessionToken: res.SessionToken, Region: res.Region})
	if err != nil {
		a.fail(w, rec, op, &awsjson.Error{Code: "InternalFailure", Status: 500})
		return true
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	a.metrics.requests.WithLabelValues(op, "OK").Inc()
	awsjson.WriteJSON(w, rec.RequestID, map[string]string{"LoginUrl": scheme + "://" + r.Host + console.Prefix + "login/token?token=" + tok})
	return true
}
