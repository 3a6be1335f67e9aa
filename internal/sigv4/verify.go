package sigv4

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"net/http"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// SecretLookup finds the secret access key of an access key id. ok is false
// for an unknown key, which Verify reports as UnrecognizedClientException.
// It is called on every request, so it should answer from memory.
type SecretLookup interface {
	Secret(accessKeyID string) (secret string, ok bool)
}

// TokenLookup is implemented by a SecretLookup whose temporary credentials
// carry what is needed to find their secret in their session token (kmsd's
// sealed STS session tokens): Verify then calls SecretFor with the
// request's X-Amz-Security-Token ("" when absent) instead of Secret.
type TokenLookup interface {
	SecretFor(accessKeyID, sessionToken string) (secret string, ok bool)
}

// Verifier checks SigV4 signatures on incoming requests. Its exported
// fields are configuration, set before first use; a Verifier is safe for
// concurrent use and must not be copied after first use (it holds the
// signing-key cache).
type Verifier struct {
	// Service is the service every credential scope must name: "kms" for
	// kmsd, "kms-xks-proxy" for an XKS proxy. It must be set.
	Service string
	// Lookup resolves access keys. When nil (emulator mode) only the form
	// of the signature, its scope and the clock skew are checked, and any
	// access key is accepted.
	Lookup SecretLookup
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// MaxSkew is how far the request time may be from Now; zero means
	// DefaultMaxSkew.
	MaxSkew time.Duration
	// RawPath makes the canonical URI the escaped path exactly as received,
	// as XKS proxies verify. Otherwise the AWS rule for services other than
	// S3 applies: the path is normalised and each segment encoded again.
	RawPath bool
	// Headers says which headers present in a request must be signed
	// besides host. The zero value, RequireAll, is the rule for kmsd's own
	// APIs; an XKS proxy uses RequireHostDate, which is what AWS KMS signs.
	Headers HeaderRule
	// AllowPresigned accepts signatures in the query string (X-Amz-Algorithm
	// and the other X-Amz-* parameters). Otherwise such a request is
	// answered as one without authentication: no AWS SDK presigns a JSON
	// API call, and a presigned request could be replayed for up to a week.
	AllowPresigned bool
	// ProtocolContentType is the Content-Type of the protocol this
	// verifier's API speaks ("application/x-amz-json-1.1"). Under
	// RequireAll a request whose Content-Type is exactly that media type
	// may leave it unsigned, as AWS accepts: the AWS SDK for JavaScript v2
	// never signs Content-Type. Any other value must be signed, so an
	// unsigned Content-Type cannot switch a signed request to another
	// protocol. Empty: Content-Type must always be signed.
	ProtocolContentType string

	keys keyCache
}

// HeaderRule says which headers present in a request must be signed. The
// host header and the header that gives the request time (X-Amz-Date, or
// Date without it) must be signed under every rule.
type HeaderRule uint8

const (
	// RequireAll also requires Content-Type and every X-Amz-* header the
	// request carries, so that a captured request cannot be replayed as
	// another operation (X-Amz-Target) or another protocol (Content-Type)
	// within the clock skew. Two headers are exempt, as AWS exempts them:
	// X-Amz-Security-Token, which AWS allows to be added after signing
	// (the test suite's post-sts-header-after) and which the caller
	// checks against the access key anyway, and X-Amz-Content-Sha256,
	// which Verify checks against the body it hashes itself.
	RequireAll HeaderRule = iota
	// RequireHostDate requires only host and the date header: AWS KMS signs
	// exactly "host;x-amz-date" on the requests it sends to an XKS proxy
	// (and leaves Content-Type unsigned), so a proxy can ask no more.
	RequireHostDate
)

// Result identifies the signer of a verified request.
type Result struct {
	AccessKeyID string
	Region      string // from the credential scope
	Service     string
	Date        string    // YYYYMMDD of the credential scope
	Time        time.Time // the request's X-Amz-Date (or Date)
	// SessionToken is X-Amz-Security-Token, signed or not, for the caller
	// to validate: Verify does not check it.
	SessionToken string
	Presigned    bool // the signature came in the query string
}

