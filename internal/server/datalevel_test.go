package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/controller"
	"github.com/kmsd/kmsd/internal/release"
	"github.com/kmsd/kmsd/internal/storage"
	"github.com/kmsd/kmsd/internal/storage/postgres/pgtest"
)

// TestDataLevelEnv: KMSD_FAULT_DATA_LEVEL is a test hook, refused unless
// fault injection is on; without it the node's level is release.DataLevel.
func TestDataLevelEnv(t *testing.T) {
	for _, tc := range []struct {
		name, faults, level string
		want                int // 0: an error
	}{
		{"default", "", "", release.DataLevel},
		{"override", "1", "7", 7},
		{"override without fault injection", "", "7", 0},
		{"zero", "1", "0", 0},
		{"not a number", "1", "two", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("KMSD_FAULT_INJECTION", tc.faults)
			t.Setenv(dataLevelEnv, tc.level)
			cfg := Config{DataDir: t.TempDir()}
			err := cfg.Validate()
			if tc.want == 0 {
				if err == nil || !strings.Contains(err.Error(), dataLevelEnv) {
					t.Fatalf("Validate: %v; want an error naming %s", err, dataLevelEnv)
				}
				return
			}
			if err != nil || cfg.dataLevel != tc.want {
				t.Fatalf("Validate: %v, level %d; want level %d", err, cfg.dataLevel, tc.want)
			}
		})
	}
}

// dbState is everything a refused node could have written: every record,
// the live leases, and the records changed since the change-feed cursor
// from (PostgreSQL's connection barriers, which every node's pool writes
// to kmsd_commits, are not records and are left out).
func dbState(t *testing.T, st storage.Store, from storage.Cursor) string {
	t.Helper()
	ctx := context.Background()
	es, err := st.List(ctx, "", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := st.(storage.Watcher).Changes(ctx, from, 0)
	if err != nil {
		t.Fatal(err)
	}
	ls, err := st.(storage.Leaser).Live(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, e := range es {
		fmt.Fprintf(&b, "%s=%x\n", e.Key, e.Value)
	}
	fmt.Fprintf(&b, "changed since %v: %v (reset %v)\nleases %d\n", from.XID, ch.Keys, ch.Reset, len(ls))
	return b.String()
}

// feedHead is the change feed's position now.
func feedHead(t *testing.T, st storage.Store) storage.Cursor {
	t.Helper()
	b, err := st.(storage.Watcher).Changes(context.Background(), storage.Cursor{}, 1)
	if err != nil {
		t.Fatal(err)
	}
	return b.Next
}

// levelDrivers are the databases the data format level tests start a
// node on: its own SQLite file, or a new database on the test's
// PostgreSQL server.
var levelDrivers = []struct {
	name string
	cfg  func(t *testing.T) Config
}{
	{"sqlite", func(t *testing.T) Config { return Config{} }},
	{"postgres", func(t *testing.T) Config {
		return Config{DatabaseURL: pgtest.URL(t), RootKey: keyB64(7), DBMaxConns: 4, DBMinConns: 1}
	}},
}

// TestDataLevelStart (issue #16): on both drivers, a node starting on a
// database raises its minimum data format level to its own; a node of a
// lower level refuses to start, naming both levels, and writes nothing —
// no record, no change, no lease, no node id — and an equal level raises
// nothing.
func TestDataLevelStart(t *testing.T) {
	for _, d := range levelDrivers {
		t.Run(d.name, func(t *testing.T) {
			ctx := t.Context()
			t.Setenv("KMSD_FAULT_INJECTION", "1")
			log := slog.New(slog.NewTextHandler(io.Discard, nil))
			base := d.cfg(t)
			base.DataDir = t.TempDir()
			base.Listen = "127.0.0.1:0"

			// A newer node (this release's level + 1) opens the database:
			// the start-up steps of Run up to the raise.
			newer, older := release.DataLevel+1, release.DataLevel
			t.Setenv(dataLevelEnv, fmt.Sprint(newer))
			cfg := base
			if err := cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			st, db, err := openStore(ctx, cfg, log)
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			if err := checkDataLevel(ctx, st, db, newer); err != nil {
				t.Fatal(err)
			}
			if _, err := openBarrier(ctx, cfg, st, db, log); err != nil {
				t.Fatal(err)
			}
			if err := raiseDataLevel(ctx, st, db, newer, log); err != nil {
				t.Fatal(err)
			}
			if min, err := controller.MinLevel(ctx, st); err != nil || min != newer {
				t.Fatalf("minimum after a level-%d start = %d, %v", newer, min, err)
			}
			head := feedHead(t, st)
			before := dbState(t, st, head)
			if err := raiseDataLevel(ctx, st, db, newer, log); err != nil {
				t.Fatal(err)
			}
			if after := dbState(t, st, head); after != before {
				t.Errorf("a second start at the same level wrote:\n%s\n->\n%s", before, after)
			}

			// A node of this release's level, older than the database, is
			// refused by Run itself.
			t.Setenv(dataLevelEnv, fmt.Sprint(older))
			old := base
			if d.name == "postgres" {
				old.DataDir = t.TempDir() // a node of its own
			}
			filesBefore, _ := os.ReadDir(old.DataDir)
			err = Run(ctx, old, io.Discard, log)
			if !errors.Is(err, controller.ErrOutdated) {
				t.Fatalf("Run at level %d on a level-%d database: %v; want ErrOutdated", older, newer, err)
			}
			for _, w := range []string{fmt.Sprintf("data format level %d", newer), fmt.Sprintf("writes level %d", older), db.desc, "Upgrade this node"} {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("refusal %q lacks %q", err, w)
				}
			}
			if after := dbState(t, st, head); after != before {
				t.Errorf("a refused node wrote:\n%s\n->\n%s", before, after)
			}
			filesAfter, _ := os.ReadDir(old.DataDir)
			if !reflect.DeepEqual(names(filesBefore), names(filesAfter)) {
				t.Errorf("data directory %v -> %v: the refused node wrote files", names(filesBefore), names(filesAfter))
			}
			if _, err := os.Stat(filepath.Join(old.DataDir, nodeIDFile)); err == nil && d.name == "postgres" {
				t.Error("the refused node made a node id")
			}
		})
	}
}

func names(es []os.DirEntry) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.Name())
	}
	return out
}

