package main

import (
	"bytes"
	"net/http"
	"testing"
	"time"
)

// TestFastSignerMatchesSDK checks the hand-rolled signer against
// aws-sdk-go-v2's on the requests kmsbench sends, including across a
// change of day (the cached signing key must follow the date).
func TestFastSignerMatchesSDK(t *testing.T) {
	c := credentials{accessKeyID: "AKIAKMSBENCHEXAMPLE1", secret: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", region: "us-east-1", service: "kms"}
	tests := []struct {
		name, target, body string
		at                 time.Time
	}{
		{"encrypt", "TrentService.Encrypt", `{"KeyId":"1234abcd-12ab-34cd-56ef-1234567890ab","Plaintext":"aGVsbG8="}`, time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)},
		{"same day later", "TrentService.Decrypt", `{"CiphertextBlob":"AQID"}`, time.Date(2026, 3, 1, 23, 59, 59, 0, time.UTC)},
		{"next day", "TrentService.CreateKey", `{}`, time.Date(2026, 3, 2, 0, 0, 1, 0, time.UTC)},
		{"non-UTC time", "TrentService.GenerateDataKey", `{"KeySpec":"AES_256"}`, time.Date(2026, 3, 2, 1, 0, 1, 0, time.FixedZone("x", -5*3600))},
	}
	keys := new(dayKeys)
	fast, err := newSigner("fast", c, keys)
	if err != nil {
		t.Fatal(err)
	}
	sdk, err := newSigner("sdk", c, keys)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mk := func() *http.Request {
				r, err := http.NewRequest(http.MethodPost, "http://127.0.0.1:7480/", bytes.NewReader([]byte(tt.body)))
				if err != nil {
					t.Fatal(err)
				}
				r.Header["Content-Type"] = []string{"application/x-amz-json-1.1"}
				r.Header["X-Amz-Target"] = []string{tt.target}
				return r
			}
			want, got := mk(), mk()
			if err := sdk.sign(want, []byte(tt.body), tt.at); err != nil {
				t.Fatal(err)
			}
			if err := fast.sign(got, []byte(tt.body), tt.at); err != nil {
				t.Fatal(err)
			}
			for _, h := range []string{"Authorization", "X-Amz-Date"} {
				if g, w := got.Header.Get(h), want.Header.Get(h); g != w {
					t.Errorf("%s:\n got %s\nwant %s", h, g, w)
				}
			}
		})
	}
}

func BenchmarkSign(b *testing.B) {
	c := credentials{accessKeyID: "AKIAKMSBENCHEXAMPLE1", secret: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", region: "us-east-1", service: "kms"}
	body := []byte(`{"KeyId":"1234abcd-12ab-34cd-56ef-1234567890ab","Plaintext":"` + string(bytes.Repeat([]byte("A"), 88)) + `","EncryptionContext":{"purpose":"kmsbench"}}`)
	for _, kind := range []string{"fast", "sdk"} {
		b.Run(kind, func(b *testing.B) {
			s, err := newSigner(kind, c, new(dayKeys))
			if err != nil {
				b.Fatal(err)
			}
			now := time.Now()
			b.ReportAllocs()
			for b.Loop() {
				r, _ := http.NewRequest(http.MethodPost, "http://127.0.0.1:7480/", bytes.NewReader(body))
				r.Header["Content-Type"] = []string{"application/x-amz-json-1.1"}
				r.Header["X-Amz-Target"] = []string{"TrentService.Encrypt"}
				if err := s.sign(r, body, now); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
