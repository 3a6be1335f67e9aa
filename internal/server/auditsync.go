package server

import (
	"bytes"
	"net/http"

	"github.com/kmsd/kmsd/internal/audit"
)

// Audit sync modes (--audit-sync): which requests' audit records are
// written and synced to stable storage before the response leaves.
const (
	// AuditSyncMutations syncs the records of operations that are not
	// read-only (CreateKey, ScheduleKeyDeletion, PutKeyPolicy, CreateUser,
	// …, failed ones included), so that no acknowledged change lacks its
	// record after a crash; reads and cryptographic operations stay
	// asynchronous (at most ~100 ms of them lost in a crash).
	AuditSyncMutations = "mutations"
	// AuditSyncAll syncs every request's record.
	AuditSyncAll = "all"
	// AuditSyncNone syncs none: every record may wait up to ~100 ms.
	AuditSyncNone = "none"
)

// mustSync reports whether rec must be synced before its response under
// mode.
func mustSync(mode string, rec *audit.Record) bool {
	switch mode {
	case AuditSyncAll:
		return true
	case AuditSyncMutations:
		return rec.EventName != "" && !rec.ReadOnly
	}
	return false
}

// heldResponse holds a response — status, and body; headers go to the
// real writer's map, which is sent only with the status — until the
// request's audit record is synced, so that a client never sees the
// outcome of a change whose record a crash could still lose.
type heldResponse struct {
	w      http.ResponseWriter
	status int
	body   bytes.Buffer
}

func (h *heldResponse) Header() http.Header { return h.w.Header() }

func (h *heldResponse) WriteHeader(code int) {
	if h.status == 0 {
		h.status = code
	}
}

func (h *heldResponse) Write(p []byte) (int, error) {
	if h.status == 0 {
		h.status = http.StatusOK
	}
	return h.body.Write(p)
}

// release sends the held response.
func (h *heldResponse) release() {
	if h.status == 0 {
		return
	}
	h.w.WriteHeader(h.status)
	h.w.Write(h.body.Bytes())
}
