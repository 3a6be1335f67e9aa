package hsm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/barrier"
	"github.com/kmsd/kmsd/internal/feed"
	"github.com/kmsd/kmsd/internal/hsmapi"
	"github.com/kmsd/kmsd/internal/storage"
	"github.com/kmsd/kmsd/internal/storage/sqlite"
)

// twoNodes opens two Services on one database file through two handles,
// as two kmsd nodes on one database; cfgA and cfgB adjust each.
func twoNodes(t *testing.T, cfgA, cfgB func(*Config)) (a, b *Service, sb storage.Store) {
	t.Helper()
	if !Available {
		t.Skip("built without cgo: PKCS#11 unavailable")
	}
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "db")
	bar, err := barrier.New(make([]byte, 32))
	if err != nil {
		t.Fatal(err)
	}
	var svcs []*Service
	var stores []storage.Store
	for _, adj := range []func(*Config){cfgA, cfgB} {
		st, err := sqlite.Open(ctx, path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		// Scheduling on the database's clock, as kmsd does.
		cfg := Config{Dir: hsmDir, DBClock: st}
		if adj != nil {
			adj(&cfg)
		}
		s, err := New(ctx, st, bar, cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		svcs, stores = append(svcs, s), append(stores, st)
	}
	return svcs[0], svcs[1], stores[1]
}

func controlled(c *Config) { c.Controlled = true }

// TestTwoNodes: what one node changes the other sees at once through the
// CloudHSM API, no change made through both at once is lost, and a step
// recorded through a node that does not run the steps loop is finished by
// the one that does (the controller).
func TestTwoNodes(t *testing.T) {
	ctx := context.Background()
	a, b, sb := twoNodes(t, controlled, nil)
	out, err := a.CreateCluster(ctx, caller, &hsmapi.CreateClusterRequest{HsmType: str("hsm1.medium"), SubnetIds: []string{"subnet-0123456789abcdef0"}})
	if err != nil {
		t.Fatal(err)
	}
	id := *out.Cluster.ClusterId
	// A runs no steps loop: B, the "controller", finishes A's step.
	waitState(t, a, id, ClusterUninitialized)

	// Tags through both at once: every one of them is kept.
	var wg sync.WaitGroup
	for i := range 20 {
		s := []*Service{a, b}[i%2]
		wg.Go(func() {
			_, err := s.TagResource(ctx, caller, &hsmapi.TagResourceRequest{ResourceId: &id,
				TagList: []hsmapi.Tag{{Key: str(fmt.Sprint("k", i)), Value: str("v")}}})
			if err != nil {
				t.Errorf("TagResource %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	for _, s := range []*Service{a, b} {
		tags, err := s.ListTags(ctx, caller, &hsmapi.ListTagsRequest{ResourceId: &id})
		if err != nil {
			t.Fatal(err)
		}
		if len(tags.TagList) != 20 {
			t.Fatalf("%d tags after 20 TagResource through two nodes at once: %v", len(tags.TagList), tags.TagList)
		}
	}

	// DescribeClusters is the same through both.
	da, err := a.DescribeClusters(ctx, caller, &hsmapi.DescribeClustersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	db, err := b.DescribeClusters(ctx, caller, &hsmapi.DescribeClustersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	ja, _ := json.Marshal(da)
	jb, _ := json.Marshal(db)
	if string(ja) != string(jb) {
		t.Fatalf("DescribeClusters differ:\n%s\n%s", ja, jb)
	}

	// B's cache (the data plane) follows the change feed.
	cached := func() int {
		r, ok := b.byID(id)
		if !ok {
			return -1
		}
		return len(r.Tags)
	}
	fb := feed.New(sb.(storage.Watcher), time.Hour, nil, b)
	if err := fb.Poll(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := a.UntagResource(ctx, caller, &hsmapi.UntagResourceRequest{ResourceId: &id, TagKeyList: []string{"k0"}}); err != nil {
		t.Fatal(err)
	}
	if err := fb.Poll(ctx); err != nil {
		t.Fatal(err)
	}
	if n := cached(); n != 19 {
		t.Fatalf("B's cached record has %d tags after A removed one and B's feed was read, want 19", n)
	}
}

// TestMerge: act's merge keeps what another node changed meanwhile in
// other fields, and refuses when both changed one field differently.
func TestMerge(t *testing.T) {
	base := &record{ID: "cluster-x", State: ClusterActive, Tags: []tag{{"a", "1"}}, HSMs: []hsmRecord{{ID: "hsm-1", State: HSMActive}}, Rev: 3}
	mine := clone(base)
	mine.Keys = append(mine.Keys, keyRecord{Label: "k"})
	cur := clone(base)
	cur.HSMs[0].State, cur.Rev = HSMDegraded, 4
	got, err := merge(base, mine, cur)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Keys) != 1 || got.HSMs[0].State != HSMDegraded || got.Rev != 4 {
		t.Fatalf("merged: keys %v, HSM %s, rev %d; want the key, DEGRADED (theirs), 4", got.Keys, got.HSMs[0].State, got.Rev)
	}
	// Keys made through two nodes at once are both kept.
	cur.Keys = []keyRecord{{Label: "other"}}
	got, err = merge(base, mine, cur)
	if err != nil || len(got.Keys) != 2 {
		t.Fatalf("keys made through two nodes at once: %v %v, want both", got, err)
	}
	// Both changed the tags differently: refused.
	mine.Tags, cur.Tags = []tag{{"a", "2"}}, []tag{{"a", "3"}}
	if _, err := merge(base, mine, cur); !errors.Is(err, errConflict) {
		t.Fatalf("both changed the tags: %v, want errConflict", err)
	}
	mine.Tags = base.Tags
	same := clone(mine)
	same.Rev = 5
	if _, err := merge(base, mine, same); err != nil {
		t.Fatalf("both made the same change: %v", err)
	}
}

// TestBackupByController: the backup a change of keys calls for is
// marked due in the cluster's record, in the change's transaction, by the
// node that made it — here A, which never runs the background loops —
// and taken by the controller. A dies right after the change, and no
// controller runs at that moment (the last one lost its lease): the node
// that takes the controller role next finds the marker and takes the
// backup within the delay, holding the change; the marker is then
// cleared. (Before, the delay's timer ran on the node that made the
// change and died with it, leaving the change to the next periodic
// backup, a day later.)
func TestBackupByController(t *testing.T) {
	const delay = 500 * time.Millisecond
	ctx := context.Background()
	a, b, sb := twoNodes(t, func(c *Config) { controlled(c); c.BackupDelay = delay },
		func(c *Config) { controlled(c); c.BackupDelay = delay })
	// B is the controller while the cluster is made.
	term := func() (stop func()) {
		tctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); b.RunBackground(tctx) }()
		return func() { cancel(); <-done }
	}
	stop := term()
	id := activeCluster(t, a, 1)
	if err := a.Login(ctx, caller, id, "kmsuser", RoleCryptoUser, "kmspass1", "kms"); err != nil {
		t.Fatal(err)
	}
	waitBackup(t, b, id, time.Time{})
	marker := func() *time.Time {
		t.Helper()
		r, err := readRecord(ctx, sb, id)
		if err != nil {
			t.Fatal(err)
		}
		return r.BackupDue
	}
	for deadline := time.Now().Add(10 * time.Second); marker() != nil; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the backups of the cluster's making left the marker set: %v", marker())
		}
	}
	stop() // B loses the controller lease: no controller runs now

	since := time.Now()
	if err := a.CreateKey(ctx, id, "made-on-a"); err != nil {
		t.Fatal(err)
	}
	due := marker()
	if due == nil || due.Before(since.Add(delay-time.Millisecond)) || due.After(time.Now().Add(delay)) {
		t.Fatalf("backup marker after the change through A: %v, want about %v", due, since.Add(delay))
	}
	a.cancel() // A dies: nothing of it runs any more
	time.Sleep(2 * delay)
	if bs := describeBackups(t, b, caller, &hsmapi.DescribeBackupsRequest{Filters: map[string][]string{"clusterIds": {id}}}); len(bs) == 0 || !bs[0].CreateTimestamp.Before(since) {
		t.Fatalf("a backup was taken with no controller running: %+v", bs[0])
	}

	// B takes the controller role again: it takes the backup at once, the
	// marker being past due.
	took := time.Now()
	defer term()()
	bk := waitBackup(t, b, id, since)
	t.Logf("backup %s READY %v after the new controller started (%v after the change; delay %v)",
		*bk.BackupId, time.Since(took).Round(time.Millisecond), time.Since(since).Round(time.Millisecond), delay)
	if d := time.Since(took); d > 10*time.Second {
		t.Fatalf("the new controller took %v to take the backup a change had marked due", d)
	}
	keys := backupKeys(t, b, sb, *bk.BackupId)
	if !slices.Contains(keys, "made-on-a") {
		t.Fatalf("the backup holds keys %v, want made-on-a among them", keys)
	}
	for deadline := time.Now().Add(10 * time.Second); marker() != nil; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the marker is still set after the backup: %v", marker())
		}
	}
}
