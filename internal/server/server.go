// Package server is kmsd's composition root: it reads the configuration,
// opens the data directory (root key, embedded database), wires the
// catalog, identities and the KMS service to the HTTP listener, runs the
// background sweepers, and shuts down gracefully. It is the only package
// that picks concrete drivers.
//
// Who may do what: KMS and CloudHSM v2 requests alike are decided by the
// KMS policy engine from the caller's policies (handler.go; for CloudHSM,
// cloudhsmauthz.go: identity policies only, cloudhsm:* actions on cluster
// ARNs). kmsd's admin API (admin.go), which stands for the CloudHSM CLI
// talking to the HSMs, is not governed by IAM policies, as the CloudHSM
// CLI is not: its gate is the account's administrator identity (root or
// kmsd-admin) plus the HSM users' passwords, so no other principal
// reaches the clusters through it, whatever its policies.
//
// Change-feed pruning (store.go, a controller duty) departs from
// MULTINODE.md §4.3, which keeps every change down to the earliest cursor
// of the live nodes: a live node's cursor holds pruning back for at most
// changeMaxRetention (an hour), so that a node that heartbeats while its
// feed is stuck cannot make the change table grow without bound; that
// node gets a Reset (reloads its caches) when its feed moves again.
//
// Version gate (datalevel.go; MULTINODE.md §7.3 min_node_version): at
// start a node whose data format level (release.DataLevel) is below the
// database's minimum refuses before it writes anything — on PostgreSQL
// before any migration, beside the root key check — and a node above it
// raises the minimum once its root key is proved. A running node that
// finds the minimum raised at a heartbeat (controller.Config.Outdated)
// shuts down like on SIGTERM and Run returns an error (exit status 1),
// and says it stopped (node record, node lease released) only after its
// requests in flight finished — if they do not within the shutdown
// timeout, it leaves its node lease to expire instead. A node does not
// apply its seed file, listen or campaign for the controller lease until
// every older node has stopped (controller.Controller.Ready: their node
// leases released or expired), for at most olderWait (twice --lease-ttl
// plus the shutdown timeout; then it exits 1 naming them): so once a newer
// node serves, no older node still commits a write — every node's writes
// are fenced by its node lease (storage.WriteFencer, set up by the
// controller), so an older node frozen mid-request past its lease cannot
// commit that request when it thaws. Nodes from before the gate publish
// no level and are not waited for; nodes from before the fence are not
// fenced.
// Departures from §7.3, recorded in the controller package doc too: the
// gate is a level, not a version; it stops the node serving, not only
// campaigning; every newer node raises it at start, not the controller;
// and it is a record of the key space (controller.MinLevelRecord), not a
// kmsd_meta row.
//
// Clocks (issue #16; MULTINODE.md assumes node clocks close enough): the
// times one node writes and another compares with "now" — kms's deletion
// and rotation dates, imported material and import token expiry,
// multi-Region due times, creation dates, aws:CurrentTime; hsm's steps
// and backups — are on the database's clock, estimated on each node by
// one package dbclock Clock that openCore measures before the first
// request and shares between the kms and hsm Services (re-measured in the
// background every 10 s, the last offset kept while the database cannot be
// asked). Nodes whose clocks are minutes apart then agree on them. The
// SigV4 skew check (against the client's clock), audit records' eventTime
// and leases' local deadlines stay on the node's clock. On SQLite the
// database's clock is the machine's. --fault-clock-offset moves the kms
// clock on top of the database's, on every node alike.
package server

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kmsd/kmsd/internal/awsjson"
	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/console"
	"github.com/kmsd/kmsd/internal/controller"
	"github.com/kmsd/kmsd/internal/dbclock"
	"github.com/kmsd/kmsd/internal/feed"
	"github.com/kmsd/kmsd/internal/hsm"
	"github.com/kmsd/kmsd/internal/identity"
	"github.com/kmsd/kmsd/internal/keystore"
	"github.com/kmsd/kmsd/internal/kms"
	"github.com/kmsd/kmsd/internal/sigv4"
	"github.com/kmsd/kmsd/internal/storage"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// setVerifiers gives a its SigV4 verifiers for the KMS, IAM and STS APIs,
