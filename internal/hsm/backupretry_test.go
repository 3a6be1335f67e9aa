package hsm

import (
	"context"
	"encoding/json"
	"errors"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/hsmapi"
	"github.com/kmsd/kmsd/internal/storage"
)

// errInjected is the failure faultyStore injects.
var errInjected = errors.New("injected storage fault")

// faultyStore is a store whose reads and transactional writes fail, a
// given number of times, where fail says so.
type faultyStore struct {
	storage.Store
	mu     sync.Mutex
	left   int // failures still to inject
	failed int // failures injected
	// fail says whether a Get (put false: value is what it read), a
	// Create or a transaction's Put (put true; r is the transaction) of
	// key with value should fail.
	fail faultRule
}

type faultRule func(r storage.Reader, put bool, key string, value []byte) bool

func (f *faultyStore) arm(n int, fail faultRule) {
	f.mu.Lock()
	f.left, f.fail = n, fail
	f.mu.Unlock()
}

func (f *faultyStore) injected() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.failed
}

func (f *faultyStore) inject(r storage.Reader, put bool, key string, value []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.left == 0 || f.fail == nil || !f.fail(r, put, key, value) {
		return nil
	}
	f.left--
	f.failed++
	return errInjected
}

func (f *faultyStore) Get(ctx context.Context, key string) ([]byte, error) {
	v, err := f.Store.Get(ctx, key)
	if err != nil {
		return nil, err
	}
	if err := f.inject(f.Store, false, key, v); err != nil {
		return nil, err
	}
	return v, nil
}

func (f *faultyStore) Create(ctx context.Context, key string, value []byte) error {
	if err := f.inject(f.Store, true, key, value); err != nil {
		return err
	}
	return f.Store.Create(ctx, key, value)
}

func (f *faultyStore) Update(ctx context.Context, fn func(tx storage.Tx) error) error {
	return f.Store.Update(ctx, func(tx storage.Tx) error { return fn(faultyTx{tx, f}) })
}

type faultyTx struct {
	storage.Tx
	f *faultyStore
}

func (t faultyTx) Put(ctx context.Context, key string, value []byte) error {
	if err := t.f.inject(t.Tx, true, key, value); err != nil {
		return err
	}
	return t.Tx.Put(ctx, key, value)
}

// calledFrom reports whether the calling goroutine runs inside fn (a
// function name such as "(*Service).finishBackup").
func calledFrom(fn string) bool {
	pcs := make([]uintptr, 64)
	frames := runtime.CallersFrames(pcs[:runtime.Callers(2, pcs)])
	for {
		fr, more := frames.Next()
		if strings.HasSuffix(fr.Function, "."+fn) {
			return true
		}
		if !more {
			return false
		}
	}
}

// holdsKey reports whether v, a stored cluster record, holds key label.
func holdsKey(v []byte, label string) bool {
	var r record
	return json.Unmarshal(v, &r) == nil && slices.ContainsFunc(r.Keys, func(k keyRecord) bool { return k.Label == label })
}

// quiesce waits until cluster id's backups are all READY, none is
// scheduled, and that stays so for 100 ms: no backup is in flight.
func quiesce(t *testing.T, s *Service, id string) map[string]bool {
	t.Helper()
	var prev []string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		var ids []string
		for _, b := range describeBackups(t, s, caller, &hsmapi.DescribeBackupsRequest{Filters: map[string][]string{"clusterIds": {id}}}) {
			if *b.BackupState != BackupReady {
				ids = nil
				break
			}
			ids = append(ids, *b.BackupId)
		}
		s.bkMu.Lock()
		pending := s.bkPending[id]
		s.bkMu.Unlock()
		if len(ids) == 0 || pending {
			prev = nil
			continue
		}
		if slices.Equal(ids, prev) {
			set := map[string]bool{}
			for _, b := range ids {
				set[b] = true
			}
			return set
		}
		prev = ids
	}
	t.Fatalf("cluster %s: its backups never settled", id)
	return nil
}

