package hsm

// Cluster backups, as CloudHSM v2 has them. A backup is one storage
// record under hsm/backup/<id>: its metadata in clear and the cluster's
// HSM contents sealed by the barrier (associated data: the backup's path
// plus "/contents"). Backups are taken at initialization, every
// Config.BackupInterval, and Config.BackupDelay after a change of the
// cluster's keys or users (debounced: one backup for a burst of changes).
// A backup whose start, snapshot or write fails is removed and tried
// again Config.BackupDelay later (the cluster's BackupDue marker is put
// that far ahead), so that the change it was for does not wait for the
// next periodic backup.
//
// Crash safety. A backup is written first without contents in
// CREATE_IN_PROGRESS; its contents are taken under the cluster's lock —
// which every key and user change holds across its token writes and its
// record write, so no backup sees a half-applied change — and written,
// with the state READY, in one storage write. A record found at start in
// CREATE_IN_PROGRESS without contents is removed and a fresh backup taken:
// a backup is complete or absent. A copy (CopyBackupToRegion) is written
// whole at once and only finishes its CREATE_IN_PROGRESS at start.
//
// Several nodes. Backup records are read from the store by the API
// (DescribeBackups, and before every change) and changed in storage.Update
// transactions; the backup and sweep loops run on the controller. The
// backup a change of keys or users calls for is owned by the controller
// too: the change records, in its own transaction, when a backup falls
// due (record.BackupDue, BackupDelay after the first change of a burst),
// whichever node made it; the controller's steps loop takes the backup
// once it is due, and the backup clears the marker in a transaction that
// finds the cluster's contents as the backup holds them (a change made
// meanwhile keeps it, due again BackupDelay later). A node that dies
// after a change, or a controller that dies during the backup, leaves the
// marker: the next controller takes the backup (MULTINODE.md §4.6 puts
// HSM background steps on the controller; it names no backup rule, and
// this one is kmsd's). A backup left CREATE_IN_PROGRESS by a dead
// controller is removed by the sweeper once it is older than
// orphanedBackupAge, or by a node that starts (the rule above); the other
// node's finishing write then finds it gone, and the marker, still set,
// brings a fresh one.

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/kmsd/kmsd/internal/hsmapi"
	"github.com/kmsd/kmsd/internal/storage"
)

// Backup states.
const (
	BackupCreateInProgress = "CREATE_IN_PROGRESS"
	BackupReady            = "READY"
	BackupPendingDeletion  = "PENDING_DELETION"
	BackupDeleted          = "DELETED"
)

// Backup timing defaults and bounds.
const (
	DefaultBackupInterval = 24 * time.Hour
	DefaultBackupDelay    = 30 * time.Second
	DefaultSweepInterval  = 10 * time.Minute
	// BackupDeletionWindow is how long a deleted backup stays
	// PENDING_DELETION (and can be restored) before it is really deleted.
	BackupDeletionWindow = 7 * 24 * time.Hour
	defaultRetentionDays = 90
)

func backupPath(id string) string         { return "hsm/backup/" + id }
func backupContentsPath(id string) string { return backupPath(id) + "/contents" }

// backupRecord is the stored form of a backup.
type backupRecord struct {
	ID            string     `json:"id"`
	Account       string     `json:"account"`
	Region        string     `json:"region"`
	ClusterID     string     `json:"clusterId"`
	State         string     `json:"state"`
	Created       time.Time  `json:"created"`
	Copied        *time.Time `json:"copied,omitempty"`
	DeleteAt      *time.Time `json:"deleteAt,omitempty"`
	NeverExpires  bool       `json:"neverExpires,omitempty"`
	SourceRegion  string     `json:"sourceRegion,omitempty"`
	SourceBackup  string     `json:"sourceBackup,omitempty"`
	SourceCluster string     `json:"sourceCluster,omitempty"`
	HsmType       string     `json:"hsmType"`
	Mode          string     `json:"mode,omitempty"`
	Tags          []tag      `json:"tags,omitempty"`
	Contents      []byte     `json:"contents,omitempty"` // sealed backupContents
}

// backupContents is what a backup holds of a cluster: its HSMs' objects
// and the identity that makes a restored cluster the same cluster (its
// certificate lineage). It exists in clear only in memory.
type backupContents struct {
	ClusterState string       `json:"clusterState"` // INITIALIZED or ACTIVE
	CSR          string       `json:"csr,omitempty"`
	CSRKey       []byte       `json:"csrKey,omitempty"` // PKCS#8
	ClusterCert  string       `json:"clusterCert,omitempty"`
	TrustAnchor  string       `json:"trustAnchor,omitempty"`
	SOPIN        []byte       `json:"soPin"`
	Masking      []byte       `json:"masking"`
	Users        []backupUser `json:"users,omitempty"`
	Keys         []keyRecord  `json:"keys,omitempty"`
	// Opaque is a backend's own backup of its tokens (snapshotter), for
	// HSMs that back themselves up; empty for SoftHSM2.
	Opaque []byte `json:"opaque,omitempty"`
}

