package server

import (
	"context"
	"fmt"
	"path/filepath"

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
func openStore(ctx context.Context, cfg Config) (storage.Store, database, error) {
	if cfg.DatabaseURL == "" {
		path := filepath.Join(cfg.DataDir, "kmsd.db")
		st, err := sqlite.Open(ctx, path)
		if err != nil {
			return nil, database{}, fmt.Errorf("open database: %w", err)
		}
		return st, database{desc: "the database in " + path, path: path}, nil
	}
	db := database{shared: true, desc: "the PostgreSQL database " + postgres.Describe(cfg.DatabaseURL)}
	st, err := postgres.Open(ctx, cfg.DatabaseURL, postgres.Options{
		MaxConns:         int32(cfg.DBMaxConns),
		MinConns:         int32(cfg.DBMinConns),
		ConnectTimeout:   cfg.DBConnectTimeout,
		StatementTimeout: cfg.DBStatementTimeout,
		Password:         cfg.DatabasePassword,
	})
	if err != nil {
		return nil, database{}, fmt.Errorf("open %s: %w", db.desc, err)
	}
	return st, db, nil
}
