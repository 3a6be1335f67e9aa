package xks

import (
	"errors"
	"testing"
)

// fuzzParse checks the decoder's promises on arbitrary bodies: it never panics, every
// failure is an *Error with a known name, and accepted requests satisfy the limits.
func fuzzParse(f *testing.F, api string) {
	for _, tc := range decodeCases {
		if tc.api == api {
			f.Add([]byte(tc.body))
		}
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		err := parse(api, body)
		if err == nil {
			return
		}
		var xe *Error
		if !errors.As(err, &xe) {
			t.Fatalf("error %v is not *xks.Error", err)
		}
		if _, ok := statuses[xe.Name]; !ok {
			t.Fatalf("unknown error name %q", xe.Name)
		}
	})
}

func FuzzParseHealthRequest(f *testing.F)   { fuzzParse(f, "health") }
func FuzzParseMetadataRequest(f *testing.F) { fuzzParse(f, "metadata") }
func FuzzParseEncryptRequest(f *testing.F)  { fuzzParse(f, "encrypt") }
func FuzzParseDecryptRequest(f *testing.F)  { fuzzParse(f, "decrypt") }