type backupUser struct {
	Name     string    `json:"name"`
	Role     string    `json:"role"`
	Password []byte    `json:"password"`
	Created  time.Time `json:"created"`
}

func (c *backupContents) clear() {
	clear(c.CSRKey)
	clear(c.SOPIN)
	clear(c.Masking)
	for _, u := range c.Users {
		clear(u.Password)
	}
}

// snapshotter takes the HSM contents of a cluster for a backup and puts a
// backup's contents into a restored cluster's record (whose HSMs are then
// built from it). Callers hold the cluster's lock.
type snapshotter interface {
	snapshot(ctx context.Context, r *record) (*backupContents, error)
	restore(ctx context.Context, c *backupContents, into *record) error
}

// wrappedSnapshots is the snapshotter of SoftHSM2 (and of any module kmsd
// drives the same way). Its keys are non-extractable, so PKCS#11 cannot
// export them; but every key is wrapped inside an HSM under the cluster's
// masking key when it is generated (CKM_AES_KEY_WRAP_PAD, before it is
// made non-extractable), which is how kmsd's HSMs synchronise. A backup
// holds the token objects in that form: the masking key and the PINs
// sealed, the keys as wrapped by the HSM — the way CloudHSM's backups hold
// keys wrapped by an HSM-held backup key. Restoring unwraps them into the
// restored cluster's new tokens. Copying SoftHSM2's token directories was
// the alternative; it ties a backup to one module's file format and to
// the HSM ids in the token labels, which a restored cluster must not
// reuse.
type wrappedSnapshots struct{ s *Service }

var _ snapshotter = wrappedSnapshots{}

func (w wrappedSnapshots) snapshot(ctx context.Context, r *record) (*backupContents, error) {
	s := w.s
	c := &backupContents{ClusterState: r.State, CSR: r.CSR, ClusterCert: r.ClusterCert, TrustAnchor: r.TrustAnchor}
	if r.State == ClusterDegraded { // only an ACTIVE cluster degrades (health.go)
		c.ClusterState = ClusterActive
	}
	var err error
	if c.SOPIN, err = s.open(soPINPath(r.ID), r.SOPIN); err != nil {
		return nil, err
	}
	if c.Masking, err = s.open(maskingPath(r.ID), r.Masking); err != nil {
		c.clear()
		return nil, err
	}
	if len(r.CSRKey) > 0 {
		if c.CSRKey, err = s.open(csrKeyPath(r.ID), r.CSRKey); err != nil {
			c.clear()
			return nil, err
		}
	}
	for _, u := range r.Users {
		pw, err := s.open(userPath(r.ID, u.Name), u.Password)
		if err != nil {
			c.clear()
			return nil, err
		}
		c.Users = append(c.Users, backupUser{Name: u.Name, Role: u.Role, Password: pw, Created: u.Created})
	}
	c.Keys = append(c.Keys, r.Keys...)
	return c, nil
}

func (w wrappedSnapshots) restore(ctx context.Context, c *backupContents, r *record) error {
	s := w.s
	var err error
	if r.SOPIN, err = s.seal(soPINPath(r.ID), c.SOPIN); err != nil {
		return err
	}
	if r.Masking, err = s.seal(maskingPath(r.ID), c.Masking); err != nil {
		return err
	}
	if len(c.CSRKey) > 0 {
		if r.CSRKey, err = s.seal(csrKeyPath(r.ID), c.CSRKey); err != nil {
			return err
		}
	}
	r.Users = nil
	for _, u := range c.Users {
		pw, err := s.seal(userPath(r.ID, u.Name), u.Password)
		if err != nil {
			return err
		}
		r.Users = append(r.Users, userRecord{Name: u.Name, Role: u.Role, Password: pw, Created: u.Created})
	}
	r.Keys = append([]keyRecord(nil), c.Keys...)
	r.CSR, r.ClusterCert, r.TrustAnchor = c.CSR, c.ClusterCert, c.TrustAnchor
	return nil
}

// snapshotterFor returns how r's HSMs are backed up: every module kmsd
// drives today keeps its keys wrapped under the masking key.
func (s *Service) snapshotterFor(*record) snapshotter { return wrappedSnapshots{s} }

// backedUp reports whether a cluster in r's state has contents to back
// up: initialized, and kmsd's own (a declared cluster's tokens are the
// operator's, backed up outside kmsd).
func backedUp(r *record) bool {
	if r.Declared {
		return false
	}
	switch r.State {
	case ClusterInitialized, ClusterActive, ClusterDegraded:
		return true
	}
	return false
}

