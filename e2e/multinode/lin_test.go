package multinode

import (
	"context"
	"errors"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// The control-plane model checked by porcupine, partitioned by key id, by
// alias name and by custom key store id (P-compositionality: a history is
// linearizable if and only if its restriction to each object is, when the
// objects are independent, which keys, aliases and stores are for these
// operations).
//
// A key is a register {disabled, description}: EnableKey, DisableKey and
// UpdateKeyDescription write it, DescribeKey reads it.
//
// An alias is a register holding its target key id ("" when absent):
// CreateAlias, UpdateAlias and DeleteAlias write it and report
// NotFoundException / AlreadyExistsException from its state;
// DescribeKey("alias/…") reads it, and so does ListAliases: one ListAliases
// answer is split into one read per alias name, each with the call's call
// and return times. That checks per-alias linearizability (each alias's
// history alone), not that one ListAliases answer is a snapshot of all
// aliases at one instant.
//
// A custom key store is the set of connection states it may be in
// (storeSet): the asynchronous connector may move CONNECTING to CONNECTED
// or FAILED, and DISCONNECTING to DISCONNECTED, at any moment, so the model
// is nondeterministic and porcupine checks it through the set of states
// reachable (the power-set construction of porcupine's
// NondeterministicModel, written out here because one model serves all
// three kinds of partition). ConnectCustomKeyStore succeeds from
// DISCONNECTED (to CONNECTING), CONNECTING and CONNECTED (no change) and
// is refused with CustomKeyStoreInvalidStateException from FAILED and
// DISCONNECTING; DisconnectCustomKeyStore succeeds from CONNECTED,
// CONNECTING and FAILED (to DISCONNECTING) and is refused from
// DISCONNECTED and DISCONNECTING (internal/keystore/state.go, the validity
// table; keystore.go Connect and Disconnect).
//
// A write whose outcome is unknown (see linClassify) is recorded with an
// infinite return time: porcupine may place it anywhere after its call,
// including after every other operation, which is the same as it never
// having taken effect. A write that failed definitely (a 4xx answer) had no
// effect: the model accepts it only in the states that explain it
// (NotFoundException for an absent alias, …). Failed reads tell nothing
// and are not recorded.

type linKind int

const (
	kindKey linKind = iota
	kindAlias
	kindStore
)

type keyState struct {
	disabled bool
	desc     string
}

// storeSet is a set of connection states, one bit each.
type storeSet uint8

const (
	stDisconnected storeSet = 1 << iota
	stConnecting
	stConnected
	stFailed
	stDisconnecting
)

var storeStates = map[types.ConnectionStateType]storeSet{
	types.ConnectionStateTypeDisconnected:  stDisconnected,
	types.ConnectionStateTypeConnecting:    stConnecting,
	types.ConnectionStateTypeConnected:     stConnected,
	types.ConnectionStateTypeFailed:        stFailed,
	types.ConnectionStateTypeDisconnecting: stDisconnecting,
}

// reach is s with every state the connector can move a store to on its
// own: CONNECTING → CONNECTED or FAILED, DISCONNECTING → DISCONNECTED.
func (s storeSet) reach() storeSet {
	if s&stConnecting != 0 {
		s |= stConnected | stFailed
	}
	if s&stDisconnecting != 0 {
		s |= stDisconnected
	}
	return s
}

// afterConnect is the states a successful ConnectCustomKeyStore leaves
// from the states of s that allow it.
func (s storeSet) afterConnect() storeSet {
	var n storeSet
	if s&(stDisconnected|stConnecting) != 0 {
		n |= stConnecting
	}
	if s&stConnected != 0 {
		n |= stConnected
	}
	return n.reach()
}

// afterDisconnect is the same for DisconnectCustomKeyStore.
func (s storeSet) afterDisconnect() storeSet {
	if s&(stConnected|stConnecting|stFailed) != 0 {
		return stDisconnecting.reach()
	}
	return 0
}

func (s storeSet) String() string {
	var names []string
	for name, b := range storeStates {
		if s&b != 0 {
			names = append(names, string(name))
		}
	}
	sort.Strings(names)
	return "{" + strings.Join(names, " ") + "}"
}

type linIn struct {
	part  string // key id, alias name or key store id
	kind  linKind
	op    string // describe, enable, disable, desc | read, list, create, update, delete | state, connect, disconnect
	value string // description or alias target
	node  string
	// call is the API call's number: the reads one ListAliases answer is
	// split into share it.
	call int64
}

type linOut struct {
	unknown  bool
	code     string // AWS error code of a definite failure ("" = success)
	disabled bool
	desc     string
	target   string
	state    types.ConnectionStateType
}

// linExpected is, per operation, the AWS error codes the model explains;
// any other definite failure is reported by the test on its own (the model
// accepts it as a no-op so that porcupine still decides the rest).
var linExpected = map[string]map[string]bool{
	"read":       {"NotFoundException": true},
	"list":       {"NotFoundException": true}, // an alias absent from the list
	"create":     {"AlreadyExistsException": true},
	"update":     {"NotFoundException": true},
	"delete":     {"NotFoundException": true},
	"connect":    {"CustomKeyStoreInvalidStateException": true},
	"disconnect": {"CustomKeyStoreInvalidStateException": true},
}

func linModel() porcupine.Model {
	return porcupine.Model{
		Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
			m := map[string][]porcupine.Operation{}
			var names []string
			for _, op := range h {
				p := op.Input.(linIn).part
				if _, ok := m[p]; !ok {
					names = append(names, p)
				}
				m[p] = append(m[p], op)
			}
			sort.Strings(names)
			var out [][]porcupine.Operation
			for _, n := range names {
				out = append(out, m[n])
			}
			return out
		},
		Init: func() any { return nil },
		Step: func(state, input, output any) (bool, any) {
			in, out := input.(linIn), output.(linOut)
			if out.code != "" && !linExpected[in.op][out.code] {
				return true, state // reported apart; no effect
			}
			switch in.kind {
			case kindKey:
				s, _ := state.(keyState)
				return keyStep(s, in, out)
			case kindAlias:
				s, _ := state.(string)
				return aliasStep(s, in, out)
			}
			s, ok := state.(storeSet)
			if !ok {
				s = stDisconnected // the stores are created DISCONNECTED
			}
			return storeStep(s, in, out)
		},
		Equal: func(a, b any) bool {
			if a == nil {
				a = zeroOf(b)
			}
			if b == nil {
				b = zeroOf(a)
			}
			return a == b
		},
		DescribeOperation: func(input, output any) string {
			in, out := input.(linIn), output.(linOut)
			res := "ok"
			switch {
			case out.unknown:
				res = "?"
			case out.code != "":
				res = out.code
			case in.op == "describe":
				res = fmt.Sprintf("disabled=%v desc=%q", out.disabled, out.desc)
			case in.op == "read" || in.op == "list":
				res = out.target
			case in.op == "state":
				res = string(out.state)
			}
			return fmt.Sprintf("%s %s(%s) on %s -> %s", in.part, in.op, in.value, in.node, res)
		},
		DescribeState: func(state any) string { return fmt.Sprintf("%+v", state) },
	}
}

