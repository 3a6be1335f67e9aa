package hsm

import (
	"context"
	"encoding/json"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/barrier"
	"github.com/kmsd/kmsd/internal/hsmapi"
	"github.com/kmsd/kmsd/internal/storage"
	"github.com/kmsd/kmsd/internal/storage/sqlite"
)

// clock is a settable time source.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func fastBackups(c *Config) { c.BackupDelay = time.Millisecond }

func describeBackups(t *testing.T, s *Service, c Caller, in *hsmapi.DescribeBackupsRequest) []hsmapi.Backup {
	t.Helper()
	out, err := s.DescribeBackups(context.Background(), c, in)
	if err != nil {
		t.Fatal(err)
	}
	return out.Backups
}

// waitBackup waits until cluster id has a READY backup created at or
// after since and none in progress, and returns the newest.
func waitBackup(t *testing.T, s *Service, id string, since time.Time) hsmapi.Backup {
	t.Helper()
	var bs []hsmapi.Backup
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		bs = describeBackups(t, s, caller, &hsmapi.DescribeBackupsRequest{Filters: map[string][]string{"clusterIds": {id}}})
		if len(bs) > 0 && *bs[0].BackupState == BackupReady && !bs[0].CreateTimestamp.Before(since) {
			return bs[0]
		}
	}
	for _, b := range bs {
		t.Logf("backup %s %s created %v", *b.BackupId, *b.BackupState, b.CreateTimestamp)
	}
	t.Fatalf("cluster %s: no READY backup since %v", id, since)
	return hsmapi.Backup{}
}

func errName(err error) string {
	if e, ok := err.(*hsmapi.Exception); ok {
		return e.Name
	}
	if err == nil {
		return ""
	}
	return err.Error()
}

// TestBackupRestore: a backup taken after a key's creation restores a
// cluster whose new HSMs hold the key and kmsuser's password, with the
// original's cluster certificate; the old ciphertext decrypts there.
func TestBackupRestore(t *testing.T) {
	s := newService(t, fastBackups)
	ctx := context.Background()
	id := activeCluster(t, s, 2)
	if err := s.Login(ctx, caller, id, "kmsuser", RoleCryptoUser, "kmspass1", "kms"); err != nil {
		t.Fatal(err)
	}
	since := time.Now()
	if err := s.CreateKey(ctx, id, "rk1"); err != nil {
		t.Fatal(err)
	}
	iv, ct, err := s.Encrypt(ctx, id, "rk1", []byte("restore me"), nil)
	if err != nil {
		t.Fatal(err)
	}
	b := waitBackup(t, s, id, since)
	if *b.ClusterId != id || *b.HsmType != "hsm2m.medium" || *b.NeverExpires || b.SourceBackup != nil {
		t.Fatalf("backup %+v", b)
	}
	orig := waitState(t, s, id, ClusterActive)

	out, err := s.CreateCluster(ctx, caller, &hsmapi.CreateClusterRequest{HsmType: str("hsm2m.medium"),
		SubnetIds: []string{"subnet-0123456789abcdef2", "subnet-0123456789abcdef3"}, SourceBackupId: b.BackupArn})
	if err != nil {
		t.Fatal(err)
	}
	nid := *out.Cluster.ClusterId
	c := waitState(t, s, nid, ClusterActive)
	if c.SourceBackupId == nil || *c.SourceBackupId != *b.BackupId {
		t.Fatalf("SourceBackupId %v, want %s", c.SourceBackupId, *b.BackupId)
	}
	if *c.Certificates.ClusterCertificate != *orig.Certificates.ClusterCertificate {
		t.Fatal("restored cluster has another cluster certificate")
	}
	ri, _ := s.Describe(caller, nid)
	oi, _ := s.Describe(caller, id)
	if ri.TrustAnchor == "" || ri.TrustAnchor != oi.TrustAnchor {
		t.Fatal("restored cluster has another trust anchor")
	}
	for _, az := range []string{"us-east-1a", "us-east-1b"} {
		if _, err := s.CreateHsm(ctx, caller, &hsmapi.CreateHsmRequest{ClusterId: &nid, AvailabilityZone: &az}); err != nil {
			t.Fatal(err)
		}
	}
	waitState(t, s, nid, ClusterActive)
	if err := s.Login(ctx, caller, nid, "kmsuser", RoleCryptoUser, "wrongpass1", "kms"); err == nil {
		t.Fatal("restored cluster accepts a wrong password")
	}
	if err := s.Login(ctx, caller, nid, "kmsuser", RoleCryptoUser, "kmspass1", "kms"); err != nil {
		t.Fatalf("kmsuser's password on the restored cluster: %v", err)
	}
	for i := 0; i < 2; i++ { // both new HSMs
		pt, err := s.Decrypt(ctx, nid, "rk1", iv, ct, nil)
		if err != nil || string(pt) != "restore me" {
			t.Fatalf("decrypt on the restored cluster = %q, %v", pt, err)
		}
	}
	keys, err := s.Keys(ctx, nid)
	if err != nil || len(keys) != 1 || keys[0].Label != "rk1" || len(keys[0].HSMs) != 2 {
		t.Fatalf("restored keys %+v, %v", keys, err)
	}
	// The restored cluster is backed up in its turn.
	if nb := waitBackup(t, s, nid, time.Time{}); *nb.ClusterId != nid {
		t.Fatalf("backup of the restored cluster: %+v", nb)
	}

	// Restoring from a backup that is not READY, or not there, fails.
	if _, err := s.DeleteBackup(ctx, caller, &hsmapi.DeleteBackupRequest{BackupId: b.BackupId}); err != nil {
		t.Fatal(err)
	}
	_, err = s.CreateCluster(ctx, caller, &hsmapi.CreateClusterRequest{HsmType: str("hsm2m.medium"), SubnetIds: []string{"subnet-0123456789abcdef2"}, SourceBackupId: b.BackupId})
	if errName(err) != excInvalid {
		t.Fatalf("restore from PENDING_DELETION: %v", err)
	}
	_, err = s.CreateCluster(ctx, caller, &hsmapi.CreateClusterRequest{HsmType: str("hsm2m.medium"), SubnetIds: []string{"subnet-0123456789abcdef2"}, SourceBackupId: str("backup-zzzzzzzzzzz")})
	if errName(err) != excNotFound {
		t.Fatalf("restore from a missing backup: %v", err)
	}
}

