package catalog

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/kmsd/kmsd/internal/barrier"
	"github.com/kmsd/kmsd/internal/storage"
	"github.com/kmsd/kmsd/internal/storage/postgres"
	"github.com/kmsd/kmsd/internal/storage/postgres/pgtest"
	"github.com/kmsd/kmsd/internal/storage/sqlite"
)

// TestMain stops the private PostgreSQL server pgtest started, if it
// started one (KMSD_TEST_DATABASE_URL unset outside CI).
func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// lastUseDrivers open n catalogs on one new database of each driver, as n
// nodes sharing it have.
var lastUseDrivers = []struct {
	name string
	open func(t testing.TB, n int) []*Catalog
}{
	{"sqlite", func(t testing.TB, n int) []*Catalog {
		path := filepath.Join(t.TempDir(), "kmsd.db")
		return catalogsOn(t, n, func() (storage.Store, error) { return sqlite.Open(context.Background(), path) })
	}},
	{"postgres", func(t testing.TB, n int) []*Catalog {
		url := pgtest.URL(t)
		return catalogsOn(t, n, func() (storage.Store, error) {
			return postgres.Open(context.Background(), url, postgres.Options{MaxConns: 4, MinConns: 1})
		})
	}},
}

func catalogsOn(t testing.TB, n int, open func() (storage.Store, error)) []*Catalog {
	t.Helper()
	root := make([]byte, 32)
	rand.Read(root)
	b, err := barrier.New(root)
	if err != nil {
		t.Fatal(err)
	}
	var cs []*Catalog
	for range n {
		st, err := open()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		cs = append(cs, New(st, b))
	}
	return cs
}

// TestPutLastUsesBatch: one flush mixing first uses, uses of keys whose
// stored use is older (replaced) or newer or as recent (kept), keys used
// twice in the flush (new, and with a record), and a key with only an older kmsd's legacy record,
// on both drivers; and the same flush made through a store whose Tx offers
// no storage.BatchCreator, BatchGetter or BatchPutter gives the same
// records.
func TestPutLastUsesBatch(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	const acct, region = "111122223333", "us-east-1"
	use := func(id, op string, at time.Time) LastUse {
		return LastUse{Account: acct, Region: region, KeyID: id, Operation: op, Time: at, EventID: "ev-" + op + id, RequestID: "req-" + op}
	}
	for _, d := range lastUseDrivers {
		for _, batched := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/batch=%v", d.name, batched), func(t *testing.T) {
				ctx := t.Context()
				c := d.open(t, 1)[0]
				if !batched {
					c = New(plainStore{c.store}, c.barrier)
				}
				// Stored before the flush.
				if err := c.PutLastUses(ctx, []LastUse{
					use("older", "Encrypt", t0),
					use("newer", "Sign", t0.Add(time.Hour)),
					use("same", "Verify", t0),
					use("dup", "Verify", t0),
				}); err != nil {
					t.Fatal(err)
				}
				legacy, _ := json.Marshal(use("legacy", "Decrypt", t0.Add(2*time.Hour)))
				if err := c.store.Put(ctx, legacyLastUsePath(acct, region, "legacy"), legacy); err != nil {
					t.Fatal(err)
				}
				flush := []LastUse{
					use("new1", "Encrypt", t0),
					use("older", "ReEncrypt", t0.Add(time.Minute)), // replaces
					use("twice", "Encrypt", t0.Add(time.Minute)),   // first use, then
					use("newer", "Encrypt", t0.Add(time.Minute)),   // kept: stored is newer
					use("same", "Decrypt", t0),                     // kept: as recent
					use("twice", "Sign", t0.Add(2*time.Minute)),    // a newer one in the same flush
					use("legacy", "Encrypt", t0.Add(time.Minute)),  // the legacy record is newer
					use("new2", "GenerateDataKey", t0.Add(time.Second)),
					use("twice", "Verify", t0.Add(time.Second)), // and an older one: ignored
					use("dup", "Sign", t0.Add(2*time.Minute)),   // a stored key used twice: the
					use("dup", "Encrypt", t0.Add(time.Minute)),  // later use wins, not the last
				}
				for i := range 300 {
					flush = append(flush, use(fmt.Sprintf("bulk-%03d", i), "Encrypt", t0.Add(time.Duration(i)*time.Millisecond)))
				}
				if err := c.PutLastUses(ctx, flush); err != nil {
					t.Fatal(err)
				}
				want := map[string]LastUse{
					"new1":   use("new1", "Encrypt", t0),
					"new2":   use("new2", "GenerateDataKey", t0.Add(time.Second)),
					"older":  use("older", "ReEncrypt", t0.Add(time.Minute)),
					"newer":  use("newer", "Sign", t0.Add(time.Hour)),
					"same":   use("same", "Verify", t0),
					"twice":  use("twice", "Sign", t0.Add(2*time.Minute)),
					"dup":    use("dup", "Sign", t0.Add(2*time.Minute)),
					"legacy": use("legacy", "Decrypt", t0.Add(2*time.Hour)),
				}
				for i := range 300 {
					id := fmt.Sprintf("bulk-%03d", i)
					want[id] = use(id, "Encrypt", t0.Add(time.Duration(i)*time.Millisecond))
				}
				for id, w := range want {
					got, err := c.LastUse(ctx, acct, region, id)
					if err != nil || *got != w {
						t.Errorf("%s: %+v, %v; want %+v", id, got, err, w)
					}
				}
				// The legacy record is left as it was; the key's bucket
				// holds the flushed use.
				if b, err := c.store.Get(ctx, legacyLastUsePath(acct, region, "legacy")); err != nil || string(b) != string(legacy) {
					t.Errorf("legacy record changed: %s, %v", b, err)
				}
				if cur := bucketUse(t, c, acct, region, "legacy"); cur == nil || cur.Operation != "Encrypt" {
					t.Errorf("bucket entry beside the legacy record: %+v", cur)
				}
			})
		}
	}
}

