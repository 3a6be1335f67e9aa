package keystore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
)

// connectionErrorCodes are the 18 ConnectionErrorCodeType values of the
// KMS model (spec §3).
var connectionErrorCodes = []string{
	"INVALID_CREDENTIALS", "CLUSTER_NOT_FOUND", "NETWORK_ERRORS", "INTERNAL_ERROR", "INSUFFICIENT_CLOUDHSM_HSMS",
	"USER_LOCKED_OUT", "USER_NOT_FOUND", "USER_LOGGED_IN", "SUBNET_NOT_FOUND", "INSUFFICIENT_FREE_ADDRESSES_IN_SUBNET",
	"XKS_PROXY_ACCESS_DENIED", "XKS_PROXY_NOT_REACHABLE", "XKS_VPC_ENDPOINT_SERVICE_NOT_FOUND", "XKS_PROXY_INVALID_RESPONSE",
	"XKS_PROXY_INVALID_CONFIGURATION", "XKS_VPC_ENDPOINT_SERVICE_INVALID_CONFIGURATION", "XKS_PROXY_TIMED_OUT",
	"XKS_PROXY_INVALID_TLS_CONFIGURATION",
}

// ErrInvalidFault: a fault with an unknown code, a negative latency, or
// neither.
var ErrInvalidFault = errors.New("keystore: invalid fault")

// Fault is what the next connect of one store suffers: Latency first,
// then, when Code is set, failure with that ConnectionErrorCode instead of
// the real connect.
type Fault struct {
	Code    string
	Latency time.Duration
}

// Faults is fault injection for tests (kmsd --fault-injection): Wrap a
// Backing, then Inject makes the next connect of a store fail with a
// chosen ConnectionErrorCode (also those a SoftHSM2 cluster cannot cause
// for real, such as SUBNET_NOT_FOUND) or last longer. A fault is used
// once.
type Faults struct {
	mu   sync.Mutex
	next map[string]Fault
}

// Inject arms f for the next connect of store id.
func (fs *Faults) Inject(id string, f Fault) error {
	if f.Code != "" && !slices.Contains(connectionErrorCodes, f.Code) {
		return fmt.Errorf("%w: %q is not a ConnectionErrorCode", ErrInvalidFault, f.Code)
	}
	if f.Latency < 0 || (f.Code == "" && f.Latency == 0) {
		return fmt.Errorf("%w: give a connection error code, a positive latency or both", ErrInvalidFault)
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.next == nil {
		fs.next = map[string]Fault{}
	}
	fs.next[id] = f
	return nil
}

func (fs *Faults) take(id string) (Fault, bool) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	f, ok := fs.next[id]
	delete(fs.next, id)
	return f, ok
}

// Wrap returns b with the faults injected into its connects.
func (fs *Faults) Wrap(b Backing) Backing { return &faulty{fs: fs, b: b} }

type faulty struct {
	fs *Faults
	b  Backing
}

func (f *faulty) Connect(ctx context.Context, st *Store, secret, next []byte) (bool, error) {
	// The connector first probes a rotation left unrecorded by an earlier
	// attempt (next == nil); the fault is for the connect proper. External
	// stores never rotate: their connect proper has no next either.
	if next == nil && st.Type != TypeExternal {
		return f.b.Connect(ctx, st, secret, next)
	}
	if ft, ok := f.fs.take(st.ID); ok {
		if ft.Latency > 0 {
			t := time.NewTimer(ft.Latency)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return false, ctx.Err()
			}
		}
		if ft.Code != "" {
			return false, &ConnectError{Code: ft.Code, Err: errors.New("keystore: injected fault")}
		}
	}
	return f.b.Connect(ctx, st, secret, next)
}

func (f *faulty) Disconnect(ctx context.Context, st *Store) error { return f.b.Disconnect(ctx, st) }

// CheckConnect forwards to the wrapped Backing's Checker, if it has one.
func (f *faulty) CheckConnect(ctx context.Context, st *Store) error {
	if c, ok := f.b.(Checker); ok {
		return c.CheckConnect(ctx, st)
	}
	return nil
}
