package sigv4

import (
	"testing"
)

// benchRequest returns an Encrypt request shaped like one from
// aws-sdk-go-v2 (its headers and its choice of signed headers) as a server
// receives it, and its body.
func benchRequest(b *testing.B) (*Verifier, func() error) {
	body := []byte(encryptBody)
	r := newKMSRequest(body)
	r.Header.Set("User-Agent", "aws-sdk-go-v2/1.48.0 ua/2.1 os/linux lang/go#1.26 md/GOOS#linux md/GOARCH#amd64 api/kms#1.62.6")
	r.Header.Set("Amz-Sdk-Invocation-Id", "9e5c4f4e-5b39-4c3f-9a3e-0f2b1c6d7e8f")
	r.Header.Set("Amz-Sdk-Request", "attempt=1; max=3")
	r.Header.Set("Accept-Encoding", "identity")
	s := Signer{Headers: []string{"amz-sdk-invocation-id", "amz-sdk-request", "content-length", "content-type", "x-amz-target"}}
	s.Sign(r, body, testAKID, testSecret, "", "us-east-1", "kms", testTime)
	v := &Verifier{Service: "kms", Lookup: keyMap{testAKID: testSecret}, Now: clock(testTime)}
	verify := func() error { _, err := v.Verify(r, body); return err }
	if err := verify(); err != nil {
		b.Fatal(err)
	}
	return v, verify
}

// BenchmarkVerify is the per-request cost of authenticating a typical KMS
// request with a warm signing-key cache.
func BenchmarkVerify(b *testing.B) {
	_, verify := benchRequest(b)
	b.ReportAllocs()
	defer reportCPU(b)()
	for b.Loop() {
		if err := verify(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerifyParallel is BenchmarkVerify from every core at once, to
// show contention on the key cache.
func BenchmarkVerifyParallel(b *testing.B) {
	_, verify := benchRequest(b)
	b.ReportAllocs()
	defer reportCPU(b)()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := verify(); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkVerifyColdKey derives the signing key on every request, as for
// the first request of an access key each day.
func BenchmarkVerifyColdKey(b *testing.B) {
	v, verify := benchRequest(b)
	b.ReportAllocs()
	defer reportCPU(b)()
	for b.Loop() {
		v.keys.m = nil
		if err := verify(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerifyEmulator is emulator mode: parse, date, skew and scope.
func BenchmarkVerifyEmulator(b *testing.B) {
	v, verify := benchRequest(b)
	v.Lookup = nil
	b.ReportAllocs()
	defer reportCPU(b)()
	for b.Loop() {
		if err := verify(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSign(b *testing.B) {
	body := []byte(encryptBody)
	r := newKMSRequest(body)
	b.ReportAllocs()
	defer reportCPU(b)()
	for b.Loop() {
		Sign(r, body, testAKID, testSecret, "", "us-east-1", "kms", testTime)
	}
}