func keyStep(s keyState, in linIn, out linOut) (bool, any) {
	switch in.op {
	case "describe":
		return out.disabled == s.disabled && out.desc == s.desc, s
	case "enable":
		return true, keyState{false, s.desc}
	case "disable":
		return true, keyState{true, s.desc}
	case "desc":
		return true, keyState{s.disabled, in.value}
	}
	return false, s
}

func aliasStep(s string, in linIn, out linOut) (bool, any) {
	switch in.op {
	case "read", "list":
		if out.code == "NotFoundException" {
			return s == "", s
		}
		return out.code == "" && out.target == s && s != "", s
	case "create":
		switch {
		case out.unknown:
			if s == "" {
				return true, in.value
			}
			return true, s
		case out.code == "AlreadyExistsException":
			return s != "", s
		}
		return s == "", in.value
	case "update":
		switch {
		case out.unknown:
			if s != "" {
				return true, in.value
			}
			return true, s
		case out.code == "NotFoundException":
			return s == "", s
		}
		return s != "", in.value
	case "delete":
		switch {
		case out.unknown:
			return true, ""
		case out.code == "NotFoundException":
			return s == "", s
		}
		return s != "", ""
	}
	return false, s
}

// storeStep steps the set of states s (closed under reach). Set-valued
// states make porcupine's search exact: an operation is legal if some
// state of the set explains it, and the result is every state that
// explanation can lead to.
func storeStep(s storeSet, in linIn, out linOut) (bool, any) {
	switch in.op {
	case "state":
		b := storeStates[out.state]
		return s&b != 0, b.reach()
	case "connect":
		switch {
		case out.unknown:
			return true, s | s.afterConnect()
		case out.code != "":
			refused := s & (stFailed | stDisconnecting)
			return refused != 0, refused.reach()
		}
		n := s.afterConnect()
		return n != 0, n
	case "disconnect":
		switch {
		case out.unknown:
			return true, s | s.afterDisconnect()
		case out.code != "":
			refused := s & (stDisconnected | stDisconnecting)
			return refused != 0, refused.reach()
		}
		n := s.afterDisconnect()
		return n != 0, n
	}
	return false, s
}

func zeroOf(v any) any {
	switch v.(type) {
	case string:
		return ""
	case storeSet:
		return stDisconnected
	}
	return keyState{}
}