// Verify authenticates r, whose body the caller has already read into body
// (the payload hash is computed from it). It returns who signed the request,
// or an *Error with the AWS exception name and message to send back.
//
// The checks run in the order AWS services run them: the Authorization
// header (or, if AllowPresigned, the presigned query) is parsed; host and
// the headers Verifier.Headers requires must be among the signed headers;
// the date is found and parsed; the clock skew is checked; the credential
// scope must name Verifier.Service, a valid region, the request's day and
// "aws4_request"; the access key is looked up; the canonical request is
// built and the signature compared in constant time.
func (v *Verifier) Verify(r *http.Request, body []byte) (*Result, error) {
	var (
		a         authz
		amzDate   string
		dateName  string // the header amzDate came from; "" if the query
		token     string
		presigned bool
		expires   time.Duration // presigned lifetime; 0 if not given
	)
	if h := r.Header["Authorization"]; len(h) > 0 {
		if err := a.parse(h[0]); err != nil {
			return nil, err
		}
		amzDate, dateName = first(r.Header["X-Amz-Date"]), "X-Amz-Date"
		if amzDate == "" {
			amzDate, dateName = dateHeader(r), "Date"
			if amzDate == "" {
				a.missing |= missingDate
			}
		}
		if a.missing != 0 {
			return nil, missingParams(a.missing, h[0])
		}
		if err := a.check(); err != nil {
			return nil, err
		}
		token = first(r.Header["X-Amz-Security-Token"])
	} else if r.URL != nil && strings.Contains(r.URL.RawQuery, "X-Amz-Algorithm=") {
		if !v.AllowPresigned {
			return nil, &Error{Code: CodeMissingAuthenticationToken, Message: msgMissingToken,
				Reason: "query-string (presigned) signatures are not accepted"}
		}
		q, err := presignedParams(r.URL.RawQuery, &a)
		if err != nil {
			return nil, err
		}
		presigned = true
		amzDate = q.Get("X-Amz-Date")
		token = q.Get("X-Amz-Security-Token")
		if e := q.Get("X-Amz-Expires"); e != "" {
			n, err := strconv.ParseInt(e, 10, 64)
			if err != nil || n < 0 {
				return nil, incomplete("X-Amz-Expires should be a number")
			}
			if n > 7*24*3600 {
				return nil, incomplete("X-Amz-Expires must be less than a week (in seconds) that is 604800")
			}
			expires = time.Duration(n) * time.Second
		}
	} else {
		return nil, &Error{Code: CodeMissingAuthenticationToken, Message: msgMissingToken}
	}
	if !listed(a.signedHeaders, "host") {
		return nil, incomplete(msgHostNotSigned)
	}
	if name := v.Headers.unsigned(r.Header, a.signedHeaders, dateName, v.ProtocolContentType); name != "" {
		return nil, notSigned(name)
	}

	t, ok := parseAmzDate(amzDate)
	if !ok {
		return nil, incomplete("Date must be in ISO-8601 'basic format'. Got '" + amzDate + "'. See http://en.wikipedia.org/wiki/ISO_8601")
	}
	if err := v.checkSkew(t, amzDate, expires); err != nil {
		return nil, err
	}

	c := &a.cred
	if c.Service != v.Service {
		return nil, invalid("Credential should be scoped to correct service: '" + v.Service + "'. ")
	}
	if !validRegion(c.Region) {
		return nil, invalid("Credential should be scoped to a valid region, not '" + c.Region + "'. ")
	}
	if c.Date != amzDate[:8] {
		return nil, invalid("Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '" +
			c.Date + "' != '" + amzDate[:8] + "', from '" + amzDate + "'.")
	}
	if c.Terminator != terminator {
		return nil, incomplete("Credential should be scoped with a valid terminator: 'aws4_request', not '" + c.Terminator + "'. ")
	}

	res := &Result{
		AccessKeyID:  c.AccessKeyID,
		Region:       c.Region,
		Service:      c.Service,
		Date:         c.Date,
		Time:         t,
		SessionToken: token,
		Presigned:    presigned,
	}
	if v.Lookup == nil {
		return res, nil
	}
	var secret string
	if tl, is := v.Lookup.(TokenLookup); is {
		secret, ok = tl.SecretFor(c.AccessKeyID, token)
	} else {
		secret, ok = v.Lookup.Secret(c.AccessKeyID)
	}
	if !ok {
		return nil, &Error{Code: CodeUnrecognizedClient, Message: msgUnrecognized, Reason: "unknown access key"}
	}

	payload := hashHex(body)
	if h := r.Header["X-Amz-Content-Sha256"]; len(h) > 0 && h[0] != string(payload[:]) {
		// Services other than S3 hash the body themselves; a client that
		// signed another hash signed another payload.
		return nil, mismatch("x-amz-content-sha256 does not match the body")
	}
	if !sortedUnique(a.signedHeaders) {
		return nil, mismatch("SignedHeaders is not sorted or names a header twice")
	}
	var cbuf [1024]byte
	creq := appendCanonicalRequest(cbuf[:0], r, body, a.signedHeaders, v.RawPath, presigned, payload[:])
	creqHash := sha256.Sum256(creq)

	key, cached := v.keys.get(secret, c.Date, c.Region, c.Service)
	if !cached {
		key = deriveKey(secret, c.Date, c.Region, c.Service)
	}
	var sbuf [blockSize + 192]byte
	sts := hmacStart(sbuf[:0], key[:])
	sts = appendStringToSign(sts, amzDate, a.scope, creqHash[:])
	want := hmacSum(key[:], sts)

	var got [32]byte
	if !decodeSignature(got[:], a.signature) || subtle.ConstantTimeCompare(got[:], want[:]) != 1 {
		return nil, mismatch("signature mismatch")
	}
	if !cached {
		v.keys.put(secret, c.Date, c.Region, c.Service, key)
	}
	return res, nil
}

