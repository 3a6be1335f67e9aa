package server

import (
	"context"
	"fmt"
	"log/slog"
	"slices"

	"github.com/kmsd/kmsd/internal/hsm"
	"github.com/kmsd/kmsd/internal/identity"
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
//
// IAM users and roles (verify mode; emulator mode has no identities) are
// checked with everything else before anything is written, but stored
// after the KMS resources' transaction, by the identity store.
func applySeed(ctx context.Context, f *seed.File, svc *kms.Service, ids *identity.Store, log *slog.Logger) error {
	if f == nil {
		return nil
	}
	idents := len(f.Users)+len(f.Roles) > 0
	if idents && ids == nil {
		log.Warn("seed: the file's IAM users and roles are not used in emulator mode, where every caller is the account's root")
		idents = false
	}
	if idents {
		if err := identity.CheckSeed(f.Users, f.Roles); err != nil {
			return fmt.Errorf("seed: %w", err)
		}
	}
	if err := svc.CheckSeedKeyStores(f.KeyStores); err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	rep, err := svc.Seed(ctx, f.Keys, f.Aliases, f.Grants)
	if err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	if idents {
		created, existing, diffs, err := ids.Seed(ctx, f.Users, f.Roles)
		if err != nil {
			return fmt.Errorf("seed: %w", err)
		}
		rep.Created = append(rep.Created, created...)
		rep.Existing = append(rep.Existing, existing...)
		rep.Differences = append(rep.Differences, diffs...)
	}
	for _, r := range rep.Created {
		log.Info("seed: created", "resource", r)
	}
	for _, d := range rep.Differences {
		log.Warn("seed: an existing resource differs from the seed file and is left as it is", "difference", d)
	}
	log.Info("seed applied", "created", len(rep.Created), "existing", len(rep.Existing), "differences", len(rep.Differences), "localKms", f.LocalKMS)
	return nil
}

// applySeedStores creates and connects the seed file's custom key stores,
// once the HSM clusters and external stores are open, then makes its keys
// in custom key stores. A store over a declared cluster whose
// crypto user's password kmsd has rotated (a reset of the emulator
// removed the store that rotated it) is given the current password.
func applySeedStores(ctx context.Context, f *seed.File, svc *kms.Service, clusters *hsm.Service, log *slog.Logger) error {
	if f == nil || len(f.KeyStores) == 0 && !slices.ContainsFunc(f.Keys, func(k kms.SeedKey) bool { return k.Origin != "" && k.Origin != "AWS_KMS" }) {
		return nil
	}
	stores := slices.Clone(f.KeyStores)
	for i, st := range stores {
		if st.ClusterID == "" {
			continue // an external key store
		}
		if pw, ok := clusters.CryptoUserPassword(st.Account, st.Region, st.ClusterID); ok {
			stores[i].Password = pw
		}
	}
	rep, err := svc.SeedKeyStores(ctx, stores, f.Keys)
	if err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	for _, r := range rep.Created {
		log.Info("seed: created", "resource", r)
	}
	for _, d := range rep.Differences {
		log.Warn("seed: an existing resource differs from the seed file and is left as it is", "difference", d)
	}
	log.Info("seed: custom key stores applied", "created", len(rep.Created), "existing", len(rep.Existing), "differences", len(rep.Differences))
	return nil
}