// history records operations with times on one monotonic clock.
type history struct {
	mu    sync.Mutex
	start time.Time
	ops   []porcupine.Operation
	calls int64 // API calls recorded (a split ListAliases counts once)
	next  int   // next client id
	// unexpected counts definite failures the model does not explain,
	// by operation and code.
	unexpected map[string]int
	// classes counts failures by how they were classified.
	classes map[string]int
}

func (h *history) now() int64 { return int64(time.Since(h.start)) }

func (h *history) clientID() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.next++
	return h.next - 1
}

func (h *history) add(ops ...porcupine.Operation) {
	h.mu.Lock()
	h.ops = append(h.ops, ops...)
	h.calls++
	for _, op := range ops {
		in, out := op.Input.(linIn), op.Output.(linOut)
		if out.code != "" && !linExpected[in.op][out.code] {
			h.unexpected[in.op+" "+out.code]++
		}
	}
	h.mu.Unlock()
}

func (h *history) count(class string) {
	h.mu.Lock()
	h.classes[class]++
	h.mu.Unlock()
}

// linWorkload is what the clients of A2 operate on.
type linWorkload struct {
	keys    []string // registers
	aliases []string // alias names
	targets []string // keys aliases point to
	stores  []string // custom key store ids
}

// Failure classes of linClassify.
const (
	notSent  = "not sent"       // dial failed: the request never left the client
	answered = "answered (4xx)" // kmsd answered a definite error
	unknown  = "unknown"        // the request may have taken effect
)

// linClassify says what a failed call tells about its effect.
//
//   - A dial error (connection refused by a killed node, dial timeout): the
//     request was never written, so it had no effect. A request written on
//     a kept-alive connection that then breaks is not a dial error.
//   - A 4xx answer: kmsd answers one only from a check made before its
//     transaction or inside it, and an error returned from the transaction
//     function discards its writes (storage.Store.Update: "If fn returns an
//     error … nothing it wrote is kept"). The alias operations
//     (internal/kms/createalias.go, updatealias.go, deletealias.go:
//     catalog CreateAlias, PutAlias, DeleteAlias) answer NotFound or
//     AlreadyExists from a read before their transaction (writing nothing)
//     or from inside it; the key store operations (internal/keystore
//     Connect, Disconnect) their StateError from the record read from the
//     database (getFresh, writing nothing) or from m.set's function.
//   - Anything else is unknown. kmsd does not tell a failure before commit
//     from an unknown commit on the wire: every storage error, a refused
//     BEGIN as much as storage.ErrCommitUnknown (internal/storage/postgres
//     resolve), becomes KMSInternalException 500, or DependencyTimeoutException
//     503 when it ran out of time (internal/kms/service.go internal,
//     internal/server/handler.go wireError), and a 500 can even
//     follow a commit (handler.go: an audit record whose sync failed after
//     the change was made). A timeout, a reset or EOF after the request
//     was written, and a node killed mid-call are unknown as well.
func linClassify(err error) string {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "dial" {
		return notSent
	}
	var re *smithyhttp.ResponseError
	if errors.As(err, &re) && re.HTTPStatusCode() >= 400 && re.HTTPStatusCode() < 500 {
		return answered
	}
	return unknown
}

