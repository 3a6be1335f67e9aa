package proxycmd

import (
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/kmsd/kmsd/internal/secretfile"
	"github.com/kmsd/kmsd/internal/xks"
	"github.com/kmsd/kmsd/internal/xks/xksserver"
)

// Config is the typed configuration of `xks-proxy serve`, from the TOML file and/or
// flags. Secrets are given by reference (file or environment variable).
type Config struct {
	Listen        string            `toml:"listen"`
	InsecureHTTP  bool              `toml:"insecure_http"`
	HealthListen  string            `toml:"health_listen"`
	MetricsListen string            `toml:"metrics_listen"`
	Region        string            `toml:"region"`
	FleetSize     int               `toml:"fleet_size"`
	HealthCache   duration          `toml:"health_cache"`
	LogLevel      string            `toml:"log_level"`
	LogFormat     string            `toml:"log_format"`
	Limits        LimitsConfig      `toml:"limits"`
	TLS           TLSConfig         `toml:"tls"`
	KeyManagers   map[string]KMConf `toml:"key_managers"`
	KeyStores     []StoreConf       `toml:"key_stores"`
}

// LimitsConfig are the size limits in raw bytes.
type LimitsConfig struct {
	MaxPlaintextBytes int `toml:"max_plaintext_bytes"`
	MaxAADBytes       int `toml:"max_aad_bytes"`
}

// TLSConfig names the certificate files.
type TLSConfig struct {
	CertFile      string `toml:"cert_file"`
	KeyFile       string `toml:"key_file"`
	ClientCAFile  string `toml:"client_ca_file"`
	ClientSubject string `toml:"client_subject"`
}

// KMConf is one key manager: type "pkcs11" or "keyfile".
type KMConf struct {
	Type string `toml:"type"`
	// pkcs11
	Module          string `toml:"module"`
	TokenLabel      string `toml:"token_label"`
	PINFile         string `toml:"pin_file"`
	PINEnv          string `toml:"pin_env"`
	SessionPoolSize int    `toml:"session_pool_size"`
	HealthKeyLabel  string `toml:"health_key_label"`
	// KeyCacheTTL is how long a key's handle and attributes are reused
	// (default 5s; "-1s" turns the cache, and so the copies, off).
	KeyCacheTTL string `toml:"key_cache_ttl"`
	// SessionKeyCopies (default true) runs the cryptography on session-object
	// copies of the token keys, refreshed with the cache (pkcs11.Config).
	SessionKeyCopies *bool `toml:"session_key_copies"`
	// keyfile
	KeysFile       string `toml:"keys_file"`
	PassphraseFile string `toml:"passphrase_file"`
	PassphraseEnv  string `toml:"passphrase_env"`
}

// keyCacheTTL is key_cache_ttl (0: the key manager's default).
func (km KMConf) keyCacheTTL() (time.Duration, error) {
	if km.KeyCacheTTL == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(km.KeyCacheTTL)
	if err != nil || d == 0 {
		return 0, fmt.Errorf("key_cache_ttl %q: want a duration such as 5s (negative: no cache)", km.KeyCacheTTL)
	}
	return d, nil
}

// sessionKeyCopies is session_key_copies, true unless set to false.
func (km KMConf) sessionKeyCopies() bool { return km.SessionKeyCopies == nil || *km.SessionKeyCopies }

// StoreConf is one logical key store.
type StoreConf struct {
	URIPathPrefix      string     `toml:"uri_path_prefix"`
	KeyManager         string     `toml:"key_manager"`
	Keys               []string   `toml:"keys"`
	DisabledKeys       []string   `toml:"disabled_keys"`
	Disabled           bool       `toml:"disabled"`
	EKMTimeout         duration   `toml:"ekm_timeout"`
	CiphertextMetadata string     `toml:"ciphertext_metadata"` // Base64, ≤ 20 bytes
	RateLimit          float64    `toml:"rate_limit"`
	Burst              int        `toml:"burst"`
	Credentials        []CredConf `toml:"credentials"`
	Authorization      []RuleConf `toml:"authorization"`
	// AllowedSourceCIDRs, when not empty, are the only client networks (CIDR prefixes
	// or addresses) this key store answers, on every API including GetHealthStatus;
	// others get 403 AccessDeniedException (xksserver.Policy.Sources).
	AllowedSourceCIDRs []string `toml:"allowed_source_cidrs"`
}

// CredConf is one SigV4 credential; the secret comes from a file or an environment
// variable.
type CredConf struct {
	AccessKeyID         string `toml:"access_key_id"`
	SecretAccessKeyFile string `toml:"secret_access_key_file"`
	SecretAccessKeyEnv  string `toml:"secret_access_key_env"`
}

// RuleConf is one secondary-authorization rule (see xksserver.Rule).
type RuleConf struct {
	Name        string   `toml:"name"`
	Effect      string   `toml:"effect"`
	Principals  []string `toml:"principals"`
	Operations  []string `toml:"operations"`
	KeyARNs     []string `toml:"key_arns"`
	SourceVPCs  []string `toml:"source_vpcs"`
	SourceVPCEs []string `toml:"source_vpces"`
	KeyIDs      []string `toml:"key_ids"`
}