// contentChanged reports whether next differs from prev in what a backup
// holds: keys, users and their passwords, the admin password.
func contentChanged(prev, next *record) bool {
	if prev == nil || !backedUp(next) {
		return false
	}
	if string(prev.SOPIN) != string(next.SOPIN) || len(prev.Keys) != len(next.Keys) || len(prev.Users) != len(next.Users) {
		return true
	}
	for i := range prev.Keys {
		if prev.Keys[i].Label != next.Keys[i].Label {
			return true
		}
	}
	for i := range prev.Users {
		if prev.Users[i].Name != next.Users[i].Name || string(prev.Users[i].Password) != string(next.Users[i].Password) {
			return true
		}
	}
	return false
}

// orphanedBackupAge is how old a backup still CREATE_IN_PROGRESS without
// contents must be, beyond Config.CreateDelay, before the sweeper takes it
// for one whose node died taking it and removes it.
const orphanedBackupAge = 5 * time.Minute

// dueBackup starts the backup that cluster r's BackupDue marker calls for,
// unless this node is taking one of r already. It runs on the controller
// (runSteps).
func (s *Service) dueBackup(ctx context.Context, r *record) {
	s.bkMu.Lock()
	if s.bkPending[r.ID] {
		s.bkMu.Unlock()
		return
	}
	s.bkPending[r.ID] = true
	s.bkMu.Unlock()
	if !s.takeBackup(ctx, r.ID) {
		s.settleBackup(r.ID)
	}
}

// settleBackup ends this node's backup of cluster id in progress.
func (s *Service) settleBackup(id string) {
	s.bkMu.Lock()
	delete(s.bkPending, id)
	s.bkMu.Unlock()
}

// flushBackup takes at once the backup a change of cluster id marked due
// (markBackup), for a cluster about to lose its contents: deleting it must
// not lose its last change — a kmsuser password a key store's connect
// rotated, say — to Config.BackupDelay, or restoring its newest backup
// would give a cluster with the old password.
func (s *Service) flushBackup(ctx context.Context, id string) {
	r, err := s.fresh(ctx, id)
	if err != nil || r.BackupDue == nil || !backedUp(r) {
		return
	}
	b := &backupRecord{ID: s.newID("backup-"), Account: r.Account, Region: r.Region, ClusterID: r.ID,
		State: BackupCreateInProgress, Created: s.dbNow(), HsmType: r.HsmType, Mode: r.Mode}
	if err := s.putBackup(ctx, b, true); err != nil {
		s.log.Error("hsm: start backup", "cluster", id, "err", err)
		return
	}
	s.finishBackup(ctx, b.ID, r)
}

// takeBackup backs cluster id up: a CREATE_IN_PROGRESS record, then after
// Config.CreateDelay the contents, READY, in one write. It reports whether
// the backup was started.
func (s *Service) takeBackup(ctx context.Context, id string) bool {
	r, ok := s.byID(id)
	if !ok || !backedUp(r) {
		return false
	}
	b := &backupRecord{ID: s.newID("backup-"), Account: r.Account, Region: r.Region, ClusterID: r.ID,
		State: BackupCreateInProgress, Created: s.dbNow(), HsmType: r.HsmType, Mode: r.Mode}
	if err := s.putBackup(ctx, b, true); err != nil {
		s.log.Error("hsm: start backup", "cluster", id, "err", err)
		// Tried again, as a failed snapshot or write is (finishBackup).
		if ctx.Err() == nil {
			s.backupFailed(ctx, id)
		}
		return false
	}
	s.after(s.cfg.CreateDelay, func(ctx context.Context) { s.finishBackup(ctx, b.ID, r) })
	return true
}

// backedUpThrough clears cluster id's BackupDue marker now that a backup
// created when the record was snap holds its contents — unless the
// record's contents changed since, in which case the backup of that change
// is due Config.BackupDelay from now. A marker left by a failed write is taken up
// again by the steps loop.
func (s *Service) backedUpThrough(ctx context.Context, id string, snap *record) {
	now := s.dbNow()
	_, err := s.update(ctx, id, func(r *record) error {
		if r.BackupDue == nil {
			return errSkip
		}
		if contentChanged(snap, r) {
			due := now.Add(s.cfg.BackupDelay)
			r.BackupDue = &due
			return nil
		}
		r.BackupDue = nil
		return nil
	})
	if err != nil && !errors.Is(err, errSkip) && !errors.Is(err, ErrClusterNotFound) {
		s.log.Warn("hsm: clear the backup marker", "cluster", id, "err", err)
	}
}

// markDue marks a backup of cluster id due now, unless one is due already.
func (s *Service) markDue(ctx context.Context, id string) {
	now := s.dbNow()
	_, err := s.update(ctx, id, func(r *record) error {
		if !backedUp(r) || r.BackupDue != nil {
			return errSkip
		}
		r.BackupDue = &now
		return nil
	})
	if err != nil && !errors.Is(err, errSkip) && !errors.Is(err, ErrClusterNotFound) {
		s.log.Warn("hsm: mark a backup due", "cluster", id, "err", err)
	}
}