// linClient runs random control-plane operations on random nodes, paced at
// one per interval, until stop closes, recording each in h. Every object
// (key, alias, key store) is picked with the same probability, so the
// partitions are about the same size; one call in 32 is a ListAliases.
// The client never retries: each attempt is an operation of its own, and
// after an attempt of unknown outcome the client goes on under a new
// client id, the old one's operation staying open.
func linClient(c *cluster, stop <-chan struct{}, h *history, w linWorkload, rng *mrand.Rand, seq *atomic.Int64, interval time.Duration) {
	clients := make([]*kms.Client, len(c.nodes))
	for i, n := range c.nodes {
		// No retries at all (not even e2etest.ClosedConnRetryer's): a
		// write is never sent twice behind the recorder's back.
		clients[i] = kms.New(kms.Options{
			Region:       region,
			BaseEndpoint: aws.String(n.endpoint),
			Credentials:  credentials.StaticCredentialsProvider{Value: c.creds},
			Retryer:      aws.NopRetryer{},
			HTTPClient:   &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4, DialContext: (&net.Dialer{Timeout: time.Second}).DialContext}},
		})
	}
	id := h.clientID()
	objects := len(w.keys) + len(w.aliases) + len(w.stores)
	next := time.Now()
	for {
		if d := time.Until(next); d > 0 {
			select {
			case <-stop:
				return
			case <-time.After(d):
			}
		}
		select {
		case <-stop:
			return
		default:
		}
		next = time.Now().Add(interval)
		ni := rng.IntN(len(c.nodes))
		cl, node := clients[ni], c.nodes[ni].id
		in := linIn{node: node, call: seq.Add(1)}
		switch o := rng.IntN(objects); {
		case len(w.aliases) > 0 && rng.IntN(32) == 0:
			in.kind, in.op = kindAlias, "list"
		case o < len(w.keys):
			in.kind, in.part = kindKey, w.keys[o]
			switch r := rng.IntN(10); {
			case r < 5:
				in.op = "describe"
			case r < 7:
				in.op = "disable"
			case r < 9:
				in.op = "enable"
			default:
				in.op, in.value = "desc", fmt.Sprint("d", in.call)
			}
		case o < len(w.keys)+len(w.aliases):
			in.kind, in.part = kindAlias, w.aliases[o-len(w.keys)]
			switch r := rng.IntN(10); {
			case r < 4:
				in.op = "read"
			case r < 6:
				in.op, in.value = "create", w.targets[rng.IntN(len(w.targets))]
			case r < 8:
				in.op, in.value = "update", w.targets[rng.IntN(len(w.targets))]
			default:
				in.op = "delete"
			}
		default:
			in.kind, in.part = kindStore, w.stores[o-len(w.keys)-len(w.aliases)]
			switch r := rng.IntN(10); {
			case r < 5:
				in.op = "state"
			case r < 8:
				in.op = "connect"
			default:
				in.op = "disconnect"
			}
		}
		call := h.now()
		// Not cancelled when the run ends: a call in flight finishes, so
		// that the end of the run makes no unknown outcomes.
		octx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
		out, listed, err := linDo(octx, cl, in, w)
		cancel()
		ret := h.now()
		read := in.op == "describe" || in.op == "read" || in.op == "list" || in.op == "state"
		if err != nil {
			class := linClassify(err)
			h.count(class)
			switch {
			case class == notSent:
				continue
			case class == answered:
				out.code = errCode(err)
			case read:
				continue // a failed read tells nothing and changed nothing
			default:
				out.unknown = true
				ret = math.MaxInt64
			}
		}
		if in.op == "list" {
			if listed == nil {
				continue // truncated: not one answer
			}
			ops := make([]porcupine.Operation, 0, len(w.aliases))
			for _, a := range w.aliases {
				ain, aout := in, linOut{target: listed[a]}
				ain.part = a
				if aout.target == "" {
					aout.code = "NotFoundException"
				}
				ops = append(ops, porcupine.Operation{ClientId: id, Input: ain, Call: call, Output: aout, Return: ret})
			}
			h.add(ops...)
			continue
		}
		h.add(porcupine.Operation{ClientId: id, Input: in, Call: call, Output: out, Return: ret})
		if out.unknown {
			id = h.clientID() // this client's operation is still open
		}
	}
}

// linDo makes in's API call. For a ListAliases it returns the targets of
// the workload's aliases that exist (nil when the answer was truncated).
func linDo(ctx context.Context, cl *kms.Client, in linIn, w linWorkload) (linOut, map[string]string, error) {
	var out linOut
	var err error
	switch in.op {
	case "describe":
		var r *kms.DescribeKeyOutput
		if r, err = cl.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(in.part)}); err == nil {
			out.disabled = r.KeyMetadata.KeyState == types.KeyStateDisabled
			out.desc = aws.ToString(r.KeyMetadata.Description)
		}
	case "enable":
		_, err = cl.EnableKey(ctx, &kms.EnableKeyInput{KeyId: aws.String(in.part)})
	case "disable":
		_, err = cl.DisableKey(ctx, &kms.DisableKeyInput{KeyId: aws.String(in.part)})
	case "desc":
		_, err = cl.UpdateKeyDescription(ctx, &kms.UpdateKeyDescriptionInput{KeyId: aws.String(in.part), Description: aws.String(in.value)})
	case "read":
		var r *kms.DescribeKeyOutput
		if r, err = cl.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(in.part)}); err == nil {
			out.target = aws.ToString(r.KeyMetadata.KeyId)
		}
	case "list":
		var r *kms.ListAliasesOutput
		if r, err = cl.ListAliases(ctx, &kms.ListAliasesInput{Limit: aws.Int32(100)}); err != nil || r.Truncated {
			return out, nil, err
		}
		listed := map[string]string{}
		for _, a := range r.Aliases {
			listed[aws.ToString(a.AliasName)] = aws.ToString(a.TargetKeyId)
		}
		return out, listed, nil
	case "create":
		_, err = cl.CreateAlias(ctx, &kms.CreateAliasInput{AliasName: aws.String(in.part), TargetKeyId: aws.String(in.value)})
	case "update":
		_, err = cl.UpdateAlias(ctx, &kms.UpdateAliasInput{AliasName: aws.String(in.part), TargetKeyId: aws.String(in.value)})
	case "delete":
		_, err = cl.DeleteAlias(ctx, &kms.DeleteAliasInput{AliasName: aws.String(in.part)})
	case "state":
		var r *kms.DescribeCustomKeyStoresOutput
		if r, err = cl.DescribeCustomKeyStores(ctx, &kms.DescribeCustomKeyStoresInput{CustomKeyStoreId: aws.String(in.part)}); err == nil {
			if len(r.CustomKeyStores) != 1 {
				return out, nil, fmt.Errorf("DescribeCustomKeyStores(%s): %d stores", in.part, len(r.CustomKeyStores))
			}
			out.state = r.CustomKeyStores[0].ConnectionState
		}
	case "connect":
		_, err = cl.ConnectCustomKeyStore(ctx, &kms.ConnectCustomKeyStoreInput{CustomKeyStoreId: aws.String(in.part)})
	case "disconnect":
		_, err = cl.DisconnectCustomKeyStore(ctx, &kms.DisconnectCustomKeyStoreInput{CustomKeyStoreId: aws.String(in.part)})
	}
	return out, nil, err
}

