package hsm

import (
	"context"
	"database/sql"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	_ "modernc.org/sqlite" // the "sqlite" database/sql driver, to reach kmsd's database
)

// TestBackupRetriedAfterFailedWrite: a backup whose write fails is removed
// and tried again, so the change of keys that called for it is backed up
// without waiting for the next periodic backup (a day by default). The
// fault is real and outside kmsd: a trigger in kmsd's own SQLite database
// aborts every write that starts a backup (CREATE_IN_PROGRESS) or makes it
// READY. Backups of a key generated meanwhile fail, and are tried again,
// until the trigger is dropped; then a READY backup taken after the key's
// creation is there, as the aws CLI's describe-backups lists it, and the
// failed attempts are not. Without commit 0a4bffc a failed READY write was
// tried only once; a failed start was not tried again before this test.
func TestBackupRetriedAfterFailedWrite(t *testing.T) {
	requireTools(t)
	for _, tc := range []struct {
		name, state string
		logged      string // the log line of a failed attempt, up to its error
	}{
		{"start", "CREATE_IN_PROGRESS", `msg="hsm: start backup" cluster=CLUSTER err="hsm: store backup (backup-[a-z2-7]+): `},
		{"ready", "READY", `msg="hsm: take backup" cluster=CLUSTER backup=(backup-[a-z2-7]+) err="`},
	} {
		t.Run(tc.name, func(t *testing.T) { testBackupRetried(t, tc.state, tc.logged) })
	}
}

func testBackupRetried(t *testing.T, state, logged string) {
	k := startWith(t, kmsdBin, backupEnv)
	id, _ := k.activeCluster(t, k.fast, t.TempDir(), "retry")
	k.waitBackup(t, id, time.Time{})

	// The backups of the cluster's creation settle first.
	inProgress := func() bool {
		for _, b := range k.backups(t, true, `{"clusterIds":["`+id+`"]}`) {
			if b["BackupState"] == "CREATE_IN_PROGRESS" {
				return true
			}
		}
		return false
	}
	for deadline, quiet := time.Now().Add(20*time.Second), 0; quiet < 3; time.Sleep(200 * time.Millisecond) {
		if quiet++; inProgress() {
			quiet = 0
		}
		if time.Now().After(deadline) {
			t.Fatal("the cluster's backups never settled")
		}
	}

	db, err := sql.Open("sqlite", "file:"+filepath.Join(k.dataDir, "kmsd.db")+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()
	// A value over 320 bytes is a row of kv_big, written before the kv
	// row that names it (internal/storage/sqlite, schema version 4).
	if _, err := db.ExecContext(ctx, `CREATE TRIGGER test_fail_backup BEFORE INSERT ON kv
		WHEN NEW.key LIKE 'hsm/backup/%'
			AND CAST(coalesce(NEW.value, (SELECT value FROM kv_big WHERE id = NEW.big)) AS TEXT) LIKE '%"state":"`+state+`"%'
		BEGIN SELECT RAISE(ABORT, 'injected fault: backup write refused'); END`); err != nil {
		t.Fatal(err)
	}
	since := time.Now()
	k.cliOK(t, "login", "--cluster-id", id, "--username", "kmsuser", "--role", "crypto-user", "--password", "kmsPswd1")
	k.cliOK(t, "key", "generate-symmetric", "aes", "--cluster-id", id, "--label", "retried-key", "--key-length-bytes", "32")
	k.cliOK(t, "logout", "--cluster-id", id, "--username", "kmsuser", "--role", "crypto-user")

	// Each failed attempt is logged with its backup id; wait for two.
	failedRE := regexp.MustCompile(strings.Replace(logged, "CLUSTER", id, 1) + `.*injected fault`)
	var failed []string
	for deadline := time.Now().Add(15 * time.Second); len(failed) < 2; time.Sleep(100 * time.Millisecond) {
		failed = failed[:0]
		for _, m := range failedRE.FindAllStringSubmatch(k.proc.Log(), -1) {
			failed = append(failed, m[1])
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d failed backup attempts in kmsd's log, want 2: a failed backup is not tried again\n%s", len(failed), k.proc.Log())
		}
	}
	if _, err := db.ExecContext(ctx, `DROP TRIGGER test_fail_backup`); err != nil {
		t.Fatal(err)
	}

	b := k.waitBackup(t, id, since)
	var all []string
	for _, x := range k.backups(t, false, `{"clusterIds":["`+id+`"]}`) { // the aws CLI
		all = append(all, x["BackupId"].(string))
		if slices.Contains(failed, x["BackupId"].(string)) {
			t.Errorf("failed backup %s is listed: %v", x["BackupId"], x)
		}
	}
	if !slices.Contains(all, b["BackupId"].(string)) {
		t.Fatalf("the aws CLI does not list backup %s: %v", b["BackupId"], all)
	}
}
