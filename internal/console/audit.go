package console

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/kmsd/kmsd/internal/audit"
)

// auditLimit is how many records the audit page shows, newest first.
const auditLimit = 200

// auditDenied is the audit page's refusal for other principals: the
// audit log holds every principal's requests, so only the account's
// administrator (who may also use kmsd's admin API) reads it.
func auditDenied(p Principal) string {
	return "AccessDeniedException: User: " + p.ARN + " is not the account's administrator and may not read kmsd's audit log."
}

// parseTime accepts RFC 3339 and the browser's datetime-local form (UTC).
func parseTime(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	for _, layout := range []string{time.RFC3339, "2006-01-02T15:04:05", "2006-01-02T15:04", "2006-01-02"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	return time.Time{}, errors.New("times are RFC 3339 (2026-01-02T15:04:05Z) or 2026-01-02T15:04, UTC")
}

type auditRow struct {
	ID, Time, Operation, Source, Principal, Resource, Outcome string
	Failed                                                    bool
}

func (c *Console) serveAudit(w http.ResponseWriter, r *http.Request, s *session) {
	q := r.URL.Query()
	form := obj{}
	for _, k := range []string{"start", "end", "principal", "operation", "key", "outcome"} {
		form[k] = strings.TrimSpace(q.Get(k))
	}
	data := obj{"Form": form}
	if r.URL.RawQuery == "" { // the form only, until a search
		c.page(w, r, s, "audit", "Audit log", data)
		return
	}
	if !s.principal.Admin {
		w.WriteHeader(http.StatusForbidden)
		data["Error"] = auditDenied(s.principal)
		c.page(w, r, s, "audit", "Audit log", data)
		return
	}
	f := audit.Filter{Principal: form["principal"].(string), EventName: form["operation"].(string), Key: form["key"].(string)}
	var err error
	if f.Start, err = parseTime(form["start"].(string)); err == nil {
		f.End, err = parseTime(form["end"].(string))
	}
	if err != nil {
		data["Error"] = err.Error()
		c.page(w, r, s, "audit", "Audit log", data)
		return
	}
	outcome := form["outcome"].(string)
	var rows []auditRow
	err = c.cfg.Backend.SearchAudit(&f, func(line []byte) error {
		var rec struct {
			EventID, EventTime, EventName, EventSource, ErrorCode string
			UserIdentity                                          struct{ ARN, Type, InvokedBy string }
			Resources                                             []struct{ ARN string }
			RequestParameters                                     map[string]any
			// A key store's connection outcome (AwsServiceEvent).
			ServiceEventDetails struct {
				CustomKeyStoreID, ConnectionState, ConnectionErrorCode string
			}
		}
		if json.Unmarshal(line, &rec) != nil {
			return nil
		}
		row := auditRow{ID: rec.EventID, Time: rec.EventTime, Operation: rec.EventName, Source: rec.EventSource,
			Principal: rec.UserIdentity.ARN, Outcome: "Success"}
		if row.Principal == "" && rec.UserIdentity.Type != "" {
			row.Principal = rec.UserIdentity.Type + " " + rec.UserIdentity.InvokedBy
		}
		code := rec.ErrorCode
		if d := rec.ServiceEventDetails; d.ConnectionState != "" {
			row.Outcome, row.Resource = d.ConnectionState, d.CustomKeyStoreID
			if d.ConnectionState == "FAILED" {
				code = d.ConnectionErrorCode
				row.Outcome += " " + code
			}
		}
		switch {
		case outcome == "":
		case outcome == "success" && code == "":
		case outcome == "failure" && code != "":
		case outcome != "success" && outcome != "failure" && strings.EqualFold(outcome, code):
		default:
			return nil
		}
		for _, res := range rec.Resources {
			row.Resource = res.ARN
		}
		if row.Resource == "" {
			for _, k := range []string{"keyId", "customKeyStoreId", "clusterId", "aliasName"} {
				if v, ok := rec.RequestParameters[k].(string); ok {
					row.Resource = v
					break
				}
			}
		}
		if rec.ErrorCode != "" && rec.ServiceEventDetails.ConnectionState == "" {
			row.Outcome = rec.ErrorCode
		}
		row.Failed = code != ""
		rows = append(rows, row)
		if len(rows) > 4*auditLimit { // keep the newest
			rows = append(rows[:0], rows[len(rows)-auditLimit:]...)
		}
		return nil
	})
	if err != nil {
		data["Error"] = err.Error()
	}
	if len(rows) > auditLimit {
		rows = rows[len(rows)-auditLimit:]
	}
	for i, j := 0, len(rows)-1; i < j; i, j = i+1, j-1 {
		rows[i], rows[j] = rows[j], rows[i]
	}
	data["Rows"], data["Searched"] = rows, true
	c.page(w, r, s, "audit", "Audit log", data)
}

// serveAuditRecord shows one record in full.
func (c *Console) serveAuditRecord(w http.ResponseWriter, r *http.Request, s *session, id string) {
	data := obj{"EventID": id}
	if !s.principal.Admin {
		w.WriteHeader(http.StatusForbidden)
		data["Error"] = auditDenied(s.principal)
		c.page(w, r, s, "record", "Audit record", data)
		return
	}
	var found map[string]any
	err := c.cfg.Backend.SearchAudit(&audit.Filter{}, func(line []byte) error {
		if !strings.Contains(string(line), id) {
			return nil
		}
		var rec map[string]any
		if json.Unmarshal(line, &rec) == nil && rec["eventID"] == id {
			found = rec
		}
		return nil
	})
	switch {
	case err != nil:
		data["Error"] = err.Error()
	case found == nil:
		w.WriteHeader(http.StatusNotFound)
		data["Error"] = "No audit record has event ID " + id + "."
	default:
		data["Record"] = found
	}
	c.page(w, r, s, "record", "Audit record "+id, data)
}
