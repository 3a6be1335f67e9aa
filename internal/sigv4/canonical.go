package sigv4

import (
	"net/http"
	"net/textproto"
	"slices"
	"strconv"
	"strings"
)

// appendCanonicalRequest appends the SigV4 canonical request:
//
//	Method \n URI \n Query \n Headers \n SignedHeaders \n PayloadHash
//
// signed is the raw ';'-separated SignedHeaders list, used as sent (the
// signer chose the order and the case). rawPath selects the XKS rule for the
// URI; presigned drops X-Amz-Signature from the query.
func appendCanonicalRequest(b []byte, r *http.Request, body []byte, signed string, rawPath, presigned bool, payloadHash []byte) []byte {
	method := r.Method
	if method == "" {
		method = http.MethodGet
	}
	b = append(b, method...)
	b = append(b, '\n')
	b = appendURI(b, requestPath(r), rawPath)
	b = append(b, '\n')
	if r.URL != nil {
		b = appendQuery(b, r.URL.RawQuery, presigned)
	}
	b = append(b, '\n')
	b = appendHeaders(b, r, body, signed)
	b = append(b, '\n')
	b = append(b, signed...)
	b = append(b, '\n')
	return append(b, payloadHash...)
}

// requestPath returns the escaped path of the request target as it was
// received (RequestURI) or, for a request built by a client, as it will be
// sent (URL.EscapedPath).
func requestPath(r *http.Request) string {
	if u := r.RequestURI; u != "" && u[0] == '/' {
		if i := strings.IndexByte(u, '?'); i >= 0 {
			u = u[:i]
		}
		return u
	}
	if r.URL == nil {
		return "/"
	}
	if r.URL.Opaque != "" {
		// Opaque "//host/path" or "/path": the path is what starts at the
		// first slash after the authority.
		o := strings.TrimPrefix(r.URL.Opaque, "//")
		if i := strings.IndexByte(o, '/'); i >= 0 {
			return o[i:]
		}
		return "/"
	}
	return r.URL.EscapedPath()
}

// appendURI appends the canonical URI for the escaped path p.
//
// By AWS's rule for every service but S3, the path is normalised (empty and
// "." segments removed, ".." resolved) and each segment is URI-encoded
// again, so "%2F" becomes "%252F"; that is what the SDKs and botocore sign.
// With raw set the path is used exactly as received, which is how XKS
// proxies verify KMS's requests.
func appendURI(b []byte, p string, raw bool) []byte {
	if p == "" {
		return append(b, '/')
	}
	if raw {
		return append(b, p...)
	}
	if !needsNormalizing(p) {
		return appendEscaped(b, p, true)
	}
	segs := make([]string, 0, 8)
	for _, s := range strings.Split(p, "/") {
		switch s {
		case "", ".":
		case "..":
			if len(segs) > 0 {
				segs = segs[:len(segs)-1]
			}
		default:
			segs = append(segs, s)
		}
	}
	b = append(b, '/')
	for i, s := range segs {
		if i > 0 {
			b = append(b, '/')
		}
		b = appendEscaped(b, s, false)
	}
	// RFC 3986 keeps the trailing slash of "a/", "a/." and "a/..".
	if len(segs) > 0 && (strings.HasSuffix(p, "/") || strings.HasSuffix(p, "/.") || strings.HasSuffix(p, "/..")) {
		b = append(b, '/')
	}
	return b
}

// needsNormalizing reports whether p has empty, "." or ".." segments or
// does not start with a slash.
func needsNormalizing(p string) bool {
	if p[0] != '/' {
		return true
	}
	for i := 0; i < len(p); i++ {
		if p[i] != '/' {
			continue
		}
		rest := p[i+1:]
		if rest == "" {
			continue // a trailing slash is kept as is
		}
		if rest[0] == '/' || rest == "." || rest == ".." ||
			strings.HasPrefix(rest, "./") || strings.HasPrefix(rest, "../") {
			return true
		}
	}
	return false
}

