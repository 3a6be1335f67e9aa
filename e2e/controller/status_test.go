package controller

import (
	"context"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/kmsd/kmsd/internal/storage/postgres/pgtest"
)

// TestStatusShowsCacheLag: every live node publishes how far its caches
// are behind the database (the change feed's freshness), and kmsd status
// shows it beside the controller, as text and JSON: within a second or so
// on a quiet database.
func TestStatusShowsCacheLag(t *testing.T) {
	c := newCluster(t, "n1", "n2")
	c.waitController(5*time.Second + 2*ttl)
	deadline := time.Now().Add(5 * time.Second)
	for {
		s := c.status()
		ok := len(s.Nodes) == 2
		for _, n := range s.Nodes {
			if !n.Live || n.CacheLagSeconds == nil || *n.CacheLagSeconds < 0 || *n.CacheLagSeconds > 2 {
				ok = false
			}
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			for _, n := range s.Nodes {
				lag := "absent"
				if n.CacheLagSeconds != nil {
					lag = time.Duration(*n.CacheLagSeconds * float64(time.Second)).String()
				}
				t.Logf("node %s live %v cache lag %s", n.ID, n.Live, lag)
			}
			t.Fatal("kmsd status does not show every live node's cache lag within [0, 2s] after 5s")
		}
		time.Sleep(200 * time.Millisecond)
	}
	cmd := exec.Command(kmsdBin, "status")
	cmd.Env = env("KMSD_DATABASE_URL=" + c.url)
	text, err := cmd.Output()
	if err != nil {
		t.Fatalf("kmsd status: %v %s", err, stderr(err))
	}
	t.Logf("kmsd status:\n%s", text)
	// One row per node, its last column the lag (a duration, not "-").
	for _, id := range []string{"n1", "n2"} {
		if !regexp.MustCompile(`(?m)^` + id + `\s.*\s[0-9.]+(ns|µs|ms|s)\s*$`).Match(text) {
			t.Errorf("kmsd status shows no cache lag for %s:\n%s", id, text)
		}
	}
}

// TestStatusEmptyDatabase: kmsd status on a PostgreSQL database no node
// has started on says there is no kmsd schema there, fails, and leaves the
// database as it found it: no table created.
func TestStatusEmptyDatabase(t *testing.T) {
	url := pgtest.URL(t)
	for _, output := range []string{"text", "json"} {
		cmd := exec.Command(kmsdBin, "status", "--output", output)
		cmd.Env = env("KMSD_DATABASE_URL=" + url)
		out, err := cmd.Output()
		if err == nil {
			t.Fatalf("kmsd status --output %s on an empty database succeeded:\n%s", output, out)
		}
		if msg := stderr(err); !strings.Contains(msg, "no kmsd schema in the PostgreSQL database") {
			t.Errorf("kmsd status --output %s on an empty database: %v, stderr %q; want it to say there is no kmsd schema", output, err, msg)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var tables []string
	rows, err := conn.Query(ctx, `SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
		tables = append(tables, n)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(tables) != 0 {
		t.Errorf("kmsd status created tables in an empty database: %v", tables)
	}
}
