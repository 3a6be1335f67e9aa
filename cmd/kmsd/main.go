// Command kmsd is a self-hosted key management service that speaks the AWS
// KMS API. `kmsd serve` (also what `kmsd` with no arguments does) serves it
// on loopback with an embedded encrypted store.
//
// Every flag has a KMSD_… environment variable and a key in the optional
// TOML config file (--config); flags win over the environment, which wins
// over the file.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/memlimit"
	"github.com/kmsd/kmsd/internal/server"
)

const usage = `usage: kmsd [serve] [flags]
       kmsd backup --out FILE [flags]
       kmsd restore --from FILE --data-dir DIR [flags]
       kmsd status [--data-dir DIR | --database-url URL] [--output text|json]

Serves the AWS KMS API. Flags (environment variable; config file key):
`

func main() {
	// kmsd's live heap is small and its requests allocate briskly; a
	// higher GC target trades a few MiB for CPU on every request. GOGC in
	// the environment still wins. serve also sets a memory limit from the
	// cache size (package memlimit), so a full cache's heap does not grow
	// fivefold.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	args := os.Args[1:]
	run := serve
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		switch args[0] {
		case "serve":
		case "backup":
			run = backup
		case "restore":
			run = restore
		case "status":
			run = status
		default:
			fmt.Fprintf(os.Stderr, "kmsd: unknown command %q (want serve, backup, restore or status)\n", args[0])
			os.Exit(2)
		}
		args = args[1:]
	}
	if err := run(args); err != nil {
		if errors.Is(err, errUsage) {
			os.Exit(2)
		}
		fmt.Fprintf(os.Stderr, "kmsd %s: %v\n", command(), err)
		os.Exit(1)
	}
}

// errUsage is a bad command line, already reported by the flag package.
var errUsage = errors.New("usage")

// command is the command being run, for messages.
func command() string {
	if len(os.Args) > 1 && (os.Args[1] == "backup" || os.Args[1] == "restore" || os.Args[1] == "status") {
		return os.Args[1]
	}
	return "serve"
}

const backupUsage = `usage: kmsd backup --out FILE [--data-dir DIR] [--max-rate BYTES]

Writes a consistent snapshot of kmsd's embedded store (<data-dir>/kmsd.db) to
FILE while kmsd may keep serving. The snapshot holds kmsd's records sealed
under the root key; the root key is NOT in it: keep a copy of the key
(<data-dir>/root.key, --root-key-file or KMSD_ROOT_KEY) apart from the backup.
FILE is written under a temporary name beside it and renamed into place when
whole, so a backup that dies leaves FILE as it was. A store in PostgreSQL
is backed up with PostgreSQL's own tools, pg_dump or pg_basebackup (see the
README).

Flags (environment variable; config file key):
`

const restoreUsage = `usage: kmsd restore --from FILE --data-dir DIR [--root-key-file KEYFILE]

Makes the data directory DIR (absent or empty) from a backup file written by
kmsd backup, after checking the file's SHA-256, SQLite's integrity check and
its schema version. Given the root key of the kmsd the backup came from
(--root-key-file, copied to DIR/root.key, or KMSD_ROOT_KEY), it also checks
that the key opens the backup. Then: kmsd serve --data-dir DIR.

Flags (environment variable; config file key):
`

// offlineFlags parses the flags of backup and restore, which find the data
// directory and root key as serve does (flag, KMSD_… variable, serve's
// config file).
func offlineFlags(name, use string, args []string, extra func(fs *flag.FlagSet), settings ...setting) error {
	var configFile string
	fs := flag.NewFlagSet("kmsd "+name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), use)
		fs.PrintDefaults()
	}
	fs.StringVar(&configFile, "config", os.Getenv("KMSD_CONFIG"), "serve's optional TOML config file, for data_dir and root_key_file (KMSD_CONFIG)")
	for _, s := range settings {
		fs.StringVar(s.dst, s.flag, "", s.help+" ("+s.env+"; "+s.file+")")
	}
	if extra != nil {
		extra(fs)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "kmsd %s: unexpected argument %q\n", name, fs.Arg(0))
		fs.Usage()
		return errUsage
	}
	return resolve(fs, settings, configFile, false)
}