// backupFailed puts the cluster's BackupDue marker Config.BackupDelay
// ahead after a backup failed, so that the change it was for is backed up
// by a later try (not only by the next periodic backup), without trying
// again at every turn of the steps loop.
func (s *Service) backupFailed(ctx context.Context, id string) {
	due := s.dbNow().Add(s.cfg.BackupDelay)
	_, err := s.update(ctx, id, func(r *record) error {
		if !backedUp(r) {
			return errSkip
		}
		r.BackupDue = &due
		return nil
	})
	if err != nil && !errors.Is(err, errSkip) && !errors.Is(err, ErrClusterNotFound) {
		s.log.Warn("hsm: mark the backup due again", "cluster", id, "err", err)
	}
}

// finishBackup takes the contents of a CREATE_IN_PROGRESS backup under
// its cluster's lock and makes it READY, in a transaction that finds the
// backup still CREATE_IN_PROGRESS; then it clears the cluster's BackupDue
// marker unless its contents changed since begun, the cluster's record
// when the backup was created (so that every change has a backup created
// after it).
func (s *Service) finishBackup(ctx context.Context, id string, begun *record) {
	defer s.settleBackup(begun.ID)
	// Read from the store, not the cache: a Reset of the cache (reloadBackups)
	// that listed the backups just before this one was created replaces the
	// map without it, and a backup skipped here would stay
	// CREATE_IN_PROGRESS for good (TestBackupRestore under CI's load).
	b, err := readBackup(ctx, s.store, id)
	if err != nil {
		var ce callerError
		if !errors.As(err, &ce) {
			s.log.Error("hsm: read backup", "backup", id, "err", err)
		}
		return
	}
	if b.State != BackupCreateInProgress {
		return
	}
	err = func() error {
		defer s.lock(b.ClusterID)()
		r, err := s.fresh(ctx, b.ClusterID)
		if errors.Is(err, ErrClusterNotFound) || err == nil && !backedUp(r) {
			return errSkip
		}
		if err != nil {
			return err
		}
		c, err := s.snapshotterFor(r).snapshot(ctx, r)
		if err != nil {
			return err
		}
		defer c.clear()
		plain, err := json.Marshal(c)
		if err != nil {
			return err
		}
		defer clear(plain)
		sealed, err := s.seal(backupContentsPath(b.ID), plain)
		if err != nil {
			return err
		}
		_, err = s.writeBackup(ctx, b.ID, func(next *backupRecord) error {
			if next.State != BackupCreateInProgress {
				return errSkip
			}
			next.Contents, next.State = sealed, BackupReady
			return nil
		})
		return err
	}()
	if errors.Is(err, errSkip) {
		s.dropBackup(ctx, b.ID)
		return
	}
	if err != nil {
		s.log.Error("hsm: take backup", "cluster", b.ClusterID, "backup", b.ID, "err", err)
		s.dropBackup(ctx, b.ID)
		// The change that called for this backup is not backed up yet: try
		// again, or it would wait for the next periodic backup.
		if ctx.Err() == nil {
			s.backupFailed(ctx, b.ClusterID)
		}
		return
	}
	s.log.Info("hsm: backup ready", "cluster", b.ClusterID, "backup", b.ID)
	s.backedUpThrough(ctx, b.ClusterID, begun)
}

// putBackup stores a new backup record b (create) or overwrites it, and
// caches it.
func (s *Service) putBackup(ctx context.Context, b *backupRecord, create bool) error {
	v, err := json.Marshal(b)
	if err != nil {
		return err
	}
	if create {
		err = s.store.Create(ctx, backupPath(b.ID), v)
	} else {
		err = s.store.Put(ctx, backupPath(b.ID), v)
	}
	if err != nil {
		return fmt.Errorf("hsm: store backup %s: %w", b.ID, err)
	}
	s.bkMu.Lock()
	s.backups[b.ID] = b
	s.bkMu.Unlock()
	return nil
}

// writeBackup applies fn to a copy of backup id as the transaction that
// stores the result reads it (fn may run more than once); an error from
// fn changes nothing.
func (s *Service) writeBackup(ctx context.Context, id string, fn func(b *backupRecord) error) (*backupRecord, error) {
	var next *backupRecord
	err := s.store.Update(ctx, func(tx storage.Tx) error {
		cur, err := readBackup(ctx, tx, id)
		if err != nil {
			return err
		}
		next = cur
		if err := fn(next); err != nil {
			return callerError{err}
		}
		v, err := json.Marshal(next)
		if err != nil {
			return err
		}
		return tx.Put(ctx, backupPath(id), v)
	})
	if err != nil {
		return nil, unwrapCaller(id, err)
	}
	s.bkMu.Lock()
	s.backups[id] = next
	s.bkMu.Unlock()
	return next, nil
}

// readBackup reads backup id in r; a missing one is the caller's
// notFound.
func readBackup(ctx context.Context, r storage.Reader, id string) (*backupRecord, error) {
	v, err := r.Get(ctx, backupPath(id))
	if errors.Is(err, storage.ErrNotFound) {
		return nil, callerError{notFound(id)}
	}
	if err != nil {
		return nil, err
	}
	b := new(backupRecord)
	if err := json.Unmarshal(v, b); err != nil {
		return nil, fmt.Errorf("hsm: decode backup %s: %w", id, err)
	}
	return b, nil
}

func backupIDOf(key string) (string, bool) {
	id, ok := strings.CutPrefix(key, "hsm/backup/")
	return id, ok && id != "" && !strings.Contains(id, "/")
}

// reloadBackup refreshes the cached backup id from the store.
func (s *Service) reloadBackup(ctx context.Context, id string) error {
	b, err := readBackup(ctx, s.store, id)
	s.bkMu.Lock()
	defer s.bkMu.Unlock()
	var ce callerError
	switch {
	case errors.As(err, &ce):
		delete(s.backups, id)
	case err != nil:
		return fmt.Errorf("hsm: reload backup %s: %w", id, err)
	default:
		s.backups[id] = b
	}
	return nil
}

// reloadBackups replaces the cached backups with the store's.
func (s *Service) reloadBackups(ctx context.Context) error {
	entries, err := s.store.List(ctx, "hsm/backup/", "", 0)
	if err != nil {
		return fmt.Errorf("hsm: list backups: %w", err)
	}
	bs := map[string]*backupRecord{}
	for _, e := range entries {
		if _, ok := backupIDOf(e.Key); !ok {
			continue
		}
		b := new(backupRecord)
		if err := json.Unmarshal(e.Value, b); err != nil {
			return fmt.Errorf("hsm: decode %s: %w", e.Key, err)
		}
		bs[b.ID] = b
	}
	s.bkMu.Lock()
	s.backups = bs
	s.bkMu.Unlock()
	return nil
}

// dropBackup deletes backup id for good.
func (s *Service) dropBackup(ctx context.Context, id string) {
	if err := s.store.Delete(ctx, backupPath(id)); err != nil {
		s.log.Error("hsm: delete backup", "backup", id, "err", err)
		return
	}
	s.bkMu.Lock()
	delete(s.backups, id)
	s.bkMu.Unlock()
}

// takingBackup says this node is taking a backup of cluster id.
func (s *Service) takingBackup(id string) bool {
	s.bkMu.Lock()
	defer s.bkMu.Unlock()
	return s.bkPending[id]
}

func (s *Service) backup(id string) (*backupRecord, bool) {
	s.bkMu.Lock()
	defer s.bkMu.Unlock()
	b, ok := s.backups[id]
	return b, ok
}

// callerBackup returns backup id, read from the store, if it belongs to
// c's account and Region.
func (s *Service) callerBackup(ctx context.Context, c Caller, id string) (*backupRecord, error) {
	b, err := readBackup(ctx, s.store, id)
	if err != nil {
		return nil, unwrapCaller(id, err)
	}
	if b.Account != c.Account || b.Region != c.Region || b.State == BackupDeleted {
		return nil, notFound(id)
	}
	return b, nil
}

// updateBackup applies fn to a copy of c's backup id, as the transaction
// that stores the result reads it.
func (s *Service) updateBackup(ctx context.Context, c Caller, id string, fn func(b *backupRecord) error) (*backupRecord, error) {
	return s.writeBackup(ctx, id, func(b *backupRecord) error {
		if b.Account != c.Account || b.Region != c.Region || b.State == BackupDeleted {
			return notFound(id)
		}
		return fn(b)
	})
}

// loadBackups reads the backups at start: a backup caught without its
// contents by a crash is removed and its cluster backed up afresh; a copy
// caught in CREATE_IN_PROGRESS (which has its contents) is finished.
func (s *Service) loadBackups(ctx context.Context) error {
	entries, err := s.store.List(ctx, "hsm/backup/", "", 0)
	if err != nil {
		return fmt.Errorf("hsm: load backups: %w", err)
	}
	for _, e := range entries {
		b := new(backupRecord)
		if err := json.Unmarshal(e.Value, b); err != nil {
			return fmt.Errorf("hsm: decode %s: %w", e.Key, err)
		}
		if b.State == BackupCreateInProgress && len(b.Contents) == 0 {
			if err := s.store.Delete(ctx, e.Key); err != nil {
				return fmt.Errorf("hsm: remove unfinished backup %s: %w", b.ID, err)
			}
			s.log.Warn("hsm: removed a backup left unfinished by a crash", "backup", b.ID, "cluster", b.ClusterID)
			// A fresh one, due at once: the controller takes it.
			s.markDue(ctx, b.ClusterID)
			continue
		}
		// Under bkMu: a copy finished by an earlier iteration's timer
		// may already read the map.
		s.bkMu.Lock()
		s.backups[b.ID] = b
		s.bkMu.Unlock()
		if b.State == BackupCreateInProgress {
			id := b.ID
			s.after(s.cfg.CreateDelay, func(ctx context.Context) { s.finishCopy(ctx, id) })
		}
	}
	return nil
}

// backupLoop runs due periodic backups and the sweeper until ctx ends.
func (s *Service) backupLoop(ctx context.Context) {
	tick := s.cfg.SweepInterval
	if s.cfg.BackupInterval < tick {
		tick = s.cfg.BackupInterval
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.tick(ctx)
		}
	}
}

// periodicBackups backs up every cluster whose newest backup is older
// than Config.BackupInterval.
func (s *Service) periodicBackups(ctx context.Context) {
	newest := map[string]time.Time{}
	s.bkMu.Lock()
	for _, b := range s.backups {
		if b.SourceBackup == "" && b.Created.After(newest[b.ClusterID]) {
			newest[b.ClusterID] = b.Created
		}
	}
	s.bkMu.Unlock()
	now := s.dbNow()
	s.mu.RLock()
	var due []string
	for _, r := range s.clusters {
		if backedUp(r) && now.Sub(newest[r.ID]) >= s.cfg.BackupInterval {
			due = append(due, r.ID)
		}
	}
	s.mu.RUnlock()
	for _, id := range due {
		s.takeBackup(ctx, id)
	}
}

// sweep deletes for good the backups whose PENDING_DELETION window has
// ended, and those older than their cluster's retention policy unless
// they never expire or are the newest READY backup of a cluster that
// still exists (as CloudHSM keeps it).
func (s *Service) sweep(ctx context.Context) {
	now := s.dbNow()
	s.bkMu.Lock()
	all := make([]*backupRecord, 0, len(s.backups))
	newest := map[string]*backupRecord{}
	for _, b := range s.backups {
		all = append(all, b)
		if b.State == BackupReady && b.SourceBackup == "" && (newest[b.ClusterID] == nil || b.Created.After(newest[b.ClusterID].Created)) {
			newest[b.ClusterID] = b
		}
	}
	s.bkMu.Unlock()
	for _, b := range all {
		switch {
		case b.State == BackupPendingDeletion && b.DeleteAt != nil && !now.Before(*b.DeleteAt):
		case b.State == BackupCreateInProgress && len(b.Contents) == 0 && b.SourceBackup == "" &&
			now.Sub(b.Created) > s.cfg.CreateDelay+orphanedBackupAge && !s.takingBackup(b.ClusterID):
			// Left by a node that died taking it; its cluster's marker
			// brought (or brings) another.
		case b.State == BackupReady && !b.NeverExpires:
			days := defaultRetentionDays
			r, ok := s.byID(b.ClusterID)
			if ok && r.Region == b.Region {
				if n, err := strconv.Atoi(r.RetentionDays); err == nil {
					days = n
				}
				if r.State != ClusterDeleted && newest[b.ClusterID] == b {
					continue
				}
			}
			if now.Sub(b.Created) < time.Duration(days)*24*time.Hour {
				continue
			}
		default:
			continue
		}
		unlock := s.lock(backupPath(b.ID))
		if cur, ok := s.backup(b.ID); ok && cur.State == b.State {
			s.dropBackup(ctx, b.ID)
			s.log.Info("hsm: backup deleted", "backup", b.ID, "cluster", b.ClusterID, "state", b.State)
		}
		unlock()
	}
}

// tick is one turn of the backup loop: due backups, then the sweeper.
func (s *Service) tick(ctx context.Context) {
	s.periodicBackups(ctx)
	s.sweep(ctx)
}

func backupWire(b *backupRecord) *hsmapi.Backup {
	w := &hsmapi.Backup{
		BackupId:        hsmapi.String(b.ID),
		BackupArn:       hsmapi.String("arn:aws:cloudhsm:" + b.Region + ":" + b.Account + ":backup/" + b.ID),
		BackupState:     hsmapi.String(b.State),
		ClusterId:       hsmapi.String(b.ClusterID),
		CreateTimestamp: hsmapi.NewTime(b.Created),
		NeverExpires:    &b.NeverExpires,
		HsmType:         hsmapi.String(b.HsmType),
	}
	if b.Mode != "" {
		w.Mode = hsmapi.String(b.Mode)
	}
	if b.Copied != nil {
		w.CopyTimestamp = hsmapi.NewTime(*b.Copied)
	}
	if b.DeleteAt != nil {
		w.DeleteTimestamp = hsmapi.NewTime(*b.DeleteAt)
	}
	if b.SourceBackup != "" {
		w.SourceBackup, w.SourceCluster, w.SourceRegion = hsmapi.String(b.SourceBackup), hsmapi.String(b.SourceCluster), hsmapi.String(b.SourceRegion)
	}
	for _, t := range b.Tags {
		w.TagList = append(w.TagList, hsmapi.Tag{Key: hsmapi.String(t.Key), Value: hsmapi.String(t.Value)})
	}
	return w
}

// DescribeBackups lists the caller's backups, filtered by backupIds,
// sourceBackupIds, clusterIds, states and neverExpires, newest first (or
// oldest first with SortAscending), a page at a time.
func (s *Service) DescribeBackups(ctx context.Context, c Caller, in *hsmapi.DescribeBackupsRequest) (*hsmapi.DescribeBackupsResponse, error) {
	for k, vs := range in.Filters {
		switch k {
		case "backupIds", "sourceBackupIds", "clusterIds":
		case "states":
			for _, v := range vs {
				if !contains(hsmapi.EnumBackupState, v) {
					return nil, invalid("Invalid value %s for filter states.", v)
				}
			}
		case "neverExpires":
			for _, v := range vs {
				if v != "true" && v != "false" {
					return nil, invalid("Invalid value %s for filter neverExpires; use true or false.", v)
				}
			}
		default:
			return nil, invalid("Invalid filter key %s; valid keys are backupIds, sourceBackupIds, clusterIds, states and neverExpires.", k)
		}
	}
	asc := in.SortAscending != nil && *in.SortAscending
	if err := s.reloadBackups(ctx); err != nil { // control plane: fresh
		return nil, err
	}
	var bs []*backupRecord
	s.bkMu.Lock()
	for _, b := range s.backups {
		if b.Account != c.Account || b.Region != c.Region {
			continue
		}
		if !match(in.Filters, "backupIds", b.ID) || !match(in.Filters, "clusterIds", b.ClusterID) ||
			!match(in.Filters, "states", b.State) || !match(in.Filters, "neverExpires", strconv.FormatBool(b.NeverExpires)) {
			continue
		}
		if _, ok := in.Filters["sourceBackupIds"]; ok && !match(in.Filters, "sourceBackupIds", b.SourceBackup) {
			continue
		}
		bs = append(bs, b)
	}
	s.bkMu.Unlock()
	sort.Slice(bs, func(i, j int) bool {
		if !bs[i].Created.Equal(bs[j].Created) {
			return bs[i].Created.Before(bs[j].Created) == asc
		}
		return bs[i].ID < bs[j].ID == asc
	})
	start := 0
	if in.NextToken != nil && *in.NextToken != "" {
		raw, err := base64.RawURLEncoding.DecodeString(*in.NextToken)
		n, aerr := strconv.Atoi(strings.TrimPrefix(string(raw), "backup:"))
		if err != nil || aerr != nil || !strings.HasPrefix(string(raw), "backup:") || n < 0 || n > len(bs) {
			return nil, invalid("The NextToken is not valid.")
		}
		start = n
	}
	end := len(bs)
	if in.MaxResults != nil && start+int(*in.MaxResults) < end {
		end = start + int(*in.MaxResults)
	}
	out := &hsmapi.DescribeBackupsResponse{Backups: []hsmapi.Backup{}}
	for _, b := range bs[start:end] {
		out.Backups = append(out.Backups, *backupWire(b))
	}
	if end < len(bs) {
		tok := base64.RawURLEncoding.EncodeToString([]byte("backup:" + strconv.Itoa(end)))
		out.NextToken = &tok
	}
	return out, nil
}

