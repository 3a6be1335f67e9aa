package postgres

import (
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/kmsd/kmsd/internal/storage"
	"github.com/kmsd/kmsd/internal/storage/postgres/pgtest"
)

// TestCoversPlan: Covers probes kv_changes' primary key rather than
// reading the table, whatever its size. On 200,000 changes, its
// statement's generic plan (what a prepared statement runs after its
// fifth execution) has no sequential scan of kv_changes, for a current
// cursor (no change after it) and for one with every change after it.
// An EXISTS form planned a sequential scan there, and read all of a
// million changes for a current cursor (190 ms a call).
func TestCoversPlan(t *testing.T) {
	s := openURL(t, pgtest.URL(t))
	ctx := t.Context()
	if _, err := s.pool.Exec(ctx, `INSERT INTO kv_changes (key) SELECT 'k/' || i FROM generate_series(1, 200000) i`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.pool.Exec(ctx, `ANALYZE kv_changes`); err != nil {
		t.Fatal(err)
	}
	b, err := s.Changes(ctx, storage.Cursor{}, 0)
	if err != nil || !b.Reset {
		t.Fatalf("Changes from the zero cursor: %+v, %v", b, err)
	}
	current := b.Next
	if ok, err := s.Covers(ctx, current); err != nil || !ok {
		t.Fatalf("Covers(%+v) = %v, %v; want true", current, ok, err)
	}
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, `SET plan_cache_mode = force_generic_plan`); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `PREPARE covers_plan(text, bigint) AS `+coversQuery); err != nil {
		t.Fatal(err)
	}
	defer conn.Exec(ctx, `DEALLOCATE covers_plan; RESET plan_cache_mode`)
	for _, c := range []storage.Cursor{current, {Gen: current.Gen, XID: 1}} {
		rows, err := conn.Query(ctx, `EXPLAIN (ANALYZE, COSTS OFF) EXECUTE covers_plan('`+strconv.FormatUint(c.XID, 10)+`', `+strconv.FormatInt(c.Seq, 10)+`)`)
		if err != nil {
			t.Fatal(err)
		}
		plan, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		p := strings.Join(plan, "\n")
		if strings.Contains(p, "Seq Scan on kv_changes") || !strings.Contains(p, "kv_changes_pkey") {
			t.Errorf("Covers' generic plan for cursor %+v does not probe kv_changes' primary key:\n%s", c, p)
		}
	}
}
