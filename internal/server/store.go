package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/kmsd/kmsd/internal/controller"
	"github.com/kmsd/kmsd/internal/storage"
	"github.com/kmsd/kmsd/internal/storage/postgres"
	"github.com/kmsd/kmsd/internal/storage/sqlite"
)

// database says where kmsd's state is, for messages: never a password.
type database struct {
	shared bool   // PostgreSQL, which other nodes may share
	desc   string // "the database in /path" or "the PostgreSQL database kmsd on host:port"
	path   string // the SQLite file ("" for PostgreSQL)
}

// openStore opens the SQLite file in the data directory, or the
// PostgreSQL database of cfg.DatabaseURL.
func openStore(ctx context.Context, cfg Config, log *slog.Logger) (storage.Store, database, error) {
	if cfg.DatabaseURL == "" {
		path := filepath.Join(cfg.DataDir, "kmsd.db")
		st, err := sqlite.Open(ctx, path)
		if err != nil {
			return nil, database{}, fmt.Errorf("open database: %w", err)
		}
		return st, database{desc: "the database in " + path, path: path}, nil
	}
	db := database{shared: true, desc: "the PostgreSQL database " + postgres.Describe(cfg.DatabaseURL)}
	// No root key, no connection: not even a new database's schema is
	// written for a node that cannot open it.
	_, key, err := sharedRootKey(cfg, db)
	clear(key)
	if errors.Is(err, errRootKeyMissing) {
		return nil, database{}, err
	} else if err != nil {
		return nil, database{}, fmt.Errorf("root key: %w", err)
	}
	st, err := postgres.Open(ctx, cfg.DatabaseURL, postgres.Options{
		MaxConns:         int32(cfg.DBMaxConns),
		MinConns:         int32(cfg.DBMinConns),
		ConnectTimeout:   cfg.DBConnectTimeout,
		StatementTimeout: cfg.DBStatementTimeout,
		Password:         cfg.DatabasePassword,
		Log:              log,
		Notify:           cfg.CacheNotify != "off",
		Check: func(ctx context.Context, r storage.Reader) error {
			if err := checkSharedRootKey(ctx, cfg, db, r); err != nil {
				return err
			}
			// Before any migration: a node older than the database
			// writes nothing, not even a schema upgrade.
			return checkDataLevel(ctx, r, db, cfg.dataLevel)
		},
	})
	if errors.Is(err, errRootKeyMissing) || errors.Is(err, errRootKeyMismatch) || errors.Is(err, controller.ErrOutdated) {
		return nil, database{}, err
	}
	if err != nil {
		return nil, database{}, fmt.Errorf("open %s: %w", db.desc, err)
	}
	return st, db, nil
}

// changeRetention is how long the change feed keeps a change at least: a
// reader further behind gets a Reset (drops its cache) instead.
const changeRetention = 10 * time.Minute

// changeMaxRetention is how long a live node's feed cursor may hold
// pruning back: past it the feed is pruned anyway, so that a node that
// heartbeats but whose feed is stuck cannot make kv_changes grow without
// bound; when its feed moves again its cursor is older than the pruned
// point and it reloads its caches (a Reset), never skips a change. Its
// caches have long stopped being trusted by then (--cache-max-staleness).
const changeMaxRetention = time.Hour

// pruneChanges keeps the change feed (storage.Watcher) from growing without
// bound: every interval it notes the feed's head, and prunes up to the head
// it noted at least retention ago — but not past floor, the earliest
// cursor of the live nodes (controller.FeedFloor), so that a live node
// that lags (a slow or briefly stalled feed) is not made to reload
// everything, unless that cursor (or a live node's missing one) has held
// pruning back for longer than maxRetention: then the feed is pruned up to
// the head noted maxRetention ago. A node whose node lease expired is not
// waited for; it gets a Reset when it comes back. floor nil: no other
// reader (tests). It is a controller duty.
func pruneChanges(ctx context.Context, w storage.Watcher, every, retention, maxRetention time.Duration,
	floor func(ctx context.Context, gen string) (storage.Cursor, bool, error), log *slog.Logger) {
	type mark struct {
		at time.Time
		c  storage.Cursor
	}
	var marks []mark
	held := false    // the floor held pruning back at the last turn (logged once)
	forcing := false // pruning went past the floor at the last turn (logged once)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if b, err := w.Changes(ctx, storage.Cursor{}, 1); err == nil {
			marks = append(marks, mark{time.Now(), b.Next})
		} else if ctx.Err() == nil {
			log.Warn("change feed head", "err", err)
		}
		// The newest mark old enough, and the newest too old to wait for.
		n, m := 0, 0
		for n < len(marks) && time.Since(marks[n].at) >= retention {
			if time.Since(marks[n].at) >= maxRetention {
				m = n + 1
			}
			n++
		}
		if n > 0 {
			upTo := marks[n-1].c
			ok, capped, forced := true, false, false
			var floorErr error
			if floor != nil {
				f, bounded, err := floor(ctx, upTo.Gen)
				switch {
				case err != nil:
					ok, floorErr = false, err
					if ctx.Err() == nil && !held {
						log.Info("change feed not pruned: the live nodes' cursors are not known", "err", err)
					}
				case bounded && f.Before(upTo):
					upTo, capped = f, true
				}
			}
			if (capped || !ok) && m > 0 && (!ok || upTo.Before(marks[m-1].c)) {
				// Held back for longer than maxRetention.
				upTo, ok, forced = marks[m-1].c, true, true
				if !forcing {
					log.Warn("change feed pruned past a live node's cursor that held it back for longer than the maximum retention; that node reloads its caches when its feed moves again",
						"maxRetention", maxRetention, "upTo", upTo, "floorErr", floorErr)
				}
			}
			if ok {
				if err := w.Prune(ctx, upTo); err != nil && ctx.Err() == nil {
					log.Warn("change feed prune", "err", err)
				}
			}
			switch {
			case capped && !forced && !held:
				log.Info("change feed pruning held back by a live node's cursor", "upTo", upTo)
				fallthrough
			case capped || !ok || forced:
				// The old marks are kept, to be pruned up to once the
				// lagging node has caught up (or its lease expired), down
				// to the newest one older than maxRetention.
				marks = marks[max(m-1, 0):]
			default:
				marks = marks[n:]
			}
			held, forcing = capped || !ok || forced, forced
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