// DeleteBackup marks a READY backup PENDING_DELETION; the sweeper deletes
// it BackupDeletionWindow later unless RestoreBackup comes first.
func (s *Service) DeleteBackup(ctx context.Context, c Caller, in *hsmapi.DeleteBackupRequest) (*hsmapi.DeleteBackupResponse, error) {
	b, err := s.updateBackup(ctx, c, *in.BackupId, func(b *backupRecord) error {
		if b.State != BackupReady {
			return invalid("Backup %s is in state %s; only a READY backup can be deleted.", b.ID, b.State)
		}
		at := s.dbNow().Add(BackupDeletionWindow)
		b.State, b.DeleteAt = BackupPendingDeletion, &at
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &hsmapi.DeleteBackupResponse{Backup: backupWire(b)}, nil
}

// RestoreBackup takes a PENDING_DELETION backup back to READY.
func (s *Service) RestoreBackup(ctx context.Context, c Caller, in *hsmapi.RestoreBackupRequest) (*hsmapi.RestoreBackupResponse, error) {
	b, err := s.updateBackup(ctx, c, *in.BackupId, func(b *backupRecord) error {
		if b.State != BackupPendingDeletion {
			return invalid("Backup %s is in state %s; only a PENDING_DELETION backup can be restored.", b.ID, b.State)
		}
		b.State, b.DeleteAt = BackupReady, nil
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &hsmapi.RestoreBackupResponse{Backup: backupWire(b)}, nil
}

// ModifyBackupAttributes sets whether a backup never expires (is kept
// whatever its cluster's retention policy).
func (s *Service) ModifyBackupAttributes(ctx context.Context, c Caller, in *hsmapi.ModifyBackupAttributesRequest) (*hsmapi.ModifyBackupAttributesResponse, error) {
	b, err := s.updateBackup(ctx, c, *in.BackupId, func(b *backupRecord) error {
		if b.State == BackupCreateInProgress {
			return invalid("Backup %s is still being created.", b.ID)
		}
		b.NeverExpires = *in.NeverExpires
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &hsmapi.ModifyBackupAttributesResponse{Backup: backupWire(b)}, nil
}

// CopyBackupToRegion copies a READY backup to another Region of the
// caller's account: a new backup there (CREATE_IN_PROGRESS, then READY)
// naming its source backup, cluster and Region, with the source's
// CreateTimestamp (as DestinationBackup has it) and its own CopyTimestamp.
func (s *Service) CopyBackupToRegion(ctx context.Context, c Caller, in *hsmapi.CopyBackupToRegionRequest) (*hsmapi.CopyBackupToRegionResponse, error) {
	src, err := s.callerBackup(ctx, c, *in.BackupId)
	if err != nil {
		return nil, err
	}
	if *in.DestinationRegion == c.Region {
		return nil, invalid("The destination Region %s is the backup's own Region.", c.Region)
	}
	if src.State != BackupReady {
		return nil, invalid("Backup %s is in state %s; only a READY backup can be copied.", src.ID, src.State)
	}
	tags, err := mergeTags(nil, in.TagList)
	if err != nil {
		return nil, err
	}
	plain, err := s.open(backupContentsPath(src.ID), src.Contents)
	if err != nil {
		return nil, err
	}
	defer clear(plain)
	now := s.now().UTC()
	dst := &backupRecord{ID: s.newID("backup-"), Account: c.Account, Region: *in.DestinationRegion, ClusterID: src.ClusterID,
		State: BackupCreateInProgress, Created: src.Created, Copied: &now, HsmType: src.HsmType, Mode: src.Mode, Tags: tags,
		SourceRegion: c.Region, SourceBackup: src.ID, SourceCluster: src.ClusterID}
	if dst.Contents, err = s.seal(backupContentsPath(dst.ID), plain); err != nil {
		return nil, err
	}
	if err := s.putBackup(ctx, dst, true); err != nil {
		return nil, err
	}
	s.after(s.cfg.CreateDelay, func(ctx context.Context) { s.finishCopy(ctx, dst.ID) })
	return &hsmapi.CopyBackupToRegionResponse{DestinationBackup: &hsmapi.DestinationBackup{
		CreateTimestamp: hsmapi.NewTime(src.Created), SourceRegion: hsmapi.String(c.Region),
		SourceBackup: hsmapi.String(src.ID), SourceCluster: hsmapi.String(src.ClusterID)}}, nil
}

func (s *Service) finishCopy(ctx context.Context, id string) {
	_, err := s.writeBackup(ctx, id, func(b *backupRecord) error {
		if b.State != BackupCreateInProgress {
			return errSkip
		}
		b.State = BackupReady
		return nil
	})
	if err != nil && !errors.Is(err, errSkip) && !isNotFound(err) {
		s.log.Error("hsm: finish copying backup", "backup", id, "err", err)
	}
}

// isNotFound says err is a CloudHsmResourceNotFoundException.
func isNotFound(err error) bool {
	var e *hsmapi.Exception
	return errors.As(err, &e) && e.Name == excNotFound
}

// restoreInto fills the new cluster r from backup id of caller c: the
// same HSM contents and certificate lineage. The record is then stored in
// one write, so a restored cluster is whole or absent.
func (s *Service) restoreInto(ctx context.Context, c Caller, id string, r *record) error {
	id = id[strings.LastIndex(id, "/")+1:] // a backup ARN names the backup
	b, err := s.callerBackup(ctx, c, id)
	if err != nil {
		return err
	}
	if b.State != BackupReady {
		return invalid("Backup %s is in state %s; a cluster can be restored only from a READY backup.", b.ID, b.State)
	}
	plain, err := s.open(backupContentsPath(b.ID), b.Contents)
	if err != nil {
		return err
	}
	defer clear(plain)
	var bc backupContents
	if err := json.Unmarshal(plain, &bc); err != nil {
		return fmt.Errorf("hsm: decode backup %s: %w", b.ID, err)
	}
	defer bc.clear()
	if err := s.snapshotterFor(r).restore(ctx, &bc, r); err != nil {
		return err
	}
	r.SourceBackup, r.RestoredState = b.ID, bc.ClusterState
	if r.Mode == "" {
		r.Mode = b.Mode
	}
	return nil
}
