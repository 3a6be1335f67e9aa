package main

import (
	"errors"
	"maps"
	"strings"
	"testing"
)

// TestTally: failed requests are counted by the exception name of kmsd's
// answer (namespaced or not), by HTTP status when the body names none, and
// as "transport" when no answer came.
func TestTally(t *testing.T) {
	var tl tally
	tl.fail(400, []byte(`{"__type":"ThrottlingException","message":"You have exceeded the rate"}`), nil)
	tl.fail(400, []byte(`{"__type":"com.amazonaws.kms#ThrottlingException"}`), nil)
	tl.fail(500, []byte(`{"__type":"KMSInternalException","message":"x"}`), nil)
	tl.fail(502, []byte(`<html>bad gateway</html>`), nil)
	tl.fail(0, nil, errors.New("connection refused"))
	want := map[string]int64{"ThrottlingException": 2, "KMSInternalException": 1, "HTTP 502": 1, "transport": 1}
	if !maps.Equal(tl.types, want) {
		t.Fatalf("got %v, want %v", tl.types, want)
	}
}

// TestEndpoints: a run's workers are spread evenly over comma-separated
// endpoints, and a bad one is refused.
func TestEndpoints(t *testing.T) {
	c, err := newClient("http://127.0.0.1:1, http://127.0.0.1:2,http://127.0.0.1:3", credentials{}, "fast", 6)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for i := range 6 {
		got[c.workerOn(i).url.Host]++
	}
	if want := map[string]int{"127.0.0.1:1": 2, "127.0.0.1:2": 2, "127.0.0.1:3": 2}; !maps.Equal(got, want) {
		t.Fatalf("workers per endpoint %v, want %v", got, want)
	}
	if _, err := newClient("http://127.0.0.1:1,ftp://x", credentials{}, "fast", 1); err == nil {
		t.Fatal("ftp://x accepted as an endpoint")
	}
}

// TestRandomKeys: with -key-ids, Encrypt's, GenerateDataKey's and
// DescribeKey's bodies name a random key of the list in each request, the
// rest of the body unchanged, and every key of the list is used; Decrypt,
// whose ciphertext is bound to one key, keeps its body.
func TestRandomKeys(t *testing.T) {
	const first = "11111111-1111-1111-1111-111111111111"
	wl := &workload{keyID: first, bodies: map[string][]byte{
		"Encrypt":     []byte(`{"EncryptionContext":{"purpose":"kmsbench"},"KeyId":"` + first + `","Plaintext":"AAEC"}`),
		"DescribeKey": []byte(`{"KeyId":"` + first + `"}`),
		"Decrypt":     []byte(`{"CiphertextBlob":"AQID","KeyId":"` + first + `"}`),
	}, keys: []string{first, "22222222-2222-2222-2222-222222222222", "mrk-3333"}}
	for _, op := range []string{"Encrypt", "DescribeKey"} {
		p, err := wl.payload(op)
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		var buf []byte
		for range 300 {
			b := string(p.next(&buf))
			for _, k := range wl.keys {
				if b == strings.Replace(string(wl.bodies[op]), first, k, 1) {
					seen[k] = true
				}
			}
		}
		if len(seen) != len(wl.keys) {
			t.Errorf("%s: the bodies named %v of %v", op, seen, wl.keys)
		}
	}
	p, err := wl.payload("Decrypt")
	if err != nil {
		t.Fatal(err)
	}
	var buf []byte
	if got := string(p.next(&buf)); got != string(wl.bodies["Decrypt"]) {
		t.Errorf("Decrypt body %s, want it unchanged", got)
	}
}
