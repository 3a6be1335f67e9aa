package sigv4

import (
	"crypto/sha256"
	"net/http"
	"slices"
	"strings"
	"time"
)

// Signer signs outgoing requests. The zero value signs as Sign does.
type Signer struct {
	// RawPath makes the canonical URI the escaped path as sent, for
	// verifiers with Verifier.RawPath set; otherwise the AWS rule for
	// services other than S3 applies. The two agree on paths of unreserved
	// characters without "." or ".." segments, such as every XKS path.
	RawPath bool
	// PayloadHeader also sets (and so signs) X-Amz-Content-Sha256.
	PayloadHeader bool
	// Headers, when non-nil, names exactly the headers to sign besides
	// host and x-amz-date, which are always signed. When nil, Sign signs
	// Content-Type and every X-Amz-* header present (X-Amz-Target,
	// X-Amz-Security-Token, X-Amz-Content-Sha256, ...).
	Headers []string
}

// Sign signs r with the SigV4 default Signer: it sets X-Amz-Date (from t),
// X-Amz-Security-Token (if sessionToken is not empty) and Authorization,
// signing host, x-amz-date, content-type and the x-amz-* headers. body is
// the exact payload r will carry.
func Sign(r *http.Request, body []byte, accessKeyID, secret, sessionToken, region, service string, t time.Time) {
	var s Signer
	s.Sign(r, body, accessKeyID, secret, sessionToken, region, service, t)
}

// Sign signs r as the package-level Sign does, with the options of s.
func (s *Signer) Sign(r *http.Request, body []byte, accessKeyID, secret, sessionToken, region, service string, t time.Time) {
	if r.Header == nil {
		r.Header = make(http.Header)
	}
	amzDate := t.UTC().Format(amzDateLayout)
	r.Header["X-Amz-Date"] = []string{amzDate}
	if sessionToken != "" {
		r.Header["X-Amz-Security-Token"] = []string{sessionToken}
	}
	payload := hashHex(body)
	if s.PayloadHeader {
		r.Header["X-Amz-Content-Sha256"] = []string{string(payload[:])}
	}
	delete(r.Header, "Authorization")

	signed := s.signedHeaders(r)
	scope := amzDate[:8] + "/" + region + "/" + service + "/" + terminator
	creq := appendCanonicalRequest(nil, r, body, signed, s.RawPath, false, payload[:])
	creqHash := sha256.Sum256(creq)
	key := deriveKey(secret, amzDate[:8], region, service)
	sts := appendStringToSign(hmacStart(nil, key[:]), amzDate, scope, creqHash[:])
	sig := hmacSum(key[:], sts)

	var b strings.Builder
	b.WriteString(Algorithm)
	b.WriteString(" Credential=")
	b.WriteString(accessKeyID)
	b.WriteByte('/')
	b.WriteString(scope)
	b.WriteString(", SignedHeaders=")
	b.WriteString(signed)
	b.WriteString(", Signature=")
	var hexSig [64]byte
	const lowerHex = "0123456789abcdef"
	for i, c := range sig {
		hexSig[2*i], hexSig[2*i+1] = lowerHex[c>>4], lowerHex[c&15]
	}
	b.Write(hexSig[:])
	r.Header["Authorization"] = []string{b.String()}
}

// signedHeaders returns the sorted, lowercase, ';'-joined names to sign.
func (s *Signer) signedHeaders(r *http.Request) string {
	names := []string{"host", "x-amz-date"}
	add := func(n string) {
		n = strings.ToLower(n)
		if n != "authorization" && !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	if s.Headers != nil {
		for _, n := range s.Headers {
			add(n)
		}
	} else {
		for k := range r.Header {
			lk := strings.ToLower(k)
			if lk == "content-type" || strings.HasPrefix(lk, "x-amz-") {
				add(lk)
			}
		}
	}
	slices.Sort(names)
	return strings.Join(names, ";")
}
