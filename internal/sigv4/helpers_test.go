package sigv4

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"net/http"
	"net/textproto"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// The AWS test suite's credentials and clock.
const (
	testAKID   = "AKIDEXAMPLE"
	testSecret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
)

var testTime = time.Date(2015, 8, 30, 12, 36, 0, 0, time.UTC)

// keyMap is a SecretLookup over a map.
type keyMap map[string]string

func (m keyMap) Secret(id string) (string, bool) { s, ok := m[id]; return s, ok }

var _ SecretLookup = keyMap(nil)

func clock(t time.Time) func() time.Time { return func() time.Time { return t } }

// golden compares got with the file at path, or rewrites the file when the
// test runs with -update.
func golden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs (run with -update to accept):\n got: %q\nwant: %q", path, got, want)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// parseReq reads a request in the test suite's .req form — request line,
// "Name:value" header lines, an empty line and the body — into the request a
// net/http server would hand its handler: Host moved to r.Host,
// Content-Length to r.ContentLength, the target kept verbatim in RequestURI.
// The suite's targets are not always valid HTTP (they hold spaces and raw
// UTF-8), which is why http.ReadRequest is not used.
func parseReq(t testing.TB, s string) (*http.Request, []byte) {
	t.Helper()
	head, body, _ := strings.Cut(s, "\n\n")
	lines := strings.Split(head, "\n")
	method, rest, ok1 := strings.Cut(lines[0], " ")
	i := strings.LastIndexByte(rest, ' ')
	if !ok1 || i < 0 {
		t.Fatalf("bad request line %q", lines[0])
	}
	target := rest[:i]
	path, query, _ := strings.Cut(target, "?")
	r := &http.Request{
		Method:     method,
		URL:        &url.URL{Path: path, RawQuery: query},
		Proto:      rest[i+1:],
		Header:     make(http.Header),
		RequestURI: target,
	}
	for _, l := range lines[1:] {
		name, value, ok := strings.Cut(l, ":")
		if !ok {
			t.Fatalf("bad header line %q", l)
		}
		value = strings.Trim(value, " \t")
		switch k := textproto.CanonicalMIMEHeaderKey(name); k {
		case "Host":
			r.Host = value
		case "Content-Length":
			n, err := strconv.ParseInt(value, 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			r.ContentLength = n
		default:
			r.Header[k] = append(r.Header[k], value)
		}
	}
	if r.ContentLength == 0 {
		r.ContentLength = int64(len(body))
	}
	return r, []byte(body)
}

// errCode returns the Code of err, "" for nil and "not *Error" otherwise.
func errCode(err error) string {
	if err == nil {
		return ""
	}
	if e, ok := err.(*Error); ok {
		return e.Code
	}
	return "not *Error"
}

func hashOf(b []byte) [32]byte { return sha256.Sum256(b) }

func hexOf(b []byte) string { return hex.EncodeToString(b) }
