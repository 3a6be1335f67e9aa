package main

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
)

// A signer adds SigV4 headers (X-Amz-Date, Authorization) to a request
// whose body is body. Each worker has its own, so a signer need not be safe
// for concurrent use.
type signer interface {
	sign(r *http.Request, body []byte, t time.Time) error
}

// credentials are what requests are signed with.
type credentials struct {
	accessKeyID, secret, region, service string
}

// newSigner returns a fresh signer of the named kind: "fast" (the
// generator's own, below) or "sdk" (aws-sdk-go-v2's aws/signer/v4).
func newSigner(kind string, c credentials, keys *dayKeys) (signer, error) {
	switch kind {
	case "fast":
		return &fastSigner{c: c, keys: keys}, nil
	case "sdk":
		return &sdkSigner{c: c, s: v4.NewSigner(func(o *v4.SignerOptions) { o.DisableURIPathEscaping = true })}, nil
	}
	return nil, fmt.Errorf("-signer %q: want fast or sdk", kind)
}

// sdkSigner signs with aws-sdk-go-v2, which derives the signing key once
// per day too but builds the canonical request with maps, sorts and
// strings.Builder on every call.
type sdkSigner struct {
	c credentials
	s *v4.Signer
}

func (s *sdkSigner) sign(r *http.Request, body []byte, t time.Time) error {
	h := sha256.Sum256(body)
	creds := aws.Credentials{AccessKeyID: s.c.accessKeyID, SecretAccessKey: s.c.secret}
	return s.s.SignHTTP(context.Background(), creds, r, hex.EncodeToString(h[:]), s.c.service, s.c.region, t)
}

// dayKeys caches the SigV4 signing key, which depends only on the secret,
// the UTC date, region and service: four HMACs saved per request. Shared by
// all workers.
type dayKeys struct {
	mu   sync.Mutex
	date string
	key  []byte
}

func (d *dayKeys) get(c credentials, date string) []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.date != date {
		k := hmacSHA256([]byte("AWS4"+c.secret), date)
		k = hmacSHA256(k, c.region)
		k = hmacSHA256(k, c.service)
		d.key, d.date = hmacSHA256(k, "aws4_request"), date
	}
	return d.key
}

func hmacSHA256(key []byte, msg string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(msg))
	return m.Sum(nil)
}

// fastSigner is a minimal SigV4 signer for exactly the requests kmsbench
// sends: POST / with no query, signing content-length, content-type, host,
// x-amz-date and x-amz-target, which is the set aws-sdk-go-v2 signs for
// these requests (signer_test.go checks they agree byte for byte). It
// reuses its buffers and the day's signing key, so signing costs two
// SHA-256 of small inputs and one HMAC.
type fastSigner struct {
	c    credentials
	keys *dayKeys

	date    string    // date of mac's key
	mac     hash.Hash // HMAC keyed with the day's signing key
	buf     []byte    // canonical request, then string to sign
	lastSec int64     // t.Unix() of amzDate, to format it once a second
	amzDate string
}

func (s *fastSigner) sign(r *http.Request, body []byte, t time.Time) error {
	if sec := t.Unix(); sec != s.lastSec || s.amzDate == "" {
		s.lastSec, s.amzDate = sec, t.UTC().Format("20060102T150405Z")
	}
	date := s.amzDate[:8]
	if s.mac == nil || s.date != date {
		s.mac, s.date = hmac.New(sha256.New, s.keys.get(s.c, date)), date
	}
	host := r.Host
	if host == "" {
		host = r.URL.Host
	}
	var sum [sha256.Size]byte
	var hexSum [2 * sha256.Size]byte

	b := s.buf[:0]
	b = append(b, "POST\n/\n\ncontent-length:"...)
	b = strconv.AppendInt(b, int64(len(body)), 10)
	b = append(b, "\ncontent-type:"...)
	b = append(b, header(r, "Content-Type")...)
	b = append(b, "\nhost:"...)
	b = append(b, host...)
	b = append(b, "\nx-amz-date:"...)
	b = append(b, s.amzDate...)
	b = append(b, "\nx-amz-target:"...)
	b = append(b, header(r, "X-Amz-Target")...)
	b = append(b, "\n\n"+signedHeaders+"\n"...)
	sum = sha256.Sum256(body)
	hex.Encode(hexSum[:], sum[:])
	b = append(b, hexSum[:]...)
	sum = sha256.Sum256(b)
	hex.Encode(hexSum[:], sum[:])

	scopeTail := "/" + s.c.region + "/" + s.c.service + "/aws4_request"
	b = append(b[:0], "AWS4-HMAC-SHA256\n"...)
	b = append(b, s.amzDate...)
	b = append(b, '\n')
	b = append(b, date...)
	b = append(b, scopeTail...)
	b = append(b, '\n')
	b = append(b, hexSum[:]...)
	s.mac.Reset()
	s.mac.Write(b)
	sig := s.mac.Sum(sum[:0])
	hex.Encode(hexSum[:], sig)

	b = append(b[:0], "AWS4-HMAC-SHA256 Credential="...)
	b = append(b, s.c.accessKeyID...)
	b = append(b, '/')
	b = append(b, date...)
	b = append(b, scopeTail...)
	b = append(b, ", SignedHeaders="+signedHeaders+", Signature="...)
	b = append(b, hexSum[:]...)
	r.Header["X-Amz-Date"] = []string{s.amzDate}
	r.Header["Authorization"] = []string{string(b)}
	s.buf = b
	return nil
}

const signedHeaders = "content-length;content-type;host;x-amz-date;x-amz-target"

// header returns the single value of a canonically-named header.
func header(r *http.Request, name string) string {
	if v := r.Header[name]; len(v) > 0 {
		return v[0]
	}
	return ""
}