// defaultDataDir is serve's default data directory.
func defaultDataDir(dir string) (string, error) {
	if dir != "" {
		return dir, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", errors.New("--data-dir is required when there is no home directory")
	}
	return filepath.Join(home, ".kmsd"), nil
}

func backup(args []string) error {
	var c server.BackupConfig
	var rate string
	err := offlineFlags("backup", backupUsage, args, func(fs *flag.FlagSet) {
		fs.StringVar(&c.Out, "out", "", "the backup file to write (replaced whole if it exists)")
		fs.StringVar(&rate, "max-rate", "", "at most this many bytes a second written to --out, e.g. 500k or 20M (default: no limit)")
	},
		setting{"data-dir", "KMSD_DATA_DIR", "data_dir", "data directory of the kmsd to back up (default ~/.kmsd)", &c.DataDir},
		setting{"root-key-file", "KMSD_ROOT_KEY_FILE", "root_key_file", "root key file, only to report whether it opens the backup (default <data-dir>/root.key); never copied", &c.RootKeyFile},
	)
	if err != nil {
		return err
	}
	if c.Out == "" {
		return errors.New("--out is required")
	}
	if rate != "" {
		if c.MaxRate, err = parseBytes(rate); err != nil || c.MaxRate <= 0 {
			return fmt.Errorf("--max-rate %q: want a positive number of bytes a second, e.g. 500k or 20M", rate)
		}
	}
	if c.DataDir, err = defaultDataDir(c.DataDir); err != nil {
		return err
	}
	c.RootKey = os.Getenv("KMSD_ROOT_KEY")
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return server.Backup(ctx, c, os.Stdout)
}