// TestBackupOperations: the backup operations and the sweeper, on a
// settable clock.
func TestBackupOperations(t *testing.T) {
	clk := &clock{t: time.Now().UTC()}
	s := newService(t, fastBackups, func(c *Config) { c.Now = clk.now })
	ctx := context.Background()
	id := activeCluster(t, s, 1)
	// The first backup falls due BackupDelay after the initialization
	// on the service's clock.
	clk.add(time.Second)
	waitBackup(t, s, id, time.Time{})
	// Three more backups, a day apart.
	var ids []string
	for i := 0; i < 3; i++ {
		clk.add(24 * time.Hour)
		s.takeBackup(ctx, id)
		ids = append(ids, *waitBackup(t, s, id, clk.now()).BackupId)
	}
	all := describeBackups(t, s, caller, &hsmapi.DescribeBackupsRequest{})
	if len(all) < 4 || *all[0].BackupId != ids[2] {
		t.Fatalf("newest first: %d backups, first %s, want %s", len(all), *all[0].BackupId, ids[2])
	}
	yes := true
	asc := describeBackups(t, s, caller, &hsmapi.DescribeBackupsRequest{SortAscending: &yes})
	if *asc[len(asc)-1].BackupId != ids[2] {
		t.Fatalf("SortAscending: last %s, want %s", *asc[len(asc)-1].BackupId, ids[2])
	}

	// Paging.
	var paged []string
	var next *string
	for {
		out, err := s.DescribeBackups(ctx, caller, &hsmapi.DescribeBackupsRequest{MaxResults: func() *int32 { n := int32(1); return &n }(), NextToken: next})
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range out.Backups {
			paged = append(paged, *b.BackupId)
		}
		if next = out.NextToken; next == nil {
			break
		}
	}
	if len(paged) != len(all) {
		t.Fatalf("paged %d backups, want %d", len(paged), len(all))
	}
	if _, err := s.DescribeBackups(ctx, caller, &hsmapi.DescribeBackupsRequest{NextToken: str("garbage")}); errName(err) != excInvalid {
		t.Fatalf("bad NextToken: %v", err)
	}
	for name, f := range map[string]map[string][]string{
		"bad key": {"color": {"x"}}, "bad state": {"states": {"GONE"}}, "bad neverExpires": {"neverExpires": {"maybe"}},
	} {
		if _, err := s.DescribeBackups(ctx, caller, &hsmapi.DescribeBackupsRequest{Filters: f}); errName(err) != excInvalid {
			t.Errorf("%s: %v", name, err)
		}
	}
	// Another account sees none of them.
	if bs := describeBackups(t, s, Caller{Account: "444455556666", Region: "us-east-1"}, &hsmapi.DescribeBackupsRequest{}); len(bs) != 0 {
		t.Fatalf("another account sees %d backups", len(bs))
	}

	// Delete → PENDING_DELETION, restore → READY.
	del, err := s.DeleteBackup(ctx, caller, &hsmapi.DeleteBackupRequest{BackupId: &ids[0]})
	if err != nil || *del.Backup.BackupState != BackupPendingDeletion || del.Backup.DeleteTimestamp == nil ||
		del.Backup.DeleteTimestamp.Sub(clk.now()) != BackupDeletionWindow {
		t.Fatalf("DeleteBackup = %+v, %v", del, err)
	}
	if _, err := s.DeleteBackup(ctx, caller, &hsmapi.DeleteBackupRequest{BackupId: &ids[0]}); errName(err) != excInvalid {
		t.Fatalf("second DeleteBackup: %v", err)
	}
	if bs := describeBackups(t, s, caller, &hsmapi.DescribeBackupsRequest{Filters: map[string][]string{"states": {BackupPendingDeletion}}}); len(bs) != 1 || *bs[0].BackupId != ids[0] {
		t.Fatalf("states filter: %+v", bs)
	}
	res, err := s.RestoreBackup(ctx, caller, &hsmapi.RestoreBackupRequest{BackupId: &ids[0]})
	if err != nil || *res.Backup.BackupState != BackupReady || res.Backup.DeleteTimestamp != nil {
		t.Fatalf("RestoreBackup = %+v, %v", res, err)
	}
	if _, err := s.RestoreBackup(ctx, caller, &hsmapi.RestoreBackupRequest{BackupId: &ids[0]}); errName(err) != excInvalid {
		t.Fatalf("RestoreBackup of a READY backup: %v", err)
	}
	if _, err := s.RestoreBackup(ctx, caller, &hsmapi.RestoreBackupRequest{BackupId: str("backup-zzzzzzzzzzz")}); errName(err) != excNotFound {
		t.Fatalf("RestoreBackup of a missing backup: %v", err)
	}

	// NeverExpires.
	mod, err := s.ModifyBackupAttributes(ctx, caller, &hsmapi.ModifyBackupAttributesRequest{BackupId: &ids[1], NeverExpires: &yes})
	if err != nil || !*mod.Backup.NeverExpires {
		t.Fatalf("ModifyBackupAttributes = %+v, %v", mod, err)
	}
	if bs := describeBackups(t, s, caller, &hsmapi.DescribeBackupsRequest{Filters: map[string][]string{"neverExpires": {"true"}}}); len(bs) != 1 || *bs[0].BackupId != ids[1] {
		t.Fatalf("neverExpires filter: %+v", bs)
	}

	// Copy to another Region.
	cp, err := s.CopyBackupToRegion(ctx, caller, &hsmapi.CopyBackupToRegionRequest{BackupId: &ids[2], DestinationRegion: str("eu-west-3"),
		TagList: []hsmapi.Tag{{Key: str("team"), Value: str("crypto")}}})
	if err != nil || *cp.DestinationBackup.SourceBackup != ids[2] || *cp.DestinationBackup.SourceCluster != id || *cp.DestinationBackup.SourceRegion != "us-east-1" {
		t.Fatalf("CopyBackupToRegion = %+v, %v", cp, err)
	}
	if _, err := s.CopyBackupToRegion(ctx, caller, &hsmapi.CopyBackupToRegionRequest{BackupId: &ids[2], DestinationRegion: str("us-east-1")}); errName(err) != excInvalid {
		t.Fatalf("copy to its own Region: %v", err)
	}
	paris := Caller{Account: caller.Account, Region: "eu-west-3"}
	var copied []hsmapi.Backup
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		copied = describeBackups(t, s, paris, &hsmapi.DescribeBackupsRequest{Filters: map[string][]string{"sourceBackupIds": {ids[2]}, "states": {BackupReady}}})
		if len(copied) == 1 {
			break
		}
	}
	if len(copied) != 1 || *copied[0].SourceRegion != "us-east-1" || *copied[0].SourceCluster != id || copied[0].CopyTimestamp == nil || len(copied[0].TagList) != 1 {
		t.Fatalf("copied backup in eu-west-3: %+v", copied)
	}
	if bs := describeBackups(t, s, caller, &hsmapi.DescribeBackupsRequest{Filters: map[string][]string{"sourceBackupIds": {ids[2]}}}); len(bs) != 0 {
		t.Fatalf("the copy shows in the source Region: %+v", bs)
	}
	// A cluster restored from the copy in eu-west-3 has the lineage.
	rc, err := s.CreateCluster(ctx, paris, &hsmapi.CreateClusterRequest{HsmType: str("hsm2m.medium"), SubnetIds: []string{"subnet-0123456789abcdef2"}, SourceBackupId: copied[0].BackupId})
	if err != nil {
		t.Fatal(err)
	}
	orig, _ := s.Describe(caller, id)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		info, err := s.Describe(paris, *rc.Cluster.ClusterId)
		if err == nil && info.State == ClusterActive {
			if info.ClusterCert != orig.ClusterCert {
				t.Fatal("cluster restored from the copy has another certificate")
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cluster restored in eu-west-3: %+v, %v", info, err)
		}
	}

	// ModifyCluster: the retention policy.
	mc, err := s.ModifyCluster(ctx, caller, &hsmapi.ModifyClusterRequest{ClusterId: &id,
		BackupRetentionPolicy: &hsmapi.BackupRetentionPolicy{Type: str("DAYS"), Value: str("7")}})
	if err != nil || *mc.Cluster.BackupRetentionPolicy.Value != "7" {
		t.Fatalf("ModifyCluster = %+v, %v", mc, err)
	}
	for _, v := range []string{"6", "380"} {
		if _, err := s.ModifyCluster(ctx, caller, &hsmapi.ModifyClusterRequest{ClusterId: &id,
			BackupRetentionPolicy: &hsmapi.BackupRetentionPolicy{Type: str("DAYS"), Value: str(v)}}); errName(err) != excInvalid {
			t.Errorf("retention %s days: %v", v, err)
		}
	}
	if _, err := s.ModifyCluster(ctx, caller, &hsmapi.ModifyClusterRequest{ClusterId: &id, HsmType: str("hsm1.medium")}); errName(err) != excInvalid {
		t.Errorf("HSM type change: %v", err)
	}
	if _, err := s.ModifyCluster(ctx, caller, &hsmapi.ModifyClusterRequest{ClusterId: str("cluster-zzzzzzzzzzz"), HsmType: str("hsm1.medium")}); errName(err) != excNotFound {
		t.Errorf("ModifyCluster of a missing cluster: %v", err)
	}

	// The sweeper: ids[0] deleted and 7 days on is gone; of the READY
	// backups older than 7 days, the NeverExpires one (ids[1]) and the
	// newest are kept.
	if _, err := s.DeleteBackup(ctx, caller, &hsmapi.DeleteBackupRequest{BackupId: &ids[0]}); err != nil {
		t.Fatal(err)
	}
	clk.add(BackupDeletionWindow - time.Minute)
	s.sweep(ctx)
	if bs := describeBackups(t, s, caller, &hsmapi.DescribeBackupsRequest{Filters: map[string][]string{"backupIds": {ids[0]}}}); len(bs) != 1 {
		t.Fatal("a PENDING_DELETION backup went before its 7 days")
	}
	clk.add(2 * time.Minute)
	s.sweep(ctx)
	left := map[string]bool{}
	for _, b := range describeBackups(t, s, caller, &hsmapi.DescribeBackupsRequest{Filters: map[string][]string{"clusterIds": {id}}}) {
		left[*b.BackupId] = true
	}
	if left[ids[0]] || !left[ids[1]] || !left[ids[2]] || len(left) != 2 {
		t.Fatalf("after the sweep: %v; want %s (never expires) and %s (newest)", left, ids[1], ids[2])
	}
	if _, err := s.RestoreBackup(ctx, caller, &hsmapi.RestoreBackupRequest{BackupId: &ids[0]}); errName(err) != excNotFound {
		t.Fatalf("RestoreBackup after the window: %v", err)
	}

	// The periodic backups: the newest is 8 days old, so one is due at
	// once; the next a day (the default interval) later.
	count := func() int {
		return len(describeBackups(t, s, caller, &hsmapi.DescribeBackupsRequest{Filters: map[string][]string{"clusterIds": {id}}}))
	}
	s.periodicBackups(ctx)
	nb1 := *waitBackup(t, s, id, clk.now()).BackupId
	clk.add(DefaultBackupInterval - time.Minute)
	n := count()
	s.periodicBackups(ctx)
	if count() != n {
		t.Fatal("a periodic backup before the interval")
	}
	clk.add(time.Minute)
	s.periodicBackups(ctx)
	nb2 := *waitBackup(t, s, id, clk.now()).BackupId
	// ids[2], no longer the newest, is older than the retention; nb1 is not.
	s.sweep(ctx)
	left = map[string]bool{}
	for _, b := range describeBackups(t, s, caller, &hsmapi.DescribeBackupsRequest{Filters: map[string][]string{"clusterIds": {id}}}) {
		left[*b.BackupId] = true
	}
	if !left[ids[1]] || !left[nb1] || !left[nb2] || len(left) != 3 {
		t.Fatalf("after the sweep: %v; want %s (never expires), %s and %s", left, ids[1], nb1, nb2)
	}
	// The loop's turn does both.
	clk.add(DefaultBackupInterval)
	s.tick(ctx)
	waitBackup(t, s, id, clk.now())
}

