package multinode

import (
	"context"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
)

// The control-plane model checked by porcupine, partitioned by key id and
// by alias name (P-compositionality).
//
// A key is a register {disabled, description}: EnableKey, DisableKey and
// UpdateKeyDescription write it, DescribeKey reads it. An alias is a
// register holding its target key id ("" when absent): CreateAlias,
// UpdateAlias and DeleteAlias write it and report NotFoundException /
// AlreadyExistsException from its state, DescribeKey("alias/…") reads it.
// A write whose outcome is unknown (a transport error, timeout or 5xx) is
// recorded with an infinite return time: porcupine may place it anywhere
// after its call, including after every other operation, which is the same
// as it never having taken effect.

type keyState struct {
	disabled bool
	desc     string
}

type linIn struct {
	part   string // key id or alias name
	op     string // describe, enable, disable, desc | read, create, update, delete
	alias  bool
	value  string // description or alias target
	node   string
	client int
}

type linOut struct {
	unknown  bool
	code     string // AWS error code of a definite failure ("" = success)
	disabled bool
	desc     string
	target   string
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
			if !in.alias {
				s, _ := state.(keyState)
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
			s, _ := state.(string)
			switch in.op {
			case "read":
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
				return out.code == "" && s == "", in.value
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
				return out.code == "" && s != "", in.value
			case "delete":
				switch {
				case out.unknown:
					return true, ""
				case out.code == "NotFoundException":
					return s == "", s
				}
				return out.code == "" && s != "", ""
			}
			return false, s
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
			case in.op == "read":
				res = out.target
			}
			return fmt.Sprintf("%s %s(%s) on %s -> %s", in.part, in.op, in.value, in.node, res)
		},
		DescribeState: func(state any) string { return fmt.Sprintf("%+v", state) },
	}
}

func zeroOf(v any) any {
	if _, ok := v.(string); ok {
		return ""
	}
	return keyState{}
}

// history records operations with times on one monotonic clock.
type history struct {
	mu    sync.Mutex
	start time.Time
	ops   []porcupine.Operation
	next  int // next client id
}

func (h *history) now() int64 { return int64(time.Since(h.start)) }

func (h *history) clientID() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.next++
	return h.next - 1
}

func (h *history) add(op porcupine.Operation) {
	h.mu.Lock()
	h.ops = append(h.ops, op)
	h.mu.Unlock()
}

// linWorkload is what the clients of A2 operate on.
type linWorkload struct {
	keys    []string // registers
	aliases []string // alias names
	targets []string // keys aliases point to
}

// linClient runs random control-plane operations on random nodes until ctx
// ends, recording each in h.
func linClient(ctx context.Context, c *cluster, h *history, w linWorkload, rng *mrand.Rand, descs *int64, mu *sync.Mutex) {
	clients := make([]*kms.Client, len(c.nodes))
	for i, n := range c.nodes {
		clients[i] = c.client(n)
	}
	id := h.clientID()
	for ctx.Err() == nil {
		ni := rng.IntN(len(c.nodes))
		cl, node := clients[ni], c.nodes[ni].id
		var in linIn
		if len(w.aliases) == 0 || len(w.keys) > 0 && rng.IntN(3) < 2 {
			k := w.keys[rng.IntN(len(w.keys))]
			in = linIn{part: k, node: node, client: id}
			switch r := rng.IntN(10); {
			case r < 5:
				in.op = "describe"
			case r < 7:
				in.op = "disable"
			case r < 9:
				in.op = "enable"
			default:
				in.op = "desc"
				mu.Lock()
				*descs++
				in.value = fmt.Sprint("d", *descs)
				mu.Unlock()
			}
		} else {
			a := w.aliases[rng.IntN(len(w.aliases))]
			in = linIn{part: a, alias: true, node: node, client: id, value: w.targets[rng.IntN(len(w.targets))]}
			switch r := rng.IntN(10); {
			case r < 4:
				in.op, in.value = "read", ""
			case r < 6:
				in.op = "create"
			case r < 8:
				in.op = "update"
			default:
				in.op, in.value = "delete", ""
			}
		}
		call := h.now()
		octx, cancel := context.WithTimeout(ctx, 4*time.Second)
		out, err := linDo(octx, cl, in)
		cancel()
		ret := h.now()
		read := in.op == "describe" || in.op == "read"
		if ctx.Err() != nil && err != nil {
			// The run ended mid-call: a write may still have taken effect.
			if !read {
				h.add(porcupine.Operation{ClientId: id, Input: in, Call: call, Output: linOut{unknown: true}, Return: math.MaxInt64})
			}
			return
		}
		if err != nil {
			code := errCode(err)
			definite := refused(err) || (in.alias && (code == "NotFoundException" || code == "AlreadyExistsException"))
			switch {
			case definite && refused(err):
				continue // never reached the node: no effect, nothing to record
			case definite:
				out.code = code
			case read:
				continue // a failed read tells nothing
			default:
				out.unknown = true
				ret = math.MaxInt64
			}
		}
		h.add(porcupine.Operation{ClientId: id, Input: in, Call: call, Output: out, Return: ret})
		if out.unknown {
			id = h.clientID() // this client's operation is still open
		}
	}
}

