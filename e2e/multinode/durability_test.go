package multinode

import (
	"bytes"
	"context"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
)

// durLog is what A4's clients had acknowledged, and what they tried
// without learning the outcome.
type durLog struct {
	mu        sync.Mutex
	live      []string // acknowledged CreateKey: used by Encrypt and UpdateAlias
	doomed    []string // acknowledged CreateKey, to be scheduled for deletion
	scheduled map[string]bool
	// per alias: the last acknowledged target and every target of an
	// UpdateAlias whose outcome is unknown
	aliasAcked   map[string]string
	aliasUnknown map[string][]string
	blobs        []blob
	ops          map[string]int    // acknowledged operations by name
	created      map[string]string // key id -> which node acknowledged its CreateKey, and when
	lastAck      time.Time
}

type blob struct {
	key         string
	ciphertext  []byte
	plaintext   []byte
	node        string
	acknowledge time.Duration
}

// TestA4NoLostWrites (MULTINODE §8 A4): CreateKey, UpdateAlias,
// ScheduleKeyDeletion and Encrypt against random nodes while nodes are
// killed with kill -9 (and started again) and PostgreSQL is stopped in
// immediate mode and started again: afterwards every acknowledged key
// exists on every node, every acknowledged ScheduleKeyDeletion shows
// PendingDeletion on every node, every alias points at its last
// acknowledged target (or at one whose UpdateAlias had an unknown
// outcome), and every acknowledged ciphertext decrypts to its plaintext on
// every node. Checked twice: on the nodes as they run after the faults
// (their caches follow the other nodes' writes), and after every node is killed and started again,
// which shows what the database kept.
//
// CI: 25 s (and at least 5 s past the last fault), 2 kills, a reset of
// one node's database connections, one node frozen (SIGSTOP) for 2 s, 1
// PostgreSQL immediate stop/start, then the primary stopped for good
// (immediate) and its synchronous standby promoted (the nodes' URL lists
// both hosts, target_session_attrs=read-write). With
// KMSD_MULTINODE_FULL=1: 150 s, 10 kills (every ~8 s), a reset, a 3 s
// freeze, 2 PostgreSQL immediate stops/starts and the promotion at 130 s.
//
// The PostgreSQL faults found acknowledged writes that a promotion lost:
// a COMMIT interrupted by the crash was settled by its commit marker,
// visible on the restarted primary (recovered from its WAL) before the
// standby had it; storage/postgres now acknowledges only what the
// synchronous standby is proven to have.
func TestA4NoLostWrites(t *testing.T) {
	dur := 25 * time.Second
	if full() {
		dur = 150 * time.Second
	}
	rng := mrand.New(mrand.NewPCG(seed(t), 4))
	pg := startPG(t)
	c := newCluster(t, pg, clusterOpts{nodes: 3, standby: pg.StartStandby(t)})

	var schedule []fault
	if full() {
		for i := range 10 {
			schedule = append(schedule, fault{at: time.Duration(5+8*i)*time.Second + time.Duration(rng.IntN(2000))*time.Millisecond,
				what: "kill", node: rng.IntN(3), dur: time.Duration(500+rng.IntN(1500)) * time.Millisecond})
		}
		schedule = append(schedule,
			fault{at: 50 * time.Second, what: "reset", node: rng.IntN(3)},
			fault{at: 88 * time.Second, what: "pause", node: rng.IntN(3), dur: 3 * time.Second},
			fault{at: 95 * time.Second, what: "pg-stop", dur: 2 * time.Second},
			fault{at: 115 * time.Second, what: "pg-stop", dur: 2 * time.Second},
			fault{at: 130 * time.Second, what: "promote"})
	} else {
		schedule = []fault{
			{at: time.Duration(4000+rng.IntN(2000)) * time.Millisecond, what: "kill", node: rng.IntN(3), dur: time.Second},
			{at: time.Duration(10000+rng.IntN(2000)) * time.Millisecond, what: "kill", node: rng.IntN(3), dur: time.Second},
			{at: time.Duration(7000+rng.IntN(2000)) * time.Millisecond, what: "reset", node: rng.IntN(3)},
			{at: time.Duration(13000+rng.IntN(2000)) * time.Millisecond, what: "pause", node: rng.IntN(3), dur: 2 * time.Second},
			{at: time.Duration(15000+rng.IntN(1000)) * time.Millisecond, what: "pg-stop", dur: time.Second},
			{at: time.Duration(20000+rng.IntN(1000)) * time.Millisecond, what: "promote"},
		}
	}
	sort.Slice(schedule, func(i, j int) bool { return schedule[i].at < schedule[j].at })
	for _, f := range schedule {
		t.Logf("schedule: %s", f)
	}

	// One alias per client, made before the faults.
	const clients = 6
	l := &durLog{scheduled: map[string]bool{}, aliasAcked: map[string]string{}, aliasUnknown: map[string][]string{}, ops: map[string]int{}, created: map[string]string{}}
	setup := c.client(c.nodes[0])
	for i := range clients {
		k, err := setup.CreateKey(t.Context(), &kms.CreateKeyInput{})
		if err != nil {
			t.Fatal(err)
		}
		id := aws.ToString(k.KeyMetadata.KeyId)
		l.live = append(l.live, id)
		a := fmt.Sprint("alias/durable-", i)
		if _, err := setup.CreateAlias(t.Context(), &kms.CreateAliasInput{AliasName: aws.String(a), TargetKeyId: aws.String(id)}); err != nil {
			t.Fatal(err)
		}
		l.aliasAcked[a] = id
	}

	start := time.Now()
	// The load runs for dur and at least recover past the last fault:
	// on a loaded machine the faults (each waits for the one before)
	// slip towards the end, and the nodes need a moment after the
	// promotion to find the new primary.
	const recover = 5 * time.Second
	ctx, cancel := context.WithTimeout(t.Context(), dur+time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	for i := range clients {
		r := mrand.New(mrand.NewPCG(rng.Uint64(), uint64(i)))
		alias := fmt.Sprint("alias/durable-", i)
		wg.Go(func() { durClient(ctx, c, l, r, alias, start) })
	}
	faultsDone := c.runFaults(ctx, start, schedule)
	select {
	case <-ctx.Done():
	case <-time.After(max(time.Until(start.Add(dur)), time.Until(faultsDone.Add(recover)))):
	}
	cancel()
	wg.Wait()
	if !l.lastAck.After(faultsDone) {
		t.Errorf("no operation acknowledged after the last fault (at %s): the nodes did not recover", faultsDone.Sub(start).Round(time.Millisecond))
	}
	t.Logf("acknowledged: %v; keys %d live + %d to delete (%d scheduled), %d ciphertexts", l.ops, len(l.live), len(l.doomed), len(l.scheduled), len(l.blobs))
	if len(l.blobs) == 0 || l.ops["CreateKey"] == 0 || l.ops["UpdateAlias"] == 0 || l.ops["ScheduleKeyDeletion"] == 0 {
		t.Errorf("the load did not exercise every operation: %v", l.ops)
	}

	for _, n := range c.nodes {
		if !n.Alive() {
			t.Fatalf("%s is not running after the schedule", n.id)
		}
		n.WaitHealthy(t, 30*time.Second)
		if n.Died() != 0 {
			t.Errorf("%s exited on its own %d times", n.id, n.Died())
		}
	}

	// Each running node, as it is after the faults, must show every
	// acknowledged write: its caches follow the others' writes through
	// the change feed.
	if missing, bad := verifyDurable(t, c, l, "running"); missing+bad > 0 {
		t.Errorf("running nodes: %d acknowledged writes missing and %d wrong across %d nodes", missing, bad, len(c.nodes))
	}

	// What the database holds: every node killed (kill -9) and started
	// again, so nothing is served from what a process remembered.
	for _, n := range c.nodes {
		n.Kill()
	}
	for _, n := range c.nodes {
		n.Start(t)
	}
	for _, n := range c.nodes {
		n.WaitHealthy(t, 60*time.Second)
	}
	if missing, bad := verifyDurable(t, c, l, "restarted"); missing+bad > 0 {
		t.Errorf("restarted nodes: %d acknowledged writes missing and %d wrong across %d nodes", missing, bad, len(c.nodes))
	}
}

// verifyDurable checks every acknowledged write of l on every node of c
// and returns how many were missing and how many wrong (each reported,
// the first ten of a kind in full). The nodes are checked at once, each
// by a few clients, since the checks are many round trips.
func verifyDurable(t *testing.T, c *cluster, l *durLog, label string) (missing, bad int) {
	t.Helper()
	begun := time.Now()
	var mu sync.Mutex
	report := func(n *int, format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		*n++
		if *n <= 10 {
			t.Errorf(label+" "+format, args...)
		}
	}
	// One check per acknowledged write, run against a node.
	type check func(cl *kms.Client, node string)
	var checks []check
	key := func(id string, want types.KeyState) check {
		return func(cl *kms.Client, node string) {
			out, err := cl.DescribeKey(t.Context(), &kms.DescribeKeyInput{KeyId: aws.String(id)})
			switch {
			case err != nil:
				report(&missing, "%s: key %s (CreateKey acknowledged by %s): %v", node, id, l.created[id], err)
			case want != "" && out.KeyMetadata.KeyState != want:
				report(&bad, "%s: key %s is %s, want %s", node, id, out.KeyMetadata.KeyState, want)
			}
		}
	}
	for _, id := range l.live {
		checks = append(checks, key(id, types.KeyStateEnabled))
	}
	for _, id := range l.doomed {
		if l.scheduled[id] {
			checks = append(checks, key(id, types.KeyStatePendingDeletion))
		} else {
			// An unknown-outcome ScheduleKeyDeletion may have taken
			// effect; the key must exist either way.
			checks = append(checks, key(id, ""))
		}
	}
	for a, want := range l.aliasAcked {
		checks = append(checks, func(cl *kms.Client, node string) {
			out, err := cl.DescribeKey(t.Context(), &kms.DescribeKeyInput{KeyId: aws.String(a)})
			if err != nil {
				report(&missing, "%s: alias %s: %v", node, a, err)
				return
			}
			if got := aws.ToString(out.KeyMetadata.KeyId); got != want && !slices.Contains(l.aliasUnknown[a], got) {
				report(&bad, "%s: alias %s points at %s, want its last acknowledged target %s (or one of %d unknown-outcome updates)", node, a, got, want, len(l.aliasUnknown[a]))
			}
		})
	}
	for _, b := range l.blobs {
		checks = append(checks, func(cl *kms.Client, node string) {
			out, err := cl.Decrypt(t.Context(), &kms.DecryptInput{CiphertextBlob: b.ciphertext})
			switch {
			case err != nil:
				report(&missing, "%s: ciphertext acknowledged by %s at %s under %s does not decrypt: %v", node, b.node, b.acknowledge, b.key, err)
			case !bytes.Equal(out.Plaintext, b.plaintext):
				report(&bad, "%s: ciphertext under %s decrypts to other bytes", node, b.key)
			}
		})
	}
	const perNode = 4
	var wg sync.WaitGroup
	for _, n := range c.nodes {
		cl := c.client(n)
		next := make(chan check)
		for range perNode {
			wg.Go(func() {
				for ch := range next {
					ch(cl, n.id)
				}
			})
		}
		wg.Go(func() {
			for _, ch := range checks {
				next <- ch
			}
			close(next)
		})
	}
	wg.Wait()
	t.Logf("%s nodes: checked %d keys, %d aliases, %d ciphertexts on each of %d nodes in %s: %d missing, %d wrong",
		label, len(l.live)+len(l.doomed), len(l.aliasAcked), len(l.blobs), len(c.nodes), time.Since(begun).Round(time.Millisecond), missing, bad)
	return missing, bad
}

// durClient runs A4's load on random nodes until ctx ends.
func durClient(ctx context.Context, c *cluster, l *durLog, rng *mrand.Rand, alias string, start time.Time) {
	clients := make([]*kms.Client, len(c.nodes))
	for i, n := range c.nodes {
		clients[i] = c.client(n)
	}
	for ctx.Err() == nil {
		ni := rng.IntN(len(c.nodes))
		cl, node := clients[ni], c.nodes[ni].id
		octx, ocancel := context.WithTimeout(ctx, 4*time.Second)
		l.mu.Lock()
		liveKey := l.live[rng.IntN(len(l.live))]
		var doomed string
		for _, id := range l.doomed {
			if !l.scheduled[id] {
				doomed = id
				break
			}
		}
		l.mu.Unlock()
		var op string
		var err error
		switch r := rng.IntN(10); {
		case r < 3:
			op = "CreateKey"
			var out *kms.CreateKeyOutput
			if out, err = cl.CreateKey(octx, &kms.CreateKeyInput{}); err == nil {
				l.mu.Lock()
				l.created[aws.ToString(out.KeyMetadata.KeyId)] = fmt.Sprintf("%s at %s", node, time.Since(start).Round(time.Millisecond))
				if rng.IntN(3) == 0 {
					l.doomed = append(l.doomed, aws.ToString(out.KeyMetadata.KeyId))
				} else {
					l.live = append(l.live, aws.ToString(out.KeyMetadata.KeyId))
				}
				l.mu.Unlock()
			}
		case r < 6:
			op = "Encrypt"
			pt := make([]byte, 16+rng.IntN(48))
			for i := range pt {
				pt[i] = byte(rng.Uint32())
			}
			var out *kms.EncryptOutput
			if out, err = cl.Encrypt(octx, &kms.EncryptInput{KeyId: aws.String(liveKey), Plaintext: pt}); err == nil {
				l.mu.Lock()
				l.blobs = append(l.blobs, blob{key: liveKey, ciphertext: out.CiphertextBlob, plaintext: pt, node: node, acknowledge: time.Since(start).Round(time.Millisecond)})
				l.mu.Unlock()
			}
		case r < 8:
			op = "UpdateAlias"
			if _, err = cl.UpdateAlias(octx, &kms.UpdateAliasInput{AliasName: aws.String(alias), TargetKeyId: aws.String(liveKey)}); err == nil {
				l.mu.Lock()
				l.aliasAcked[alias] = liveKey
				l.mu.Unlock()
			} else {
				l.mu.Lock()
				l.aliasUnknown[alias] = append(l.aliasUnknown[alias], liveKey)
				l.mu.Unlock()
			}
		default:
			if doomed == "" {
				ocancel()
				continue
			}
			op = "ScheduleKeyDeletion"
			if _, err = cl.ScheduleKeyDeletion(octx, &kms.ScheduleKeyDeletionInput{KeyId: aws.String(doomed), PendingWindowInDays: aws.Int32(7)}); err == nil {
				l.mu.Lock()
				l.scheduled[doomed] = true
				l.mu.Unlock()
			} else if errCode(err) == "KMSInvalidStateException" {
				// An earlier attempt of unknown outcome took effect.
				l.mu.Lock()
				l.scheduled[doomed] = true
				l.mu.Unlock()
				err = nil
			}
		}
		ocancel()
		if err == nil {
			l.mu.Lock()
			l.lastAck = time.Now()
			l.ops[op]++
			l.mu.Unlock()
		} else if ctx.Err() == nil {
			time.Sleep(10 * time.Millisecond)
		}
	}
}
