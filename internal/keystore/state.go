// Package keystore holds kmsd's custom key stores: the store records
// (persisted through storage, secrets sealed by the barrier) and the one
// connection state machine every store type shares (spec §6). What a
// connection means for a store type — logging in to an HSM cluster as
// kmsuser, probing an XKS proxy — is a Backing, so external key stores plug
// in beside CloudHSM key stores without touching the state machine.
//
// The request quota of each store (Quota) is enforced by every node for
// itself. Nodes sharing one database split it as MULTINODE.md §4.7
// proposes, with these choices: each node publishes in its heartbeat
// record the requests a second asked of each store (smoothed, each
// heartbeat's rate weighing half), and at each heartbeat takes a tenth of
// its equal share plus the rest in proportion to its demand
// (DemandShares), computed by the node itself from the live nodes' records
// rather than by the controller; a store nobody asks for keeps equal
// shares, one over the live nodes. A dead node's share returns to the
// others once its lease expires. The shares never add up to more than the
// quota: a node joining others holds its quota (Quota.Hold) until they all
// count it, and a node claims for itself no more demand than the others
// split by — unlike MULTINODE.md §4.7's "cold start = equal shares", a
// joiner takes none until counted (server's quotaShare has the rules and
// why they suffice). e2e/multinode/load measures the split, the skewed
// split and the return.
//
// With several kmsd nodes on one database, only the controller runs the
// asynchronous half of connect and disconnect, under its fenced lease;
// every node logs in to a CONNECTED store's backing itself and publishes
// that it did, and a disconnect completes once every live node has logged
// out (nodes.go). Unlike MULTINODE.md §4.7, which puts the per-node records
// under keystore/<id>/node/<node>, they live under keystorenode/<id>/<node>,
// so that listing the stores' records reads no node records.
package keystore

import (
	"errors"
	"fmt"
)

// State is a store's ConnectionState.
type State string

// Connection states (spec §6.1).
const (
	Disconnected  State = "DISCONNECTED"
	Connecting    State = "CONNECTING"
	Connected     State = "CONNECTED"
	Failed        State = "FAILED"
	Disconnecting State = "DISCONNECTING"
)

// Store types.
const (
	TypeCloudHSM = "AWS_CLOUDHSM"
	TypeExternal = "EXTERNAL_KEY_STORE"
)

// ConnectionErrorCodes (spec §8) a failed connection records.
const (
	CodeInvalidCredentials       = "INVALID_CREDENTIALS"
	CodeClusterNotFound          = "CLUSTER_NOT_FOUND"
	CodeNetworkErrors            = "NETWORK_ERRORS"
	CodeInternalError            = "INTERNAL_ERROR"
	CodeInsufficientCloudHSMHSMs = "INSUFFICIENT_CLOUDHSM_HSMS"
	CodeUserLockedOut            = "USER_LOCKED_OUT"
	CodeUserNotFound             = "USER_NOT_FOUND"
	CodeUserLoggedIn             = "USER_LOGGED_IN"
)

// Op is an operation whose validity depends on the store's state.
type Op int

// Operations of the validity table (spec §6.3).
const (
	OpConnect Op = iota
	OpDisconnect
	// OpUpdateLive: the update members allowed while connected (name, XKS
	// credential, XKS path).
	OpUpdateLive
	// OpUpdate: every other update member.
	OpUpdate
	OpDelete
	OpCreateKey
	OpCrypto
	OpGenerateRandom
	OpDescribe
)

var opNames = [...]string{"ConnectCustomKeyStore", "DisconnectCustomKeyStore", "UpdateCustomKeyStore",
	"UpdateCustomKeyStore", "DeleteCustomKeyStore", "CreateKey", "cryptographic operation", "GenerateRandom",
	"DescribeCustomKeyStores"}

func (o Op) String() string { return opNames[o] }

// validity is spec §6.3: which operations each state allows.
var validity = map[State]map[Op]bool{
	Disconnected:  {OpConnect: true, OpUpdateLive: true, OpUpdate: true, OpDelete: true, OpDescribe: true},
	Connecting:    {OpConnect: true, OpDisconnect: true, OpDescribe: true},
	Connected:     {OpConnect: true, OpDisconnect: true, OpUpdateLive: true, OpCreateKey: true, OpCrypto: true, OpGenerateRandom: true, OpDescribe: true},
	Failed:        {OpDisconnect: true, OpDescribe: true},
	Disconnecting: {OpDescribe: true},
}

// Allows reports whether op is valid in state st.
func (st State) Allows(op Op) bool { return validity[st][op] }

// Errors of the manager, for the service layer to map to exceptions.
var (
	ErrNotFound      = errors.New("keystore: custom key store not found")
	ErrNameInUse     = errors.New("keystore: custom key store name in use")
	ErrClusterInUse  = errors.New("keystore: cluster backs another custom key store")
	ErrHasKeys       = errors.New("keystore: custom key store has keys")
	ErrInvalidState  = errors.New("keystore: operation not valid in the store's connection state")
	ErrLimitExceeded = errors.New("keystore: too many custom key stores")
	// Errors of a backing's checks of a CloudHSM cluster.
	ErrClusterNotFound      = errors.New("keystore: cluster not found")
	ErrClusterNotActive     = errors.New("keystore: cluster not active")
	ErrClusterInvalidConfig = errors.New("keystore: cluster configuration invalid")
	ErrIncorrectTrustAnchor = errors.New("keystore: incorrect trust anchor")
	ErrClusterNotRelated    = errors.New("keystore: cluster not related")
)

// StateError is ErrInvalidState for one operation and state.
type StateError struct {
	Op    Op
	State State
	ID    string
}

func (e *StateError) Error() string {
	return fmt.Sprintf("keystore: %s is not valid for custom key store %s in state %s", e.Op, e.ID, e.State)
}

func (e *StateError) Unwrap() error { return ErrInvalidState }

// ConnectError is how a Backing reports a failed connection: the
// ConnectionErrorCode the store records, and the cause (logged, never shown).
type ConnectError struct {
	Code string
	Err  error
}

func (e *ConnectError) Error() string {
	return "keystore: connect: " + e.Code + ": " + fmt.Sprint(e.Err)
}
func (e *ConnectError) Unwrap() error { return e.Err }

// code is the ConnectionErrorCode of a Backing's connect error.
func code(err error) string {
	var ce *ConnectError
	if errors.As(err, &ce) && ce.Code != "" {
		return ce.Code
	}
	return CodeInternalError
}