// with lookup resolving access keys (nil: set later, or emulator mode).
// Each API accepts its own protocol's Content-Type unsigned (see
// sigv4.Verifier.ProtocolContentType); any other value must be signed.
func (a *api) setVerifiers(lookup sigv4.SecretLookup) {
	v := func(service, contentType string) *sigv4.Verifier {
		return &sigv4.Verifier{Service: service, Lookup: lookup, Now: time.Now, MaxSkew: 5 * time.Minute, ProtocolContentType: contentType}
	}
	a.verifier, a.iamVerifier, a.stsVerifier = v("kms", awsjson.ContentType), v("iam", queryContentType), v("sts", queryContentType)
}

// shutdownTimeout is how long a stopping node waits for the requests in
// flight.
const shutdownTimeout = 10 * time.Second

// DefaultListen is where kmsd listens unless told otherwise: loopback
// only, on a fixed port.
const DefaultListen = "127.0.0.1:7480"

// DefaultReplicaDelay is Config.ReplicaDelay unless set.
const DefaultReplicaDelay = 2 * time.Second

// ProfileName is the shared-credentials profile kmsd writes for its
// administrator.
const ProfileName = "kmsd"

// Config is kmsd's validated configuration.
type Config struct {
	Listen        string
	DataDir       string
	DefaultRegion string
	AccountID     string
	Auth          string // "verify" or "emulator"
	LogLevel      string
	RootKeyFile   string // default <data-dir>/root.key
	RootKey       string // base64, from KMSD_ROOT_KEY; wins over the file
	AdminKeyID    string // KMSD_ADMIN_ACCESS_KEY_ID
	AdminSecret   string // KMSD_ADMIN_SECRET_ACCESS_KEY
	MetricsListen string // empty: no metrics listener
	SweepInterval time.Duration
	// AuditLog is the audit log file: default <data-dir>/audit.log, "-"
	// for standard output, "off" for none. AuditLogMaxSize is the size
	// at which it is rotated (default 100 MiB).
	AuditLog        string
	AuditLogMaxSize int64
	// AuditSync says which audit records are synced to stable storage
	// before their response: AuditSyncMutations (default), AuditSyncAll
	// or AuditSyncNone.
	AuditSync string
	// NodeID names this kmsd among the nodes sharing one database: in
	// every audit record (kmsdNode) and in logs. Default: the id kept in
	// <data-dir>/node-id, made on first start (node.go).
	NodeID string
	// IAMConfig is an optional TOML file declaring accounts and
	// identities (see identity.Config); it is read again on SIGHUP.
	IAMConfig string
	// HSMConfig is an optional TOML file declaring HSM clusters over
	// existing PKCS#11 tokens (see hsm.LoadDeclarations).
	HSMConfig string
	// HSMTokenDir is the SoftHSM2 token directory of the HSMs kmsd
	// creates (empty: <data-dir>/hsm/tokens); nodes sharing a database
	// share it.
	HSMTokenDir string
	// HSMProbeInterval is how often every HSM's token is probed (zero:
	// KMSD_HSM_PROBE_INTERVAL, else hsm.DefaultProbeInterval).
	HSMProbeInterval time.Duration
	// HSMBackupInterval is how often every initialized HSM cluster is
	// backed up (zero: hsm.DefaultBackupInterval).
	HSMBackupInterval time.Duration
	// XKSCABundle is a PEM file of CAs trusted for XKS proxies beside the
	// system roots; XKSVPCEndpointServices maps VPC endpoint service names
	// to addresses ("name=host:port,..."); XKSHealthInterval is how often
	// connected external key stores are health-checked (default 1m, 0 off).
	XKSCABundle            string
	XKSVPCEndpointServices string
	XKSHealthInterval      string
	// XKSAllowedEndpoints limits where PUBLIC_ENDPOINT external key
	// stores' proxies may be: comma-separated host names, *.domain,
	// addresses and CIDR networks, each with an optional :port (package
	// netallow). Empty: anywhere, as in AWS.
	XKSAllowedEndpoints string
	// PairPoolSize is how many RSA data key pairs of each KeyPairSpec are
	// kept pre-generated in memory for GenerateDataKeyPair ("" for
	// kms.DefaultPairPoolSize, "0" for none, which also stops the EC
	// specs' batches, kms.PairPool); PairPool is it parsed.
	PairPoolSize string
	PairPool     int
	// ReplicaDelay is how long a new multi-Region replica stays Creating
	// and keys changing their primary Region stay Updating (default 2s,
	// as AWS takes seconds); ReplicaDelaySet says it was given (0 allowed).
	ReplicaDelay    time.Duration
	ReplicaDelaySet bool
	// ClockOffset moves the clock of key life cycles (rotation and
	// deletion dates, imported material expiry, usage tracking start)
	// this far from the database's clock, so that tests can make automatic
	// rotations due without waiting 90 days (--fault-clock-offset). Fault
	// injection only: it needs KMSD_FAULT_INJECTION (--fault-injection).
	ClockOffset time.Duration
	// DatabaseURL, when set, is the PostgreSQL database (postgres:// URL
	// or key=value string) kmsd keeps its state in instead of the SQLite
	// file in DataDir; several nodes may share it. Its password may come
	// from DatabasePassword (KMSD_DATABASE_PASSWORD or the file of
	// --database-password-file) or PGPASSWORD / PGPASSFILE. The root key
	// is then required and never created (see openBarrier).
	DatabaseURL      string
	DatabasePassword string
	// DB* tune the PostgreSQL pool and sessions (zero: 16, 2, 3s, 5s).
	DBMaxConns, DBMinConns int
	DBConnectTimeout       time.Duration
	DBStatementTimeout     time.Duration
	// CustomKeyStoreRPS is the request quota of each custom key store:
	// cryptographic requests a second shared by its keys, over which they
	// get ThrottlingException ("" for AWS's keystore.DefaultRPS, "0" for
	// no limit); StoreRPS is it parsed.
	CustomKeyStoreRPS string
	StoreRPS          int
	// Console is "on" (the default) or "off": the web console at
	// /console/ on the main listener (package console).
	// ConsoleIdleTimeout ends console sessions without requests
	// (default 15m).
	Console            string
	ConsoleIdleTimeout time.Duration
	// Seed is an optional seed file (package seed) applied at every
	// start and, in emulator mode, at every reset.
	Seed string
	// seedClusters are the seed file's HSM clusters, declared beside
	// HSMConfig's.
	seedClusters []hsm.Declaration
	// clock is the database's clock as this node estimates it, shared by
	// the core's kms and hsm Services (openCore).
	clock *dbclock.Clock
	// KeyStoreConnectors is how many custom key stores connect at once
	// ("" for keystore.DefaultConnectors, one per two CPUs); Connectors is
	// it parsed (0 for the default).
	KeyStoreConnectors string
	Connectors         int
	// LeaseTTL is the controller and node leases' time to live (default
	// 15s); Controller is "auto" or "never" (this node never runs the
	// background duties). The node id (NodeID) is the lease holder.
	LeaseTTL   time.Duration
	Controller string
	// CacheMaxStaleness bounds how far behind the database a node's
	// cache may be when it serves a cryptographic operation from it; past
	// it the node reads the database, and refuses when that fails (zero:
	// DefaultCacheMaxStaleness). CachePollInterval is how often the change
	// feed is read (zero: feed.DefaultInterval). CacheNotify is "on" (the
	// default) or "off": with a database URL, each node announces its
	// commits with pg_notify and polls at once on the others' (an
	// accelerator: the polls go on).
	CacheMaxStaleness time.Duration
	CachePollInterval time.Duration
	CacheNotify       string
	// CacheSize bounds how many keys (and as many grant lists and
	// aliases) the catalog caches (zero: catalog.DefaultCacheSize).
	CacheSize int
	// CachePreload is "off" (the default) or "on": after start, read
	// every key (up to CacheSize) into the cache in the background
	// (catalog.Preload).
	CachePreload string
	// dataLevel is this node's data format level (datalevel.go), set by
	// Validate.
	dataLevel int
}