func linDo(ctx context.Context, cl *kms.Client, in linIn) (linOut, error) {
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
	case "create":
		_, err = cl.CreateAlias(ctx, &kms.CreateAliasInput{AliasName: aws.String(in.part), TargetKeyId: aws.String(in.value)})
	case "update":
		_, err = cl.UpdateAlias(ctx, &kms.UpdateAliasInput{AliasName: aws.String(in.part), TargetKeyId: aws.String(in.value)})
	case "delete":
		_, err = cl.DeleteAlias(ctx, &kms.DeleteAliasInput{AliasName: aws.String(in.part)})
	}
	return out, err
}

// TestA2Linearizability (MULTINODE §8 A2): 8 clients run DescribeKey,
// EnableKey, DisableKey, UpdateKeyDescription on keys and CreateAlias,
// UpdateAlias, DeleteAlias and DescribeKey("alias/…") on aliases against
// random nodes of three while the fault schedule kills nodes (kill -9),
// restarts PostgreSQL in immediate mode and cuts one node from the database
// (blackhole); porcupine must find the history linearizable in every
// partition. On failure the HTML visualization is written (path logged;
// directory KMSD_TEST_ARTIFACTS or the system's temporary one).
//
// CI: 20 s, 6 keys, 4 aliases, 1 kill, 1 PostgreSQL restart, 1 blackhole.
// KMSD_MULTINODE_FULL=1: 60 s, 16 keys, 8 aliases, 2 kills, 1 PostgreSQL
// restart, 2 × 3 s blackholes, ≥ 5,000 operations.
// TestA2BaselineKeys: the A2 key workload and checker on a single node
// without faults must be linearizable: the control for the model and the
// recorder (a checker that rejects a correct history would make A2
// meaningless).
func TestA2BaselineKeys(t *testing.T) {
	runLin(t, 1, 5*time.Second, 4, 0, nil, mrand.New(mrand.NewPCG(seed(t), 2)))
}

// TestA2BaselineAliases: the A2 alias workload on a single node without
// faults must be linearizable. On main it is not: DeleteAlias and
// UpdateAlias check the (cached) alias and then delete or put it outside
// one transaction, so two concurrent DeleteAlias calls both succeed and an
// UpdateAlias racing a DeleteAlias can put the alias back (MULTINODE §4.4:
// every read-modify-write moves into Update).
func TestA2BaselineAliases(t *testing.T) {
	runLin(t, 1, 5*time.Second, 0, 3, nil, mrand.New(mrand.NewPCG(seed(t), 2)))
}