// unreserved marks the bytes SigV4 never percent-encodes (RFC 3986).
var unreserved = func() (t [256]bool) {
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
	}
	for c := 'A'; c <= 'Z'; c++ {
		t[c] = true
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	t['-'], t['.'], t['_'], t['~'] = true, true, true, true
	return t
}()

const upperHex = "0123456789ABCDEF"

// appendEscaped appends s with every byte but the unreserved ones (and '/'
// if keepSlash) encoded as %XX with uppercase hex.
func appendEscaped(b []byte, s string, keepSlash bool) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if unreserved[c] || (keepSlash && c == '/') {
			b = append(b, c)
		} else {
			b = append(b, '%', upperHex[c>>4], upperHex[c&15])
		}
	}
	return b
}

// needsEscaping reports whether appendEscaped would change s.
func needsEscaping(s string) bool {
	for i := 0; i < len(s); i++ {
		if !unreserved[s[i]] {
			return true
		}
	}
	return false
}

// appendQuery appends the canonical query string: every parameter decoded,
// then URI-encoded, the pairs sorted by encoded name and then encoded value
// (SigV4 sorts after encoding), a name without '=' given an empty value.
func appendQuery(b []byte, q string, presigned bool) []byte {
	if q == "" {
		return b
	}
	type pair struct{ k, v string }
	pairs := make([]pair, 0, strings.Count(q, "&")+1)
	for q != "" {
		var kv string
		kv, q, _ = strings.Cut(q, "&")
		if kv == "" {
			continue
		}
		k, v, _ := strings.Cut(kv, "=")
		k, v = unescape(k), unescape(v)
		if presigned && k == "X-Amz-Signature" {
			continue
		}
		pairs = append(pairs, pair{escape(k), escape(v)})
	}
	slices.SortFunc(pairs, func(x, y pair) int {
		if c := strings.Compare(x.k, y.k); c != 0 {
			return c
		}
		return strings.Compare(x.v, y.v)
	})
	for i, p := range pairs {
		if i > 0 {
			b = append(b, '&')
		}
		b = append(b, p.k...)
		b = append(b, '=')
		b = append(b, p.v...)
	}
	return b
}

// escape URI-encodes a query name or value.
func escape(s string) string {
	if !needsEscaping(s) {
		return s
	}
	return string(appendEscaped(make([]byte, 0, len(s)*3), s, false))
}

// unescape decodes a query component the way url.ParseQuery does ('+' is a
// space), except that it keeps a malformed escape as literal text instead of
// failing.
func unescape(s string) string {
	if strings.IndexByte(s, '%') < 0 && strings.IndexByte(s, '+') < 0 {
		return s
	}
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '+':
			b = append(b, ' ')
		case c == '%' && i+2 < len(s) && isHex(s[i+1]) && isHex(s[i+2]):
			b = append(b, unhex(s[i+1])<<4|unhex(s[i+2]))
			i += 2
		default:
			b = append(b, c)
		}
	}
	return string(b)
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c >= 'a':
		return c - 'a' + 10
	default:
		return c - 'A' + 10
	}
}

// appendHeaders appends one "name:value\n" line for each name in the
// ';'-separated list signed, in its order.
func appendHeaders(b []byte, r *http.Request, body []byte, signed string) []byte {
	x := headerIndex{h: r.Header}
	for signed != "" {
		var name string
		name, signed, _ = strings.Cut(signed, ";")
		b = append(b, name...)
		b = append(b, ':')
		b = appendHeaderValue(b, r, body, name, &x)
		b = append(b, '\n')
	}
	return b
}

