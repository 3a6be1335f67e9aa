package main

import (
	"errors"
	"maps"
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
