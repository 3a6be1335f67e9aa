package postgres

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/kmsd/kmsd/internal/storage"
)

// pgPair is a private primary with a synchronous streaming standby
// (scripts/postgres.sh start and standby), for tests that crash, stop and
// promote them; both are stopped when the test ends.
type pgPair struct {
	primary, standby string // directories
	primaryURL       string
}

func script() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..", "scripts", "postgres.sh")
}

// pg runs scripts/postgres.sh with args and returns its output.
func pg(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(script(), args...).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("scripts/postgres.sh %s: %v\n%s", strings.Join(args, " "), err, ee.Stderr)
		}
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

func startPair(t *testing.T) *pgPair {
	t.Helper()
	var p pgPair
	for _, d := range []*string{&p.primary, &p.standby} {
		// Not t.TempDir: the server's user (kmsdtest under root) must
		// reach the directory.
		dir, err := os.MkdirTemp("", "kmsd-syncrep-")
		if err != nil {
			t.Fatal(err)
		}
		*d = dir
		t.Cleanup(func() {
			exec.Command(script(), "stop", dir, "immediate").Run()
			os.RemoveAll(dir)
		})
	}
	p.primaryURL = pg(t, "start", p.primary)
	pg(t, "standby", p.standby, p.primary)
	return &p
}

func (p *pgPair) port(t *testing.T, dir string) string {
	b, err := os.ReadFile(filepath.Join(dir, "port"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// crashPrimary stops the primary as a crash would and starts it again:
// recovery replays its WAL, the commits that never reached the standby
// included.
func (p *pgPair) crashPrimary(t *testing.T) {
	pg(t, "stop", p.primary, "immediate")
	pg(t, "start", p.primary, p.port(t, p.primary))
}

// failover stops the primary for good and promotes the standby (started
// again first if it was stopped); it returns the standby's URL.
func (p *pgPair) failover(t *testing.T) string {
	pg(t, "stop", p.primary, "immediate")
	if exec.Command(script(), "status", p.standby).Run() != nil {
		pg(t, "start", p.standby, p.port(t, p.standby))
	}
	pg(t, "promote", p.standby)
	return pg(t, "url", p.standby)
}

// waitSyncRep waits until a backend of the store waits for synchronous
// replication (its COMMIT is in the primary's WAL, not on the standby)
// and returns its pid.
func waitSyncRep(t *testing.T, url string) int {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		var pid int
		err := pgScanURL(t, url, `SELECT pid FROM pg_stat_activity WHERE wait_event = 'SyncRep' AND application_name = 'kmsd' LIMIT 1`, &pid)
		if err == nil {
			return pid
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			t.Fatal(err)
		}
	}
	t.Fatal("no COMMIT waits for synchronous replication after 10 s")
	return 0
}

func pgScanURL(t *testing.T, url, sql string, dst ...any) error {
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	return conn.QueryRow(ctx, sql).Scan(dst...)
}

// TestSyncStandbyDurability: with a synchronous standby, an Update is
// acknowledged only once its commit is on the standby, so that promoting
// the standby never loses an acknowledged write. The standby is stopped,
// so the Update's COMMIT waits; then either the primary crashes and comes
// back (recovery makes the commit visible on the primary alone) or the
// wait is cancelled (PostgreSQL answers COMMIT with success and a
// warning). In both the write is on the primary only: Update must not
// report success, and reads must not show it; when the standby comes back
// the same situation resolves to success. Each case ends with a failover
// to the standby and checks that whatever was acknowledged is there.
func TestSyncStandbyDurability(t *testing.T) {
	tests := []struct {
		name        string
		crash       bool // else the wait is cancelled (pg_cancel_backend)
		standbyBack bool // the standby is started again before Update ends
		wantAcked   bool
	}{
		{name: "primary crash, standby away", crash: true},
		{name: "primary crash, standby back", crash: true, standbyBack: true, wantAcked: true},
		{name: "wait cancelled, standby away"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := startPair(t)
			ctx := t.Context()
			var logged bytes.Buffer // written by Update's goroutine, read after it returned
			s, err := Open(ctx, p.primaryURL, Options{MaxConns: 4, MinConns: 1, ConnectTimeout: time.Second,
				Log: slog.New(slog.NewTextHandler(&logged, nil))})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			s.resolveFor = 4 * time.Second
			if tt.standbyBack {
				s.resolveFor = 30 * time.Second
			}
			if err := s.Put(ctx, "before", []byte("1")); err != nil {
				t.Fatal(err)
			}
			pg(t, "stop", p.standby, "immediate")

			done := make(chan error, 1)
			go func() {
				uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 60*time.Second)
				defer cancel()
				done <- s.Update(uctx, func(tx storage.Tx) error { return tx.Put(uctx, "k", []byte("v")) })
			}()
			pid := waitSyncRep(t, p.primaryURL)
			if tt.crash {
				p.crashPrimary(t)
			} else if err := pgScanURL(t, p.primaryURL, `SELECT pg_cancel_backend(`+strconv.Itoa(pid)+`)`, new(bool)); err != nil {
				t.Fatal(err)
			}
			if tt.standbyBack {
				pg(t, "start", p.standby, p.port(t, p.standby))
			} else {
				// The write is visible on the primary now (a direct look
				// proves the fault did what it should), but not through
				// the store: a read must fail rather than show it.
				var n int
				if err := pgScanURL(t, p.primaryURL, `SELECT count(*) FROM kv WHERE key = 'k'`, &n); err != nil || n != 1 {
					t.Fatalf("the write is not committed on the primary (%d rows, %v): the fault did not happen", n, err)
				}
				if tt.crash {
					rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
					v, err := s.Get(rctx, "k")
					cancel()
					if err == nil {
						t.Errorf("Get after the crash = %q, want an error: it read a commit that is on the primary only", v)
					}
				}
			}
			var uerr error
			select {
			case uerr = <-done:
			case <-time.After(45 * time.Second):
				t.Fatal("Update did not return within 45 s")
			}
			switch {
			case tt.wantAcked && uerr != nil:
				t.Errorf("Update = %v, want success (the standby has the commit)", uerr)
			case !tt.wantAcked && uerr == nil:
				t.Errorf("Update succeeded although its commit is on the primary only")
			case !tt.wantAcked && !errors.Is(uerr, storage.ErrCommitUnknown):
				t.Errorf("Update = %v, want ErrCommitUnknown", uerr)
			}
			s.Close()
			want := "outcome=\"unknown: not acknowledged\""
			if tt.wantAcked {
				want = "outcome=\"committed and replicated: acknowledged\""
			}
			if !strings.Contains(logged.String(), "interrupted COMMIT settled") || !strings.Contains(logged.String(), want) {
				t.Errorf("the store's log does not say how the COMMIT was settled (%s):\n%s", want, logged.String())
			}

			// What a promotion keeps: everything acknowledged.
			url := p.failover(t)
			var n int
			if err := pgScanURL(t, url, `SELECT count(*) FROM kv WHERE key = 'k'`, &n); err != nil {
				t.Fatal(err)
			}
			if uerr == nil && n != 1 {
				t.Errorf("the acknowledged write is lost after the standby's promotion")
			}
			t.Logf("Update: %v; the promoted standby has the write: %v", uerr, n == 1)
		})
	}
}