// appendHeaderValue appends the canonical value of the header name. net/http
// moves Host, Content-Length and Transfer-Encoding out of the header map on
// the server side (and never puts them there on the client side), so they
// are rebuilt from the request's fields.
func appendHeaderValue(b []byte, r *http.Request, body []byte, name string, x *headerIndex) []byte {
	switch name {
	case "host":
		host := r.Host
		if host == "" && r.URL != nil {
			host = r.URL.Host
		}
		return appendTrimmed(b, host)
	case "content-length":
		if vs := r.Header["Content-Length"]; len(vs) > 0 {
			return appendValues(b, vs)
		}
		n := r.ContentLength
		if n < 0 || (n == 0 && len(body) > 0) {
			n = int64(len(body))
		}
		return strconv.AppendInt(b, n, 10)
	case "transfer-encoding":
		if vs := r.Header["Transfer-Encoding"]; len(vs) > 0 {
			return appendValues(b, vs)
		}
		return appendValues(b, r.TransferEncoding)
	}
	return appendValues(b, x.get(name))
}

// headerIndex finds header values by name in any case. Names are looked up
// in their canonical form first; keys of the map that are not in canonical
// form (set directly by client code, or holding bytes net/http leaves
// alone) are collected once, on the first miss, and searched after. A
// request listing many absent headers thus costs one pass over the map, not
// one per name.
type headerIndex struct {
	h       http.Header
	scanned bool
	odd     []string // keys of h not in canonical form
}

func (x *headerIndex) get(name string) []string {
	var buf [64]byte
	if len(name) <= len(buf) {
		// The canonical key is built on the stack, and a map index with
		// string(bytes) does not copy: no allocation.
		k := buf[:len(name)]
		upper := true
		for i := 0; i < len(name); i++ {
			c := name[i]
			if upper && 'a' <= c && c <= 'z' {
				c -= 'a' - 'A'
			} else if !upper && 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			k[i] = c
			upper = c == '-'
		}
		if vs, ok := x.h[string(k)]; ok {
			return vs
		}
	} else if vs, ok := x.h[textproto.CanonicalMIMEHeaderKey(name)]; ok {
		return vs
	}
	if !x.scanned {
		x.scanned = true
		for k := range x.h {
			if !isCanonical(k) {
				x.odd = append(x.odd, k)
			}
		}
	}
	for _, k := range x.odd {
		if strings.EqualFold(k, name) {
			return x.h[k]
		}
	}
	return nil
}

// isCanonical reports whether k is in the form textproto gives header keys:
// the first letter and every letter after '-' upper case, the rest lower.
func isCanonical(k string) bool {
	upper := true
	for i := 0; i < len(k); i++ {
		c := k[i]
		if upper && 'a' <= c && c <= 'z' || !upper && 'A' <= c && c <= 'Z' {
			return false
		}
		upper = c == '-'
	}
	return true
}

// sortedUnique reports whether the ';'-separated names are in strictly
// increasing order, as every signer writes them (AWS requires the canonical
// headers sorted). Verify requires it: a list naming one header many times
// would make the canonical request grow with the square of the header size.
func sortedUnique(signed string) bool {
	prev, first := "", true
	for signed != "" {
		var name string
		name, signed, _ = strings.Cut(signed, ";")
		if !first && name <= prev {
			return false
		}
		prev, first = name, false
	}
	return true
}

// appendValues appends the values of a header joined with ','.
func appendValues(b []byte, vs []string) []byte {
	for i, v := range vs {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendTrimmed(b, v)
	}
	return b
}

// appendTrimmed appends v without leading and trailing whitespace and with
// each run of spaces collapsed to one (AWS's Trimall).
func appendTrimmed(b []byte, v string) []byte {
	i, j := 0, len(v)
	for i < j && (v[i] == ' ' || v[i] == '\t') {
		i++
	}
	for j > i && (v[j-1] == ' ' || v[j-1] == '\t') {
		j--
	}
	v = v[i:j]
	if !strings.Contains(v, "  ") {
		return append(b, v...)
	}
	space := false
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c == ' ' {
			if space {
				continue
			}
			space = true
		} else {
			space = false
		}
		b = append(b, c)
	}
	return b
}
