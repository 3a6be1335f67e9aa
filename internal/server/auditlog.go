package server

import (
	"io"
	"log/slog"
	"path/filepath"

	"github.com/kmsd/kmsd/internal/audit"
)

// openAudit starts the audit log the configuration asks for: JSON lines
// to cfg.AuditLog (default <data-dir>/audit.log, rotated by size), "-" for
// standard output, "off" for none; every record carries the node id and
// its sequence number. The returned close function flushes
// and syncs every queued record; Run calls it before it returns, so a
// clean shutdown loses nothing.
func openAudit(cfg Config, stdout io.Writer, log *slog.Logger) (*audit.Logger, func() error, error) {
	path := cfg.AuditLog
	switch path {
	case "off":
		return nil, func() error { return nil }, nil
	case "":
		path = filepath.Join(cfg.DataDir, "audit.log")
	}
	onErr := func(err error) { log.Error("audit log write failed", "err", err) }
	node, err := nodeID(cfg)
	if err != nil {
		return nil, nil, err
	}
	if path == "-" {
		l := audit.NewWith(stdout, audit.Options{OnErr: onErr, Node: node})
		return l, l.Close, nil
	}
	// The node's records are numbered on from the last one in its log.
	last, err := audit.LastSeq(path, node)
	if err != nil {
		return nil, nil, err
	}
	f, err := audit.OpenFile(path, cfg.AuditLogMaxSize, 0)
	if err != nil {
		return nil, nil, err
	}
	l := audit.NewWith(f, audit.Options{OnErr: onErr, Node: node, LastSeq: last})
	return l, func() error {
		err := l.Close()
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		return err
	}, nil
}

// AuditLogPath is where the audit log of cfg goes ("" when off or on
// standard output).
func AuditLogPath(cfg Config) string {
	switch cfg.AuditLog {
	case "off", "-":
		return ""
	case "":
		return filepath.Join(cfg.DataDir, "audit.log")
	}
	return cfg.AuditLog
}
