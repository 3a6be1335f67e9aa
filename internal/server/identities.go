package server

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/BurntSushi/toml"
	"github.com/kmsd/kmsd/internal/identity"
)

// AdminPolicyName is the inline policy kmsd gives its administrator.
const AdminPolicyName = "kmsd-administrator"

// adminPolicy allows everything: the bootstrap administrator is the
// account's administrator, so the default key policy ("Enable IAM User
// Permissions" for the account root) gives it every key of the account,
// as AdministratorAccess does in AWS.
const adminPolicy = `{"Version":"2012-10-17","Statement":[{"Sid":"AdministratorAccess","Effect":"Allow","Action":"*","Resource":"*"}]}`

// grantAdmin makes sure the bootstrap administrator (user kmsd-admin of
// the default account) has its allow-everything policy; data
// directories from before identity policies existed get it on start.
func grantAdmin(ctx context.Context, cfg Config, ids *identity.Store) error {
	if _, err := ids.GetUser(cfg.AccountID, "kmsd-admin"); err != nil {
		return nil // administrator keys were given for another user name
	}
	if doc, err := ids.GetUserPolicy(cfg.AccountID, "kmsd-admin", AdminPolicyName); err == nil && doc == adminPolicy {
		return nil
	}
	return ids.PutUserPolicy(ctx, cfg.AccountID, "kmsd-admin", AdminPolicyName, adminPolicy)
}

// loadIAMConfig reads the IAM config file and applies it.
func loadIAMConfig(ctx context.Context, path string, ids *identity.Store) error {
	var c identity.Config
	md, err := toml.DecodeFile(path, &c)
	if err != nil {
		return fmt.Errorf("iam config %s: %w", path, err)
	}
	if keys := md.Undecoded(); len(keys) > 0 {
		return fmt.Errorf("iam config %s: unknown keys %v", path, keys)
	}
	if err := ids.Apply(ctx, &c); err != nil {
		return fmt.Errorf("iam config %s: %w", path, err)
	}
	return nil
}

// reloadOnHUP reads the IAM config file again on every SIGHUP; a file
// that does not load leaves the previous declaration in force.
func reloadOnHUP(ctx context.Context, path string, ids *identity.Store, log *slog.Logger) (stop func()) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGHUP)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			case <-ch:
				if err := loadIAMConfig(ctx, path, ids); err != nil {
					log.Error("reload of the IAM config failed; keeping the previous one", "err", err)
				} else {
					log.Info("reloaded the IAM config", "file", path)
				}
			}
		}
	}()
	return func() { signal.Stop(ch); close(done) }
}
