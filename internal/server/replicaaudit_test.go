package server

import (
	"bufio"
	"encoding/json"
	"testing"

	"github.com/kmsd/kmsd/internal/audit"
)

// TestReplicateKeyAudit: a ReplicateKey writes AWS's two records (spec
// §9.3 "Audit") — ReplicateKey in the primary's Region and CreateKey in
// the replica's, with the same caller and request id, each its own event
// id, the CreateKey naming only the replica key. A failed ReplicateKey
// writes one record.
func TestReplicateKeyAudit(t *testing.T) {
	a := newTestAPI(t)
	var log lockedBuffer
	a.audit = audit.New(&log, nil)

	status, _, b := a.raw(t, "CreateKey", `{"MultiRegion":true}`)
	var created struct{ KeyMetadata struct{ KeyId string } }
	if err := json.Unmarshal(b, &created); err != nil || status != 200 {
		t.Fatalf("CreateKey: %d %s", status, b)
	}
	id := created.KeyMetadata.KeyId
	status, reqID, b := a.raw(t, "ReplicateKey", `{"KeyId":"`+id+`","ReplicaRegion":"eu-west-1"}`)
	if status != 200 {
		t.Fatalf("ReplicateKey: %d %s", status, b)
	}
	status, failedID, b := a.raw(t, "ReplicateKey", `{"KeyId":"`+id+`","ReplicaRegion":"eu-west-1"}`)
	if status != 400 {
		t.Fatalf("second ReplicateKey: %d %s", status, b)
	}
	a.audit.Close()

	type record struct {
		EventName, AWSRegion, RequestID, EventID, ErrorCode string
		UserIdentity                                        struct{ ARN, AccessKeyID string }
		Resources                                           []struct{ ARN string }
		ResponseElements                                    map[string]any
	}
	var got []record
	failed := 0
	sc := bufio.NewScanner(&log.b)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var r record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("audit line %s: %v", sc.Bytes(), err)
		}
		switch r.RequestID {
		case reqID:
			got = append(got, r)
		case failedID:
			failed++
		}
	}
	if failed != 1 {
		t.Errorf("a failed ReplicateKey wrote %d records, want 1", failed)
	}
	if len(got) != 2 {
		t.Fatalf("ReplicateKey wrote %d records, want 2: %+v", len(got), got)
	}
	primary := "arn:aws:kms:us-east-1:" + testAccount + ":key/" + id
	replica := "arn:aws:kms:eu-west-1:" + testAccount + ":key/" + id
	rk, ck := got[0], got[1]
	if rk.EventName != "ReplicateKey" || rk.AWSRegion != "us-east-1" || len(rk.Resources) != 2 || rk.Resources[0].ARN != primary {
		t.Errorf("first record: %+v", rk)
	}
	if ck.EventName != "CreateKey" || ck.AWSRegion != "eu-west-1" || len(ck.Resources) != 1 || ck.Resources[0].ARN != replica {
		t.Errorf("replica Region's record: %+v", ck)
	}
	if ck.EventID == "" || ck.EventID == rk.EventID {
		t.Errorf("event ids %q and %q, want two", rk.EventID, ck.EventID)
	}
	if ck.UserIdentity != rk.UserIdentity || ck.UserIdentity.ARN == "" {
		t.Errorf("userIdentity %+v and %+v differ", rk.UserIdentity, ck.UserIdentity)
	}
	md, _ := ck.ResponseElements["keyMetadata"].(map[string]any)
	if md == nil || md["arn"] != replica {
		t.Errorf("CreateKey responseElements %v, want the replica's metadata", ck.ResponseElements)
	}
}
