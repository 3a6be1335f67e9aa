package server

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/audit"
	"github.com/kmsd/kmsd/internal/sigv4"
)

// lockedBuffer is an audit log in memory.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// raw serves one signed KMS request and returns the status, the
// x-amzn-RequestId header and the body.
func (a *api) raw(t *testing.T, target, body string) (int, string, []byte) {
	t.Helper()
	r := httptest.NewRequest(http.MethodPost, "http://kms.us-east-1.amazonaws.com/", strings.NewReader(body))
	r.Header.Set("Content-Type", "application/x-amz-json-1.1")
	r.Header.Set("X-Amz-Target", "TrentService."+target)
	var s sigv4.Signer
	s.Sign(r, []byte(body), testAKID, testSecret, "", "us-east-1", "kms", time.Now())
	w := httptest.NewRecorder()
	a.ServeHTTP(w, r)
	return w.Code, w.Header().Get("x-amzn-RequestId"), w.Body.Bytes()
}

// TestKeyLastUsageSeam: the handler records exactly the successful
// tracked calls, with the request id the client got and the event id of
// the call's audit record; failed calls, dry runs and untracked
// operations leave the last use alone.
func TestKeyLastUsageSeam(t *testing.T) {
	a := newTestAPI(t)
	var log lockedBuffer
	a.audit = audit.New(&log, nil)
	t.Cleanup(func() { a.audit.Close() })

	ok := func(target, body string) (string, map[string]any) {
		t.Helper()
		status, reqID, b := a.raw(t, target, body)
		var out map[string]any
		if err := json.Unmarshal(b, &out); err != nil || status != 200 {
			t.Fatalf("%s: %d %s", target, status, b)
		}
		return reqID, out
	}
	_, out := ok("CreateKey", `{"KeySpec":"ECC_NIST_P256","KeyUsage":"SIGN_VERIFY"}`)
	keyID := out["KeyMetadata"].(map[string]any)["KeyId"].(string)
	last := `{"KeyId":"` + keyID + `"}`

	// Unused: KeyLastUsage is {} on the wire, the dates epoch numbers.
	_, _, b := a.raw(t, "GetKeyLastUsage", last)
	if !bytes.Contains(b, []byte(`"KeyLastUsage":{}`)) {
		t.Errorf("unused key: %s, want \"KeyLastUsage\":{}", b)
	}
	var dates struct{ TrackingStartDate, KeyCreationDate json.Number }
	if err := json.Unmarshal(b, &dates); err != nil || dates.TrackingStartDate == "" || dates.TrackingStartDate != dates.KeyCreationDate {
		t.Errorf("dates of a new key: %s (%v)", b, err)
	}

	msg := `"Message":"aGVsbG8=","SigningAlgorithm":"ECDSA_SHA_256"`
	signReq, out := ok("Sign", `{"KeyId":"`+keyID+`",`+msg+`}`)
	sig := out["Signature"].(string)
	bad := "AAAA" + sig[4:]
	if status, _, b := a.raw(t, "Verify", `{"KeyId":"`+keyID+`",`+msg+`,"Signature":"`+bad+`"}`); status != 400 {
		t.Fatalf("Verify of a bad signature: %d %s", status, b)
	}
	if status, _, b := a.raw(t, "Sign", `{"KeyId":"`+keyID+`",`+msg+`,"DryRun":true}`); status != 400 {
		t.Fatalf("Sign with DryRun: %d %s", status, b)
	}
	ok("GetPublicKey", last)
	_, out = ok("GetKeyLastUsage", last)
	u := out["KeyLastUsage"].(map[string]any)
	if u["Operation"] != "Sign" || u["KmsRequestId"] != signReq {
		t.Fatalf("KeyLastUsage = %v, want Sign with request id %s", u, signReq)
	}
	if _, isNum := u["Timestamp"].(float64); !isNum {
		t.Errorf("Timestamp %v is not epoch seconds", u["Timestamp"])
	}
	if out["KeyId"] != "arn:aws:kms:us-east-1:111122223333:key/"+keyID {
		t.Errorf("KeyId = %v, want the key ARN", out["KeyId"])
	}

	// The event id is the one of the Sign's audit record.
	a.audit.Close()
	var found bool
	sc := bufio.NewScanner(&log.b)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var rec struct {
			EventName, RequestID, EventID, ErrorCode string
		}
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatalf("audit line %s: %v", sc.Bytes(), err)
		}
		if rec.RequestID == signReq {
			found = true
			if rec.EventName != "Sign" || rec.ErrorCode != "" || rec.EventID != u["CloudTrailEventId"] {
				t.Errorf("audit record of the Sign: %s; CloudTrailEventId %v", sc.Bytes(), u["CloudTrailEventId"])
			}
		}
	}
	if !found {
		t.Errorf("no audit record with requestID %s", signReq)
	}
}

// BenchmarkServeEncrypt is the handler's Encrypt, signing included, as
// kmsbench's Encrypt at concurrency 16 drives it: with -cpuprofile it
// shows what share of a request recording the key's use (RecordUse)
// takes.
func BenchmarkServeEncrypt(b *testing.B) {
	a := newTestAPI(b)
	var s sigv4.Signer
	r := httptest.NewRequest(http.MethodPost, "http://kms.us-east-1.amazonaws.com/", strings.NewReader(`{}`))
	r.Header.Set("Content-Type", "application/x-amz-json-1.1")
	r.Header.Set("X-Amz-Target", "TrentService.CreateKey")
	s.Sign(r, []byte(`{}`), testAKID, testSecret, "", "us-east-1", "kms", time.Now())
	w := httptest.NewRecorder()
	a.ServeHTTP(w, r)
	var created struct{ KeyMetadata struct{ KeyId string } }
	if err := json.Unmarshal(w.Body.Bytes(), &created); err != nil {
		b.Fatal(err)
	}
	body := []byte(`{"KeyId":"` + created.KeyMetadata.KeyId + `","Plaintext":"aGVsbG8="}`)
	b.SetParallelism(16)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		var s sigv4.Signer
		for pb.Next() {
			r := httptest.NewRequest(http.MethodPost, "http://kms.us-east-1.amazonaws.com/", bytes.NewReader(body))
			r.Header.Set("Content-Type", "application/x-amz-json-1.1")
			r.Header.Set("X-Amz-Target", "TrentService.Encrypt")
			s.Sign(r, body, testAKID, testSecret, "", "us-east-1", "kms", time.Now())
			w := httptest.NewRecorder()
			a.ServeHTTP(w, r)
			if w.Code != 200 {
				b.Fatalf("Encrypt: %d %s", w.Code, w.Body)
			}
		}
	})
}
