package proxycmd

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/kmsd/kmsd/internal/xks"
	"github.com/kmsd/kmsd/internal/xks/keyman"
	"github.com/kmsd/kmsd/internal/xks/keyman/keyfile"
	"github.com/kmsd/kmsd/internal/xks/keyman/pkcs11"
	"github.com/kmsd/kmsd/internal/xks/xksserver"
)

// serveFlags are the command-line settings; the single-store ones describe a whole
// proxy without a file.
type serveFlags struct {
	config, listen, healthListen, metricsListen, region, logLevel, logFormat string
	insecure                                                                 bool
	tlsCert, tlsKey, clientCA, clientSubject                                 string
	prefix, akid, secretFile, sources                                        string
	keysFile, passFile                                                       string
	pkcs11Module, pkcs11Token, pkcs11PINFile                                 string
	pprof                                                                    string
	rateLimit                                                                float64
	ekmTimeout                                                               time.Duration
	set                                                                      map[string]bool
}

func parseServeFlags(args []string, stderr io.Writer) (*serveFlags, error) {
	f := &serveFlags{}
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&f.config, "config", os.Getenv("XKS_PROXY_CONFIG"), "TOML configuration file ($XKS_PROXY_CONFIG)")
	fs.StringVar(&f.listen, "listen", "", "address to serve the XKS API on (default 0.0.0.0:8443)")
	fs.BoolVar(&f.insecure, "insecure-http", false, "serve plain HTTP, only behind a load balancer that terminates TLS")
	fs.StringVar(&f.healthListen, "health-listen", "", "optional plain-HTTP address for GET /ping and /healthz")
	fs.StringVar(&f.metricsListen, "metrics-listen", "", "optional address for Prometheus GET /metrics")
	fs.StringVar(&f.pprof, "pprof", "", "debugging: a loopback address (127.0.0.1:port, [::1]:port, localhost:port) serving Go's /debug/pprof/, with mutex and block profiling on")
	fs.StringVar(&f.region, "region", "", "accept only this region in SigV4 credential scopes")
	fs.StringVar(&f.logLevel, "log-level", "", "debug, info, warn or error (default info)")
	fs.StringVar(&f.logFormat, "log-format", "", "json or text (default json)")
	fs.StringVar(&f.tlsCert, "tls-cert", "", "server certificate chain (PEM)")
	fs.StringVar(&f.tlsKey, "tls-key", "", "server private key (PEM)")
	fs.StringVar(&f.clientCA, "tls-client-ca", "", "enable mTLS: client certificates must chain to these roots (PEM)")
	fs.StringVar(&f.clientSubject, "tls-client-subject", "", "mTLS: required client certificate CN or DNS name, e.g. cks.kms.us-east-1.amazonaws.com")
	fs.StringVar(&f.prefix, "uri-path-prefix", "", "single key store: URI path prefix (the API is at PREFIX/kms/xks/v1)")
	fs.StringVar(&f.akid, "access-key-id", "", "single key store: SigV4 access key id (20-30 characters of A-Z, 2-7)")
	fs.StringVar(&f.secretFile, "secret-access-key-file", "", "single key store: file holding the SigV4 secret")
	fs.StringVar(&f.keysFile, "keys-file", "", "single key store: software key file")
	fs.StringVar(&f.passFile, "passphrase-file", "", "key file passphrase file (else $XKS_PROXY_KEYS_PASSPHRASE)")
	fs.StringVar(&f.pkcs11Module, "pkcs11-module", "", "single key store: PKCS#11 module path")
	fs.StringVar(&f.pkcs11Token, "pkcs11-token-label", "", "single key store: PKCS#11 token label")
	fs.StringVar(&f.pkcs11PINFile, "pkcs11-pin-file", "", "PKCS#11 user PIN file (else $XKS_PROXY_PKCS11_PIN)")
	fs.StringVar(&f.sources, "allowed-source-cidrs", "", "single key store: the only client networks it answers, comma-separated CIDRs or addresses, on every API including health (others: 403 AccessDeniedException, which KMS reports as XKS_PROXY_ACCESS_DENIED at connect); empty: all")
	fs.Float64Var(&f.rateLimit, "rate-limit", 0, "single key store: requests per second (0: unlimited)")
	fs.DurationVar(&f.ekmTimeout, "ekm-timeout", 0, "single key store: key manager time budget per request (default 200ms)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, usageErr("serve: unexpected arguments %v", fs.Args())
	}
	f.set = map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { f.set[fl.Name] = true })
	return f, nil
}