// linConfig is one A2 run.
type linConfig struct {
	nodes                 int
	dur                   time.Duration
	keys, aliases, stores int
	// rate is each client's pace, in calls per second.
	rate     float64
	schedule []fault
}

// TestA2CheckerRejects: the model and porcupine reject short histories
// that are not linearizable — a stale description, an alias read absent
// after its create returned, a store read DISCONNECTED after a connect
// returned, a connect answered success while DISCONNECTING — and accept
// their linearizable neighbours, including writes of unknown outcome; the
// visualization of a rejected history is written. (A checker that accepts
// everything would make A2 meaningless.)
func TestA2CheckerRejects(t *testing.T) {
	op := func(part string, kind linKind, o, value string, call, ret int64, out linOut) porcupine.Operation {
		if out.unknown {
			ret = math.MaxInt64
		}
		return porcupine.Operation{ClientId: int(call), Input: linIn{part: part, kind: kind, op: o, value: value}, Call: call, Output: out, Return: ret}
	}
	key := func(o, v string, call, ret int64, out linOut) porcupine.Operation {
		return op("k", kindKey, o, v, call, ret, out)
	}
	alias := func(o, v string, call, ret int64, out linOut) porcupine.Operation {
		return op("alias/a", kindAlias, o, v, call, ret, out)
	}
	store := func(o string, call, ret int64, out linOut) porcupine.Operation {
		return op("cks-1", kindStore, o, "", call, ret, out)
	}
	st := func(s types.ConnectionStateType) linOut { return linOut{state: s} }
	invalid := linOut{code: "CustomKeyStoreInvalidStateException"}
	cases := []struct {
		name string
		ops  []porcupine.Operation
		want porcupine.CheckResult
	}{
		{"stale description", []porcupine.Operation{key("desc", "d1", 0, 10, linOut{}), key("desc", "d2", 20, 30, linOut{}),
			key("describe", "", 40, 50, linOut{desc: "d1"})}, porcupine.Illegal},
		{"description read while written", []porcupine.Operation{key("desc", "d1", 0, 10, linOut{}), key("desc", "d2", 20, 45, linOut{}),
			key("describe", "", 40, 50, linOut{desc: "d1"})}, porcupine.Ok},
		{"unknown disable may land late", []porcupine.Operation{key("disable", "", 0, 0, linOut{unknown: true}),
			key("describe", "", 20, 30, linOut{}), key("describe", "", 40, 50, linOut{disabled: true})}, porcupine.Ok},
		{"disable undone", []porcupine.Operation{key("disable", "", 0, 10, linOut{}),
			key("describe", "", 20, 30, linOut{disabled: true}), key("describe", "", 40, 50, linOut{})}, porcupine.Illegal},
		{"alias absent after create", []porcupine.Operation{alias("create", "k1", 0, 10, linOut{}),
			alias("read", "", 20, 30, linOut{code: "NotFoundException"})}, porcupine.Illegal},
		{"alias listed after create", []porcupine.Operation{alias("create", "k1", 0, 10, linOut{}),
			alias("list", "", 20, 30, linOut{target: "k1"})}, porcupine.Ok},
		{"two deletes succeed", []porcupine.Operation{alias("create", "k1", 0, 10, linOut{}),
			alias("delete", "", 20, 30, linOut{}), alias("delete", "", 20, 30, linOut{})}, porcupine.Illegal},
		{"store DISCONNECTED after connect", []porcupine.Operation{store("connect", 0, 10, linOut{}),
			store("state", 20, 30, st(types.ConnectionStateTypeDisconnected))}, porcupine.Illegal},
		{"store life cycle", []porcupine.Operation{store("connect", 0, 10, linOut{}),
			store("state", 20, 30, st(types.ConnectionStateTypeConnecting)), store("state", 40, 50, st(types.ConnectionStateTypeConnected)),
			store("disconnect", 60, 70, linOut{}), store("connect", 80, 90, invalid),
			store("state", 100, 110, st(types.ConnectionStateTypeDisconnected)), store("disconnect", 120, 130, invalid)}, porcupine.Ok},
		{"connect success while DISCONNECTING", []porcupine.Operation{store("connect", 0, 10, linOut{}),
			store("disconnect", 20, 30, linOut{}), store("connect", 40, 50, linOut{}),
			store("state", 60, 70, st(types.ConnectionStateTypeDisconnecting))}, porcupine.Illegal},
		{"unknown disconnect", []porcupine.Operation{store("connect", 0, 10, linOut{}), store("disconnect", 20, 0, linOut{unknown: true}),
			store("state", 40, 50, st(types.ConnectionStateTypeConnected)), store("state", 60, 70, st(types.ConnectionStateTypeDisconnected))}, porcupine.Ok},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res, info := porcupine.CheckOperationsVerbose(linModel(), c.ops, 5*time.Second)
			if res != c.want {
				t.Fatalf("porcupine: %s, want %s", res, c.want)
			}
			if res == porcupine.Illegal {
				path := filepath.Join(t.TempDir(), "v.html")
				if err := porcupine.VisualizePath(linModel(), info, path); err != nil {
					t.Fatalf("visualization: %v", err)
				}
			}
		})
	}
}

