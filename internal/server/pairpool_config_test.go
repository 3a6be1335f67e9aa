package server

import (
	"testing"

	"github.com/kmsd/kmsd/internal/kms"
)

// TestConfigPairPool checks --pair-pool-size: the default, 0 to turn the
// pool off, and refusals.
func TestConfigPairPool(t *testing.T) {
	for _, tc := range []struct {
		name, size string
		want       int
		wantErr    bool
	}{
		{"default", "", kms.DefaultPairPoolSize, false},
		{"off", "0", 0, false},
		{"larger", "16", 16, false},
		{"negative", "-1", 0, true},
		{"not a number", "four", 0, true},
		{"too large", "100000", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{DataDir: t.TempDir(), PairPoolSize: tc.size}
			err := cfg.Validate()
			if (err != nil) != tc.wantErr {
				t.Fatalf("Validate: %v, want error %v", err, tc.wantErr)
			}
			if err == nil && cfg.PairPool != tc.want {
				t.Fatalf("PairPool %d, want %d", cfg.PairPool, tc.want)
			}
		})
	}
}

// TestConfigChoices checks the settings that take one of a few words: the
// default when empty, and a refusal that names the flag and every choice.
func TestConfigChoices(t *testing.T) {
	cfg := Config{DataDir: t.TempDir()}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if cfg.Auth != "verify" || cfg.AuditSync != AuditSyncMutations || cfg.Controller != "auto" || cfg.Console != "on" || cfg.CacheNotify != "on" || cfg.CachePreload != "off" {
		t.Errorf("defaults: auth %q, audit-sync %q, controller %q, console %q, cache-notify %q", cfg.Auth, cfg.AuditSync, cfg.Controller, cfg.Console, cfg.CacheNotify)
	}
	for _, tc := range []struct {
		set  func(*Config)
		want string
	}{
		{func(c *Config) { c.Auth = "none" }, `--auth "none": want verify or emulator`},
		{func(c *Config) { c.AuditSync = "some" }, `--audit-sync "some": want mutations, all or none`},
		{func(c *Config) { c.Controller = "always" }, `--controller "always": want auto or never`},
		{func(c *Config) { c.Console = "yes" }, `--console "yes": want on or off`},
		{func(c *Config) { c.CacheNotify = "true" }, `--cache-notify "true": want on or off`},
		{func(c *Config) { c.CachePreload = "yes" }, `--cache-preload "yes": want off or on`},
	} {
		cfg := Config{DataDir: t.TempDir()}
		tc.set(&cfg)
		if err := cfg.Validate(); err == nil || err.Error() != tc.want {
			t.Errorf("Validate: %v, want %s", err, tc.want)
		}
	}
	off := Config{DataDir: t.TempDir(), CacheNotify: "off"}
	if err := off.Validate(); err != nil || off.CacheNotify != "off" {
		t.Errorf("--cache-notify off: %v, %q", err, off.CacheNotify)
	}
}
