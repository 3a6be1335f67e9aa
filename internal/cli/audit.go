package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/kmsd/kmsd/internal/audit"
)

const auditUsage = `usage: kmsctl audit search [--audit-log PATH[,PATH…]]… [--key-id KEY] [--principal ARN|NAME|AKID]
                           [--event-name NAME] [--start-time TIME] [--end-time TIME]

Prints the audit records (CloudTrail-shaped JSON lines) of kmsd's audit log,
rotated files included, that match every given filter. --audit-log defaults
to $KMSD_AUDIT_LOG, else ~/.kmsd/audit.log. Times are RFC 3339
(2024-06-01T12:00:00Z) or dates (2024-06-01).

Several logs — one per kmsd node sharing a database — are searched together
when --audit-log is repeated or lists them separated by commas; a directory
stands for every *.log in it and a pattern (node-*/audit.log) for the logs
it matches. Their records are merged in order of eventTime, then node id
and per-node sequence number (additionalEventData kmsdNode, kmsdSeq).
`

// audit runs `kmsctl audit …`. It reads the log file directly: the audit
// log is kmsd's local file, not an API.
func (r *runner) audit(_ context.Context, args []string) (int, error) {
	if len(args) > 0 && isHelp(args[0]) {
		io.WriteString(r.env.Stdout, auditUsage)
		return exitOK, nil
	}
	if len(args) == 0 || args[0] != "search" {
		io.WriteString(r.env.Stderr, auditUsage)
		return exitClient, nil
	}
	fs := flag.NewFlagSet("kmsctl audit search", flag.ContinueOnError)
	fs.SetOutput(r.env.Stderr)
	fs.Usage = func() { io.WriteString(r.env.Stderr, auditUsage) }
	var f audit.Filter
	var start, end string
	var paths listFlag
	fs.Var(&paths, "audit-log", "audit log file, directory or pattern; repeatable, or comma-separated")
	fs.StringVar(&f.Key, "key-id", "", "key id, key ARN or alias")
	fs.StringVar(&f.Principal, "principal", "", "principal ARN, user name, principal id or access key id")
	fs.StringVar(&f.EventName, "event-name", "", "event name (operation), e.g. Encrypt")
	fs.StringVar(&start, "start-time", "", "earliest event time (inclusive)")
	fs.StringVar(&end, "end-time", "", "latest event time (exclusive)")
	if err := fs.Parse(args[1:]); err != nil {
		if err == flag.ErrHelp {
			return exitOK, nil
		}
		return exitClient, nil
	}
	var err error
	if f.Start, err = parseAuditTime(start); err != nil {
		return 0, &usageError{"--start-time: " + err.Error()}
	}
	if f.End, err = parseAuditTime(end); err != nil {
		return 0, &usageError{"--end-time: " + err.Error()}
	}
	if len(paths) == 0 {
		if env := os.Getenv("KMSD_AUDIT_LOG"); env != "" {
			paths = append(paths, env)
		} else {
			home, err := os.UserHomeDir()
			if err != nil {
				return 0, &usageError{"--audit-log is required"}
			}
			paths = append(paths, filepath.Join(home, ".kmsd", "audit.log"))
		}
	}
	logs, err := audit.Sources(paths)
	if err != nil {
		return 0, err
	}
	err = audit.SearchLogs(logs, &f, func(line []byte) error {
		if _, err := r.env.Stdout.Write(line); err != nil {
			return err
		}
		_, err := io.WriteString(r.env.Stdout, "\n")
		return err
	})
	if err != nil {
		return 0, err
	}
	return exitOK, nil
}

func parseAuditTime(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	if t, err := time.Parse("2006-01-02", strings.TrimSpace(s)); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("%q is not an RFC 3339 time or a date", s)
}

// listFlag is a flag that may be repeated; each value is kept as given.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }
