package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/kmsd/kmsd/internal/controller"
	"github.com/kmsd/kmsd/internal/storage"
	"github.com/kmsd/kmsd/internal/storage/postgres"
	"github.com/kmsd/kmsd/internal/storage/sqlite"
)

// StatusConfig is what `kmsd status` reads and how it prints it.
type StatusConfig struct {
	DataDir          string // the SQLite database's directory, without DatabaseURL
	DatabaseURL      string
	DatabasePassword string
	Output           string // "text" (default) or "json"
}

// Status prints the nodes sharing the database (with their last
// heartbeat, whether their node lease is live, the cache lag they
// published), the controller and its epoch, the live leases and the last
// controller terms. It needs no root key: none of this is secret.
func Status(ctx context.Context, c StatusConfig, out io.Writer) error {
	switch c.Output {
	case "":
		c.Output = "text"
	case "text", "json":
	default:
		return fmt.Errorf("--output %q: want text or json", c.Output)
	}
	var st storage.Store
	if c.DatabaseURL == "" {
		path := filepath.Join(c.DataDir, "kmsd.db")
		if _, err := os.Stat(path); err != nil {
			return fmt.Errorf("no kmsd database in %s: %w", c.DataDir, err)
		}
		s, err := sqlite.Open(ctx, path)
		if err != nil {
			return fmt.Errorf("open database: %w", err)
		}
		st = s
	} else {
		// Read-only: status on a database no node has started on says so
		// and leaves it empty, rather than creating kmsd's schema.
		s, err := postgres.Open(ctx, c.DatabaseURL, postgres.Options{MaxConns: 2, MinConns: 1, Password: c.DatabasePassword, ReadOnly: true})
		if errors.Is(err, postgres.ErrNoSchema) {
			return fmt.Errorf("no kmsd schema in the PostgreSQL database %s: no kmsd node has started on it", postgres.Describe(c.DatabaseURL))
		}
		if err != nil {
			return fmt.Errorf("open the PostgreSQL database %s: %w", postgres.Describe(c.DatabaseURL), err)
		}
		st = s
	}
	defer st.Close()
	ls, ok := st.(storage.Leaser)
	if !ok {
		return errors.New("the store has no leases")
	}
	s, err := controller.ReadStatus(ctx, st, ls)
	if err != nil {
		return err
	}
	if c.Output == "json" {
		e := json.NewEncoder(out)
		e.SetIndent("", "  ")
		return e.Encode(s)
	}
	return printStatus(out, s)
}

// printStatus writes s as text tables.
func printStatus(out io.Writer, s *controller.Status) error {
	ago := func(t time.Time) string {
		return s.Now.Sub(t).Round(100*time.Millisecond).String() + " ago"
	}
	if s.Current != nil {
		fmt.Fprintf(out, "controller: %s (epoch %d)\n", s.Current.Node, s.Current.Epoch)
	} else {
		fmt.Fprintln(out, "controller: none (no live controller lease)")
	}
	if s.MinDataLevel > 0 {
		fmt.Fprintf(out, "data format level: %d (nodes below it do not start)\n", s.MinDataLevel)
	}
	w := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(w, "\nNODE\tADDRESS\tSTATE\tLAST HEARTBEAT\tSTARTED\tEPOCH\tVERSION\tLEVEL\tCACHE LAG")
	for _, n := range s.Nodes {
		state := "dead"
		switch {
		case n.Live && s.Current != nil && s.Current.Node == n.ID:
			state = "live, controller"
		case n.Live:
			state = "live"
		case n.Stopped:
			state = "stopped"
		}
		lag := "-"
		if n.CacheLagSeconds != nil {
			lag = (time.Duration(*n.CacheLagSeconds * float64(time.Second))).Round(time.Millisecond).String()
		}
		version, level := "-", "-"
		if n.Version != "" {
			version = n.Version
		}
		if n.DataLevel > 0 {
			level = fmt.Sprint(n.DataLevel)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", n.ID, n.Address, state, ago(n.Heartbeat), n.Started.Format(time.RFC3339), n.Epoch, version, level, lag)
	}
	fmt.Fprintln(w, "\nLEASE\tHOLDER\tEPOCH\tEXPIRES IN")
	for _, l := range s.Leases {
		fmt.Fprintf(w, "%s\t%s\t%d\t%.1fs\n", l.Name, l.Holder, l.Epoch, l.ExpiresInSeconds)
	}
	fmt.Fprintln(w, "\nCONTROLLER EPOCH\tNODE\tACQUIRED")
	terms := s.Terms
	if len(terms) > 10 {
		terms = terms[len(terms)-10:]
	}
	for _, t := range terms {
		fmt.Fprintf(w, "%d\t%s\t%s\n", t.Epoch, t.Node, t.Acquired.Format(time.RFC3339Nano))
	}
	return w.Flush()
}