// storeFlags are the flags that define a key store, which a config file defines
// instead.
var storeFlags = []string{"uri-path-prefix", "access-key-id", "secret-access-key-file", "keys-file",
	"pkcs11-module", "pkcs11-token-label", "pkcs11-pin-file", "rate-limit", "ekm-timeout", "allowed-source-cidrs"}

// buildConfig merges file and flags: flags win for the global settings; key stores
// come from the file or, without one, from the single-store flags.
func buildConfig(f *serveFlags) (*Config, error) {
	c := &Config{}
	if f.config != "" {
		var err error
		if c, err = loadFile(f.config); err != nil {
			return nil, err
		}
		for _, n := range storeFlags {
			if f.set[n] {
				return nil, usageErr("--%s defines a key store; with --config, define key stores in the file", n)
			}
		}
	} else {
		km := KMConf{}
		switch {
		case f.keysFile != "" && f.pkcs11Module != "":
			return nil, usageErr("give either --keys-file or --pkcs11-module, not both")
		case f.keysFile != "":
			km = KMConf{Type: "keyfile", KeysFile: f.keysFile, PassphraseFile: f.passFile}
		case f.pkcs11Module != "":
			km = KMConf{Type: "pkcs11", Module: f.pkcs11Module, TokenLabel: f.pkcs11Token, PINFile: f.pkcs11PINFile}
		default:
			return nil, usageErr("serve: give --config, or --keys-file or --pkcs11-module with the single-store flags")
		}
		if f.akid == "" || f.secretFile == "" {
			return nil, usageErr("serve: --access-key-id and --secret-access-key-file are required")
		}
		c.KeyManagers = map[string]KMConf{"default": km}
		c.KeyStores = []StoreConf{{URIPathPrefix: f.prefix, KeyManager: "default", RateLimit: f.rateLimit,
			EKMTimeout:         duration{f.ekmTimeout},
			Credentials:        []CredConf{{AccessKeyID: f.akid, SecretAccessKeyFile: f.secretFile}},
			AllowedSourceCIDRs: splitList(f.sources)}}
	}
	override := func(dst *string, v string) {
		if v != "" {
			*dst = v
		}
	}
	override(&c.Listen, f.listen)
	override(&c.HealthListen, f.healthListen)
	override(&c.MetricsListen, f.metricsListen)
	override(&c.Region, f.region)
	override(&c.LogLevel, f.logLevel)
	override(&c.LogFormat, f.logFormat)
	override(&c.TLS.CertFile, f.tlsCert)
	override(&c.TLS.KeyFile, f.tlsKey)
	override(&c.TLS.ClientCAFile, f.clientCA)
	override(&c.TLS.ClientSubject, f.clientSubject)
	if f.insecure {
		c.InsecureHTTP = true
	}
	if c.Listen == "" {
		c.Listen = "0.0.0.0:8443"
	}
	return c, c.validate()
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// openManagers opens every key manager the key stores use.
func openManagers(c *Config, log *slog.Logger) (map[string]keyman.Manager, error) {
	out := map[string]keyman.Manager{}
	closeAll := func() {
		for _, m := range out {
			m.Close()
		}
	}
	for name, kc := range c.KeyManagers {
		used := slices.ContainsFunc(c.KeyStores, func(s StoreConf) bool { return s.KeyManager == name })
		if !used {
			continue
		}
		var m keyman.Manager
		switch kc.Type {
		case "keyfile":
			pass, err := func() ([]byte, error) {
				if kc.PassphraseFile != "" || kc.PassphraseEnv != "" {
					s, err := readSecret(kc.PassphraseFile, kc.PassphraseEnv, "key file passphrase")
					return []byte(s), err
				}
				return passphrase("")
			}()
			if err != nil {
				closeAll()
				return nil, fmt.Errorf("key manager %s: %w", name, err)
			}
			km, err := keyfile.Open(kc.KeysFile, pass, keyfile.Options{Logger: log.With("manager", name)})
			if err != nil {
				closeAll()
				return nil, fmt.Errorf("key manager %s: %w", name, err)
			}
			m = km
		case "pkcs11":
			env := kc.PINEnv
			if kc.PINFile == "" && env == "" {
				env = "XKS_PROXY_PKCS11_PIN"
			}
			pin, err := readSecret(kc.PINFile, env, "PKCS#11 PIN")
			if err != nil {
				closeAll()
				return nil, fmt.Errorf("key manager %s: %w", name, err)
			}
			ttl, _ := kc.keyCacheTTL() // checked by validate
			pm, err := pkcs11.Open(pkcs11.Config{Module: kc.Module, TokenLabel: kc.TokenLabel, PIN: pin,
				PoolSize: kc.SessionPoolSize, HealthKeyLabel: kc.HealthKeyLabel, KeyCacheTTL: ttl,
				SessionKeyCopies: kc.sessionKeyCopies(), Logger: log.With("manager", name)})
			if err != nil {
				closeAll()
				return nil, fmt.Errorf("key manager %s: %w", name, err)
			}
			m = pm
		}
		out[name] = m
	}
	return out, nil
}

func serve(ctx context.Context, args []string, stderr io.Writer) error {
	f, err := parseServeFlags(args, stderr)
	if err != nil {
		return err
	}
	if f.pprof != "" {
		if err := loopback(f.pprof); err != nil {
			return usageErr("--pprof %s: %v", f.pprof, err)
		}
	}
	cfg, err := buildConfig(f)
	if err != nil {
		return err
	}
	log, err := newLogger(stderr, cfg.LogLevel, cfg.LogFormat)
	if err != nil {
		return err
	}
	policies, err := cfg.policies()
	if err != nil {
		return err
	}
	var tlsr *xksserver.TLSReloader
	if !cfg.InsecureHTTP {
		if tlsr, err = xksserver.NewTLSReloader(xksserver.TLSFiles{CertFile: cfg.TLS.CertFile, KeyFile: cfg.TLS.KeyFile,
			ClientCAFile: cfg.TLS.ClientCAFile, ClientSubject: cfg.TLS.ClientSubject}); err != nil {
			return err
		}
	}
	managers, err := openManagers(cfg, log)
	if err != nil {
		return err
	}
	defer func() {
		for _, m := range managers {
			m.Close()
		}
	}()
	reg := prometheus.NewRegistry()
	// go_sched_latencies_seconds (how long goroutines wait to run) tells a
	// latency tail made in the proxy from one made by the HSM or the host.
	reg.MustRegister(collectors.NewGoCollector(collectors.WithGoCollectorRuntimeMetrics(collectors.MetricsScheduler)),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	opts := xksserver.Options{Region: cfg.Region, FleetSize: cfg.FleetSize, HealthTTL: cfg.HealthCache.Duration,
		Version: Version, Logger: log, Registerer: reg,
		Limits: xks.Limits{MaxPlaintext: cfg.Limits.MaxPlaintextBytes, MaxAAD: cfg.Limits.MaxAADBytes}}
	if opts.Limits.MaxPlaintext == 0 && opts.Limits.MaxAAD == 0 {
		opts.Limits = xks.DefaultLimits()
	}
	for _, s := range cfg.KeyStores {
		meta, err := s.metadata()
		if err != nil {
			return err
		}
		opts.Stores = append(opts.Stores, xksserver.StoreConfig{Prefix: s.URIPathPrefix, Manager: managers[s.KeyManager],
			ManagerName: s.KeyManager, EKMTimeout: s.EKMTimeout.Duration, CiphertextMetadata: meta,
			Policy: policies[s.URIPathPrefix]})
	}
	srv, err := xksserver.New(opts)
	if err != nil {
		return err
	}

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return err
	}
	hs := &http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second,
		IdleTimeout: 120 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	errc := make(chan error, 4)
	if tlsr != nil {
		hs.TLSConfig = tlsr.Config()
		go func() { errc <- hs.ServeTLS(ln, "", "") }()
	} else {
		log.Warn("serving plain HTTP (--insecure-http): only safe behind a load balancer that terminates TLS")
		go func() { errc <- hs.Serve(ln) }()
	}
	var extra []*http.Server
	if cfg.HealthListen != "" {
		mux := http.NewServeMux()
		mux.Handle("GET /ping", srv)
		mux.HandleFunc("GET /healthz", srv.ServeReadiness)
		extra = append(extra, listenPlain(cfg.HealthListen, mux, errc))
	}
	if cfg.MetricsListen != "" {
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		extra = append(extra, listenPlain(cfg.MetricsListen, mux, errc))
	}
	if f.pprof != "" {
		// Profiles of contention are what a latency tail needs; their cost
		// is paid only by a proxy started with --pprof.
		runtime.SetMutexProfileFraction(10)
		runtime.SetBlockProfileRate(int(100 * time.Microsecond))
		mux := http.NewServeMux()
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		ps := &http.Server{Addr: f.pprof, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() { errc <- ps.ListenAndServe() }()
		extra = append(extra, ps)
		log.Warn("serving Go profiles (--pprof): a debugging aid, not for production", "pprof", f.pprof)
	}
	log.Info("xks-proxy serving", "version", Version, "listen", ln.Addr().String(), "tls", tlsr != nil,
		"mtls", cfg.TLS.ClientCAFile != "", "key_stores", len(opts.Stores), "health_listen", cfg.HealthListen,
		"metrics_listen", cfg.MetricsListen)

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	for {
		select {
		case <-ctx.Done():
			return shutdown(hs, extra, log)
		case err := <-errc:
			if errors.Is(err, http.ErrServerClosed) {
				continue
			}
			shutdown(hs, extra, log)
			return err
		case s := <-sigs:
			if s != syscall.SIGHUP {
				log.Info("shutting down", "signal", s.String())
				return shutdown(hs, extra, log)
			}
			reload(f, srv, tlsr, managers, log)
		}
	}
}

// loopback checks that addr is host:port with a loopback host: profiles
// show a process's internals and are never served beyond the machine.
func loopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return errors.New("want a loopback address such as 127.0.0.1:6060")
	}
	return nil
}