type duration struct{ time.Duration }

func (d *duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	d.Duration = v
	return err
}

// loadFile parses a TOML configuration, refusing unknown keys so that typos do not
// silently change behaviour.
func loadFile(path string) (*Config, error) {
	var c Config
	md, err := toml.DecodeFile(path, &c)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
		}
		return nil, fmt.Errorf("config %s: unknown keys: %s", path, strings.Join(keys, ", "))
	}
	return &c, nil
}

// readSecret reads a secret from a file (trailing newline removed) or an environment
// variable. The file must be private to the user running the proxy (see
// package secretfile).
func readSecret(file, env, what string) (string, error) {
	switch {
	case file != "" && env != "":
		return "", fmt.Errorf("%s: give a file or an environment variable, not both", what)
	case file != "":
		b, err := secretfile.Read(file)
		if err != nil {
			return "", fmt.Errorf("%s: %w", what, err)
		}
		return strings.TrimRight(string(b), "\r\n"), nil
	case env != "":
		v, ok := os.LookupEnv(env)
		if !ok {
			return "", fmt.Errorf("%s: environment variable %s is not set", what, env)
		}
		return v, nil
	}
	return "", fmt.Errorf("%s: no file or environment variable given", what)
}

// validate checks everything that does not need secrets or I/O.
func (c *Config) validate() error {
	if c.Listen == "" {
		return errors.New("listen address is required")
	}
	if !c.InsecureHTTP && (c.TLS.CertFile == "" || c.TLS.KeyFile == "") {
		return errors.New("TLS certificate and key are required; plain HTTP needs --insecure-http (only behind a TLS-terminating load balancer)")
	}
	if c.InsecureHTTP && c.TLS.ClientCAFile != "" {
		return errors.New("mTLS needs TLS: remove --insecure-http")
	}
	if len(c.KeyStores) == 0 {
		return errors.New("at least one key store is required")
	}
	for name, km := range c.KeyManagers {
		switch km.Type {
		case "pkcs11":
			if km.Module == "" || km.TokenLabel == "" {
				return fmt.Errorf("key manager %s: module and token_label are required", name)
			}
			if _, err := km.keyCacheTTL(); err != nil {
				return fmt.Errorf("key manager %s: %w", name, err)
			}
		case "keyfile":
			if km.KeysFile == "" {
				return fmt.Errorf("key manager %s: keys_file is required", name)
			}
		default:
			return fmt.Errorf("key manager %s: type must be pkcs11 or keyfile", name)
		}
	}
	for i, s := range c.KeyStores {
		if _, ok := c.KeyManagers[s.KeyManager]; !ok {
			return fmt.Errorf("key store %d (%q): unknown key manager %q", i, s.URIPathPrefix, s.KeyManager)
		}
		if !xks.ValidPrefix(s.URIPathPrefix) {
			return fmt.Errorf("key store %d: invalid uri_path_prefix %q", i, s.URIPathPrefix)
		}
	}
	return nil
}

// policies resolves the reloadable part of every key store, reading secret files.
func (c *Config) policies() (map[string]xksserver.Policy, error) {
	out := map[string]xksserver.Policy{}
	for _, s := range c.KeyStores {
		p := xksserver.Policy{Keys: s.Keys, DisabledKeys: s.DisabledKeys, Disabled: s.Disabled,
			RateLimit: s.RateLimit, Burst: s.Burst}
		for _, cr := range s.Credentials {
			sec, err := readSecret(cr.SecretAccessKeyFile, cr.SecretAccessKeyEnv, "secret of "+cr.AccessKeyID)
			if err != nil {
				return nil, fmt.Errorf("key store %q: %w", s.URIPathPrefix, err)
			}
			p.Credentials = append(p.Credentials, xksserver.Credential{AccessKeyID: cr.AccessKeyID, Secret: sec})
		}
		src, err := xksserver.ParseSources(s.AllowedSourceCIDRs)
		if err != nil {
			return nil, fmt.Errorf("key store %q: %w", s.URIPathPrefix, err)
		}
		p.Sources = src
		for _, r := range s.Authorization {
			p.Rules = append(p.Rules, xksserver.Rule{Name: r.Name, Effect: r.Effect, Principals: r.Principals,
				Operations: r.Operations, KeyARNs: r.KeyARNs, SourceVPCs: r.SourceVPCs, SourceVPCEs: r.SourceVPCEs, KeyIDs: r.KeyIDs})
		}
		if err := p.Validate(); err != nil {
			return nil, fmt.Errorf("key store %q: %w", s.URIPathPrefix, err)
		}
		out[s.URIPathPrefix] = p
	}
	return out, nil
}

func (s *StoreConf) metadata() ([]byte, error) {
	if s.CiphertextMetadata == "" {
		return nil, nil
	}
	b, err := base64.StdEncoding.Strict().DecodeString(s.CiphertextMetadata)
	if err != nil || len(b) > xks.MaxCiphertextMetadata {
		return nil, fmt.Errorf("key store %q: ciphertext_metadata must be Base64 of at most 20 bytes", s.URIPathPrefix)
	}
	return b, nil
}
