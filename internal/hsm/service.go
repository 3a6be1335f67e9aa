package hsm

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/kmsd/kmsd/internal/barrier"
	"github.com/kmsd/kmsd/internal/dbclock"
	"github.com/kmsd/kmsd/internal/storage"
)

// Service runs the HSM clusters of one kmsd process.
type Service struct {
	cfg     Config
	store   storage.Store
	barrier *barrier.Barrier
	log     *slog.Logger
	now     func() time.Time
	clock   *dbclock.Clock // the database's clock, for scheduling (clock.go)
	rand    io.Reader

	ctx    context.Context // ends at Close; bounds background steps
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// probeMisses counts, per HSM, the consecutive probes that could not
	// reach its token (health.go).
	probeMu     sync.Mutex
	probeMisses map[string]int

	mu       sync.RWMutex
	clusters map[string]*record // by id; records are never modified in place
	locks    map[string]*sync.Mutex
	// logins holds, per cluster, the clients logged in as its crypto
	// user (kmsctl's CLI session, a key store, …).
	logins map[string]map[string]bool
	// guard protects clusters that custom key stores use (SetStoreGuard).
	guard StoreGuard

	// backups by id, and the clusters with a backup scheduled (backup.go).
	bkMu      sync.Mutex
	backups   map[string]*backupRecord
	bkPending map[string]bool

	// kickc wakes the steps loop when this node records a step.
	kickc chan struct{}

	tokMu sync.Mutex
	toks  tokens            // the SoftHSM2 module, loaded on first use
	mods  map[string]tokens // other modules of declared clusters, by path
}

// New opens the clusters kept in store and resumes their pending
// asynchronous steps. The PKCS#11 module is loaded on first use, so kmsd
// starts (and serves everything but HSM operations) without one.
func New(ctx context.Context, store storage.Store, b *barrier.Barrier, cfg Config) (*Service, error) {
	if cfg.Module == "" {
		cfg.Module = DefaultModule
	}
	s := &Service{cfg: cfg, store: store, barrier: b, log: cfg.Logger, now: cfg.Now, rand: cfg.Rand,
		clusters: map[string]*record{}, locks: map[string]*sync.Mutex{}, logins: map[string]map[string]bool{},
		mods: map[string]tokens{}, backups: map[string]*backupRecord{}, bkPending: map[string]bool{},
		kickc: make(chan struct{}, 1)}
	if s.cfg.BackupInterval <= 0 {
		s.cfg.BackupInterval = DefaultBackupInterval
	}
	if s.cfg.BackupDelay <= 0 {
		s.cfg.BackupDelay = DefaultBackupDelay
	}
	if s.cfg.SweepInterval <= 0 {
		s.cfg.SweepInterval = DefaultSweepInterval
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	s.clock = cfg.Clock
	if s.clock == nil {
		s.clock = dbclock.New(ctx, s.now, cfg.DBClock)
	}
	if s.rand == nil {
		s.rand = rand.Reader
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	// The pending asynchronous steps of the records are the steps
	// loop's (steps.go), which runs on the controller.
	rs, err := s.all(ctx)
	if err != nil {
		return nil, err
	}
	for _, r := range rs {
		s.clusters[r.ID] = r
	}
	if err := s.loadBackups(ctx); err != nil {
		s.Close()
		return nil, err
	}
	if err := s.declare(ctx, cfg.Declared); err != nil {
		s.Close()
		return nil, err
	}
	if !cfg.Controlled {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.RunBackground(s.ctx)
		}()
	}
	return s, nil
}

// RunBackground runs the probe loop (health.go), the backup loop
// (backup.go) and the steps loop that finishes the clusters' and HSMs'
// asynchronous steps (steps.go) until ctx ends or the service closes. With
// Config.Controlled, kmsd runs it on the controller only, and stops it
// before Close.
func (s *Service) RunBackground(ctx context.Context) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(s.ctx, cancel)()
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); s.probeLoop(ctx) }()
	go func() { defer wg.Done(); s.backupLoop(ctx) }()
	go func() { defer wg.Done(); s.stepLoop(ctx) }()
	wg.Wait()
}

// Close stops the background steps and releases the PKCS#11 module.
func (s *Service) Close() error {
	s.cancel()
	s.wg.Wait()
	s.tokMu.Lock()
	defer s.tokMu.Unlock()
	var err error
	for _, t := range s.mods {
		err = errors.Join(err, t.Close())
	}
	if s.toks != nil {
		err = errors.Join(err, s.toks.Close())
	}
	return err
}

// tokens loads the SoftHSM2 module once: it writes the process's one
// softhsm2.conf (token directory under Dir) and points SOFTHSM2_CONF at it
// before C_Initialize, which is when SoftHSM2 reads it — or points it at
// Config.SoftHSMConf when that is set.
func (s *Service) tokens() (tokens, error) {
	s.tokMu.Lock()
	defer s.tokMu.Unlock()
	return s.tokensLocked()
}