// TestA2BaselineKeys: the A2 key workload and checker on a single node
// without faults must be linearizable: the control for the model and the
// recorder (a checker that rejects a correct history would make A2
// meaningless).
func TestA2BaselineKeys(t *testing.T) {
	runLin(t, linConfig{nodes: 1, dur: 5 * time.Second, keys: 4, rate: 40}, mrand.New(mrand.NewPCG(seed(t), 2)))
}

// TestA2BaselineAliases: the A2 alias workload on a single node without
// faults must be linearizable (before every alias read-modify-write ran in
// one transaction, two concurrent DeleteAlias calls both succeeded here).
func TestA2BaselineAliases(t *testing.T) {
	runLin(t, linConfig{nodes: 1, dur: 5 * time.Second, aliases: 3, rate: 40}, mrand.New(mrand.NewPCG(seed(t), 2)))
}

// TestA2Linearizability (MULTINODE §8 A2): 8 clients run DescribeKey,
// EnableKey, DisableKey, UpdateKeyDescription on keys, CreateAlias,
// UpdateAlias, DeleteAlias, DescribeKey("alias/…") and ListAliases on
// aliases, and DescribeCustomKeyStores, ConnectCustomKeyStore and
// DisconnectCustomKeyStore on external key stores (a real xks-proxy), each
// at a fixed pace, against random nodes of three while the fault schedule
// kills nodes (kill -9), restarts PostgreSQL in immediate mode and cuts
// one node from the database (blackhole); porcupine must find the history
// linearizable in every partition within 60 s. On failure the HTML
// visualization is written (path logged; directory KMSD_TEST_ARTIFACTS or
// the system's temporary one) and a stale description read, if there is
// one, is shown.
//
// The clients are paced (a closed loop ran ~1,000 calls/s on two cores,
// partitions of thousands of operations with hundreds of unknown outcome,
// which porcupine cannot decide in a minute) and every object is equally
// likely, so each partition holds a few hundred operations.
//
// CI: 20 s, 6 keys, 4 aliases, 2 stores, 1 kill, 1 blackhole, 1 PostgreSQL
// restart, ≥ 1,200 calls. KMSD_MULTINODE_FULL=1: 60 s, 16 keys, 8
// aliases, 2 stores, 2 kills, 1 PostgreSQL restart, 2 × 3 s blackholes,
// ≥ 5,000 calls.
func TestA2Linearizability(t *testing.T) {
	cfg := linConfig{nodes: 3, dur: 20 * time.Second, keys: 6, aliases: 4, stores: 2, rate: 15}
	least := int64(1200)
	if full() {
		// 18 calls/s per client: 8,640 at most, ~6,900 made on a loaded
		// two-core machine, for the ≥ 5,000 of MULTINODE §8.
		cfg.dur, cfg.keys, cfg.aliases, cfg.rate = 60*time.Second, 16, 8, 18
		least = 5000
	}
	rng := mrand.New(mrand.NewPCG(seed(t), 2))
	// The schedule: faults spread over the run, none in its last 3 s.
	slot := func(lo, hi float64) time.Duration {
		return time.Duration((lo + rng.Float64()*(hi-lo)) * float64(cfg.dur))
	}
	cfg.schedule = []fault{
		{at: slot(0.1, 0.3), what: "kill", node: rng.IntN(3), dur: time.Second},
		{at: slot(0.35, 0.5), what: "blackhole", node: rng.IntN(3), dur: 3 * time.Second},
		{at: slot(0.55, 0.75), what: "pg-restart"},
	}
	if full() {
		cfg.schedule = append(cfg.schedule,
			fault{at: slot(0.78, 0.85), what: "kill", node: rng.IntN(3), dur: time.Second},
			fault{at: slot(0.86, 0.9), what: "blackhole", node: rng.IntN(3), dur: 3 * time.Second})
	}
	sort.Slice(cfg.schedule, func(i, j int) bool { return cfg.schedule[i].at < cfg.schedule[j].at })
	h := runLin(t, cfg, rng)
	if h.calls < least {
		t.Errorf("only %d calls recorded, want ≥ %d", h.calls, least)
	}
}

