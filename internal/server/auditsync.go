package server

import (
	"net/http"
	"sync"

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
	body   *[]byte // from heldBodies, on the first Write
}

// heldBodies recycles the buffers responses are held in: a new one per
// request cost an allocation of the whole body, the largest of the
// request for a response with several blobs (GenerateDataKeyPair's ~900
// bytes), and garbage holding what it carried. A buffer is cleared before
// it goes back — a body may carry a plaintext or a private key — and one
// grown past maxHeldBody is left to the collector, so that one large
// listing does not stay in memory.
var heldBodies = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

const maxHeldBody = 64 << 10

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
	if h.body == nil {
		h.body = heldBodies.Get().(*[]byte)
	}
	*h.body = append(*h.body, p...)
	return len(p), nil
}

// release sends the held response and recycles its body.
func (h *heldResponse) release() {
	if h.status != 0 {
		h.w.WriteHeader(h.status)
		if h.body != nil {
			h.w.Write(*h.body)
		}
	}
	h.drop()
}

// drop recycles the held body, cleared, without sending it.
func (h *heldResponse) drop() {
	if h.body == nil {
		return
	}
	bp := h.body
	h.body = nil
	clear(*bp)
	if cap(*bp) > maxHeldBody {
		return
	}
	*bp = (*bp)[:0]
	heldBodies.Put(bp)
}
