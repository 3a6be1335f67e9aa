package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"

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
