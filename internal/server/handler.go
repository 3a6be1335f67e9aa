package server

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/kmsd/kmsd/internal/audit"
	"github.com/kmsd/kmsd/internal/awsjson"
	"github.com/kmsd/kmsd/internal/console"
	"github.com/kmsd/kmsd/internal/controller"
	"github.com/kmsd/kmsd/internal/feed"
	"github.com/kmsd/kmsd/internal/identity"
	"github.com/kmsd/kmsd/internal/kms"
	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/sigv4"
)

// queryContentType is the media type of the IAM and STS (awsQuery) APIs.
const queryContentType = "application/x-www-form-urlencoded"

// maxBody bounds a request body. The largest KMS input (a 32 KiB policy,
// or 4 KiB of plaintext in base64) is far below it.
const maxBody = 1 << 20

// api serves the KMS JSON API.
type api struct {
	svc      *kms.Service
	verifier *sigv4.Verifier
	ids      *identity.Store // nil in emulator mode
	account  string          // default account (emulator mode)
	log      *slog.Logger
	metrics  *metrics
	hsm      *hsmServer       // [hsm] HSM clusters (cloudhsm.go); nil: off
	console  *console.Console // the web console (console.go); nil: off

	audit *audit.Logger // nil: no audit log
	// auditSync is the --audit-sync mode: which records are synced before
	// their response (auditsync.go).
	auditSync string
	// iamVerifier and stsVerifier check requests to the IAM and STS APIs
	// (credential scopes naming iam and sts).
	iamVerifier, stsVerifier *sigv4.Verifier

	// reset opens and replaces the services a reset renews (reset.go);
	// resetMu is held shared by every request, exclusively by a reset.
	reset   *resetter
	resetMu sync.RWMutex
	// xksHealth checks external key stores' proxies until its context
	// ends: a controller duty; nil when off.
	xksHealth func(ctx context.Context)
	// quotaShare splits the key stores' quota between the live nodes.
	quotaShare quotaShare
	// ctl elects the node that runs the background duties (controller.go).
	ctl *controller.Controller
	// follower is the open core's change-feed follower (reset.go), whose
	// lag the node record publishes; nil before the core opens.
	follower atomic.Pointer[feed.Follower]
}

var bodyPool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