// runLin runs the A2 workload on a new cluster with the fault schedule,
// checks the history with porcupine and returns it.
func runLin(t *testing.T, cfg linConfig, rng *mrand.Rand) *history {
	pg := startPG(t)
	o := clusterOpts{nodes: cfg.nodes}
	var proxy interface{ Port() string }
	if cfg.stores > 0 {
		p, ca := startXKSProxy(t)
		proxy = p
		o.extra = []string{"--xks-ca-bundle", ca}
		o.env = func(int) []string { return []string{"KMSD_KEYSTORE_CONNECT_DELAY=100ms"} }
	}
	c := newCluster(t, pg, o)
	setup := c.client(c.nodes[0])
	var w linWorkload
	ntargets := 0
	if cfg.aliases > 0 {
		ntargets = 3
	}
	for i := range cfg.keys + ntargets {
		out, err := setup.CreateKey(t.Context(), &kms.CreateKeyInput{})
		if err != nil {
			t.Fatal(err)
		}
		if i < cfg.keys {
			w.keys = append(w.keys, aws.ToString(out.KeyMetadata.KeyId))
		} else {
			w.targets = append(w.targets, aws.ToString(out.KeyMetadata.KeyId))
		}
	}
	for i := range cfg.aliases {
		w.aliases = append(w.aliases, fmt.Sprintf("alias/lin-%d", i))
	}
	// The stores share the proxy: endpoint and path must differ per store,
	// so one is named by localhost and the other by 127.0.0.1 (the proxy's
	// development certificate holds both).
	hosts := []string{"localhost", "127.0.0.1"}
	for i := range cfg.stores {
		out, err := setup.CreateCustomKeyStore(t.Context(), &kms.CreateCustomKeyStoreInput{
			CustomKeyStoreName:               aws.String(fmt.Sprint("lin-xks-", i)),
			CustomKeyStoreType:               types.CustomKeyStoreTypeExternalKeyStore,
			XksProxyConnectivity:             types.XksProxyConnectivityTypePublicEndpoint,
			XksProxyUriEndpoint:              aws.String("https://" + hosts[i%len(hosts)] + ":" + proxy.Port()),
			XksProxyUriPath:                  aws.String("/kms/xks/v1"),
			XksProxyAuthenticationCredential: &types.XksProxyAuthenticationCredentialType{AccessKeyId: aws.String(xksAKID), RawSecretAccessKey: aws.String(xksSecret)},
		})
		if err != nil {
			t.Fatal(err)
		}
		w.stores = append(w.stores, aws.ToString(out.CustomKeyStoreId))
	}
	for _, f := range cfg.schedule {
		t.Logf("schedule: %s", f)
	}

	h := &history{start: time.Now(), unexpected: map[string]int{}, classes: map[string]int{}}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var seq atomic.Int64
	interval := time.Duration(float64(time.Second) / cfg.rate)
	for i := range 8 {
		r := mrand.New(mrand.NewPCG(rng.Uint64(), uint64(i)))
		wg.Go(func() { linClient(c, stop, h, w, r, &seq, interval) })
	}
	ctx, cancel := context.WithTimeout(t.Context(), cfg.dur)
	defer cancel()
	c.runFaults(ctx, h.start, cfg.schedule)
	<-ctx.Done()
	close(stop)
	wg.Wait()

	var pending, failed int
	for _, op := range h.ops {
		if op.Return == math.MaxInt64 {
			pending++
		} else if op.Output.(linOut).code != "" {
			failed++
		}
	}
	model := linModel()
	parts := model.Partition(h.ops)
	var most, mostPending int
	for _, p := range parts {
		most = max(most, len(p))
		n := 0
		for _, op := range p {
			if op.Return == math.MaxInt64 {
				n++
			}
		}
		mostPending = max(mostPending, n)
	}
	t.Logf("history: %d calls, %d operations in %d partitions (largest %d operations, at most %d of unknown outcome in one) in %s; %d of unknown outcome, %d definite AWS errors; failures by class %v",
		h.calls, len(h.ops), len(parts), most, mostPending, cfg.dur, pending, failed, h.classes)
	if len(h.unexpected) > 0 {
		t.Errorf("definite failures the model does not explain (operation and code: count): %v", h.unexpected)
	}
	for _, n := range c.nodes {
		if n.Died() != 0 {
			t.Errorf("%s exited on its own %d times", n.id, n.Died())
		}
	}

	t0 := time.Now()
	res, info := porcupine.CheckOperationsVerbose(model, h.ops, 60*time.Second)
	t.Logf("porcupine: %s in %s", res, time.Since(t0).Round(time.Millisecond))
	if res != porcupine.Ok {
		path := filepath.Join(artifactDir(), fmt.Sprintf("kmsd-a2-linearizability-%d.html", time.Now().UnixNano()))
		if err := porcupine.VisualizePath(model, info, path); err != nil {
			t.Errorf("write visualization: %v", err)
		}
		t.Errorf("control-plane history is not linearizable (porcupine %s); visualization: %s", res, path)
		// Which partitions: each checked alone.
		one := model
		one.Partition = nil
		var bad []string
		for _, part := range parts {
			if r := porcupine.CheckOperationsTimeout(one, part, 10*time.Second); r != porcupine.Ok {
				bad = append(bad, fmt.Sprintf("%s (%d ops): %s", part[0].Input.(linIn).part, len(part), r))
			}
		}
		t.Errorf("partitions not linearizable: %v", bad)
		shown := 0
		for _, part := range parts {
			if shown == 3 {
				break
			}
			if w := firstViolation(one, part); w != "" {
				shown++
				t.Errorf("the shortest non-linearizable prefix (by call time) of %s ends:\n%s", part[0].Input.(linIn).part, w)
			}
		}
		if w := staleDescription(h.ops); w != "" {
			t.Errorf("a stale read: %s", w)
		}
	}
	return h
}

