package server

import (
	"bytes"
	"errors"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/kmsd/kmsd/internal/audit"
)

// syncLog is an audit log in memory that counts syncs and can fail them,
// and tells whether a record was synced when the response left.
type syncLog struct {
	mu     sync.Mutex
	b      bytes.Buffer
	synced int // bytes covered by the last sync
	fail   bool
}

func (l *syncLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *syncLog) Sync() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fail {
		return errors.New("disk full")
	}
	l.synced = l.b.Len()
	return nil
}

// syncedHas reports whether the synced part of the log holds s.
func (l *syncLog) syncedHas(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return bytes.Contains(l.b.Bytes()[:l.synced], []byte(s))
}

// TestAuditSyncHandler: under --audit-sync mutations a CreateKey's record
// is synced before its response is written, a read's is not waited for;
// a record that cannot be synced turns the response into a
// KMSInternalException, the change being made but its record not safe.
func TestAuditSyncHandler(t *testing.T) {
	a := newTestAPI(t)
	log := &syncLog{}
	a.audit = audit.NewWith(log, audit.Options{Node: "n1"})
	a.auditSync = AuditSyncMutations
	t.Cleanup(func() { a.audit.Close() })

	status, reqID, b := a.raw(t, "CreateKey", `{}`)
	if status != 200 {
		t.Fatalf("CreateKey: %d %s", status, b)
	}
	if !log.syncedHas(reqID) {
		t.Fatalf("CreateKey answered before its record (request %s) was synced", reqID)
	}
	status, reqID, b = a.raw(t, "ListKeys", `{}`)
	if status != 200 {
		t.Fatalf("ListKeys: %d %s", status, b)
	}
	if log.syncedHas(reqID) {
		t.Errorf("ListKeys's record was synced: reads are not waited for under mutations")
	}

	log.mu.Lock()
	log.fail = true
	log.mu.Unlock()
	status, _, b = a.raw(t, "CreateKey", `{}`)
	if status != 500 || !strings.Contains(string(b), `"__type":"KMSInternalException"`) {
		t.Errorf("CreateKey with a failing audit sync: %d %s, want 500 KMSInternalException", status, b)
	}
}

// TestHeldResponseBody: a held body reaches the client whole, written in
// several pieces, and its buffer is cleared once sent or dropped (it may
// have carried a private key); a dropped body is never sent.
func TestHeldResponseBody(t *testing.T) {
	for _, tc := range []struct {
		name string
		send bool
	}{{"released", true}, {"dropped", false}} {
		t.Run(tc.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			h := &heldResponse{w: rec}
			secret := strings.Repeat("PrivateKeyPlaintext", 100) // past the pooled buffer's first size
			h.Write([]byte(`{"a":"`))
			h.Write([]byte(secret))
			h.Write([]byte(`"}`))
			body := (*h.body)[:cap(*h.body)]
			if tc.send {
				h.release()
			} else {
				h.drop()
			}
			want, code := `{"a":"`+secret+`"}`, 200
			if !tc.send {
				want, code = "", 200 // the recorder's default: nothing was written
			}
			if got := rec.Body.String(); got != want || rec.Code != code {
				t.Errorf("client got %d %.40q…, want %d %.40q…", rec.Code, got, code, want)
			}
			if h.body != nil {
				t.Error("the held body was not given back")
			}
			if i := bytes.IndexFunc(body, func(r rune) bool { return r != 0 }); i >= 0 {
				t.Errorf("the held buffer was not cleared: byte %d is %q", i, body[i])
			}
		})
	}
}