// TestPutLastUsesConcurrent: nodes flushing overlapping batches at once
// (first uses of the same keys among them) never move a key's last use
// back: each key ends with the latest use any node flushed.
func TestPutLastUsesConcurrent(t *testing.T) {
	for _, d := range lastUseDrivers {
		t.Run(d.name, func(t *testing.T) {
			cs := d.open(t, 3)
			r := racingRounds{nodes: len(cs), keys: 200, rounds: 4}
			if err := r.write(cs, (*Catalog).PutLastUses); err != nil {
				t.Fatal(err)
			}
			r.check(t, cs[0])
		})
	}
}

// racingRounds is a workload of nodes writing uses of the same keys
// ("k-000", …) at once, rounds of them, each node's round a batch.
type racingRounds struct{ nodes, keys, rounds int }

// at is node n's use of key k in round r: each node's uses of a key are
// at times the others' are not, interleaved differently for each key.
func (r racingRounds) at(n, round, k int) time.Time {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	return t0.Add(time.Duration((round*r.nodes+(n+k)%r.nodes)*1000+k) * time.Millisecond)
}

// write has every node of cs write its rounds through put, all nodes at
// once, and returns the first error. Rounds go in reverse: each node also
// writes older uses after newer ones, as a slow flush racing a fast one.
func (r racingRounds) write(cs []*Catalog, put func(*Catalog, context.Context, []LastUse) error) error {
	var wg sync.WaitGroup
	errs := make(chan error, r.nodes*r.rounds)
	for n, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for round := r.rounds - 1; round >= 0; round-- {
				var uses []LastUse
				for k := range r.keys {
					uses = append(uses, LastUse{Account: "111122223333", Region: "us-east-1",
						KeyID: fmt.Sprintf("k-%03d", k), Operation: fmt.Sprintf("n%d-r%d", n, round), Time: r.at(n, round, k)})
				}
				if err := put(c, context.Background(), uses); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// check asserts that c reads, for each key, the latest use any node wrote.
func (r racingRounds) check(t *testing.T, c *Catalog) {
	t.Helper()
	for k := range r.keys {
		var latest time.Time
		for n := range r.nodes {
			if a := r.at(n, r.rounds-1, k); a.After(latest) {
				latest = a
			}
		}
		got, err := c.LastUse(t.Context(), "111122223333", "us-east-1", fmt.Sprintf("k-%03d", k))
		if err != nil || !got.Time.Equal(latest) {
			t.Fatalf("k-%03d: %+v, %v; want the use at %v", k, got, err, latest)
		}
	}
}

// plainStore hands out Txs without storage.BatchCreator, BatchGetter or
// BatchPutter, so that the catalog takes the fallbacks of
// storage.CreateBatch, GetBatch and PutBatch.
type plainStore struct{ storage.Store }

func (s plainStore) Update(ctx context.Context, fn func(storage.Tx) error) error {
	return s.Store.Update(ctx, func(tx storage.Tx) error {
		if _, ok := tx.(storage.BatchCreator); !ok {
			return errors.New("the driver's Tx does not offer storage.BatchCreator")
		}
		if _, ok := tx.(storage.BatchGetter); !ok {
			return errors.New("the driver's Tx does not offer storage.BatchGetter")
		}
		if _, ok := tx.(storage.BatchPutter); !ok {
			return errors.New("the driver's Tx does not offer storage.BatchPutter")
		}
		return fn(plainTx{tx})
	})
}

type plainTx struct{ storage.Tx }

// BenchmarkPutLastUses: a flush of 8,000 first uses (the common case on a
// store of a million keys), with the driver's storage.BatchCreator
// ("batch") and with one Create per use as before it ("perkey"); and
// ("existing") a flush of 8,000 newer uses of keys that have a record
// (after the first run), read with one storage.GetBatch, compared and put
// with one storage.PutBatch, and ("existing-perkey") one by one as before
// them. It
// reports ns per record, the CPU time this process (kmsd's side) spent
// per flush and, on PostgreSQL, the CPU time the server's
// processes spent per flush (from /proc, when the server runs on this
// machine and its postmaster.pid is found through data_directory).
//
//	go test -run '^$' -bench PutLastUses -benchtime 20x ./internal/catalog/
func BenchmarkPutLastUses(b *testing.B) {
	const n = 8000
	for _, d := range lastUseDrivers {
		for _, mode := range []string{"batch", "perkey", "existing", "existing-perkey"} {
			batched := !strings.HasSuffix(mode, "perkey")
			b.Run(d.name+"/"+mode, func(b *testing.B) {
				ctx := context.Background()
				c := d.open(b, 1)[0]
				if !batched {
					c = New(plainStore{c.store}, c.barrier)
				}
				cpu := func() time.Duration { return 0 }
				if d.name == "postgres" {
					cpu = serverCPU(b)
				}
				t0 := time.Now().UTC()
				uses := make([]LastUse, n)
				var spent, self time.Duration
				for i := 0; b.Loop(); i++ {
					for j := range uses {
						id, at := fmt.Sprintf("%08x-12ab-34cd-56ef-%012x", i, j), t0
						if strings.HasPrefix(mode, "existing") {
							// The same keys each time, each use newer.
							id, at = fmt.Sprintf("00000000-12ab-34cd-56ef-%012x", j), t0.Add(time.Duration(i)*time.Second)
						}
						uses[j] = LastUse{Account: "111122223333", Region: "us-east-1",
							KeyID: id, Operation: "Encrypt", Time: at, EventID: "ev", RequestID: "req"}
					}
					before, selfBefore := cpu(), processCPU()
					if err := c.PutLastUses(ctx, uses); err != nil {
						b.Fatal(err)
					}
					spent += cpu() - before
					self += processCPU() - selfBefore
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/record")
				b.ReportMetric(float64(self.Microseconds())/float64(b.N)/1000, "self-cpu-ms/op")
				if d.name == "postgres" {
					b.ReportMetric(float64(spent.Microseconds())/float64(b.N)/1000, "pg-cpu-ms/op")
				}
			})
		}
	}
}

// processCPU is the CPU time (user + system) this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// serverCPU returns a function that reads the CPU time (user + system)
// of pgtest's PostgreSQL server so far, summed over its postmaster
// and the postmaster's children; 0 for SQLite or a server not readable
// here.
func serverCPU(b *testing.B) func() time.Duration {
	zero := func() time.Duration { return 0 }
	conn, err := pgx.Connect(context.Background(), pgtest.URL(b)) // the same server, another database
	if err != nil {
		b.Fatal(err)
	}
	var dir string
	err = conn.QueryRow(context.Background(), `SHOW data_directory`).Scan(&dir)
	conn.Close(context.Background())
	if err != nil {
		b.Logf("server CPU not measured: %v", err)
		return zero
	}
	pidFile, err := os.ReadFile(filepath.Join(dir, "postmaster.pid"))
	if err != nil {
		b.Logf("server CPU not measured: %v", err)
		return zero
	}
	var pm int
	fmt.Sscan(string(pidFile), &pm)
	tick := 10 * time.Millisecond // USER_HZ is 100 on Linux
	return func() time.Duration {
		var total time.Duration
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			raw, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
			if err != nil {
				continue
			}
			s := string(raw)
			// Fields after the command name, which is in parentheses.
			i := strings.LastIndexByte(s, ')')
			if i < 0 {
				continue
			}
			f := strings.Fields(s[i+1:])
			if len(f) < 13 {
				continue
			}
			pid, _ := strconv.Atoi(e.Name())
			ppid, _ := strconv.Atoi(f[1])
			if pid != pm && ppid != pm {
				continue
			}
			ut, _ := strconv.ParseInt(f[11], 10, 64)
			stm, _ := strconv.ParseInt(f[12], 10, 64)
			total += time.Duration(ut+stm) * tick
		}
		return total
	}
}

// TestPutLastUsesInterleaved: another node's flush of a newer use commits
// between a flush's batch read of a key's record and its batch put — the
// window in which a read-compare-put without the transaction's isolation
// would move the key's last use back. The flush must notice (on
// PostgreSQL the serializable transaction fails and runs again, on SQLite
// the other flush waits for it) and the newer use stays, on both drivers.
func TestPutLastUsesInterleaved(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	use := func(op string, at time.Time) []LastUse {
		return []LastUse{{Account: "111122223333", Region: "us-east-1", KeyID: "k", Operation: op, Time: at}}
	}
	for _, d := range lastUseDrivers {
		t.Run(d.name, func(t *testing.T) {
			ctx := t.Context()
			cs := d.open(t, 2)
			if err := cs[0].PutLastUses(ctx, use("Encrypt", t0)); err != nil {
				t.Fatal(err)
			}
			var once sync.Once
			other := make(chan error, 1)
			hooked := &hookStore{Store: cs[0].store, afterGet: func() {
				once.Do(func() {
					go func() { other <- cs[1].PutLastUses(ctx, use("Sign", t0.Add(2*time.Minute))) }()
					select {
					case err := <-other:
						other <- err // committed in the window
					case <-time.After(time.Second): // waits for this flush (SQLite)
					}
				})
			}}
			if err := New(hooked, cs[0].barrier).PutLastUses(ctx, use("Decrypt", t0.Add(time.Minute))); err != nil {
				t.Fatal(err)
			}
			if err := <-other; err != nil {
				t.Fatal(err)
			}
			if hooked.gets.Load() == 0 {
				t.Fatal("the flush made no batch read")
			}
			got, err := cs[1].LastUse(ctx, "111122223333", "us-east-1", "k")
			if err != nil || got.Operation != "Sign" {
				t.Fatalf("last use %+v, %v; want the newer Sign the other node flushed", got, err)
			}
		})
	}
}

// hookStore's transactions offer the driver's batch capabilities and call
// afterGet after each batch read.
type hookStore struct {
	storage.Store
	afterGet func()
	gets     atomic.Int64
}

func (s *hookStore) Update(ctx context.Context, fn func(storage.Tx) error) error {
	return s.Store.Update(ctx, func(tx storage.Tx) error {
		for _, ok := range []bool{
			func() bool { _, ok := tx.(storage.BatchCreator); return ok }(),
			func() bool { _, ok := tx.(storage.BatchGetter); return ok }(),
			func() bool { _, ok := tx.(storage.BatchPutter); return ok }(),
		} {
			if !ok {
				return fmt.Errorf("the driver's Tx (%T) lacks a batch capability", tx)
			}
		}
		return fn(hookTx{tx, s})
	})
}

type hookTx struct {
	storage.Tx
	s *hookStore
}

func (t hookTx) CreateBatch(ctx context.Context, es []storage.Entry) ([]bool, error) {
	return t.Tx.(storage.BatchCreator).CreateBatch(ctx, es)
}

func (t hookTx) GetBatch(ctx context.Context, keys []string) ([][]byte, error) {
	vs, err := t.Tx.(storage.BatchGetter).GetBatch(ctx, keys)
	t.s.gets.Add(1)
	t.s.afterGet()
	return vs, err
}

func (t hookTx) PutBatch(ctx context.Context, es []storage.Entry) error {
	return t.Tx.(storage.BatchPutter).PutBatch(ctx, es)
}