// TestDataLevelServesAfterOlder (issue #16): a node of a higher data
// format level started beside a running older node (here the older node's
// controller, stopped by its Outdated callback once the test has seen
// the newer one wait, as its server would stop) answers no connection
// while the older node holds its node lease, and serves once the older
// node has stopped. On both drivers.
func TestDataLevelServesAfterOlder(t *testing.T) {
	for _, d := range levelDrivers {
		t.Run(d.name, func(t *testing.T) {
			ctx := t.Context()
			t.Setenv("KMSD_FAULT_INJECTION", "1")
			log := slog.New(slog.NewTextHandler(io.Discard, nil))
			older, newer := release.DataLevel, release.DataLevel+1
			cfg := d.cfg(t)
			cfg.DataDir = t.TempDir()
			cfg.Listen = freeAddr(t)
			cfg.AuditLog = "off"
			cfg.LeaseTTL = time.Second // heartbeats every 200 ms

			// The older node: its level raised, its controller running.
			t.Setenv(dataLevelEnv, fmt.Sprint(older))
			ocfg := cfg
			if err := ocfg.Validate(); err != nil {
				t.Fatal(err)
			}
			st, db, err := openStore(ctx, ocfg, log)
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			if _, err := openBarrier(ctx, ocfg, st, db, log); err != nil {
				t.Fatal(err)
			}
			if _, err := controller.RaiseMinLevel(ctx, st, older); err != nil {
				t.Fatal(err)
			}
			outdated := make(chan int, 1)
			old, err := controller.New(controller.Config{Leaser: st.(storage.Leaser), Store: st, NodeID: "old", TTL: cfg.LeaseTTL,
				Version: "old", DataLevel: older, Outdated: func(min int) { outdated <- min }})
			if err != nil {
				t.Fatal(err)
			}
			octx, stopOld := context.WithCancel(context.Background())
			oldDone := make(chan struct{})
			go func() { defer close(oldDone); old.Run(octx) }()
			defer func() { stopOld(); <-oldDone }()
			select {
			case <-old.ReadyC():
			case <-time.After(5 * time.Second):
				t.Fatal("the older node is not ready")
			}

			// The newer node starts: it raises the level, and waits.
			t.Setenv(dataLevelEnv, fmt.Sprint(newer))
			ncfg := cfg
			nctx, stopNew := context.WithCancel(context.Background())
			runErr := make(chan error, 1)
			go func() { runErr <- Run(nctx, ncfg, io.Discard, log) }()
			ran := sync.OnceValue(func() error { return <-runErr })
			defer func() {
				stopNew()
				if err := ran(); err != nil {
					t.Errorf("the newer node's Run: %v", err)
				}
			}()
			select {
			case min := <-outdated:
				if min != newer {
					t.Fatalf("the older node was told level %d, want %d", min, newer)
				}
			case err := <-runErr:
				runErr <- nil // for the deferred wait; the error is reported here
				t.Fatalf("the newer node's Run ended before the older node was told it is outdated: %v", err)
			case <-time.After(5 * time.Second):
				t.Fatal("the older node was not told it is outdated")
			}
			// Several of the newer node's looks (every 50 ms): the older
			// node still holds its lease, so nothing is served.
			for until := time.Now().Add(time.Second); time.Now().Before(until); time.Sleep(20 * time.Millisecond) {
				if c, err := net.DialTimeout("tcp", cfg.Listen, time.Second); err == nil {
					c.Close()
					t.Fatal("the newer node accepts connections while the older node holds its node lease")
				}
			}
			stopOld()
			<-oldDone
			stopped := time.Now()
			for {
				c, err := net.DialTimeout("tcp", cfg.Listen, time.Second)
				if err == nil {
					c.Close()
					break
				}
				if time.Since(stopped) > 5*time.Second {
					t.Fatalf("the newer node does not serve %s after the older node stopped: %v", time.Since(stopped), err)
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
}

// freeAddr picks a free loopback address for a server to listen on.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
