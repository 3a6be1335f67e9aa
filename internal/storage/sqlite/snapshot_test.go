package sqlite

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/storage"
)

// TestVacuumIntoUnderWrites snapshots a store while a writer commits
// transactions that each write a pair of records with the same value and
// advance a counter. The snapshot must hold every transaction committed
// before it began, and no half of one: both records of the pair agree with
// the counter.
func TestVacuumIntoUnderWrites(t *testing.T) {
	dir := t.TempDir()
	s := openAt(t, dir)
	ctx := t.Context()

	var committed atomic.Int64 // transactions acknowledged so far
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for n := int64(1); ; n++ {
			select {
			case <-stop:
				return
			default:
			}
			v := []byte(strconv.FormatInt(n, 10))
			err := s.Update(ctx, func(tx storage.Tx) error {
				if err := tx.Put(ctx, "pair/a", v); err != nil {
					return err
				}
				if err := tx.Put(ctx, fmt.Sprintf("log/%09d", n), v); err != nil {
					return err
				}
				return tx.Put(ctx, "pair/b", v)
			})
			if err != nil {
				t.Errorf("Update %d: %v", n, err)
				return
			}
			committed.Store(n)
		}
	}()
	defer func() { close(stop); wg.Wait() }()

	for round := range 3 {
		for committed.Load() < int64(50*(round+1)) {
			if t.Failed() {
				return
			}
			time.Sleep(time.Millisecond)
		}
		before := committed.Load()
		dst := filepath.Join(dir, fmt.Sprintf("snap%d.db", round))
		if err := VacuumInto(ctx, filepath.Join(dir, "kmsd.db"), dst); err != nil {
			t.Fatalf("VacuumInto: %v", err)
		}
		f, err := OpenFile(ctx, dst)
		if err != nil {
			t.Fatalf("OpenFile: %v", err)
		}
		info, err := f.Check(ctx)
		if err != nil {
			t.Fatalf("Check: %v", err)
		}
		a, errA := f.Get(ctx, "pair/a")
		b, errB := f.Get(ctx, "pair/b")
		logs, errL := f.List(ctx, "log/", "", 1<<30)
		f.Close()
		if errA != nil || errB != nil || errL != nil {
			t.Fatalf("reading the snapshot: %v %v %v", errA, errB, errL)
		}
		n, _ := strconv.ParseInt(string(a), 10, 64)
		if string(a) != string(b) || int64(len(logs)) != n {
			t.Errorf("round %d: snapshot is not one transaction's end: pair %s/%s, %d log records", round, a, b, len(logs))
		}
		if n < before {
			t.Errorf("round %d: snapshot holds %d transactions; %d were acknowledged before it began", round, n, before)
		}
		if info.SchemaVersion != len(migrations) || info.Records != n+2 {
			t.Errorf("round %d: Info %+v, want schema %d and %d records", round, info, len(migrations), n+2)
		}
		t.Logf("round %d: %d acknowledged before, %d in the snapshot", round, before, n)
	}
}

// TestVacuumIntoClosedStore copies a database no process has open (no WAL
// or shared-memory file beside it), as after kmsd stopped.
func TestVacuumIntoClosedStore(t *testing.T) {
	dir := t.TempDir()
	ctx := t.Context()
	s, err := Open(ctx, filepath.Join(dir, "kmsd.db"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Put(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	s.Close()
	dst := filepath.Join(dir, "copy.db")
	if err := VacuumInto(ctx, filepath.Join(dir, "kmsd.db"), dst); err != nil {
		t.Fatalf("VacuumInto: %v", err)
	}
	f, err := OpenFile(ctx, dst)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if v, err := f.Get(ctx, "k"); err != nil || string(v) != "v" {
		t.Errorf("Get = %q, %v", v, err)
	}
	// The copy opens as a store, which puts it back in WAL mode.
	f.Close()
	moved := filepath.Join(t.TempDir(), "kmsd.db")
	if err := os.Rename(dst, moved); err != nil {
		t.Fatal(err)
	}
	s3 := openAt(t, filepath.Dir(moved))
	if v, err := s3.Get(ctx, "k"); err != nil || string(v) != "v" {
		t.Errorf("store from the copy: Get = %q, %v", v, err)
	}
}

// TestFileRefuses checks that OpenFile and Check refuse what is not a
// sound kmsd database, and never create a file.
func TestFileRefuses(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()

	missing := filepath.Join(dir, "missing.db")
	if _, err := OpenFile(ctx, missing); err == nil {
		t.Error("OpenFile of a missing file succeeded")
	}
	if _, err := os.Stat(missing); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("OpenFile created %s", missing)
	}

	other := filepath.Join(dir, "other.db")
	db := rawOpen(t, other)
	if _, err := db.Exec("CREATE TABLE t (x)"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if _, err := OpenFile(ctx, other); err == nil {
		t.Error("OpenFile of another application's database succeeded")
	}

	// A kmsd database with a damaged page: big enough to have several,
	// closed (checkpointed), then one interior page overwritten.
	good := filepath.Join(dir, "good")
	os.Mkdir(good, 0o700)
	s, err := Open(ctx, filepath.Join(good, "kmsd.db"))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 200 {
		if err := s.Put(ctx, fmt.Sprintf("key/%04d", i), make([]byte, 300)); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	path := filepath.Join(good, "kmsd.db")
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(raw) < 8*4096 {
		t.Fatalf("database is only %d bytes", len(raw))
	}
	for i := 3 * 4096; i < 4*4096; i++ {
		raw[i] = 0x5a
	}
	bad := filepath.Join(dir, "bad.db")
	os.WriteFile(bad, raw, 0o600)
	f, err := OpenFile(ctx, bad)
	if err == nil {
		_, err = f.Check(ctx)
		f.Close()
	}
	if !errors.Is(err, ErrCorrupt) {
		t.Errorf("damaged database: got %v, want ErrCorrupt", err)
	}
}
