package server

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"

	"github.com/kmsd/kmsd/internal/barrier"
	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/identity"
	"github.com/kmsd/kmsd/internal/storage"
)

// Why kmsd refuses to start with a root key; the messages say what to do.
var (
	errRootKeyMissing  = errors.New("root key missing")
	errRootKeyMismatch = errors.New("root key mismatch")
)

// openBarrier loads the root key and proves it is the one the database
// db was created with, before anything else reads the database.
//
// A database that holds anything is never given a new root key: a missing
// key file is an error rather than a new key that could open nothing. The
// proof is the barrier's check value (the canary), written when the
// database is first used; a database from before check values is proved by
// opening one sealed record (key material and access-key secrets) and then
// given its check value, so that upgrades start without help.
//
// A shared (PostgreSQL) database never gets a root key created for it,
// even when empty: every node must be given the same key (KMSD_ROOT_KEY or
// --root-key-file), and two nodes starting on an empty database with
// different keys must not both succeed; the first canary written wins and
// the other node is refused. A refused node writes nothing.
func openBarrier(ctx context.Context, cfg Config, store storage.Store, db database, log *slog.Logger) (*barrier.Barrier, error) {
	existing, err := store.List(ctx, "", "", 1)
	if err != nil {
		return nil, fmt.Errorf("open database: %w", err)
	}
	hasData := len(existing) > 0

	var rootKey []byte
	where := "at " + cfg.RootKeyFile
	switch {
	case cfg.RootKey != "":
		where = "in KMSD_ROOT_KEY"
		rootKey, err = barrier.ParseRootKey(cfg.RootKey)
	case db.shared:
		where, rootKey, err = sharedRootKey(cfg, db)
	case hasData:
		rootKey, err = barrier.LoadRootKey(cfg.RootKeyFile)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: the database %s exists but the root key file %s is missing; "+
				"kmsd will not create a new one, since a new key cannot open anything in that database. "+
				"Restore the original root key file (mode 0600) to %s, point --root-key-file at it, "+
				"or give the original key in KMSD_ROOT_KEY", errRootKeyMissing, db.path, cfg.RootKeyFile, cfg.RootKeyFile)
		}
	default:
		var created bool
		rootKey, created, err = barrier.LoadOrCreateRootKey(cfg.RootKeyFile, rand.Reader)
		if created {
			log.Info("created root key", "file", cfg.RootKeyFile)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("root key: %w", err)
	}
	b, err := barrier.New(rootKey)
	clear(rootKey)
	if err != nil {
		return nil, err
	}
	mismatch := func(cause error) error { return mismatchError(cfg, db, where, cause) }

	verify := func() (bool, error) {
		check, err := store.Get(ctx, barrier.CheckRecord)
		switch {
		case err == nil:
			if err := b.VerifyCheck(check); err != nil {
				return true, mismatch(err)
			}
			return true, nil
		case errors.Is(err, storage.ErrNotFound):
			return false, nil
		default:
			return false, fmt.Errorf("open database: %w", err)
		}
	}
	if found, err := verify(); found || err != nil {
		if err != nil {
			return nil, err
		}
		return b, nil
	}
	if hasData {
		// A database from before check values: prove the key on what it
		// sealed before vouching for it.
		if _, err := catalog.New(store, b).OpenAnyMaterial(ctx); err != nil {
			if errors.Is(err, barrier.ErrOpen) {
				return nil, mismatch(err)
			}
			return nil, err
		}
		if _, err := identity.Open(ctx, store, b); err != nil {
			if errors.Is(err, barrier.ErrOpen) {
				return nil, mismatch(err)
			}
			return nil, err
		}
		log.Info("wrote the root key check value to a database that had none", "database", db.desc)
	}
	sealed, err := b.SealCheck()
	if err != nil {
		return nil, err
	}
	if err := store.Create(ctx, barrier.CheckRecord, sealed); err != nil {
		if errors.Is(err, storage.ErrExists) {
			// Another node wrote the canary first: its key must be ours.
			if _, err := verify(); err != nil {
				return nil, err
			}
			return b, nil
		}
		return nil, fmt.Errorf("write root key check value: %w", err)
	}
	return b, nil
}

// mismatchError says that the root key found where does not open db.
func mismatchError(cfg Config, db database, where string, cause error) error {
	return fmt.Errorf("%w: %s was created with another root key; the root key %s does not open it. "+
		"Restore the original root key file to %s (or give the original key in KMSD_ROOT_KEY) and start kmsd again; "+
		"a database whose root key is lost cannot be read (%w)", errRootKeyMismatch, db.desc, where, cfg.RootKeyFile, cause)
}

// sharedRootKey loads the root key for a shared database: from
// KMSD_ROOT_KEY or the root key file, never created. where names the source
// for messages.
func sharedRootKey(cfg Config, db database) (where string, key []byte, err error) {
	if cfg.RootKey != "" {
		key, err = barrier.ParseRootKey(cfg.RootKey)
		return "in KMSD_ROOT_KEY", key, err
	}
	where = "in the file " + cfg.RootKeyFile + " (--root-key-file)"
	key, err = barrier.LoadRootKey(cfg.RootKeyFile)
	if errors.Is(err, fs.ErrNotExist) {
		return where, nil, fmt.Errorf("%w: with --database-url the root key must be given, and every node sharing %s must have the same one; "+
			"the root key file %s is missing and kmsd will not create a root key for a shared database. "+
			"Give the key in KMSD_ROOT_KEY or a file (mode 0600) at --root-key-file", errRootKeyMissing, db.desc, cfg.RootKeyFile)
	}
	return where, key, err
}

// checkSharedRootKey runs before a shared database is migrated: the root
// key must be given and must open the database's check value, if it has
// one, so that a node with the wrong key (or none) writes nothing at all,
// not even a schema upgrade. openBarrier does the full check afterwards.
func checkSharedRootKey(ctx context.Context, cfg Config, db database, r storage.Reader) error {
	where, key, err := sharedRootKey(cfg, db)
	if err != nil {
		if errors.Is(err, errRootKeyMissing) {
			return err
		}
		return fmt.Errorf("root key: %w", err)
	}
	b, err := barrier.New(key)
	clear(key)
	if err != nil {
		return err
	}
	check, err := r.Get(ctx, barrier.CheckRecord)
	switch {
	case errors.Is(err, storage.ErrNotFound):
		return nil
	case err != nil:
		return fmt.Errorf("open database: %w", err)
	}
	if err := b.VerifyCheck(check); err != nil {
		return mismatchError(cfg, db, where, err)
	}
	return nil
}
