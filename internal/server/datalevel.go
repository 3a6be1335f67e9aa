package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/kmsd/kmsd/internal/controller"
	"github.com/kmsd/kmsd/internal/release"
	"github.com/kmsd/kmsd/internal/storage"
)

// dataLevelEnv overrides this node's data format level, for tests only
// (with fault injection on): so that a test can start a "newer" and an
// "older" kmsd from one binary.
const dataLevelEnv = "KMSD_FAULT_DATA_LEVEL"

// dataLevel is this node's data format level: release.DataLevel, or
// KMSD_FAULT_DATA_LEVEL with fault injection on.
func dataLevel() (int, error) {
	v := os.Getenv(dataLevelEnv)
	if v == "" {
		return release.DataLevel, nil
	}
	if !faultInjection() {
		return 0, fmt.Errorf("%s is for tests only and needs --fault-injection", dataLevelEnv)
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("%s %q: want a level of 1 or more", dataLevelEnv, v)
	}
	return n, nil
}

// outdatedError says why a node of data format level level does not
// start on (or stops serving) db, whose minimum is min.
func outdatedError(db database, level, min int) error {
	return fmt.Errorf("%w: %s has data format level %d, written by a newer kmsd; this kmsd (version %s) writes level %d, "+
		"which leaves out what newer nodes keep with every key (see README, Running several nodes). "+
		"Upgrade this node to the version of the newest node; a database's level is never lowered",
		controller.ErrOutdated, db.desc, min, release.Version(), level)
}

// checkDataLevel refuses, having written nothing, a node whose data format
// level is below the database's minimum.
func checkDataLevel(ctx context.Context, r storage.Reader, db database, level int) error {
	min, err := controller.MinLevel(ctx, r)
	if err != nil {
		return fmt.Errorf("open %s: %w", db.desc, err)
	}
	if min > level {
		return outdatedError(db, level, min)
	}
	return nil
}

// raiseDataLevel raises the database's minimum data format level to this
// node's, so that older nodes stop (at their next heartbeat) and do not
// start; it refuses the node if a newer one raised it above meanwhile.
func raiseDataLevel(ctx context.Context, st storage.Store, db database, level int, log *slog.Logger) error {
	min, err := controller.RaiseMinLevel(ctx, st, level)
	if errors.Is(err, controller.ErrOutdated) {
		return outdatedError(db, level, min)
	}
	if err != nil {
		return fmt.Errorf("write the data format level: %w", err)
	}
	if min < level {
		log.Info("raised the database's data format level: nodes of a lower level stop and do not start",
			"database", db.desc, "from", min, "to", level)
	}
	return nil
}

// olderWait bounds how long a starting node waits for the older nodes to
// stop (awaitOlder) on leases of ttl: an older node reads the raised
// minimum within a heartbeat (ttl/5), finishes its requests within
// shutdownTimeout and releases its node lease, or, if they do not finish,
// leaves it to expire within ttl; a frozen one's lease expires within ttl
// of its last renewal. The rest is margin for slow database round trips.
func olderWait(ttl time.Duration) time.Duration { return 2*ttl + shutdownTimeout }

// awaitOlder waits until ctl is ready (controller.Controller.Ready): no node
// of a lower data format level holds a live node lease any more, so none
// can still write a key without what this node's level keeps. It reports
// whether to serve: false, with no error, when ctx ended first; an error
// when this node is outdated itself meanwhile (outdated receives the
// minimum), or when older nodes still hold their leases after
// olderWait — the node then does not serve at all, and the older ones,
// which read the raised minimum, stop or have their leases expire.
func awaitOlder(ctx context.Context, ctl *controller.Controller, outdated <-chan int, cfg Config, db database) (bool, error) {
	if ctl.Ready() {
		return true, nil
	}
	wait := olderWait(cfg.LeaseTTL)
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-ctl.ReadyC():
		return true, nil
	case <-ctx.Done():
		return false, nil
	case min := <-outdated:
		return false, outdatedError(db, cfg.dataLevel, min)
	case <-t.C:
		older := ctl.WaitingFor()
		if len(older) == 0 {
			return false, fmt.Errorf("this node could not take its node lease on %s and read the data format level within %s (see the log)", db.desc, wait)
		}
		return false, fmt.Errorf("%d older nodes did not stop within %s of this node's start on %s (%s): "+
			"this node serves nothing while an older one might still write; stop them, or start this node again once their node leases have expired",
			len(older), wait, db.desc, strings.Join(older, ", "))
	}
}
