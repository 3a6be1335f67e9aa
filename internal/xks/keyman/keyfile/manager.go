package keyfile

import (
	"bytes"
	"context"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kmsd/kmsd/internal/secretfile"
	"github.com/kmsd/kmsd/internal/xks/keyman"
)

// Options tune a Manager. Zero values give the defaults.
type Options struct {
	// PollInterval is how often the file is checked for changes made by
	// `xks-proxy keys …` (default 2s; negative disables polling, leaving Reload).
	PollInterval time.Duration
	Logger       *slog.Logger
	Rand         io.Reader // IV source, crypto/rand by default
}

type key struct {
	info  keyman.Key
	gcm12 cipher.AEAD
	gcm16 cipher.AEAD
}

type keySet map[string]*key

// Manager serves the keys of one key file from memory, reloading when the file
// changes. A reload that fails (bad passphrase, corrupt file) keeps the keys already
// loaded and is logged.
type Manager struct {
	path       string
	passphrase []byte
	opts       Options
	keys       atomic.Pointer[keySet]
	healthKey  cipher.AEAD // ephemeral, for the deep health check only

	mu      sync.Mutex // serialises reloads
	stamp   fileStamp
	kdf     kdfParams
	kek     []byte
	lastErr atomic.Pointer[error]
	stop    chan struct{}
	done    chan struct{}
}

type fileStamp struct {
	size    int64
	modTime time.Time
	ino     any
}

var _ keyman.Manager = (*Manager)(nil)

// Open loads the key file at path. The file must exist (create it with CreateKey).
func Open(path string, passphrase []byte, opts Options) (*Manager, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Rand == nil {
		opts.Rand = rand.Reader
	}
	if opts.PollInterval == 0 {
		opts.PollInterval = 2 * time.Second
	}
	hk := make([]byte, 32)
	if _, err := io.ReadFull(opts.Rand, hk); err != nil {
		return nil, err
	}
	m := &Manager{path: path, passphrase: bytes.Clone(passphrase), opts: opts,
		healthKey: newGCM(hk, 12), stop: make(chan struct{}), done: make(chan struct{})}
	if err := m.Reload(); err != nil {
		return nil, err
	}
	if opts.PollInterval > 0 {
		go m.poll()
	} else {
		close(m.done)
	}
	return m, nil
}

func stampOf(fi os.FileInfo) fileStamp {
	return fileStamp{size: fi.Size(), modTime: fi.ModTime(), ino: inode(fi)}
}

// Reload re-reads the file if it changed since the last load.
func (m *Manager) Reload() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	fi, err := os.Stat(m.path)
	if err != nil {
		m.setErr(err)
		return err
	}
	st := stampOf(fi)
	if m.keys.Load() != nil && st == m.stamp {
		return nil
	}
	raw, err := secretfile.Read(m.path)
	if err != nil {
		m.setErr(err)
		return err
	}
	c, err := parse(raw, m.passphrase, func(p kdfParams) ([]byte, error) {
		if m.kek != nil && p.Iterations == m.kdf.Iterations && bytes.Equal(p.Salt, m.kdf.Salt) {
			return m.kek, nil
		}
		return kek(m.passphrase, p)
	})
	if err != nil {
		m.setErr(err)
		return err
	}
	set := keySet{}
	for _, e := range c.Keys {
		set[e.ID] = &key{
			info:  keyman.Key{ID: e.ID, Spec: "AES_256", Usage: e.Usage, Enabled: e.Enabled},
			gcm12: newGCM(e.Material, 12),
			gcm16: newGCM(e.Material, 16),
		}
		clear(e.Material)
	}
	m.kdf, m.kek, m.stamp = c.env.KDF, c.kek, st
	m.keys.Store(&set)
	m.lastErr.Store(nil)
	m.opts.Logger.Info("key file loaded", "path", m.path, "keys", len(set))
	return nil
}

func (m *Manager) setErr(err error) {
	m.lastErr.Store(&err)
	m.opts.Logger.Error("key file reload failed; keeping the keys already loaded", "path", m.path, "err", err)
}

func (m *Manager) poll() {
	defer close(m.done)
	t := time.NewTicker(m.opts.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
			m.Reload()
		}
	}
}

// Close stops polling.
func (m *Manager) Close() error {
	select {
	case <-m.stop:
	default:
		close(m.stop)
	}
	<-m.done
	return nil
}

