package server

import (
	"bytes"
	"errors"
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
