package kms

import (
	"testing"
	"time"
)

// TestRequestReuse: a request handed back with release comes out of
// request again holding nothing of the call before it — no condition key,
// principal, action or resource — and a request whose map grew past
// pooledKeys is not kept.
func TestRequestReuse(t *testing.T) {
	s := &Service{now: time.Now}
	alice := &Caller{Account: "111122223333", Region: "us-east-1", ARN: "arn:aws:iam::111122223333:user/alice", SourceIP: "10.0.0.1"}
	bob := &Caller{Account: "444455556666", Region: "eu-west-1", ARN: "arn:aws:iam::444455556666:user/bob"}
	released := map[any]bool{}
	reused := 0
	for i := range 200 {
		if i%2 == 0 {
			r := s.request(alice, "kms:Encrypt", "arn:aws:kms:us-east-1:111122223333:key/k")
			r.SetEncryptionContext(map[string]string{"purpose": "test"})
			released[r] = true
			release(r)
			continue
		}
		r := s.request(bob, "kms:DescribeKey", "*")
		if released[r] {
			reused++
			if len(r.Context) != 0 {
				t.Fatalf("a reused request holds condition keys of an earlier call: %v", r.Context)
			}
			if r.Action != "kms:DescribeKey" || r.Resource != "*" || r.Principal.ARN != bob.ARN || len(r.Shared) != 2 {
				t.Fatalf("reused request: action %q, resource %q, principal %q, %d shared maps", r.Action, r.Resource, r.Principal.ARN, len(r.Shared))
			}
		}
		released[r] = true
		release(r)
	}
	if reused == 0 {
		t.Fatal("no request was reused in 100 calls")
	}

	big := s.request(alice, "kms:Encrypt", "*")
	ec := map[string]string{}
	for i := range pooledKeys + 1 {
		ec[string(rune('a'+i))] = "v"
	}
	big.SetEncryptionContext(ec)
	keys := len(big.Context)
	release(big)
	for range 50 {
		if r := s.request(alice, "kms:Encrypt", "*"); r == big {
			t.Fatalf("a request with %d condition keys went back to the pool", keys)
		}
	}
}