// staleDescription finds a DescribeKey that returned a description
// overwritten before it was called: the write of d returned, then a write
// of another description was called and returned, and only then was the
// read called, yet it returned d. Descriptions are unique, so this is a
// plain stale read, shown with the nodes involved.
func staleDescription(ops []porcupine.Operation) string {
	writes := map[string]porcupine.Operation{} // description -> its write
	for _, op := range ops {
		if in := op.Input.(linIn); in.op == "desc" {
			writes[in.value] = op
		}
	}
	for _, r := range ops {
		in, out := r.Input.(linIn), r.Output.(linOut)
		if in.op != "describe" || out.desc == "" {
			continue
		}
		w, ok := writes[out.desc]
		if !ok {
			continue
		}
		for _, w2 := range ops {
			in2 := w2.Input.(linIn)
			if in2.op == "desc" && in2.part == in.part && in2.value != out.desc && w2.Return != math.MaxInt64 &&
				w2.Call > w.Return && w2.Return < r.Call {
				return fmt.Sprintf("key %s: UpdateKeyDescription(%q) on %s returned at %s; UpdateKeyDescription(%q) on %s ran %s–%s; DescribeKey on %s called at %s returned %q",
					in.part, out.desc, w.Input.(linIn).node, time.Duration(w.Return), in2.value, in2.node,
					time.Duration(w2.Call), time.Duration(w2.Return), in.node, time.Duration(r.Call), out.desc)
			}
		}
	}
	return ""
}

// firstViolation finds the shortest prefix (ordered by call time) of a
// partition's history that is not linearizable and describes its last
// operations, the violation being at the end; "" when the partition is
// linearizable or the search runs out of time.
func firstViolation(m porcupine.Model, part []porcupine.Operation) string {
	ops := append([]porcupine.Operation(nil), part...)
	sort.Slice(ops, func(i, j int) bool { return ops[i].Call < ops[j].Call })
	if porcupine.CheckOperationsTimeout(m, ops, 5*time.Second) != porcupine.Illegal {
		return ""
	}
	lo, hi := 1, len(ops)
	for lo < hi {
		mid := (lo + hi) / 2
		if porcupine.CheckOperationsTimeout(m, ops[:mid], 5*time.Second) == porcupine.Illegal {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	var b strings.Builder
	for _, op := range ops[max(0, lo-12):lo] {
		r := "(unknown)"
		if op.Return != math.MaxInt64 {
			r = time.Duration(op.Return).String()
		}
		fmt.Fprintf(&b, "  client %d %s..%s %s\n", op.ClientId, time.Duration(op.Call), r, m.DescribeOperation(op.Input, op.Output))
	}
	return b.String()
}
