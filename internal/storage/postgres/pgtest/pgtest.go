// Package pgtest gives tests a real PostgreSQL: a new, empty database on
// the server named by KMSD_TEST_DATABASE_URL (scripts/test.sh starts one
// with scripts/postgres.sh and sets it), or, when that is unset, on a
// private server this package starts the same way for the test process
// and stops in Main. Under CI (CI set) the variable must be set, so that a
// broken CI setup fails instead of hiding behind the fallback.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// EnvURL names the variable holding the test server's URL (a postgres://
// URL of a superuser, any database).
const EnvURL = "KMSD_TEST_DATABASE_URL"

var (
	once     sync.Once
	base     string
	startErr error
	ownDir   string // the server this process started, if any
)

// Main runs the tests and then stops the server this process started.
// Use it in TestMain: os.Exit(pgtest.Main(m)).
func Main(m *testing.M) int {
	code := m.Run()
	if err := Stop(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		code = 1
	}
	return code
}

// Stop stops the server this process started, if any. Main calls it.
func Stop() error {
	if ownDir == "" {
		return nil
	}
	defer os.RemoveAll(ownDir)
	if out, err := exec.Command(script(), "stop", ownDir).CombinedOutput(); err != nil {
		return fmt.Errorf("pgtest: stop PostgreSQL: %v\n%s", err, out)
	}
	return nil
}

// script is scripts/postgres.sh of this repository.
func script() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..", "..", "scripts", "postgres.sh")
}

// server returns the base URL of the test server, starting one if needed.
func server() (string, error) {
	once.Do(func() {
		if base = os.Getenv(EnvURL); base != "" {
			return
		}
		if os.Getenv("CI") != "" {
			startErr = fmt.Errorf("%s is not set under CI: scripts/test.sh must start PostgreSQL (scripts/postgres.sh)", EnvURL)
			return
		}
		dir, err := os.MkdirTemp("", "kmsd-pgtest-")
		if err != nil {
			startErr = err
			return
		}
		out, err := exec.Command(script(), "start", dir).Output()
		if err != nil {
			os.RemoveAll(dir)
			if ee, ok := err.(*exec.ExitError); ok {
				err = fmt.Errorf("%w: %s", err, ee.Stderr)
			}
			startErr = fmt.Errorf("start PostgreSQL with scripts/postgres.sh: %w", err)
			return
		}
		ownDir, base = dir, strings.TrimSpace(string(out))
	})
	return base, startErr
}

// URL returns the URL of a new, empty database on the test server; the
// database is dropped when t ends.
func URL(t testing.TB) string {
	t.Helper()
	b, err := server()
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	u, err := url.Parse(b)
	if err != nil {
		t.Fatalf("pgtest: %s does not parse as a URL", EnvURL)
	}
	rnd := make([]byte, 8)
	rand.Read(rnd)
	name := "kmsd_test_" + hex.EncodeToString(rnd)
	admin := func(sql string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, b)
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		_, err = conn.Exec(ctx, sql)
		return err
	}
	if err := admin(`CREATE DATABASE ` + name); err != nil {
		t.Fatalf("pgtest: create database: %v", err)
	}
	t.Cleanup(func() {
		if err := admin(`DROP DATABASE ` + name + ` WITH (FORCE)`); err != nil {
			t.Errorf("pgtest: drop database: %v", err)
		}
	})
	u.Path = "/" + name
	return u.String()
}
