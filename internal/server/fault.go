package server

// Fault injection for tests: started with --fault-injection (or
// KMSD_FAULT_INJECTION=1), kmsd answers the admin operation
// KmsdAdmin.InjectConnectFault, which makes the next connect of a custom key
// store fail with a chosen ConnectionErrorCode and/or last longer
// (kmsctl kmsd inject-connect-fault). Without it the operation answers
// UnsupportedOperationException.

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/kmsd/kmsd/internal/audit"
	"github.com/kmsd/kmsd/internal/awsjson"
	"github.com/kmsd/kmsd/internal/keystore"
)

const injectConnectFault = "InjectConnectFault"

// faultInjection reports whether kmsd runs with fault injection on.
func faultInjection() bool {
	switch strings.ToLower(os.Getenv("KMSD_FAULT_INJECTION")) {
	case "1", "true", "yes", "on":
		return true
	}
	return false
}

// failpoint returns, with fault injection on and KMSD_FAILPOINT set to
// one of the key store controller's named points (keystore.Config.
// Failpoint: keystore-connect-before-intent, keystore-connect-after-intent,
// keystore-connect-after-setpin, keystore-connect-after-record,
// keystore-disconnect-acks) or of the catalog's (catalog.SetFailpoint:
// catalog-update-key), what makes the process exit at once there,
// as if killed: no lease released, nothing flushed. With ":stop" after
// the name (keystore-connect-after-intent:stop) the process instead
// freezes itself there with SIGSTOP, the first time it gets there, and
// goes on from that point when it is sent SIGCONT: a controller paused
// mid-connect (MULTINODE.md §8 A7). Otherwise nil.
func failpoint(log *slog.Logger) func(name string) {
	want := os.Getenv("KMSD_FAILPOINT")
	if want == "" || !faultInjection() {
		return nil
	}
	want, stop := strings.CutSuffix(want, ":stop")
	var stopped atomic.Bool
	return func(name string) {
		if name != want {
			return
		}
		if !stop {
			log.Error("failpoint reached: exiting", "failpoint", name)
			fmt.Fprintf(os.Stderr, "kmsd: failpoint %s: exiting\n", name)
			os.Exit(failpointExit)
		}
		if stopped.Swap(true) {
			return
		}
		// The stop reaches the process's threads asynchronously: this
		// goroutine waits for the SIGCONT, so that it goes no further
		// than the failpoint before the process is continued.
		cont := make(chan os.Signal, 1)
		signal.Notify(cont, syscall.SIGCONT)
		defer signal.Stop(cont)
		log.Warn("failpoint reached: stopping", "failpoint", name)
		syscall.Kill(os.Getpid(), syscall.SIGSTOP)
		<-cont
		log.Warn("failpoint: continued", "failpoint", name)
	}
}

// failpointExit is the exit status at a failpoint.
const failpointExit = 86

// faulty wraps the key store backings with fault injection when it is on.
func (h *hsmServer) faulty(bs map[string]keystore.Backing) map[string]keystore.Backing {
	if !faultInjection() {
		return bs
	}
	h.faults = new(keystore.Faults)
	out := make(map[string]keystore.Backing, len(bs))
	for t, b := range bs {
		if b != nil {
			b = h.faults.Wrap(b)
		}
		out[t] = b
	}
	return out
}

type injectFaultRequest struct {
	CustomKeyStoreId    string `json:"CustomKeyStoreId"`
	ConnectionErrorCode string `json:"ConnectionErrorCode"`
	// Latency is a Go duration ("2s", "500ms").
	Latency string `json:"Latency"`
}

// serveInjectFault serves KmsdAdmin.InjectConnectFault (administrator only).
func (h *hsmServer) serveInjectFault(w http.ResponseWriter, r *http.Request, body []byte, rec *audit.Record, m *metrics) {
	rec.EventSource, rec.EventName = adminEventSource, injectConnectFault
	fail := func(code, msg string) {
		m.fail("admin:"+injectConnectFault, code)
		rec.ErrorCode, rec.ErrorMessage = code, msg
		awsjson.WriteError(w, rec.RequestID, &awsjson.Error{Code: code, Message: msg, Status: http.StatusBadRequest})
	}
	c, exc := h.adminCaller(r, body, rec)
	if exc != nil {
		fail(exc.Name, exc.Message)
		return
	}
	if h.faults == nil || h.stores == nil {
		fail("UnsupportedOperationException", "Fault injection is off; start kmsd with --fault-injection (KMSD_FAULT_INJECTION=1).")
		return
	}
	in := new(injectFaultRequest)
	if e := awsjson.Decode(body, in); e != nil {
		fail(e.Code, e.Message)
		return
	}
	rec.RequestParameters = in
	if in.CustomKeyStoreId == "" {
		fail("ValidationException", "CustomKeyStoreId is required.")
		return
	}
	f := keystore.Fault{Code: in.ConnectionErrorCode}
	if in.Latency != "" {
		d, err := time.ParseDuration(in.Latency)
		if err != nil {
			fail("ValidationException", "Latency: want a duration such as 2s.")
			return
		}
		f.Latency = d
	}
	if _, err := h.stores.Get(c.Account, c.Region, in.CustomKeyStoreId); err != nil {
		fail("CustomKeyStoreNotFoundException", "The specified custom key store does not exist.")
		return
	}
	if err := h.faults.Inject(in.CustomKeyStoreId, f); err != nil {
		if errors.Is(err, keystore.ErrInvalidFault) {
			fail("ValidationException", strings.TrimPrefix(err.Error(), "keystore: "))
			return
		}
		fail("InternalFailure", "The request processing has failed because of an internal error.")
		return
	}
	h.log.Warn("fault injected into the next connect", "customKeyStoreId", in.CustomKeyStoreId, "code", f.Code, "latency", f.Latency)
	m.requests.WithLabelValues("admin:"+injectConnectFault, "OK").Inc()
	awsjson.WriteJSON(w, rec.RequestID, map[string]any{})
}