func ctxErr(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("%w: %v", keyman.ErrTimeout, err)
		}
		return err
	}
	return nil
}

func (m *Manager) lookup(id string) (*key, error) {
	k, ok := (*m.keys.Load())[id]
	if !ok {
		return nil, fmt.Errorf("%w: %s", keyman.ErrKeyNotFound, id)
	}
	return k, nil
}

// Describe returns the key's usage and status as recorded in the file.
func (m *Manager) Describe(ctx context.Context, id string) (keyman.Key, error) {
	if err := ctxErr(ctx); err != nil {
		return keyman.Key{}, err
	}
	k, err := m.lookup(id)
	if err != nil {
		return keyman.Key{}, err
	}
	return k.info, nil
}

// Encrypt seals with a random 12-byte IV.
func (m *Manager) Encrypt(ctx context.Context, id string, plaintext, aad []byte) (keyman.Sealed, error) {
	if err := ctxErr(ctx); err != nil {
		return keyman.Sealed{}, err
	}
	k, err := m.lookup(id)
	if err != nil {
		return keyman.Sealed{}, err
	}
	if !k.info.Enabled {
		return keyman.Sealed{}, keyman.ErrKeyDisabled
	}
	iv := make([]byte, 12)
	if _, err := io.ReadFull(m.opts.Rand, iv); err != nil {
		return keyman.Sealed{}, fmt.Errorf("%w: random: %v", keyman.ErrUnavailable, err)
	}
	out := k.gcm12.Seal(make([]byte, 0, len(plaintext)+16), iv, plaintext, aad)
	n := len(out) - 16
	return keyman.Sealed{IV: iv, Ciphertext: out[:n:n], Tag: out[n:]}, nil
}

// Decrypt opens with a 12- or 16-byte IV.
func (m *Manager) Decrypt(ctx context.Context, id string, iv, ciphertext, tag, aad []byte) ([]byte, error) {
	if err := ctxErr(ctx); err != nil {
		return nil, err
	}
	k, err := m.lookup(id)
	if err != nil {
		return nil, err
	}
	if !k.info.Enabled {
		return nil, keyman.ErrKeyDisabled
	}
	var gcm cipher.AEAD
	switch len(iv) {
	case 12:
		gcm = k.gcm12
	case 16:
		gcm = k.gcm16
	default:
		return nil, keyman.ErrInvalidCiphertext
	}
	if len(tag) != 16 {
		return nil, keyman.ErrInvalidCiphertext
	}
	in := make([]byte, 0, len(ciphertext)+16)
	in = append(append(in, ciphertext...), tag...)
	pt, err := gcm.Open(in[:0], iv, in, aad)
	if err != nil {
		return nil, keyman.ErrInvalidCiphertext
	}
	return pt, nil
}

// Health round-trips a random block through an ephemeral in-memory test key (never a
// customer key) and checks the file is still readable: ACTIVE when both hold,
// DEGRADED when the file cannot be re-read (keys are still served from memory).
func (m *Manager) Health(ctx context.Context) keyman.Health {
	ekm := keyman.EKM{ID: "keyfile-" + filepath.Base(m.path), Status: keyman.Active,
		Model: fmt.Sprintf("kmsd software key file v1 (%d keys)", len(*m.keys.Load()))}
	probe := make([]byte, 32)
	iv := make([]byte, 12)
	io.ReadFull(m.opts.Rand, probe)
	io.ReadFull(m.opts.Rand, iv)
	ct := m.healthKey.Seal(nil, iv, probe, []byte("xks-proxy health"))
	pt, err := m.healthKey.Open(nil, iv, ct, []byte("xks-proxy health"))
	switch {
	case err != nil || !bytes.Equal(pt, probe):
		ekm.Status, ekm.Detail = keyman.Unavailable, "AES-GCM self test failed"
	case ctx.Err() != nil:
		ekm.Status, ekm.Detail = keyman.Unavailable, ctx.Err().Error()
	default:
		if _, err := os.Stat(m.path); err != nil {
			ekm.Status, ekm.Detail = keyman.Degraded, "key file unreadable: "+err.Error()
		} else if p := m.lastErr.Load(); p != nil {
			ekm.Status, ekm.Detail = keyman.Degraded, "last reload failed: "+(*p).Error()
		}
	}
	return keyman.Health{Vendor: "kmsd", EKMs: []keyman.EKM{ekm}}
}
