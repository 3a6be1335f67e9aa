package hsm

import (
	"context"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/hsmapi"
	"github.com/kmsd/kmsd/internal/storage"
)

// skewedBy is a Config adjustment: the node's clock runs d off the
// database's (the machine's), and the node does not run the background
// loops unless the test makes it the controller.
func skewedBy(d time.Duration, more func(*Config)) func(*Config) {
	return func(c *Config) {
		c.Controlled = true
		c.Now = func() time.Time { return time.Now().Add(d) }
		if more != nil {
			more(c)
		}
	}
}

// controller runs s's background loops (s is the controller) until the
// returned stop is called.
func controller(s *Service) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.RunBackground(ctx) }()
	return func() { cancel(); <-done }
}

// backupIDs returns the ids of cluster id's backups.
func backupIDs(t *testing.T, s *Service, id string) []string {
	t.Helper()
	var ids []string
	for _, b := range describeBackups(t, s, caller, &hsmapi.DescribeBackupsRequest{Filters: map[string][]string{"clusterIds": {id}}}) {
		ids = append(ids, *b.BackupId)
	}
	return ids
}

// backupKeys returns the labels of the keys backup bk holds.
func backupKeys(t *testing.T, s *Service, db storage.Store, bk string) []string {
	t.Helper()
	raw, err := db.Get(context.Background(), backupPath(bk))
	if err != nil {
		t.Fatal(err)
	}
	var br backupRecord
	if err := json.Unmarshal(raw, &br); err != nil {
		t.Fatal(err)
	}
	plain, err := s.open(backupContentsPath(br.ID), br.Contents)
	if err != nil {
		t.Fatal(err)
	}
	var c backupContents
	if err := json.Unmarshal(plain, &c); err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, k := range c.Keys {
		keys = append(keys, k.Label)
	}
	return keys
}

// settled waits until cluster id has no backup marker and no backup in
// progress, and returns its backups.
func settled(t *testing.T, s *Service, db storage.Store, id string) []string {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		r, err := readRecord(context.Background(), db, id)
		if err != nil {
			t.Fatal(err)
		}
		bs := describeBackups(t, s, caller, &hsmapi.DescribeBackupsRequest{Filters: map[string][]string{"clusterIds": {id}}})
		busy := r.BackupDue != nil
		for _, b := range bs {
			busy = busy || *b.BackupState == BackupCreateInProgress
		}
		if !busy {
			return backupIDs(t, s, id)
		}
	}
	t.Fatalf("cluster %s: backups never settled", id)
	return nil
}

