package postgres

import (
	"os"
	"testing"

	"github.com/kmsd/kmsd/internal/storage"
	"github.com/kmsd/kmsd/internal/storage/postgres/pgtest"
	"github.com/kmsd/kmsd/internal/storage/storagetest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// openURL opens the database at url and closes the store when t ends.
func openURL(t testing.TB, url string) *Store {
	t.Helper()
	s, err := Open(t.Context(), url, Options{MaxConns: 20})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Store { return openURL(t, pgtest.URL(t)) })
	// A "directory" is a database: the suite's dir names which one.
	urls := map[string]string{}
	storagetest.RunPersistent(t, func(t *testing.T, dir string) storage.Store {
		u, ok := urls[dir]
		if !ok {
			u = pgtest.URL(t)
			urls[dir] = u
		}
		return openURL(t, u)
	})
}

func TestShared(t *testing.T) {
	storagetest.RunShared(t, func(t *testing.T) (a, b storagetest.SharedStore) {
		u := pgtest.URL(t)
		return openURL(t, u), openURL(t, u)
	})
}
