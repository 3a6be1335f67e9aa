package postgres

import (
	"strings"
	"testing"

	"github.com/kmsd/kmsd/internal/storage/postgres/pgtest"
)

// TestApplicationName: kmsd's sessions are "kmsd" in pg_stat_activity,
// unless the URL names them (a node id, to tell the nodes apart).
func TestApplicationName(t *testing.T) {
	url := pgtest.URL(t)
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	for _, c := range []struct{ name, url, want string }{
		{"default", url, "kmsd"},
		{"from the URL", url + sep + "application_name=kmsd-node-7", "kmsd-node-7"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := openURL(t, c.url)
			var got string
			if err := s.pool.QueryRow(t.Context(), "SHOW application_name").Scan(&got); err != nil {
				t.Fatal(err)
			}
			if got != c.want {
				t.Errorf("application_name %q, want %q", got, c.want)
			}
		})
	}
}