// DefaultCacheMaxStaleness is Config.CacheMaxStaleness unless set.
const DefaultCacheMaxStaleness = 5 * time.Second

// Validate checks c and fills defaults.
func (c *Config) Validate() error {
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.DataDir == "" {
		return errors.New("--data-dir is required")
	}
	if c.DefaultRegion == "" {
		c.DefaultRegion = "us-east-1"
	}
	if c.AccountID == "" {
		c.AccountID = "111122223333"
	}
	if len(c.AccountID) != 12 || strings.Trim(c.AccountID, "0123456789") != "" {
		return fmt.Errorf("--account-id %q: an account id is 12 digits", c.AccountID)
	}
	if err := oneOf("--auth", &c.Auth, "verify", "emulator"); err != nil {
		return err
	}
	if (c.AdminKeyID == "") != (c.AdminSecret == "") {
		return errors.New("KMSD_ADMIN_ACCESS_KEY_ID and KMSD_ADMIN_SECRET_ACCESS_KEY go together")
	}
	if c.RootKeyFile == "" {
		c.RootKeyFile = filepath.Join(c.DataDir, "root.key")
	}
	if c.DBMaxConns < 0 || c.DBMinConns < 0 || c.DBMinConns > max(c.DBMaxConns, 16) || c.DBMaxConns > 1000 {
		return fmt.Errorf("--db-max-conns %d / --db-min-conns %d: want 0 <= min <= max <= 1000", c.DBMaxConns, c.DBMinConns)
	}
	if c.DBConnectTimeout < 0 || c.DBStatementTimeout < 0 {
		return errors.New("--db-connect-timeout and --db-statement-timeout must not be negative")
	}
	if err := oneOf("--audit-sync", &c.AuditSync, AuditSyncMutations, AuditSyncAll, AuditSyncNone); err != nil {
		return err
	}
	if c.NodeID != "" && !validNodeID(c.NodeID) {
		return fmt.Errorf("--node-id %q: want 1 to 64 letters, digits, '.', '_' or '-'", c.NodeID)
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = controller.DefaultTTL
	}
	if c.LeaseTTL < time.Second || c.LeaseTTL > 10*time.Minute {
		return fmt.Errorf("--lease-ttl %s: want a duration from 1s to 10m", c.LeaseTTL)
	}
	if err := oneOf("--controller", &c.Controller, string(controller.Auto), string(controller.Never)); err != nil {
		return err
	}
	if c.SweepInterval <= 0 {
		c.SweepInterval = time.Minute
	}
	if c.CacheMaxStaleness < 0 || c.CachePollInterval < 0 {
		return errors.New("--cache-max-staleness and --cache-poll-interval must not be negative")
	}
	if c.CacheMaxStaleness == 0 {
		c.CacheMaxStaleness = DefaultCacheMaxStaleness
	}
	if c.CacheSize < 0 {
		return fmt.Errorf("--cache-size %d: want a positive number of keys", c.CacheSize)
	}
	if c.CacheSize == 0 {
		c.CacheSize = catalog.DefaultCacheSize
	}
	if c.CachePollInterval == 0 {
		c.CachePollInterval = feed.DefaultInterval
	}
	if c.CachePollInterval >= c.CacheMaxStaleness {
		return fmt.Errorf("--cache-poll-interval %s must be shorter than --cache-max-staleness %s", c.CachePollInterval, c.CacheMaxStaleness)
	}
	level, err := dataLevel()
	if err != nil {
		return err
	}
	c.dataLevel = level
	if c.ClockOffset != 0 && !faultInjection() {
		return errors.New("--fault-clock-offset is for tests only and needs --fault-injection")
	}
	if !c.ReplicaDelaySet {
		c.ReplicaDelay = DefaultReplicaDelay
	}
	if c.ReplicaDelay < 0 || c.ReplicaDelay > time.Hour {
		return fmt.Errorf("--replica-delay %s: want a duration from 0 to 1h", c.ReplicaDelay)
	}
	c.StoreRPS = keystore.DefaultRPS
	if c.CustomKeyStoreRPS != "" {
		n, err := strconv.Atoi(c.CustomKeyStoreRPS)
		if err != nil || n < 0 {
			return fmt.Errorf("--custom-key-store-rps %q: want a number of requests a second (0: no limit)", c.CustomKeyStoreRPS)
		}
		c.StoreRPS = n
	}
	if err := oneOf("--console", &c.Console, "on", "off"); err != nil {
		return err
	}
	if err := oneOf("--cache-notify", &c.CacheNotify, "on", "off"); err != nil {
		return err
	}
	if err := oneOf("--cache-preload", &c.CachePreload, "off", "on"); err != nil {
		return err
	}
	if c.ConsoleIdleTimeout < 0 {
		return fmt.Errorf("--console-idle-timeout %s: want a positive duration", c.ConsoleIdleTimeout)
	}
	c.Connectors = 0
	if c.KeyStoreConnectors != "" {
		n, err := strconv.Atoi(c.KeyStoreConnectors)
		if err != nil || n < 1 || n > 1024 {
			return fmt.Errorf("--keystore-connectors %q: want a number of stores from 1 to 1024", c.KeyStoreConnectors)
		}
		c.Connectors = n
	}
	c.PairPool = kms.DefaultPairPoolSize
	if c.PairPoolSize != "" {
		n, err := strconv.Atoi(c.PairPoolSize)
		if err != nil || n < 0 || n > 1024 {
			return fmt.Errorf("--pair-pool-size %q: want a number of pairs from 0 to 1024", c.PairPoolSize)
		}
		c.PairPool = n
	}
	return nil
}