func (a *api) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodGet && (r.URL.Path == "/healthz" || r.URL.Path == "/readyz") {
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "ok\n")
		return
	}
	if isReset(r) {
		a.serveReset(w, r)
		return
	}
	a.resetMu.RLock()
	defer a.resetMu.RUnlock()
	reqID := uuid.NewString()
	rec := newRecord(r, reqID)
	var also *audit.Record // a second record one request makes (ReplicateKey)
	if a.audit != nil && a.auditSync != AuditSyncNone {
		// The response waits for the record when it must be synced
		// first (auditsync.go); whether it must is known at the end.
		held := &heldResponse{w: w}
		w = held
		defer func() {
			if !mustSync(a.auditSync, rec) {
				a.audit.Log(rec)
				if also != nil {
					a.audit.Log(also)
				}
				held.release()
				return
			}
			// Records are written in order, so syncing the last one
			// syncs both.
			last := rec
			if also != nil {
				a.audit.Log(rec)
				last = also
			}
			if err := a.audit.LogSync(last); err != nil {
				// The change is made but its record may be lost: the
				// client is told of a failure rather than of success.
				a.log.Error("audit log sync failed", "requestId", reqID, "err", err)
				held.drop()
				awsjson.WriteError(held.w, reqID, &awsjson.Error{Code: "KMSInternalException",
					Message: "The audit record of the request could not be written.", Status: 500})
				return
			}
			held.release()
		}()
	} else {
		defer func() {
			a.audit.Log(rec)
			if also != nil {
				a.audit.Log(also)
			}
		}()
	}
	defer func() {
		if op := rec.EventName; op != "" {
			if rec.EventSource == "cloudhsm.amazonaws.com" {
				op = "cloudhsm:" + op
			}
			a.metrics.observe(op, time.Since(rec.Time))
		}
	}()
	if r.Method != http.MethodPost || r.URL.Path != "/" {
		rec.ErrorCode = "UnknownOperationException"
		awsjson.WriteError(w, reqID, &awsjson.Error{Code: "UnknownOperationException", Message: "", Status: 404})
		return
	}
	bp := bodyPool.Get().(*[]byte)
	defer bodyPool.Put(bp)
	body, err := readBody(r, (*bp)[:0])
	*bp = body
	if err != nil {
		if errors.Is(err, errTooLarge) {
			a.fail(w, rec, "", &awsjson.Error{Code: "RequestEntityTooLargeException", Message: "Request body exceeds the maximum of 1048576 bytes.", Status: 413})
			return
		}
		a.fail(w, rec, "", &awsjson.Error{Code: "SerializationException", Message: "Could not read request body.", Status: 400})
		return
	}
	if strings.HasPrefix(r.Header.Get("Content-Type"), queryContentType) {
		a.serveQuery(w, r, body, rec) // IAM and STS (awsQuery protocol)
		return
	}
	// kmsctl console-login (KmsdConsole.CreateLoginUrl): console.go.
	if a.serveConsoleLogin(w, r, body, rec) {
		return
	}
	// [hsm] CloudHSM v2 (BaldrApiService.*) and admin (KmsdAdmin.*) targets: cloudhsm.go.
	if a.serveHSM(w, r, body, rec) {
		return
	}
	rec.EventSource = "kms.amazonaws.com"

	res, err := verify(a.verifier, r, body)
	if err != nil {
		var se *sigv4.Error
		if errors.As(err, &se) {
			a.fail(w, rec, "", &awsjson.Error{Code: se.Code, Message: se.Message, Status: kmsapi.Status(se.Code)})
			return
		}
		a.fail(w, rec, "", &awsjson.Error{Code: "InternalFailure", Status: 500})
		return
	}
	caller := kms.Caller{Account: a.account, Region: res.Region, RequestID: reqID, SourceIP: rec.SourceIPAddress, SecureTransport: r.TLS != nil}
	rec.AWSRegion = res.Region
	if a.ids != nil {
		id, ok := a.ids.IdentityFor(res.AccessKeyID, res.SessionToken)
		if !ok || !tokenMatches(id, res.SessionToken) { // removed between verification and now, or a bad token
			a.fail(w, rec, "", &awsjson.Error{Code: "UnrecognizedClientException", Message: "The security token included in the request is invalid.", Status: 400})
			return
		}
		actAs(&caller, id)
		setIdentity(rec, id)
	} else {
		// Emulator mode: every caller is the account's root, allowed
		// everything in its account.
		caller.ARN = identity.Root(a.account).ARN
		caller.Trusted = true
		setRoot(rec, a.account, res.AccessKeyID)
	}

	opName, ok := awsjson.Target(r.Header.Get("X-Amz-Target"), kmsapi.TargetPrefix)
	if !ok || kmsapi.Operations[opName] == nil {
		a.fail(w, rec, "", &awsjson.Error{Code: "UnknownOperationException", Status: 400})
		return
	}
	rec.EventName = opName
	rec.ReadOnly = readOnly(opName)
	h, ok := handlers[opName]
	if !ok {
		if err := a.svc.AuthorizeUnsupported(&caller, opName); err != nil {
			a.fail(w, rec, opName, a.wireError(opName, reqID, err))
			return
		}
		a.fail(w, rec, opName, &awsjson.Error{Code: "UnsupportedOperationException", Message: "kmsd does not support " + opName + " yet.", Status: 400})
		return
	}
	in, err := h.decode(body)
	if err != nil {
		a.fail(w, rec, opName, a.wireError(opName, reqID, err))
		return
	}
	rec.Params = in
	out, err := h.call(kms.ReadContext(r.Context(), opName, in), a.svc, &caller, in)
	setResources(rec, &caller)
	if err != nil {
		a.fail(w, rec, opName, a.wireError(opName, reqID, err))
		return
	}
	if !rec.ReadOnly {
		rec.Response = out
	}
	if opName == "ReplicateKey" {
		also = replicaCreated(rec, out)
	}
	// GetKeyLastUsage: the call succeeded, with the event time and id its
	// audit record carries. In memory only; stored in batches.
	a.svc.RecordUse(&caller, opName, rec.Time, rec.EventID)
	a.metrics.ok(opName)
	awsjson.WriteJSON(w, reqID, out)
	clearWritten(out)
}