// backupHolds reports whether READY backup id's sealed contents hold key
// label.
func backupHolds(t *testing.T, s *Service, id, label string) bool {
	t.Helper()
	b, err := readBackup(context.Background(), s.store, id)
	if err != nil {
		t.Fatal(err)
	}
	plain, err := s.open(backupContentsPath(b.ID), b.Contents)
	if err != nil {
		t.Fatal(err)
	}
	defer clear(plain)
	var c backupContents
	if err := json.Unmarshal(plain, &c); err != nil {
		t.Fatal(err)
	}
	defer c.clear()
	return slices.ContainsFunc(c.Keys, func(k keyRecord) bool { return k.Label == label })
}

// TestBackupRetried: a backup whose start, snapshot or write fails is
// removed and tried again at once, so the change that called for it is
// backed up without waiting for the next periodic backup (commit 0a4bffc;
// the periodic interval here is the default day). Each case makes the
// first two attempts to back up a new key fail — the write of the backup
// in CREATE_IN_PROGRESS, the snapshot's read of the cluster, or the write
// that makes the backup READY — after the backups
// of the cluster's creation have settled, so that only a retry can back
// the key up. DescribeBackups then lists a new READY backup holding the
// key, and no trace of the failed attempts.
func TestBackupRetried(t *testing.T) {
	const failures = 2
	cases := []struct {
		name string
		fail func(id string) faultRule
	}{
		{"start", func(id string) faultRule {
			return func(r storage.Reader, put bool, key string, value []byte) bool {
				var b backupRecord
				if !put || !strings.HasPrefix(key, "hsm/backup/") || json.Unmarshal(value, &b) != nil || b.State != BackupCreateInProgress {
					return false
				}
				c, err := r.Get(context.Background(), recordPath(id))
				return err == nil && holdsKey(c, "rk1")
			}
		}},
		{"snapshot", func(id string) faultRule {
			return func(_ storage.Reader, put bool, key string, value []byte) bool {
				return !put && key == recordPath(id) && holdsKey(value, "rk1") && calledFrom("(*Service).finishBackup")
			}
		}},
		{"write", func(id string) faultRule {
			return func(tx storage.Reader, put bool, key string, value []byte) bool {
				var b backupRecord
				if !put || !strings.HasPrefix(key, "hsm/backup/") || json.Unmarshal(value, &b) != nil || b.State != BackupReady {
					return false
				}
				// The backup is written under the cluster's lock, which
				// its snapshot held too: the record is what it holds.
				r, err := tx.Get(context.Background(), recordPath(id))
				return err == nil && holdsKey(r, "rk1")
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			var fs *faultyStore
			s := openServiceOn(t, true, func(st storage.Store) storage.Store {
				fs = &faultyStore{Store: st}
				return fs
			}, fastBackups)
			id := activeCluster(t, s, 1)
			if err := s.Login(ctx, caller, id, "kmsuser", RoleCryptoUser, "kmspass1", "kms"); err != nil {
				t.Fatal(err)
			}
			before := quiesce(t, s, id)

			fs.arm(failures, tc.fail(id))
			if err := s.CreateKey(ctx, id, "rk1"); err != nil {
				t.Fatal(err)
			}
			var fresh []hsmapi.Backup
			done := false
			for deadline := time.Now().Add(10 * time.Second); !done; time.Sleep(5 * time.Millisecond) {
				fresh = fresh[:0]
				for _, b := range describeBackups(t, s, caller, &hsmapi.DescribeBackupsRequest{Filters: map[string][]string{"clusterIds": {id}}}) {
					if !before[*b.BackupId] {
						fresh = append(fresh, b)
					}
				}
				if fs.injected() == failures {
					for _, b := range fresh {
						if *b.BackupState == BackupReady && backupHolds(t, s, *b.BackupId, "rk1") {
							done = true
						}
					}
				}
				if !done && time.Now().After(deadline) {
					for _, b := range fresh {
						t.Logf("new backup %s %s", *b.BackupId, *b.BackupState)
					}
					t.Fatalf("%d of %d faults injected; no new READY backup holds the key", fs.injected(), failures)
				}
			}
			// The failed attempts were removed, not left in progress.
			for _, b := range fresh {
				if *b.BackupState != BackupReady {
					t.Errorf("backup %s left %s", *b.BackupId, *b.BackupState)
				}
			}
		})
	}
}