// unsigned returns the name of a header present in h that the rule
// requires to be signed and the ';'-separated list signed leaves out, or ""
// if there is none. dateName is the header that gave the request time ("" if
// it came from the query). Of several such headers it names the first in
// sorted order, so the message does not depend on map order.
//
// It runs on every request: the required headers (three for a typical SDK
// request) are collected in one pass over h, then matched in one pass over
// signed.
func (rule HeaderRule) unsigned(h http.Header, signed, dateName, protoCT string) string {
	var need [8]string
	n := 0
	if dateName != "" {
		need[n] = dateName
		n++
	}
	if rule == RequireAll {
		for k := range h {
			if k == dateName || !mustSign(k) || protocolType(h, k, protoCT) {
				continue
			}
			if n == len(need) {
				return unsignedSlow(h, signed, dateName, protoCT)
			}
			need[n] = k
			n++
		}
	}
	var found uint8 // bit x: need[x] is listed
	for i := 0; i < len(signed) && n > 0; {
		j := strings.IndexByte(signed[i:], ';')
		if j < 0 {
			j = len(signed) - i
		}
		e := signed[i : i+j]
		for x := range n {
			if len(e) == len(need[x]) && equalFoldASCII(e, need[x]) {
				found |= 1 << x
			}
		}
		i += j + 1
	}
	bad := ""
	for x := range n {
		if found&(1<<x) != 0 {
			continue
		}
		// Keys of a received request are canonical already; a key set
		// by code may not be, and is named as the client would see it.
		if c := textproto.CanonicalMIMEHeaderKey(need[x]); bad == "" || c < bad {
			bad = c
		}
	}
	return bad
}

// unsignedSlow is RequireAll.unsigned for a request with more required
// headers than unsigned collects: one pass over signed for each.
func unsignedSlow(h http.Header, signed, dateName, protoCT string) string {
	bad := ""
	if dateName != "" && !listed(signed, dateName) {
		bad = dateName
	}
	for k := range h {
		if !mustSign(k) || protocolType(h, k, protoCT) || listed(signed, k) {
			continue
		}
		if c := textproto.CanonicalMIMEHeaderKey(k); bad == "" || c < bad {
			bad = c
		}
	}
	return bad
}

// protocolType reports whether header k of h is a Content-Type whose
// media type is protoCT (parameters such as charset aside), which may be
// left unsigned (Verifier.ProtocolContentType).
func protocolType(h http.Header, k, protoCT string) bool {
	if protoCT == "" || len(k) != len("content-type") || !equalFoldASCII(k, "content-type") {
		return false
	}
	vs := h[k]
	if len(vs) != 1 {
		return false
	}
	mt, _, _ := strings.Cut(vs[0], ";")
	mt = strings.TrimSpace(mt)
	return len(mt) == len(protoCT) && equalFoldASCII(mt, protoCT)
}

// mustSign reports whether RequireAll requires the header k to be signed:
// Content-Type and X-Amz-* but for the two exempt ones, in any case.
func mustSign(k string) bool {
	const amz = "x-amz-"
	if k == "" || (k[0] != 'X' && k[0] != 'x' && k[0] != 'C' && k[0] != 'c') {
		return false // most headers, and cheaply
	}
	if len(k) < len(amz) || !equalFoldASCII(k[:len(amz)], amz) {
		return len(k) == len("content-type") && equalFoldASCII(k, "content-type")
	}
	if len(k) == len("x-amz-security-token") { // and of x-amz-content-sha256
		return !equalFoldASCII(k, "x-amz-security-token") && !equalFoldASCII(k, "x-amz-content-sha256")
	}
	return true
}

