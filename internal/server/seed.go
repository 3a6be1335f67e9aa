package server

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/kmsd/kmsd/internal/kms"
	"github.com/kmsd/kmsd/internal/seed"
)

// loadSeed reads and checks the seed file (Config.Seed), if any, before
// anything is opened, so a broken file stops kmsd with nothing changed.
func loadSeed(cfg Config) (*seed.File, error) {
	if cfg.Seed == "" {
		return nil, nil
	}
	return seed.Load(cfg.Seed, cfg.AccountID, cfg.DefaultRegion)
}

// applySeed applies the seed file all or nothing: what is missing is
// created, what exists is left as it is, its differences from the file
// logged.
func applySeed(ctx context.Context, f *seed.File, svc *kms.Service, log *slog.Logger) error {
	if f == nil {
		return nil
	}
	rep, err := svc.Seed(ctx, f.Keys, f.Aliases, f.Grants)
	if err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	for _, arn := range rep.Created {
		log.Info("seed: created", "arn", arn)
	}
	for _, d := range rep.Differences {
		log.Warn("seed: an existing resource differs from the seed file and is left as it is", "difference", d)
	}
	log.Info("seed applied", "created", len(rep.Created), "existing", len(rep.Existing), "differences", len(rep.Differences), "localKms", f.LocalKMS)
	return nil
}