// TestA2Linearizability (MULTINODE §8 A2): 8 clients run DescribeKey,
// EnableKey, DisableKey, UpdateKeyDescription on keys and CreateAlias,
// UpdateAlias, DeleteAlias and DescribeKey("alias/…") on aliases against
// random nodes of three while the fault schedule kills nodes (kill -9),
// restarts PostgreSQL in immediate mode and cuts one node from the database
// (blackhole); porcupine must find the history linearizable in every
// partition. On failure the HTML visualization is written (path logged;
// directory KMSD_TEST_ARTIFACTS or the system's temporary one) and a stale
// description read, if there is one, is shown.
//
// CI: 20 s, 6 keys, 4 aliases, 1 kill, 1 PostgreSQL restart, 1 blackhole.
// KMSD_MULTINODE_FULL=1: 60 s, 16 keys, 8 aliases, 2 kills, 1 PostgreSQL
// restart, 2 × 3 s blackholes, ≥ 5,000 operations.
func TestA2Linearizability(t *testing.T) {
	pendingFix(t, "porcupine decides the faulted history within its budget: with caches fed by the change feed it answers Unknown after 60 s (partitions of ~4,000 operations, ~600 of unknown outcome), not Illegal as before")
	dur, nkeys, naliases := 20*time.Second, 6, 4
	if full() {
		dur, nkeys, naliases = 60*time.Second, 16, 8
	}
	rng := mrand.New(mrand.NewPCG(seed(t), 2))
	// The schedule: faults spread over the run, none in its last 3 s.
	slot := func(lo, hi float64) time.Duration {
		return time.Duration((lo + rng.Float64()*(hi-lo)) * float64(dur))
	}
	schedule := []fault{
		{at: slot(0.1, 0.3), what: "kill", node: rng.IntN(3), dur: time.Second},
		{at: slot(0.35, 0.5), what: "blackhole", node: rng.IntN(3), dur: 3 * time.Second},
		{at: slot(0.55, 0.75), what: "pg-restart"},
	}
	if full() {
		schedule = append(schedule,
			fault{at: slot(0.78, 0.85), what: "kill", node: rng.IntN(3), dur: time.Second},
			fault{at: slot(0.86, 0.9), what: "blackhole", node: rng.IntN(3), dur: 3 * time.Second})
	}
	sort.Slice(schedule, func(i, j int) bool { return schedule[i].at < schedule[j].at })
	least := 500
	if full() {
		least = 5000
	}
	h := runLin(t, 3, dur, nkeys, naliases, schedule, rng)
	if len(h.ops) < least {
		t.Errorf("only %d operations recorded, want ≥ %d", len(h.ops), least)
	}
}

// runLin runs the A2 workload on a new cluster of nodes with the fault
// schedule, checks the history with porcupine and returns it.
func runLin(t *testing.T, nodes int, dur time.Duration, nkeys, naliases int, schedule []fault, rng *mrand.Rand) *history {
	pg := startPG(t)
	c := newCluster(t, pg, clusterOpts{nodes: nodes})
	setup := c.client(c.nodes[0])
	var w linWorkload
	ntargets := 0
	if naliases > 0 {
		ntargets = 3
	}
	for i := range nkeys + ntargets {
		out, err := setup.CreateKey(t.Context(), &kms.CreateKeyInput{})
		if err != nil {
			t.Fatal(err)
		}
		if i < nkeys {
			w.keys = append(w.keys, aws.ToString(out.KeyMetadata.KeyId))
		} else {
			w.targets = append(w.targets, aws.ToString(out.KeyMetadata.KeyId))
		}
	}
	for i := range naliases {
		w.aliases = append(w.aliases, fmt.Sprintf("alias/lin-%d", i))
	}
	for _, f := range schedule {
		t.Logf("schedule: %s", f)
	}

	h := &history{start: time.Now()}
	ctx, cancel := context.WithTimeout(t.Context(), dur)
	defer cancel()
	var wg sync.WaitGroup
	var descs int64
	var descMu sync.Mutex
	for i := range 8 {
		r := mrand.New(mrand.NewPCG(rng.Uint64(), uint64(i)))
		wg.Go(func() { linClient(ctx, c, h, w, r, &descs, &descMu) })
	}
	c.runFaults(ctx, h.start, schedule)
	<-ctx.Done()
	wg.Wait()

	var pending, failed int
	for _, op := range h.ops {
		if op.Return == math.MaxInt64 {
			pending++
		} else if op.Output.(linOut).code != "" {
			failed++
		}
	}
	t.Logf("history: %d operations (%d of unknown outcome, %d definite AWS errors) in %s", len(h.ops), pending, failed, dur)
	for _, n := range c.nodes {
		if n.Died() != 0 {
			t.Errorf("%s exited on its own %d times", n.id, n.Died())
		}
	}

	model := linModel()
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
		for _, part := range model.Partition(h.ops) {
			if r := porcupine.CheckOperationsTimeout(one, part, 10*time.Second); r != porcupine.Ok {
				bad = append(bad, fmt.Sprintf("%s (%d ops): %s", part[0].Input.(linIn).part, len(part), r))
			}
		}
		t.Errorf("partitions not linearizable: %v", bad)
		shown := 0
		for _, part := range model.Partition(h.ops) {
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