// checkSkew rejects a request time further than MaxSkew from now (or, for a
// presigned request with X-Amz-Expires, older than its lifetime), with AWS's
// messages.
func (v *Verifier) checkSkew(t time.Time, amzDate string, expires time.Duration) error {
	now := time.Now()
	if v.Now != nil {
		now = v.Now()
	}
	now = now.UTC().Truncate(time.Second)
	skew := v.MaxSkew
	if skew <= 0 {
		skew = DefaultMaxSkew
	}
	if expires > 0 {
		if earliest := now.Add(-expires); t.Before(earliest) {
			return &Error{Code: CodeInvalidSignature, Reason: "presigned request expired",
				Message: "Signature expired: " + amzDate + " is now earlier than " + earliest.Format(amzDateLayout) +
					" (" + now.Format(amzDateLayout) + " - " + strconv.FormatInt(int64(expires/time.Second), 10) + " sec.)"}
		}
	} else if earliest := now.Add(-skew); t.Before(earliest) {
		return &Error{Code: CodeInvalidSignature, Reason: "request time too old",
			Message: "Signature expired: " + amzDate + " is now earlier than " + earliest.Format(amzDateLayout) +
				" (" + now.Format(amzDateLayout) + " - " + minutes(skew) + " min.)"}
	}
	if latest := now.Add(skew); t.After(latest) {
		return &Error{Code: CodeInvalidSignature, Reason: "request time in the future",
			Message: "Signature not yet current: " + amzDate + " is still later than " + latest.Format(amzDateLayout) +
				" (" + now.Format(amzDateLayout) + " + " + minutes(skew) + " min.)"}
	}
	return nil
}

func minutes(d time.Duration) string { return strconv.FormatInt(int64(d/time.Minute), 10) }

// appendStringToSign appends
// "AWS4-HMAC-SHA256\n" + amzDate + "\n" + scope + "\n" + hex(creqHash).
func appendStringToSign(b []byte, amzDate, scope string, creqHash []byte) []byte {
	b = append(b, Algorithm...)
	b = append(b, '\n')
	b = append(b, amzDate...)
	b = append(b, '\n')
	b = append(b, scope...)
	b = append(b, '\n')
	return hex.AppendEncode(b, creqHash)
}

// decodeSignature decodes a 64-digit lowercase hex signature into dst.
// What the client sent is no secret, so this need not be constant-time.
func decodeSignature(dst []byte, s string) bool {
	if len(s) != 2*len(dst) {
		return false
	}
	for i := range dst {
		hi, lo := s[2*i], s[2*i+1]
		if !isLowerHex(hi) || !isLowerHex(lo) {
			return false
		}
		dst[i] = unhex(hi)<<4 | unhex(lo)
	}
	return true
}

func isLowerHex(c byte) bool { return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' }

// parseAmzDate parses ISO 8601 basic format "20150830T123600Z".
func parseAmzDate(s string) (time.Time, bool) {
	if len(s) != 16 || s[8] != 'T' || s[15] != 'Z' {
		return time.Time{}, false
	}
	var n [6]int
	for i, span := range [6][2]int{{0, 4}, {4, 6}, {6, 8}, {9, 11}, {11, 13}, {13, 15}} {
		for j := span[0]; j < span[1]; j++ {
			c := s[j]
			if c < '0' || c > '9' {
				return time.Time{}, false
			}
			n[i] = n[i]*10 + int(c-'0')
		}
	}
	t := time.Date(n[0], time.Month(n[1]), n[2], n[3], n[4], n[5], 0, time.UTC)
	// time.Date normalises out-of-range fields; a valid date survives.
	if t.Year() != n[0] || int(t.Month()) != n[1] || t.Day() != n[2] ||
		t.Hour() != n[3] || t.Minute() != n[4] || t.Second() != n[5] {
		return time.Time{}, false
	}
	return t, true
}

// dateHeader returns the Date header in ISO 8601 basic format, for clients
// that sign with Date instead of X-Amz-Date; "" if absent or unparsable.
func dateHeader(r *http.Request) string {
	d := first(r.Header["Date"])
	if d == "" {
		return ""
	}
	if _, ok := parseAmzDate(d); ok {
		return d
	}
	t, err := http.ParseTime(d)
	if err != nil {
		return d // reported as not ISO 8601 basic format
	}
	return t.UTC().Format(amzDateLayout)
}

// validRegion accepts region names of letters, digits and hyphens.
func validRegion(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// presignedParams fills a from the X-Amz-* query parameters of a presigned
// request and returns the decoded query.
func presignedParams(rawQuery string, a *authz) (url.Values, error) {
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		return nil, incomplete("Unable to parse the query string: " + err.Error())
	}
	for _, name := range []string{"X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Signature", "X-Amz-SignedHeaders", "X-Amz-Date"} {
		if q.Get(name) == "" {
			return nil, incomplete("AWS query-string parameters must include '" + name + "'. Re-examine the query-string parameters.")
		}
	}
	a.algorithm = q.Get("X-Amz-Algorithm")
	a.credential = q.Get("X-Amz-Credential")
	a.signature = q.Get("X-Amz-Signature")
	a.signedHeaders = q.Get("X-Amz-SignedHeaders")
	if err := a.check(); err != nil {
		return nil, err
	}
	return q, nil
}

func first(vs []string) string {
	if len(vs) == 0 {
		return ""
	}
	return vs[0]
}