func (s *Service) tokensLocked() (tokens, error) {
	if s.toks != nil {
		return s.toks, nil
	}
	if !Available {
		return nil, fmt.Errorf("%w: kmsd was built without cgo", ErrUnavailable)
	}
	if s.cfg.SoftHSMConf != "" {
		os.Setenv("SOFTHSM2_CONF", s.cfg.SoftHSMConf)
	} else if s.cfg.Dir != "" {
		tokdir := s.cfg.TokenDir
		if tokdir == "" {
			tokdir = filepath.Join(s.cfg.Dir, "tokens")
		}
		if abs, err := filepath.Abs(tokdir); err == nil {
			tokdir = abs
		}
		for _, d := range []string{s.cfg.Dir, tokdir} {
			if err := os.MkdirAll(d, 0o700); err != nil {
				return nil, err
			}
		}
		conf := filepath.Join(s.cfg.Dir, "softhsm2.conf")
		body := "# written by kmsd: the token directory of its HSM clusters\n" +
			"directories.tokendir = " + tokdir + "\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n"
		if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
			return nil, err
		}
		os.Setenv("SOFTHSM2_CONF", conf)
	}
	t, err := openTokens(s.cfg.Module)
	if err != nil {
		return nil, err
	}
	s.toks = t
	return t, nil
}

// tokensFor returns the module of r's tokens: a declared cluster's own
// module, else the SoftHSM2 one. Any module loads after the SoftHSM2
// configuration is in place, in case it is SoftHSM2 under another path.
func (s *Service) tokensFor(r *record) (tokens, error) {
	s.tokMu.Lock()
	defer s.tokMu.Unlock()
	def, err := s.tokensLocked()
	if r.Module == "" || r.Module == s.cfg.Module || err != nil {
		return def, err
	}
	if t, ok := s.mods[r.Module]; ok {
		return t, nil
	}
	t, err := openTokens(r.Module)
	if err != nil {
		return nil, err
	}
	s.mods[r.Module] = t
	return t, nil
}

// SoftHSMConf is the softhsm2.conf kmsd's tokens are described by, for
// tools (softhsm2-util, pkcs11-tool) that want to look at them.
func (s *Service) SoftHSMConf() string {
	if s.cfg.SoftHSMConf != "" {
		return s.cfg.SoftHSMConf
	}
	return filepath.Join(s.cfg.Dir, "softhsm2.conf")
}

func (s *Service) lock(id string) func() {
	s.mu.Lock()
	l, ok := s.locks[id]
	if !ok {
		l = new(sync.Mutex)
		s.locks[id] = l
	}
	s.mu.Unlock()
	l.Lock()
	return l.Unlock
}

// readCtx bounds a store read made for a caller that gives no context.
func (s *Service) readCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 10*time.Second)
}

func clone(r *record) *record {
	b, err := json.Marshal(r)
	if err != nil {
		panic(err)
	}
	out := new(record)
	if err := json.Unmarshal(b, out); err != nil {
		panic(err)
	}
	return out
}

// after runs fn in the background after d, unless the service closes.
func (s *Service) after(d time.Duration, fn func(ctx context.Context)) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if d > 0 {
			t := time.NewTimer(d)
			defer t.Stop()
			select {
			case <-t.C:
			case <-s.ctx.Done():
				return
			}
		}
		if s.ctx.Err() == nil {
			fn(s.ctx)
		}
	}()
}

// seal and open bind a secret to its record path.
func (s *Service) seal(path string, secret []byte) ([]byte, error) {
	return s.barrier.Seal(path, secret)
}
func (s *Service) open(path string, sealed []byte) ([]byte, error) {
	if len(sealed) == 0 {
		return nil, errors.New("hsm: no sealed value at " + path)
	}
	return s.barrier.Open(path, sealed)
}

func (s *Service) randomBytes(n int) []byte {
	b := make([]byte, n)
	if _, err := io.ReadFull(s.rand, b); err != nil {
		panic("hsm: randomness unavailable: " + err.Error())
	}
	return b
}

const idAlphabet = "abcdefghijklmnopqrstuvwxyz234567"

// newID returns prefix + 11 characters of [a-z2-7], CloudHSM's id form.
func (s *Service) newID(prefix string) string {
	b := s.randomBytes(11)
	for i := range b {
		b[i] = idAlphabet[int(b[i])%len(idAlphabet)]
	}
	return prefix + string(b)
}

func (s *Service) newHex(prefix string, n int) string {
	const hexdigits = "0123456789abcdef"
	b := s.randomBytes(n)
	for i := range b {
		b[i] = hexdigits[b[i]%16]
	}
	return prefix + string(b)
}
