package server

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmsd/kmsd/internal/barrier"
	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/identity"
	"github.com/kmsd/kmsd/internal/policy"
	"github.com/kmsd/kmsd/internal/storage"
	"github.com/kmsd/kmsd/internal/storage/sqlite"
)

// rootKeyEnv is a data directory for openBarrier tests.
type rootKeyEnv struct {
	cfg    Config
	dbPath string
}

func newRootKeyEnv(t *testing.T) *rootKeyEnv {
	t.Helper()
	dir := t.TempDir()
	cfg := Config{DataDir: dir}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return &rootKeyEnv{cfg: cfg, dbPath: filepath.Join(dir, "kmsd.db")}
}

// open runs openBarrier on the environment's database with cfg.
func (e *rootKeyEnv) open(t *testing.T, cfg Config) (*barrier.Barrier, error) {
	t.Helper()
	ctx := context.Background()
	store, err := sqlite.Open(ctx, e.dbPath)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	return openBarrier(ctx, cfg, store, database{desc: "the database in " + e.dbPath, path: e.dbPath}, slog.New(slog.NewTextHandler(io.Discard, nil)))
}

// with runs fn on the environment's database with a barrier under key.
func (e *rootKeyEnv) with(t *testing.T, key []byte, fn func(storage.Store, *barrier.Barrier)) {
	t.Helper()
	store, err := sqlite.Open(context.Background(), e.dbPath)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	b, err := barrier.New(key)
	if err != nil {
		t.Fatal(err)
	}
	fn(store, b)
}

func keyB64(fill byte) string {
	return base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{fill}, barrier.KeySize))
}

func writeKeyFile(t *testing.T, path string, fill byte) {
	t.Helper()
	if err := os.WriteFile(path, []byte(keyB64(fill)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestOpenBarrier(t *testing.T) {
	t.Run("first start creates the key and the check value", func(t *testing.T) {
		e := newRootKeyEnv(t)
		if _, err := e.open(t, e.cfg); err != nil {
			t.Fatalf("first start: %v", err)
		}
		if _, err := os.Stat(e.cfg.RootKeyFile); err != nil {
			t.Fatalf("root key file: %v", err)
		}
		if _, err := e.open(t, e.cfg); err != nil {
			t.Fatalf("second start: %v", err)
		}
	})
	t.Run("missing key file with a database", func(t *testing.T) {
		e := newRootKeyEnv(t)
		if _, err := e.open(t, e.cfg); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(e.cfg.RootKeyFile); err != nil {
			t.Fatal(err)
		}
		_, err := e.open(t, e.cfg)
		if !errors.Is(err, errRootKeyMissing) {
			t.Fatalf("openBarrier = %v, want errRootKeyMissing", err)
		}
		for _, want := range []string{e.dbPath, e.cfg.RootKeyFile, "will not create a new one"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("message %q does not say %q", err, want)
			}
		}
		if _, err := os.Stat(e.cfg.RootKeyFile); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("root key file was recreated (stat: %v)", err)
		}
	})
	t.Run("replaced key file", func(t *testing.T) {
		e := newRootKeyEnv(t)
		if _, err := e.open(t, e.cfg); err != nil {
			t.Fatal(err)
		}
		writeKeyFile(t, e.cfg.RootKeyFile, 9)
		_, err := e.open(t, e.cfg)
		if !errors.Is(err, errRootKeyMismatch) {
			t.Fatalf("openBarrier = %v, want errRootKeyMismatch", err)
		}
		for _, want := range []string{"created with another root key", e.dbPath, "at " + e.cfg.RootKeyFile} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("message %q does not say %q", err, want)
			}
		}
	})
	t.Run("wrong KMSD_ROOT_KEY", func(t *testing.T) {
		e := newRootKeyEnv(t)
		cfg := e.cfg
		cfg.RootKey = keyB64(1)
		if _, err := e.open(t, cfg); err != nil {
			t.Fatal(err)
		}
		cfg.RootKey = keyB64(2)
		_, err := e.open(t, cfg)
		if !errors.Is(err, errRootKeyMismatch) || !strings.Contains(err.Error(), "in KMSD_ROOT_KEY") {
			t.Fatalf("openBarrier = %v, want errRootKeyMismatch naming KMSD_ROOT_KEY", err)
		}
		if _, err := os.Stat(e.cfg.RootKeyFile); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("a root key file was created beside KMSD_ROOT_KEY (stat: %v)", err)
		}
	})
}

// TestOpenBarrierUpgrade: a database written before check values gets one
// if its key opens what it sealed, and is refused if not.
func TestOpenBarrierUpgrade(t *testing.T) {
	ctx := context.Background()
	good := bytes.Repeat([]byte{1}, barrier.KeySize)
	seeds := []struct {
		name string
		seed func(t *testing.T, st storage.Store, b *barrier.Barrier)
	}{
		{"key material", func(t *testing.T, st storage.Store, b *barrier.Barrier) {
			cat := catalog.New(st, b)
			sealed, err := cat.Seal("k1", 1, bytes.Repeat([]byte{3}, 32))
			if err != nil {
				t.Fatal(err)
			}
			k := &catalog.Key{ID: "k1", Account: "111122223333", Region: "us-east-1", Policy: policy.DefaultKeyPolicy("111122223333"), Versions: []catalog.Version{{Number: 1, Sealed: sealed}}, Current: 1}
			if err := cat.CreateKey(ctx, k); err != nil {
				t.Fatal(err)
			}
		}},
		{"access key secret", func(t *testing.T, st storage.Store, b *barrier.Barrier) {
			ids, err := identity.Open(ctx, st, b)
			if err != nil {
				t.Fatal(err)
			}
			p := identity.Principal{Account: "111122223333", ARN: "arn:aws:iam::111122223333:user/u", Name: "u"}
			if err := ids.Put(ctx, "AKIAEXAMPLEEXAMPLE01", "secret", p); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, s := range seeds {
		t.Run(s.name, func(t *testing.T) {
			for _, tt := range []struct {
				name string
				fill byte
				ok   bool
			}{{"original key", 1, true}, {"other key", 2, false}} {
				t.Run(tt.name, func(t *testing.T) {
					e := newRootKeyEnv(t)
					e.with(t, good, func(st storage.Store, b *barrier.Barrier) { s.seed(t, st, b) })
					writeKeyFile(t, e.cfg.RootKeyFile, tt.fill)
					_, err := e.open(t, e.cfg)
					var check []byte
					e.with(t, good, func(st storage.Store, _ *barrier.Barrier) { check, _ = st.Get(ctx, barrier.CheckRecord) })
					if !tt.ok {
						if !errors.Is(err, errRootKeyMismatch) {
							t.Fatalf("openBarrier = %v, want errRootKeyMismatch", err)
						}
						if check != nil {
							t.Fatalf("a check value was written under the wrong key")
						}
						return
					}
					if err != nil {
						t.Fatalf("openBarrier: %v", err)
					}
					b, _ := barrier.New(good)
					if err := b.VerifyCheck(check); err != nil {
						t.Fatalf("check value after upgrade: %v", err)
					}
				})
			}
		})
	}
}