// clearWritten clears the plaintext private key of a response once it is
// written: it leaves kmsd only in the response body (whose buffers are
// cleared too), while the response itself stays reachable from the audit
// record until the audit writer has recorded it — which reads no []byte
// member, so clearing one's contents does not race with it.
func clearWritten(out any) {
	if r, ok := out.(*kmsapi.GenerateDataKeyPairResponse); ok {
		clear(r.PrivateKeyPlaintext)
	}
}

// actAs makes c act as id for authorization: its principal, identity
// policies and session policies. Every kms.Caller built from an identity
// goes through here, so that no path forgets a session's session policies.
func actAs(c *kms.Caller, id *identity.Identity) {
	c.Account, c.ARN = id.Principal.Account, id.Principal.ARN
	c.Principal, c.Policies, c.SessionPolicies = id.Principal, id.Policies, id.SessionPolicies
}

// wireError turns a service error into what the client sees, logging the
// cause of internal failures (never shown to the client).
func (a *api) wireError(op, reqID string, err error) *awsjson.Error {
	var we *awsjson.Error
	if errors.As(err, &we) {
		return we
	}
	e := kms.Exception(err)
	if e.Name == "KMSInternalException" && errors.Is(err, context.DeadlineExceeded) && throws(op, dependencyTimeout.Name) {
		// A read or write that ran out of time: the database did not
		// answer within its bound (a data-plane read past
		// --cache-max-staleness waits at most a second). AWS answers a
		// timeout so, and clients retry it.
		a.log.Warn("dependency timeout", "op", op, "requestId", reqID, "err", err)
		e = dependencyTimeout
	}
	if e.Name == "KMSInternalException" {
		a.log.Error("internal error", "op", op, "requestId", reqID, "err", err)
	}
	return &awsjson.Error{Code: e.Name, Message: e.Message, Status: kmsapi.Status(e.Name)}
}

// dependencyTimeout is AWS's answer when the request timed out inside the
// service (HTTP 503).
var dependencyTimeout = kmsapi.NewException("DependencyTimeoutException",
	"The system timed out while trying to fulfill the request. You can retry the request.")

// throws says whether operation op may answer the exception named name
// (it is in the operation's error list in the model).
func throws(op, name string) bool {
	o := kmsapi.Operations[op]
	return o != nil && slices.Contains(o.Errors, name)
}

func (a *api) fail(w http.ResponseWriter, rec *audit.Record, op string, e *awsjson.Error) {
	a.metrics.fail(op, e.Code)
	a.log.Debug("request failed", "op", op, "requestId", rec.RequestID, "code", e.Code)
	rec.ErrorCode, rec.ErrorMessage = e.Code, e.Message
	awsjson.WriteError(w, rec.RequestID, e)
}

// newRecord starts the audit record of a request.
func newRecord(r *http.Request, reqID string) *audit.Record {
	ip := r.RemoteAddr
	if i := strings.LastIndexByte(ip, ':'); i >= 0 {
		ip = strings.Trim(ip[:i], "[]")
	}
	return &audit.Record{
		Time:            time.Now(),
		RequestID:       reqID,
		EventID:         uuid.NewString(),
		SourceIPAddress: ip,
		UserAgent:       r.UserAgent(),
		ManagementEvent: true,
	}
}

var errTooLarge = errors.New("body too large")

// readBody reads the whole body into buf, refusing more than maxBody.
func readBody(r *http.Request, buf []byte) ([]byte, error) {
	if r.ContentLength > maxBody {
		return buf, errTooLarge
	}
	if r.ContentLength > 0 && int64(cap(buf)) < r.ContentLength {
		buf = make([]byte, 0, r.ContentLength)
	}
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if len(buf) > maxBody {
			return buf, errTooLarge
		}
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

// unsupported lists the model's operations kmsd does not serve yet.
func unsupported() []string {
	var out []string
	for name := range kmsapi.Operations {
		if _, ok := handlers[name]; !ok {
			out = append(out, name)
		}
	}
	return out
}