// Run serves until ctx is cancelled, then shuts down gracefully. ready,
// if not nil, receives the listener's address once serving.
func Run(ctx context.Context, cfg Config, out io.Writer, log *slog.Logger) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if cfg.ClockOffset != 0 {
		log.Warn("fault injection: the clock of key rotation, deletion and expiry dates runs off the database's clock", "offset", cfg.ClockOffset)
	}
	seedFile, err := loadSeed(cfg)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return err
	}
	store, db, err := openStore(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer store.Close()
	// Version gate: a node older than the database refuses before it
	// writes anything; a newer one raises the database's level.
	if err := checkDataLevel(ctx, store, db, cfg.dataLevel); err != nil {
		return err
	}
	b, err := openBarrier(ctx, cfg, store, db, log)
	if err != nil {
		return err
	}
	if err := raiseDataLevel(ctx, store, db, cfg.dataLevel, log); err != nil {
		return err
	}

	a := &api{account: cfg.AccountID, log: log, metrics: newMetrics()}
	a.setVerifiers(nil)
	auditLog, closeAudit, err := openAudit(cfg, out, log)
	if err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	// Deferred first, so it runs last: every request has been answered
	// and its record queued before the log is flushed and synced.
	defer func() {
		if err := closeAudit(); err != nil {
			log.Error("audit log close", "err", err)
		}
	}()
	a.audit = auditLog
	a.auditSync = cfg.AuditSync
	if cfg.AuditLog == "-" {
		a.auditSync = AuditSyncNone // a pipe or terminal cannot be synced
	}

	var profileFile string
	if cfg.Auth == "verify" {
		ids, err := identity.Open(ctx, store, b)
		if err != nil {
			return err
		}
		if profileFile, err = bootstrapAdmin(ctx, cfg, ids); err != nil {
			return err
		}
		if err := grantAdmin(ctx, cfg, ids); err != nil {
			return err
		}
		if cfg.IAMConfig != "" {
			if err := loadIAMConfig(ctx, cfg.IAMConfig, ids); err != nil {
				return err
			}
			stopReload := reloadOnHUP(ctx, cfg.IAMConfig, ids, log)
			defer stopReload()
		}
		a.ids = ids
		a.verifier.Lookup = ids
		a.iamVerifier.Lookup = ids
		a.stsVerifier.Lookup = ids
	}
	// The background duties run on the one node holding the controller
	// lease (on SQLite: always this process).
	// A newer node raising the data format level (seen at a heartbeat)
	// shuts this one down, with an error: exit status 1.
	outdated := make(chan int, 1)
	ctl, err := newController(cfg, store, cfg.Listen, &a.quotaShare, a.cacheLag, a.feedCursor, log, func(min int) {
		select {
		case outdated <- min:
		default:
		}
	})
	if err != nil {
		return err
	}
	a.ctl = ctl
	a.metrics.reg.MustRegister(controllerCollector{ctl, store}, poolCollector{store})
	if w, ok := store.(storage.Watcher); ok {
		ls := store.(storage.Leaser)
		floor := func(ctx context.Context, gen string) (storage.Cursor, bool, error) {
			return controller.FeedFloor(ctx, store, ls, gen)
		}
		ctl.Add("prune", func(ctx context.Context) {
			pruneChanges(ctx, w, changeRetention/5, changeRetention, changeMaxRetention, floor, log)
		})
	}
	ctlCtx, stopCtl := context.WithCancel(ctx)
	ctlDone := make(chan struct{})
	go func() {
		defer close(ctlDone)
		ctl.Run(ctlCtx)
	}()
	// Stopped (duties ended, leases released) after the core closed and
	// before the store closes.
	defer func() {
		stopCtl()
		<-ctlDone
	}()

	// Version gate: neither the seed file's keys are written nor any
	// request answered while an older node may still write (awaitOlder).
	if serve, err := awaitOlder(ctx, ctl, outdated, cfg, db); err != nil || !serve {
		return err
	}

	// The catalog, the KMS service, HSM clusters and key stores, with the
	// seed file applied: what a reset replaces (reset.go). Deferred
	// before the listener's shutdown, so it closes after every request
	// has been answered (and their key uses are stored).
	a.reset = &resetter{cfg: cfg, store: store, barrier: b, log: log, seed: seedFile}
	if err := a.openCore(ctx); err != nil {
		return err
	}
	defer a.closeCore()

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return err
	}
	endpoint := "http://" + ln.Addr().String()
	printBanner(out, cfg, endpoint, profileFile)

	sweepCtx, stopSweep := context.WithCancel(ctx)
	defer stopSweep()
	var handler http.Handler = a
	if cfg.Console == "on" {
		con, err := console.New(console.Config{Backend: &consoleBackend{a: a, region: cfg.DefaultRegion, auditPath: AuditLogPath(cfg)},
			Region: cfg.DefaultRegion, IdleTimeout: cfg.ConsoleIdleTimeout, Log: log})
		if err != nil {
			return fmt.Errorf("console: %w", err)
		}
		a.console = con
		go con.Run(sweepCtx)
		handler = withConsole(a, con)
		fmt.Fprintf(out, "web console: %s%s\n", endpoint, console.Prefix)
	}

	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(ln) }()

	var msrv *http.Server
	if cfg.MetricsListen != "" {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(a.metrics.reg, promhttp.HandlerOpts{}))
		msrv = &http.Server{Addr: cfg.MetricsListen, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := msrv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
				errc <- err
			}
		}()
	}

	ctl.SetAddress(ln.Addr().String())

	var stopErr error
	select {
	case <-ctx.Done():
	case min := <-outdated:
		stopErr = outdatedError(db, cfg.dataLevel, min)
		log.Error("stopping: a newer kmsd joined the database and raised its data format level above this node's; upgrade this node",
			"level", cfg.dataLevel, "databaseMinimum", min)
	case err := <-errc:
		if !errors.Is(err, http.ErrServerClosed) {
			return err
		}
	}
	log.Info("shutting down")
	shutCtx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if msrv != nil {
		msrv.Shutdown(shutCtx)
	}
	if err := srv.Shutdown(shutCtx); err != nil {
		// Requests still running may yet write: the node does not say it
		// stopped (its node lease is left to expire, which newer nodes
		// wait for), and their contexts are cancelled.
		ctl.Abandon()
		srv.Close()
		return err
	}
	return stopErr
}

