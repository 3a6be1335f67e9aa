package console

import (
	"crypto/sha256"
	"crypto/subtle"
	"net"
	"net/http"
	"strings"
	"time"
)

// loginTokenTTL is how long a one-time sign-in URL stays usable.
const loginTokenTTL = 2 * time.Minute

// Sign-in throttle: after maxFailures failed sign-ins from one address
// within failureWindow, that address may not try again until the window
// has passed since its first failure, so secrets cannot be guessed fast.
const (
	maxFailures   = 5
	failureWindow = time.Minute
)

type failures struct {
	first time.Time
	n     int
}

// throttled reports whether addr may not sign in now.
func (c *Console) throttled(addr string, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	f, ok := c.failed[addr]
	if ok && now.Sub(f.first) >= failureWindow {
		delete(c.failed, addr)
		return false
	}
	return ok && f.n >= maxFailures
}

// failedSignIn counts a failure of addr.
func (c *Console) failedSignIn(addr string, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for a, f := range c.failed { // forget old ones
		if now.Sub(f.first) >= failureWindow {
			delete(c.failed, a)
		}
	}
	f := c.failed[addr]
	if f == nil {
		f = &failures{first: now}
		c.failed[addr] = f
	}
	f.n++
}

// remoteHost is the address part of r.RemoteAddr.
func remoteHost(r *http.Request) string {
	if h, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		return h
	}
	return r.RemoteAddr
}

type loginToken struct {
	creds   Credentials
	expires time.Time
}

// serveLogin shows the sign-in form (GET) or signs in (POST). The form
// carries a random token that must equal a cookie set with the form
// (double submit), so another site cannot sign a browser in.
func (c *Console) serveLogin(w http.ResponseWriter, r *http.Request) {
	next := r.FormValue("next")
	if !strings.HasPrefix(next, Prefix) || strings.HasPrefix(next, "//") {
		next = Prefix
	}
	data := map[string]any{"Title": "Sign in", "Next": next}
	switch r.Method {
	case http.MethodGet:
	case http.MethodPost:
		ck, err := r.Cookie(loginCookie)
		if err != nil || subtle.ConstantTimeCompare([]byte(ck.Value), []byte(r.PostFormValue("csrf"))) != 1 {
			c.refuse(w, r, "The sign-in form's token is missing or wrong: sign in from the console's own page.")
			return
		}
		host, now := remoteHost(r), c.cfg.Now()
		if c.throttled(host, now) {
			c.cfg.Log.Warn("console sign-in throttled", "remote", r.RemoteAddr)
			w.WriteHeader(http.StatusTooManyRequests)
			c.render(w, "login", obj{"Title": "Sign in", "Next": next,
				"Error": "Too many failed sign-ins from your address: wait a minute and try again."})
			return
		}
		akid := strings.TrimSpace(r.PostFormValue("access_key_id"))
		creds := Credentials{AccessKeyID: akid, SessionToken: strings.TrimSpace(r.PostFormValue("session_token")), Region: c.cfg.Region}
		p, ok := c.cfg.Backend.SignIn(akid, r.PostFormValue("secret_access_key"), creds.SessionToken)
		if ok {
			if err := c.newSession(w, r, creds, p); err != nil {
				http.Error(w, "internal error", http.StatusInternalServerError)
				return
			}
			c.cfg.Log.Info("console sign-in", "principal", p.ARN, "accessKeyId", akid, "remote", r.RemoteAddr)
			http.Redirect(w, r, next, http.StatusSeeOther)
			return
		}
		c.failedSignIn(host, now)
		c.cfg.Log.Info("console sign-in refused", "accessKeyId", akid, "remote", r.RemoteAddr)
		data["Error"] = "The access key ID or secret access key is not valid."
		data["AccessKeyID"] = akid
		w.WriteHeader(http.StatusUnauthorized)
	default:
		w.Header().Set("Allow", "GET, POST")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	tok, err := c.random()
	if err != nil {
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: loginCookie, Value: tok, Path: Prefix + "login", HttpOnly: true, Secure: r.TLS != nil,
		SameSite: http.SameSiteStrictMode})
	data["CSRF"] = tok
	c.render(w, "login", data)
}

// IssueLoginToken makes a one-time sign-in token for creds (kmsctl
// console-login); the URL Prefix+"login/token?token=T" signs in once,
// within loginTokenTTL.
func (c *Console) IssueLoginToken(creds Credentials) (string, error) {
	t, err := c.random()
	if err != nil {
		return "", err
	}
	if creds.Region == "" {
		creds.Region = c.cfg.Region
	}
	now := c.cfg.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, l := range c.logins {
		if now.After(l.expires) {
			delete(c.logins, k)
		}
	}
	c.logins[sha256.Sum256([]byte(t))] = loginToken{creds: creds, expires: now.Add(loginTokenTTL)}
	return t, nil
}

// serveLoginToken signs in with a one-time token and forgets it.
func (c *Console) serveLoginToken(w http.ResponseWriter, r *http.Request) {
	key := sha256.Sum256([]byte(r.URL.Query().Get("token")))
	c.mu.Lock()
	l, ok := c.logins[key]
	delete(c.logins, key)
	c.mu.Unlock()
	if !ok || c.cfg.Now().After(l.expires) {
		w.WriteHeader(http.StatusUnauthorized)
		c.render(w, "login", map[string]any{"Title": "Sign in", "Next": Prefix,
			"Error": "This sign-in link has been used or has expired; run kmsctl console-login again."})
		return
	}
	p, ok := c.cfg.Backend.Principal(l.creds)
	if !ok {
		w.WriteHeader(http.StatusUnauthorized)
		c.render(w, "login", map[string]any{"Title": "Sign in", "Next": Prefix, "Error": "The access key of this link is no longer valid."})
		return
	}
	if err := c.newSession(w, r, l.creds, p); err != nil {
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	http.Redirect(w, r, Prefix, http.StatusSeeOther)
}
