package server

import (
	"errors"
	"io"
	"log/slog"
	"net/http"
	"sync"

	"github.com/google/uuid"
	"github.com/kmsd/kmsd/internal/awsjson"
	"github.com/kmsd/kmsd/internal/identity"
	"github.com/kmsd/kmsd/internal/kms"
	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/sigv4"
)

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
}

var bodyPool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

func (a *api) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodGet && (r.URL.Path == "/healthz" || r.URL.Path == "/readyz") {
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "ok\n")
		return
	}
	reqID := uuid.NewString()
	if r.Method != http.MethodPost || r.URL.Path != "/" {
		awsjson.WriteError(w, reqID, &awsjson.Error{Code: "UnknownOperationException", Message: "", Status: 404})
		return
	}
	bp := bodyPool.Get().(*[]byte)
	defer bodyPool.Put(bp)
	body, err := readBody(r, (*bp)[:0])
	*bp = body
	if err != nil {
		if errors.Is(err, errTooLarge) {
			a.fail(w, reqID, "", &awsjson.Error{Code: "RequestEntityTooLargeException", Message: "Request body exceeds the maximum of 1048576 bytes.", Status: 413})
			return
		}
		a.fail(w, reqID, "", &awsjson.Error{Code: "SerializationException", Message: "Could not read request body.", Status: 400})
		return
	}

	res, err := a.verifier.Verify(r, body)
	if err != nil {
		var se *sigv4.Error
		if errors.As(err, &se) {
			a.fail(w, reqID, "", &awsjson.Error{Code: se.Code, Message: se.Message, Status: kmsapi.Status(se.Code)})
			return
		}
		a.fail(w, reqID, "", &awsjson.Error{Code: "InternalFailure", Status: 500})
		return
	}
	caller := kms.Caller{Account: a.account, Region: res.Region, RequestID: reqID}
	if a.ids != nil {
		p, ok := a.ids.Principal(res.AccessKeyID)
		if !ok { // removed between verification and now
			a.fail(w, reqID, "", &awsjson.Error{Code: "UnrecognizedClientException", Message: "The security token included in the request is invalid.", Status: 400})
			return
		}
		caller.Account, caller.ARN = p.Account, p.ARN
	} else {
		caller.ARN = identity.Root(a.account).ARN
	}

	opName, ok := awsjson.Target(r.Header.Get("X-Amz-Target"), kmsapi.TargetPrefix)
	if !ok || kmsapi.Operations[opName] == nil {
		a.fail(w, reqID, "", &awsjson.Error{Code: "UnknownOperationException", Status: 400})
		return
	}
	h, ok := handlers[opName]
	if !ok {
		a.fail(w, reqID, opName, &awsjson.Error{Code: "UnsupportedOperationException", Message: "kmsd does not support " + opName + " yet.", Status: 400})
		return
	}
	in, err := h.decode(body)
	if err != nil {
		a.fail(w, reqID, opName, a.wireError(opName, reqID, err))
		return
	}
	out, err := h.call(r.Context(), a.svc, &caller, in)
	if err != nil {
		a.fail(w, reqID, opName, a.wireError(opName, reqID, err))
		return
	}
	a.metrics.ok(opName)
	awsjson.WriteJSON(w, reqID, out)
}

// wireError turns a service error into what the client sees, logging the
// cause of internal failures (never shown to the client).
func (a *api) wireError(op, reqID string, err error) *awsjson.Error {
	var we *awsjson.Error
	if errors.As(err, &we) {
		return we
	}
	e := kms.Exception(err)
	if e.Name == "KMSInternalException" {
		a.log.Error("internal error", "op", op, "requestId", reqID, "err", err)
	}
	return &awsjson.Error{Code: e.Name, Message: e.Message, Status: kmsapi.Status(e.Name)}
}

func (a *api) fail(w http.ResponseWriter, reqID, op string, e *awsjson.Error) {
	a.metrics.fail(op, e.Code)
	a.log.Debug("request failed", "op", op, "requestId", reqID, "code", e.Code)
	awsjson.WriteError(w, reqID, e)
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