// TestBackupSkewedClocks (issue #16, gap 3): the backup a change of keys
// falls due BackupDelay after the change on the database's clock, whatever
// the clocks of the node that made the change and of the controller say.
// Node A's clock is 3 minutes behind the database's, node B's 3 minutes
// ahead. With B the controller, a burst of two changes through A gets one
// backup, holding both, not before the delay (on B's own clock A's marker
// looks 6 minutes past due: a backup per change). With A the controller, a
// change through B is backed up within the delay (on A's clock B's marker
// is 6 minutes ahead). Then the periodic backup: B takes them every
// interval; when A takes over it takes the next one an interval later,
// not 6 minutes later (B's backups looking 6 minutes newer to A).
func TestBackupSkewedClocks(t *testing.T) {
	const skew = 3 * time.Minute
	ctx := context.Background()
	t.Run("AfterChange", func(t *testing.T) {
		const delay = 2 * time.Second
		adj := func(c *Config) { c.BackupDelay = delay }
		a, b, db := twoNodes(t, skewedBy(-skew, adj), skewedBy(skew, adj))
		stop := controller(b)
		id := activeCluster(t, a, 1)
		if err := a.Login(ctx, caller, id, "kmsuser", RoleCryptoUser, "kmspass1", "kms"); err != nil {
			t.Fatal(err)
		}
		before := settled(t, b, db, id)

		// A burst of changes through A (behind), B (ahead) the controller.
		first := time.Now()
		if err := a.CreateKey(ctx, id, "burst-1"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(3 * stepTick) // B's steps loop has seen the first change
		if err := a.CreateKey(ctx, id, "burst-2"); err != nil {
			t.Fatal(err)
		}
		var made []string
		for deadline := time.Now().Add(20 * time.Second); len(made) == 0; time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("no backup after the changes through A")
			}
			made = slices.DeleteFunc(backupIDs(t, b, id), func(x string) bool { return slices.Contains(before, x) })
		}
		took := time.Since(first)
		if took < delay-100*time.Millisecond {
			t.Errorf("the change's backup started %v after it, before the delay %v had passed on the database's clock", took, delay)
		}
		after := settled(t, b, db, id)
		made = slices.DeleteFunc(after, func(x string) bool { return slices.Contains(before, x) })
		if len(made) != 1 {
			t.Fatalf("the burst of two changes got %d backups (%v), want 1", len(made), made)
		}
		if keys := backupKeys(t, b, db, made[0]); !slices.Contains(keys, "burst-1") || !slices.Contains(keys, "burst-2") {
			t.Fatalf("the burst's backup holds keys %v, want burst-1 and burst-2", keys)
		}
		t.Logf("burst through A (clock -%v), B (clock +%v) controller: 1 backup, started %v after the first change (delay %v)",
			skew, skew, took.Round(time.Millisecond), delay)
		stop()

		// A (behind) the controller, a change through B (ahead).
		defer controller(a)()
		if err := b.Login(ctx, caller, id, "kmsuser", RoleCryptoUser, "kmspass1", "kms"); err != nil {
			t.Fatal(err)
		}
		after = settled(t, a, db, id) // the login changes no contents: no backup
		since := time.Now()
		if err := b.CreateKey(ctx, id, "made-on-b"); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(delay + 8*time.Second); ; time.Sleep(5 * time.Millisecond) {
			ids := slices.DeleteFunc(backupIDs(t, a, id), func(x string) bool { return slices.Contains(after, x) })
			if len(ids) > 0 {
				t.Logf("change through B (clock +%v), A (clock -%v) controller: backup started %v after it", skew, skew,
					time.Since(since).Round(time.Millisecond))
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no backup %v after a change through B with A the controller (delay %v)", time.Since(since), delay)
			}
		}
		end := settled(t, a, db, id)
		bk := slices.DeleteFunc(end, func(x string) bool { return slices.Contains(after, x) })
		if len(bk) != 1 || !slices.Contains(backupKeys(t, a, db, bk[0]), "made-on-b") {
			t.Fatalf("backups after the change through B: %v; want one holding made-on-b", bk)
		}
	})

	t.Run("Periodic", func(t *testing.T) {
		const interval = 2 * time.Second
		adj := func(c *Config) { c.BackupInterval, c.SweepInterval = interval, interval }
		a, b, db := twoNodes(t, skewedBy(-skew, adj), skewedBy(skew, adj))
		stop := controller(b)
		id := activeCluster(t, a, 1)
		before := settled(t, b, db, id)
		// B (ahead) takes a periodic backup.
		for deadline := time.Now().Add(4 * interval); ; time.Sleep(5 * time.Millisecond) {
			if ids := backupIDs(t, b, id); len(ids) > len(before) {
				before = ids
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("B took no periodic backup in %v (interval %v)", 4*interval, interval)
			}
		}
		stop()
		// A (behind) takes over: its first periodic backup comes within
		// about two intervals, not once its clock has passed B's newest.
		defer controller(a)()
		since := time.Now()
		for deadline := time.Now().Add(3*interval + 3*time.Second); ; time.Sleep(5 * time.Millisecond) {
			if ids := backupIDs(t, a, id); len(ids) > len(before) {
				t.Logf("A (clock -%v) took the periodic backup %v after taking over from B (clock +%v); interval %v",
					skew, time.Since(since).Round(time.Millisecond), skew, interval)
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("A took no periodic backup %v after taking over (interval %v)", time.Since(since), interval)
			}
		}
	})
}