// sweep runs the deletion, rotation, multi-Region transition and
// imported-material expiry sweepers now and then.
func sweep(ctx context.Context, svc *kms.Service, every time.Duration, log *slog.Logger, expired func(kms.ExpiredMaterial), runs prometheus.Counter) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		runs.Inc()
		// One scan of the store for the four sweepers (kms.SweepRound).
		round, err := svc.SweepRound(ctx)
		if err != nil && ctx.Err() == nil {
			log.Error("sweep scan", "err", err)
		}
		if _, err := svc.SweepDeletions(round); err != nil && ctx.Err() == nil {
			log.Error("deletion sweep", "err", err)
		}
		if _, err := svc.SweepRotations(round); err != nil && ctx.Err() == nil {
			log.Error("rotation sweep", "err", err)
		}
		// First at start: what a killed process left Creating or
		// Updating ends now if due; timers of this process do the rest.
		if _, err := svc.SweepTransitions(round); err != nil && ctx.Err() == nil {
			log.Error("multi-Region transition sweep", "err", err)
		}
		gone, err := svc.SweepImports(round)
		if err != nil && ctx.Err() == nil {
			log.Error("imported key material expiry sweep", "err", err)
		}
		for _, e := range gone {
			expired(e)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// bootstrapAdmin makes sure the default account has an administrator
// access key: the one from the environment, or on first start of the
// database a new one (identity.Store.Bootstrap: created once even when
// several nodes start at once on one database, and the same for all of
// them). The node that creates it writes it as a shared-credentials
// profile (mode 0600) in its data directory; the others, like a data
// directory restored from a backup, have the key in the store only. It
// returns the profile file when there is one.
//
// The key offered is first written to a pending profile of its own
// (.credentials-pending-<key id>), and the profile is written once the key
// is known to be the administrator's: a crash in between leaves the
// pending file, whose key the next start offers again, so the key of a
// stored administrator is never lost. Processes starting at once on one
// data directory each keep to their own pending file.
func bootstrapAdmin(ctx context.Context, cfg Config, ids *identity.Store) (string, error) {
	admin := identity.Principal{Account: cfg.AccountID, ARN: "arn:aws:iam::" + cfg.AccountID + ":user/kmsd-admin", Name: "kmsd-admin"}
	if cfg.AdminKeyID != "" {
		return "", ids.Put(ctx, cfg.AdminKeyID, cfg.AdminSecret, admin)
	}
	file := filepath.Join(cfg.DataDir, "credentials")
	pendingPrefix := filepath.Join(cfg.DataDir, ".credentials-pending-")
	profile := func(akid, secret string) string {
		return fmt.Sprintf("[%s]\naws_access_key_id = %s\naws_secret_access_key = %s\nregion = %s\n", ProfileName, akid, secret, cfg.DefaultRegion)
	}
	pendings, _ := filepath.Glob(pendingPrefix + "*")
	var akid, secret string
	for _, p := range pendings {
		if akid, secret = readProfile(p); akid != "" {
			break // a start that crashed: its key is offered again
		}
	}
	if akid == "" {
		var err error
		if akid, secret, err = identity.NewKeyPair(rand.Reader); err != nil {
			return "", err
		}
		if err := writeSynced(pendingPrefix+akid, profile(akid, secret)); err != nil {
			return "", fmt.Errorf("administrator credentials: %w", err)
		}
	}
	mine := pendingPrefix + akid
	defer os.Remove(mine)
	got, gotSecret, _, err := ids.Bootstrap(ctx, cfg.AccountID, admin.Name, akid, secret)
	if err != nil && !errors.Is(err, identity.ErrNoBootstrap) {
		return "", err
	}
	if err == nil {
		// The administrator's key is this start's, or a crashed start's
		// of this data directory: the profile is written.
		if _, statErr := os.Stat(pendingPrefix + got); got == akid || statErr == nil {
			if err := writeAtomic(cfg.DataDir, file, profile(got, gotSecret)); err != nil {
				return "", fmt.Errorf("administrator credentials: %w", err)
			}
			os.Remove(pendingPrefix + got)
			return file, nil
		}
	}
	// Another node made the administrator, or keys from before exist:
	// the profile file, if any, is left as it is.
	if _, err := os.Stat(file); err == nil {
		return file, nil
	}
	return "", nil
}

// writeAtomic writes content to path (mode 0600) whole: to a file of its
// own in dir, synced, then renamed over path.
func writeAtomic(dir, path, content string) error {
	tmp, err := os.CreateTemp(dir, ".credentials-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.WriteString(content)
	if serr := tmp.Sync(); err == nil {
		err = serr
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	return syncDir(dir)
}

// readProfile returns the key pair of the profile file at path, or ""
// when there is none (or it is incomplete).
func readProfile(path string) (akid, secret string) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(line, "=")
		switch strings.TrimSpace(k) {
		case "aws_access_key_id":
			akid = strings.TrimSpace(v)
		case "aws_secret_access_key":
			secret = strings.TrimSpace(v)
		}
	}
	if akid == "" || secret == "" {
		return "", ""
	}
	return akid, secret
}

// writeSynced writes content to path (mode 0600) whole and synced.
func writeSynced(path, content string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.WriteString(content)
	if serr := f.Sync(); err == nil {
		err = serr
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
	}
	return err
}

func printBanner(out io.Writer, cfg Config, endpoint, profileFile string) {
	fmt.Fprintf(out, "kmsd serving the AWS KMS API at %s (account %s, default region %s, auth %s)\n", endpoint, cfg.AccountID, cfg.DefaultRegion, cfg.Auth)
	switch {
	case cfg.Auth == "emulator":
		fmt.Fprintf(out, "any well-formed SigV4 signature is accepted, e.g.:\n  AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test aws --region %s --endpoint-url %s kms list-keys\n", cfg.DefaultRegion, endpoint)
	case profileFile != "":
		fmt.Fprintf(out, "administrator credentials: profile %q in %s\n  AWS_SHARED_CREDENTIALS_FILE=%s aws --profile %s --endpoint-url %s kms list-keys\n", ProfileName, profileFile, profileFile, ProfileName, endpoint)
	case cfg.AdminKeyID != "":
		fmt.Fprintf(out, "administrator credentials: the access key from KMSD_ADMIN_ACCESS_KEY_ID\n  aws --endpoint-url %s kms list-keys\n", endpoint)
	default:
		// A restored data directory, or one whose credentials file was
		// removed: the keys are in the store, the file is not here.
		fmt.Fprintf(out, "administrator credentials: the access keys already in the store (no credentials file in %s)\n", cfg.DataDir)
	}
}

// oneOf checks that *v, the setting of flag, is one of choices, and sets
// it to the first (the default) when empty.
func oneOf(flag string, v *string, choices ...string) error {
	if *v == "" {
		*v = choices[0]
		return nil
	}
	if slices.Contains(choices, *v) {
		return nil
	}
	want := strings.Join(choices[:len(choices)-1], ", ") + " or " + choices[len(choices)-1]
	return fmt.Errorf("%s %q: want %s", flag, *v, want)
}
