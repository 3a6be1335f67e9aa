package controller

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/kmsd/kmsd/internal/storage"
)

// MinLevelRecord holds the database's minimum data format level (decimal
// text): the highest release.DataLevel of the nodes that started on it.
// MULTINODE.md §7.2 puts it in kmsd_meta as min_node_version; it is a
// record of the key space instead, so that both drivers keep it with no
// schema change, it is read and raised in the storage contract's
// transactions, and a backup of the embedded database carries it.
const MinLevelRecord = "kmsd/meta/min-data-level"

// ErrOutdated says a node's data format level is lower than the database's
// minimum: a newer kmsd has started on the database.
var ErrOutdated = errors.New("data format level below the database's minimum")

// MinLevel reads the database's minimum data format level; 0 when none is
// recorded (a new database, or one only kmsd from before levels wrote).
func MinLevel(ctx context.Context, r storage.Reader) (int, error) {
	b, err := r.Get(ctx, MinLevelRecord)
	if errors.Is(err, storage.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read the data format level: %w", err)
	}
	n, err := strconv.Atoi(string(b))
	if err != nil || n < 0 {
		return 0, fmt.Errorf("read the data format level: %s holds %q, not a level", MinLevelRecord, b)
	}
	return n, nil
}

// RaiseMinLevel raises the database's minimum data format level to level
// in one transaction, and returns the minimum it found. It never lowers
// it: when the minimum is above level it writes nothing and returns the
// minimum with an error wrapping ErrOutdated. Nodes raising it at once
// all end with the highest level.
func RaiseMinLevel(ctx context.Context, st storage.Store, level int) (int, error) {
	var found int
	err := st.Update(ctx, func(tx storage.Tx) error {
		var err error
		if found, err = MinLevel(ctx, tx); err != nil {
			return err
		}
		switch {
		case found > level:
			return fmt.Errorf("%w: the database's minimum is %d, this node's level %d", ErrOutdated, found, level)
		case found == level:
			return nil
		}
		return tx.Put(ctx, MinLevelRecord, []byte(strconv.Itoa(level)))
	})
	return found, err
}