// TestBackupCrash: a backup a crash caught in CREATE_IN_PROGRESS without
// its contents is gone at the next start, and a fresh one is taken; a
// copy caught in CREATE_IN_PROGRESS (whole) is finished.
func TestBackupCrash(t *testing.T) {
	if !Available {
		t.Skip("built without cgo: PKCS#11 unavailable")
	}
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	b, err := barrier.New(make([]byte, 32))
	if err != nil {
		t.Fatal(err)
	}
	open := func() *Service {
		s, err := New(ctx, st, b, Config{Dir: hsmDir, BackupDelay: time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	s := open()
	id := activeCluster(t, s, 1)
	ready := waitBackup(t, s, id, time.Time{})
	s.Close()

	// What a kill -9 leaves: a backup without contents, a whole copy.
	put := func(br backupRecord) {
		v, _ := json.Marshal(br)
		if err := st.Put(ctx, backupPath(br.ID), v); err != nil {
			t.Fatal(err)
		}
	}
	put(backupRecord{ID: "backup-halfwritten2", Account: caller.Account, Region: caller.Region, ClusterID: id, State: BackupCreateInProgress, Created: time.Now()})
	raw, err := st.Get(ctx, backupPath(*ready.BackupId))
	if err != nil {
		t.Fatal(err)
	}
	var src backupRecord
	if err := json.Unmarshal(raw, &src); err != nil {
		t.Fatal(err)
	}
	plain, err := b.Open(backupContentsPath(src.ID), src.Contents)
	if err != nil {
		t.Fatal(err)
	}
	cp := backupRecord{ID: "backup-copiedwhole2", Account: caller.Account, Region: "eu-west-3", ClusterID: id, State: BackupCreateInProgress,
		Created: src.Created, SourceBackup: src.ID, SourceCluster: id, SourceRegion: caller.Region, HsmType: src.HsmType}
	if cp.Contents, err = b.Seal(backupContentsPath(cp.ID), plain); err != nil {
		t.Fatal(err)
	}
	put(cp)

	since := time.Now()
	s = open()
	defer s.Close()
	if _, err := st.Get(ctx, backupPath("backup-halfwritten2")); err != storage.ErrNotFound {
		t.Fatalf("the half-written backup is still stored: %v", err)
	}
	if bs := describeBackups(t, s, caller, &hsmapi.DescribeBackupsRequest{Filters: map[string][]string{"backupIds": {"backup-halfwritten2"}}}); len(bs) != 0 {
		t.Fatal("the half-written backup is listed")
	}
	waitBackup(t, s, id, since) // the fresh one
	paris := Caller{Account: caller.Account, Region: "eu-west-3"}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		bs := describeBackups(t, s, paris, &hsmapi.DescribeBackupsRequest{Filters: map[string][]string{"backupIds": {cp.ID}}})
		if len(bs) == 1 && *bs[0].BackupState == BackupReady {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the copy was not finished: %+v", bs)
		}
	}
}

// TestBackupTags: the tag operations reach backups as well as clusters.
func TestBackupTags(t *testing.T) {
	s := newService(t, fastBackups)
	ctx := context.Background()
	id := activeCluster(t, s, 1)
	b := *waitBackup(t, s, id, time.Time{}).BackupId
	if _, err := s.TagResource(ctx, caller, &hsmapi.TagResourceRequest{ResourceId: &b, TagList: []hsmapi.Tag{{Key: str("a"), Value: str("1")}, {Key: str("b"), Value: str("2")}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UntagResource(ctx, caller, &hsmapi.UntagResourceRequest{ResourceId: &b, TagKeyList: []string{"a"}}); err != nil {
		t.Fatal(err)
	}
	out, err := s.ListTags(ctx, caller, &hsmapi.ListTagsRequest{ResourceId: &b})
	if err != nil || len(out.TagList) != 1 || *out.TagList[0].Key != "b" {
		t.Fatalf("ListTags of a backup = %+v, %v", out, err)
	}
	if bs := describeBackups(t, s, caller, &hsmapi.DescribeBackupsRequest{Filters: map[string][]string{"backupIds": {b}}}); len(bs[0].TagList) != 1 {
		t.Fatalf("describe-backups TagList %+v", bs[0].TagList)
	}
	if ct, err := s.ListTags(ctx, caller, &hsmapi.ListTagsRequest{ResourceId: &id}); err != nil || len(ct.TagList) != 0 {
		t.Fatalf("the cluster's tags: %+v, %v", ct, err)
	}
	if _, err := s.ListTags(ctx, caller, &hsmapi.ListTagsRequest{ResourceId: str("backup-zzzzzzzzzzz")}); errName(err) != excNotFound {
		t.Fatalf("ListTags of a missing backup: %v", err)
	}
}

// TestBackupBeforeDelete: a change still waiting for its backup (here a
// kmsuser password rotation, as a key store's connect makes) is backed up
// when the cluster is deleted, so the newest backup restores a cluster
// with the rotated password.
func TestBackupBeforeDelete(t *testing.T) {
	s := newService(t, func(c *Config) { c.BackupDelay = time.Hour })
	ctx := context.Background()
	id := activeCluster(t, s, 1)
	since := time.Now()
	if err := s.RotatePassword(ctx, caller, id, "kmsuser", "kmspass1", "kmspass2"); err != nil {
		t.Fatal(err)
	}
	info, err := s.Describe(caller, id)
	if err != nil || len(info.HSMs) != 1 {
		t.Fatalf("Describe: %+v, %v", info, err)
	}
	hsmID := info.HSMs[0].ID
	if _, err := s.DeleteHsm(ctx, caller, &hsmapi.DeleteHsmRequest{ClusterId: &id, HsmId: &hsmID}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if info, _ := s.Describe(caller, id); len(info.HSMs) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the HSM is not deleted")
		}
	}
	if _, err := s.DeleteCluster(ctx, caller, &hsmapi.DeleteClusterRequest{ClusterId: &id}); err != nil {
		t.Fatal(err)
	}
	b := waitBackup(t, s, id, since)
	out, err := s.CreateCluster(ctx, caller, &hsmapi.CreateClusterRequest{HsmType: str("hsm2m.medium"),
		SubnetIds: []string{"subnet-0123456789abcdef2"}, SourceBackupId: b.BackupId})
	if err != nil {
		t.Fatal(err)
	}
	nid := *out.Cluster.ClusterId
	waitState(t, s, nid, ClusterActive)
	az := "us-east-1a"
	if _, err := s.CreateHsm(ctx, caller, &hsmapi.CreateHsmRequest{ClusterId: &nid, AvailabilityZone: &az}); err != nil {
		t.Fatal(err)
	}
	waitState(t, s, nid, ClusterActive)
	if err := s.Login(ctx, caller, nid, "kmsuser", RoleCryptoUser, "kmspass2", "kms"); err != nil {
		t.Fatalf("the rotated password on the restored cluster: %v", err)
	}
}