// parseBytes reads a byte count with an optional k, M or G (powers of 1024).
func parseBytes(s string) (int64, error) {
	mult := int64(1)
	switch {
	case strings.HasSuffix(s, "k"), strings.HasSuffix(s, "K"):
		mult, s = 1<<10, s[:len(s)-1]
	case strings.HasSuffix(s, "M"):
		mult, s = 1<<20, s[:len(s)-1]
	case strings.HasSuffix(s, "G"):
		mult, s = 1<<30, s[:len(s)-1]
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n > (1<<62)/mult {
		return 0, errors.New("bad byte count")
	}
	return n * mult, nil
}

const statusUsage = `usage: kmsd status [--data-dir DIR | --database-url URL] [--output text|json]

Prints the kmsd nodes sharing the database: each node's address, last
heartbeat, whether its node lease is live (or it stopped cleanly), the
controller lease's epoch it holds or last held and the cache lag it
published (how far behind the database its caches were at that
heartbeat); then the controller, the live leases and the last controller
terms. Needs no root key; reads, and writes nothing: on a PostgreSQL
database no node has started on it says there is no kmsd schema there.

Flags (environment variable; config file key):
`

func status(args []string) error {
	var c server.StatusConfig
	var dbPasswordFile string
	err := offlineFlags("status", statusUsage, args, func(fs *flag.FlagSet) {
		fs.StringVar(&c.Output, "output", "text", "text or json")
	},
		setting{"data-dir", "KMSD_DATA_DIR", "data_dir", "data directory whose embedded database to read (default ~/.kmsd)", &c.DataDir},
		setting{"database-url", "KMSD_DATABASE_URL", "database_url", "the PostgreSQL database the nodes share (password from KMSD_DATABASE_PASSWORD, --database-password-file, PGPASSWORD or PGPASSFILE)", &c.DatabaseURL},
		setting{"database-password-file", "KMSD_DATABASE_PASSWORD_FILE", "database_password_file", "file holding the --database-url password (its first line)", &dbPasswordFile},
	)
	if err != nil {
		return err
	}
	c.DatabasePassword = os.Getenv("KMSD_DATABASE_PASSWORD")
	if dbPasswordFile != "" {
		b, err := os.ReadFile(dbPasswordFile)
		if err != nil {
			return fmt.Errorf("--database-password-file: %w", err)
		}
		line, _, _ := strings.Cut(string(b), "\n")
		c.DatabasePassword = strings.TrimRight(line, "\r")
	}
	if c.DatabaseURL == "" {
		if c.DataDir, err = defaultDataDir(c.DataDir); err != nil {
			return err
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return server.Status(ctx, c, os.Stdout)
}

func restore(args []string) error {
	var c server.RestoreConfig
	err := offlineFlags("restore", restoreUsage, args, func(fs *flag.FlagSet) {
		fs.StringVar(&c.From, "from", "", "the backup file")
	},
		setting{"data-dir", "KMSD_DATA_DIR", "data_dir", "the data directory to make; must be absent or empty", &c.DataDir},
		setting{"root-key-file", "KMSD_ROOT_KEY_FILE", "root_key_file", "the root key of the kmsd the backup came from: checked against the backup and copied to <data-dir>/root.key", &c.RootKeyFile},
	)
	if err != nil {
		return err
	}
	if c.From == "" {
		return errors.New("--from is required")
	}
	if c.DataDir == "" {
		return errors.New("--data-dir is required: restore makes a new data directory")
	}
	c.RootKey = os.Getenv("KMSD_ROOT_KEY")
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return server.Restore(ctx, c, os.Stdout)
}

// resolve gives every setting not set by a flag of fs the value of its
// environment variable, else of its key in the TOML file configFile (if
// any). strict refuses keys in the file that no setting has; backup and
// restore read serve's file, so they ignore serve's other keys.
func resolve(fs *flag.FlagSet, settings []setting, configFile string, strict bool) error {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	file := map[string]string{}
	if configFile != "" && strict {
		md, err := toml.DecodeFile(configFile, &file)
		if err != nil {
			return fmt.Errorf("config %s: %w", configFile, err)
		}
		if keys := md.Undecoded(); len(keys) > 0 {
			return fmt.Errorf("config %s: unknown keys %v", configFile, keys)
		}
	} else if configFile != "" {
		var raw map[string]any
		if _, err := toml.DecodeFile(configFile, &raw); err != nil {
			return fmt.Errorf("config %s: %w", configFile, err)
		}
		for k, v := range raw {
			if str, ok := v.(string); ok {
				file[k] = str
			}
		}
	}
	known := map[string]bool{}
	for _, s := range settings {
		known[s.file] = true
		if set[s.flag] {
			continue
		}
		if v, ok := os.LookupEnv(s.env); ok {
			*s.dst = v
		} else if v, ok := file[s.file]; ok {
			*s.dst = v
		}
	}
	if strict {
		for k := range file {
			if !known[k] {
				return fmt.Errorf("config %s: unknown key %q", configFile, k)
			}
		}
	}
	return nil
}

// setting is one configuration value with its three sources.
type setting struct {
	flag, env, file string
	help            string
	dst             *string
}

func serve(args []string) error {
	var hsmProbe, hsmBackup string
	var cfg server.Config
	var configFile, sweep, auditMax, replicaDelay, consoleIdle string
	var dbPasswordFile, dbMax, dbMin, dbConnect, dbStatement, leaseTTL string
	var cacheStale, cachePoll, cacheSize string
	settings := []setting{
		{"listen", "KMSD_LISTEN", "listen", "address to listen on (default " + server.DefaultListen + ")", &cfg.Listen},
		{"data-dir", "KMSD_DATA_DIR", "data_dir", "data directory (default ~/.kmsd)", &cfg.DataDir},
		{"default-region", "KMSD_DEFAULT_REGION", "default_region", "region printed for clients (default us-east-1); requests use the region they are signed for", &cfg.DefaultRegion},
		{"account-id", "KMSD_ACCOUNT_ID", "account_id", "the default account (default 111122223333)", &cfg.AccountID},
		{"auth", "KMSD_AUTH", "auth", "verify (check signatures against known access keys) or emulator (accept any well-formed SigV4)", &cfg.Auth},
		{"log-level", "KMSD_LOG_LEVEL", "log_level", "debug, info, warn or error (default info)", &cfg.LogLevel},
		{"root-key-file", "KMSD_ROOT_KEY_FILE", "root_key_file", "file holding the root key (default <data-dir>/root.key, created 0600)", &cfg.RootKeyFile},
		{"metrics-listen", "KMSD_METRICS_LISTEN", "metrics_listen", "address for Prometheus /metrics (default: off)", &cfg.MetricsListen},
		{"sweep-interval", "KMSD_SWEEP_INTERVAL", "sweep_interval", "how often due key deletions, rotations and imported key material expiries run (default 1m)", &sweep},
		{"audit-log", "KMSD_AUDIT_LOG", "audit_log", "audit log (CloudTrail-shaped JSON lines): a file, - for stdout, off (default <data-dir>/audit.log)", &cfg.AuditLog},
		{"audit-log-max-size", "KMSD_AUDIT_LOG_MAX_SIZE", "audit_log_max_size", "size in bytes at which the audit log file is rotated (default 104857600)", &auditMax},
		{"audit-sync", "KMSD_AUDIT_SYNC", "audit_sync", "which audit records are written and fsynced before their response: mutations (every operation that is not read-only), all, or none (default mutations)", &cfg.AuditSync},
		{"node-id", "KMSD_NODE_ID", "node_id", "this node's id among nodes sharing one database, written with a per-node sequence number into every audit record (default: made on first start and kept in <data-dir>/node-id)", &cfg.NodeID},
		{"iam-config", "KMSD_IAM_CONFIG", "iam_config", "TOML file declaring accounts, users, roles and access keys; reloaded on SIGHUP", &cfg.IAMConfig},
		{"hsm-config", "KMSD_HSM_CONFIG", "hsm_config", "TOML file declaring HSM clusters over existing PKCS#11 tokens", &cfg.HSMConfig},
		{"hsm-token-dir", "KMSD_HSM_TOKEN_DIR", "hsm_token_dir", "SoftHSM2 token directory of the HSMs kmsd creates (default <data-dir>/hsm/tokens); with several nodes on one database, every node names the same shared directory", &cfg.HSMTokenDir},
		{"hsm-probe-interval", "KMSD_HSM_PROBE_INTERVAL", "hsm_probe_interval", "how often every HSM's token is probed; an HSM whose token is gone turns DEGRADED within three intervals, ACTIVE again within one of its return (default 10s)", &hsmProbe},
		{"hsm-backup-interval", "KMSD_HSM_BACKUP_INTERVAL", "hsm_backup_interval", "how often every initialized HSM cluster is backed up; backups are also taken at initialization and within a minute of a change of a cluster's keys or users (default 24h)", &hsmBackup},
		{"xks-ca-bundle", "KMSD_XKS_CA_BUNDLE", "xks_ca_bundle", "PEM file of CA certificates trusted for XKS proxies, beside the system roots", &cfg.XKSCABundle},
		{"xks-vpc-endpoint-services", "KMSD_XKS_VPC_ENDPOINT_SERVICES", "xks_vpc_endpoint_services", "VPC endpoint service names of external key stores and the addresses they reach, optionally with the service's private DNS name, which must then be the store's XksProxyUriEndpoint host: name=host:port or name=private.dns.name@host:port, comma-separated", &cfg.XKSVPCEndpointServices},
		{"xks-allowed-endpoints", "KMSD_XKS_ALLOWED_ENDPOINTS", "xks_allowed_endpoints", "where PUBLIC_ENDPOINT external key stores' proxies may be: comma-separated host names, *.domain, addresses and CIDR networks, each with an optional :port (e.g. xks.example.com,*.corp.example,10.0.0.0/8,127.0.0.1:8443); others fail as unreachable without being dialled (default: anywhere)", &cfg.XKSAllowedEndpoints},
		{"pair-pool-size", "KMSD_PAIR_POOL_SIZE", "pair_pool_size", "RSA data key pairs of each KeyPairSpec kept pre-generated in memory for GenerateDataKeyPair, filled after a spec's first use; EC, Ed25519 and SM2 pairs are made in small batches by the requests themselves (default 4; 0 disables both)", &cfg.PairPoolSize},
		{"replica-delay", "KMSD_REPLICA_DELAY", "replica_delay", "how long a new multi-Region replica stays Creating and keys changing their primary Region stay Updating (default 2s; 0 to 1h)", &replicaDelay},
		{"custom-key-store-rps", "KMSD_CUSTOM_KEY_STORE_RPS", "custom_key_store_rps", "request quota of each custom key store: cryptographic requests a second shared by its keys, beyond which they get ThrottlingException (default 1800, AWS's; 0 for no limit)", &cfg.CustomKeyStoreRPS},
		{"database-url", "KMSD_DATABASE_URL", "database_url", "PostgreSQL database to keep state in instead of <data-dir>/kmsd.db, shared by every node given it: postgres://user@host:5432/db?sslmode=verify-full (several host:port for failover, with target_session_attrs=read-write); the password from KMSD_DATABASE_PASSWORD, --database-password-file, PGPASSWORD or PGPASSFILE rather than the URL. Needs the root key (KMSD_ROOT_KEY or --root-key-file), which is then never created", &cfg.DatabaseURL},
		{"database-password-file", "KMSD_DATABASE_PASSWORD_FILE", "database_password_file", "file holding the --database-url password (its first line)", &dbPasswordFile},
		{"db-max-conns", "KMSD_DB_MAX_CONNS", "db_max_conns", "PostgreSQL connections this node may open (default 16), plus one with --cache-notify; keep nodes × (this + 1) below max_connections", &dbMax},
		{"db-min-conns", "KMSD_DB_MIN_CONNS", "db_min_conns", "PostgreSQL connections kept open when idle (default 2)", &dbMin},
		{"db-connect-timeout", "KMSD_DB_CONNECT_TIMEOUT", "db_connect_timeout", "time to open one PostgreSQL connection (default 3s)", &dbConnect},
		{"db-statement-timeout", "KMSD_DB_STATEMENT_TIMEOUT", "db_statement_timeout", "statement_timeout of kmsd's PostgreSQL sessions (default 5s; lock_timeout is min(2s, this), idle_in_transaction_session_timeout max(10s, twice this))", &dbStatement},
		{"console", "KMSD_CONSOLE", "console", "the web console at /console/ on the listener: on or off (default on)", &cfg.Console},
		{"console-idle-timeout", "KMSD_CONSOLE_IDLE_TIMEOUT", "console_idle_timeout", "how long a web console session lasts without requests (default 15m)", &consoleIdle},
		{"seed", "KMSD_SEED", "seed", "seed file (YAML, or TOML if it ends in .toml; kmsd's layout or local-kms's) of keys and aliases made sure to exist at every start", &cfg.Seed},
		{"keystore-connectors", "KMSD_KEYSTORE_CONNECTORS", "keystore_connectors", "how many custom key stores connect at once; more stay CONNECTING until their turn, so that many connecting at once do not slow the requests served meanwhile (default: one per two CPUs, at least one)", &cfg.KeyStoreConnectors},
		{"lease-ttl", "KMSD_LEASE_TTL", "lease_ttl", "time to live of the controller and node leases, renewed every fifth of it; a dead controller is replaced within about this (default 15s; 1s to 10m)", &leaseTTL},
		{"controller", "KMSD_CONTROLLER", "controller", "auto (this node may become the controller, which alone runs sweeps and other background duties) or never (default auto)", &cfg.Controller},
		{"cache-max-staleness", "KMSD_CACHE_MAX_STALENESS", "cache_max_staleness", "how far behind the database (as the change feed proves it) this node's cache of keys, aliases and grants may be when it serves a cryptographic operation; past it the node reads the database and refuses (KMSInternalException) if that fails (default 5s)", &cacheStale},
		{"cache-poll-interval", "KMSD_CACHE_POLL_INTERVAL", "cache_poll_interval", "how often the change feed is read to evict what other nodes changed (default 200ms)", &cachePoll},
		{"cache-notify", "KMSD_CACHE_NOTIFY", "cache_notify", "on or off: with --database-url, each node announces to the others its commits that change or delete records they may have cached (pg_notify, after the commit; one more connection than --db-max-conns listens), which then read the change feed at once instead of at their next poll — DisableKey is honoured everywhere within milliseconds; the polls go on, so nothing depends on it. Turn it off behind a pooler in transaction mode, which does not keep a LISTEN (default on)", &cfg.CacheNotify},
		{"cache-size", "KMSD_CACHE_SIZE", "cache_size", "how many keys this node caches (their records, AES-GCM instances and decoded keys), and as many grant lists and aliases; the least recently used are evicted and read again from the database when next used. About 2 KiB of heap per cached symmetric key; the process's soft memory limit is 128 MiB + 4 KiB per key of this (518 MiB at the default), or twice the live heap + 128 MiB if more, unless GOMEMLIMIT is set (default 100000)", &cacheSize},
		{"cache-preload", "KMSD_CACHE_PRELOAD", "cache_preload", "on or off: after start, read every key (up to --cache-size) into the cache in the background, with its AES-GCM instance, so that no key's first use reads the database; for a node whose cache holds all its keys, where a random key's Encrypt then costs what it costs on a small store (default off)", &cfg.CachePreload},
		{"xks-health-interval", "KMSD_XKS_HEALTH_INTERVAL", "xks_health_interval", "how often connected external key stores' proxies are health-checked (default 1m; 0 disables)", &cfg.XKSHealthInterval},
	}
	fs := flag.NewFlagSet("kmsd", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usage)
		fs.PrintDefaults()
	}
	fs.StringVar(&configFile, "config", os.Getenv("KMSD_CONFIG"), "optional TOML config file (KMSD_CONFIG)")
	for _, s := range settings {
		fs.StringVar(s.dst, s.flag, "", s.help+" ("+s.env+"; "+s.file+")")
	}
	faultInjection := fs.Bool("fault-injection", false, "tests only: allow KmsdAdmin.InjectConnectFault (kmsctl kmsd inject-connect-fault) and --fault-clock-offset (KMSD_FAULT_INJECTION=1)")
	clockOffset := fs.String("fault-clock-offset", os.Getenv("KMSD_FAULT_CLOCK_OFFSET"), "tests only, with --fault-injection: run the clock of key rotation, deletion and expiry dates this far ahead of the database's clock (a Go duration, e.g. 8784h to make keys with yearly rotation due) (KMSD_FAULT_CLOCK_OFFSET)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if *faultInjection {
		os.Setenv("KMSD_FAULT_INJECTION", "1")
	}
	if *clockOffset != "" {
		d, err := time.ParseDuration(*clockOffset)
		if err != nil {
			return fmt.Errorf("--fault-clock-offset %q: want a duration such as 8784h", *clockOffset)
		}
		cfg.ClockOffset = d
	}
	if err := resolve(fs, settings, configFile, true); err != nil {
		return err
	}
	if consoleIdle != "" {
		d, err := time.ParseDuration(consoleIdle)
		if err != nil || d <= 0 {
			return fmt.Errorf("--console-idle-timeout %q: want a duration such as 15m", consoleIdle)
		}
		cfg.ConsoleIdleTimeout = d
	}
	if sweep != "" {
		d, err := time.ParseDuration(sweep)
		if err != nil {
			return fmt.Errorf("--sweep-interval: %w", err)
		}
		cfg.SweepInterval = d
	}
	if leaseTTL != "" {
		d, err := time.ParseDuration(leaseTTL)
		if err != nil {
			return fmt.Errorf("--lease-ttl: %w", err)
		}
		cfg.LeaseTTL = d
	}
	if replicaDelay != "" {
		d, err := time.ParseDuration(replicaDelay)
		if err != nil {
			return fmt.Errorf("--replica-delay: %w", err)
		}
		cfg.ReplicaDelay, cfg.ReplicaDelaySet = d, true
	}
	if auditMax != "" {
		n, err := strconv.ParseInt(auditMax, 10, 64)
		if err != nil || n <= 0 {
			return fmt.Errorf("--audit-log-max-size %q: want a positive number of bytes", auditMax)
		}
		cfg.AuditLogMaxSize = n
	}
	if hsmProbe != "" {
		d, err := time.ParseDuration(hsmProbe)
		if err != nil || d <= 0 {
			return fmt.Errorf("--hsm-probe-interval %q: want a positive duration such as 10s", hsmProbe)
		}
		cfg.HSMProbeInterval = d
	}
	if hsmBackup != "" {
		d, err := time.ParseDuration(hsmBackup)
		if err != nil || d <= 0 {
			return fmt.Errorf("--hsm-backup-interval %q: want a positive duration such as 24h", hsmBackup)
		}
		cfg.HSMBackupInterval = d
	}
	for _, n := range []struct {
		flag, v string
		dst     *int
	}{{"db-max-conns", dbMax, &cfg.DBMaxConns}, {"db-min-conns", dbMin, &cfg.DBMinConns}} {
		if n.v == "" {
			continue
		}
		v, err := strconv.Atoi(n.v)
		if err != nil || v <= 0 {
			return fmt.Errorf("--%s %q: want a positive number of connections", n.flag, n.v)
		}
		*n.dst = v
	}
	for _, d := range []struct {
		flag, v string
		dst     *time.Duration
	}{{"db-connect-timeout", dbConnect, &cfg.DBConnectTimeout}, {"db-statement-timeout", dbStatement, &cfg.DBStatementTimeout},
		{"cache-max-staleness", cacheStale, &cfg.CacheMaxStaleness}, {"cache-poll-interval", cachePoll, &cfg.CachePollInterval}} {
		if d.v == "" {
			continue
		}
		v, err := time.ParseDuration(d.v)
		if err != nil || v <= 0 {
			return fmt.Errorf("--%s %q: want a positive duration such as 5s", d.flag, d.v)
		}
		*d.dst = v
	}
	if cacheSize != "" {
		v, err := strconv.Atoi(cacheSize)
		if err != nil || v <= 0 {
			return fmt.Errorf("--cache-size %q: want a positive number of keys", cacheSize)
		}
		cfg.CacheSize = v
	}
	cfg.DatabasePassword = os.Getenv("KMSD_DATABASE_PASSWORD")
	if dbPasswordFile != "" {
		b, err := os.ReadFile(dbPasswordFile)
		if err != nil {
			return fmt.Errorf("--database-password-file: %w", err)
		}
		line, _, _ := strings.Cut(string(b), "\n")
		cfg.DatabasePassword = strings.TrimRight(line, "\r")
	}
	if cfg.DatabaseURL == "" && (cfg.DatabasePassword != "" || dbMax+dbMin+dbConnect+dbStatement != "") {
		return errors.New("the database password and --db-* settings need --database-url")
	}
	var err error
	if cfg.DataDir, err = defaultDataDir(cfg.DataDir); err != nil {
		return err
	}
	cfg.RootKey = os.Getenv("KMSD_ROOT_KEY")
	cfg.AdminKeyID = os.Getenv("KMSD_ADMIN_ACCESS_KEY_ID")
	cfg.AdminSecret = os.Getenv("KMSD_ADMIN_SECRET_ACCESS_KEY")

	var level slog.Level
	if cfg.LogLevel != "" {
		if err := level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
			return fmt.Errorf("--log-level: %w", err)
		}
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	// A soft memory limit from the cache size, so that GOGC=400 (main)
	// does not let a full cache's heap grow fivefold.
	cacheKeys := cfg.CacheSize
	if cacheKeys == 0 {
		cacheKeys = catalog.DefaultCacheSize
	}
	memlimit.Start(ctx, cacheKeys)
	return server.Run(ctx, cfg, os.Stdout, log)
}