func listenPlain(addr string, h http.Handler, errc chan<- error) *http.Server {
	s := &http.Server{Addr: addr, Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() { errc <- s.ListenAndServe() }()
	return s
}

// shutdown lets requests in flight finish (KMS gives each 250ms, so a short grace
// suffices) and then closes every connection, including ones that never sent a
// request, which http.Server.Shutdown would otherwise wait five seconds for.
func shutdown(hs *http.Server, extra []*http.Server, log *slog.Logger) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for _, s := range extra {
		s.Shutdown(ctx)
	}
	err := hs.Shutdown(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		err = hs.Close()
	}
	log.Info("stopped")
	return err
}

// reload applies SIGHUP: the configuration (file and secret files) is read again and
// the credentials, key lists, rules, allowed source networks and quotas of every key
// store replaced; TLS files and key files are re-read. Listeners and key managers
// stay; changing those needs a restart. Any error keeps the running configuration.
func reload(f *serveFlags, srv *xksserver.Server, tlsr *xksserver.TLSReloader, managers map[string]keyman.Manager, log *slog.Logger) {
	log.Info("SIGHUP: reloading")
	cfg, err := buildConfig(f)
	if err == nil {
		var policies map[string]xksserver.Policy
		if policies, err = cfg.policies(); err == nil {
			known := srv.Prefixes()
			for prefix, p := range policies {
				if !slices.Contains(known, prefix) {
					log.Warn("reload: new key store ignored until restart", "prefix", prefix)
					continue
				}
				if e := srv.SetPolicy(prefix, p); e != nil {
					err = e
				}
			}
		}
	}
	if err != nil {
		log.Error("reload: configuration rejected; keeping the running one", "err", err)
	}
	if tlsr != nil {
		if err := tlsr.Reload(); err != nil {
			log.Error("reload: TLS files rejected; keeping the running certificate", "err", err)
		}
	}
	for name, m := range managers {
		if km, ok := m.(*keyfile.Manager); ok {
			if err := km.Reload(); err != nil {
				log.Error("reload: key file", "manager", name, "err", err)
			}
		}
	}
	log.Info("reload done")
}
