package audit

import (
	"bufio"
	"encoding/json"
	"io"
	"strings"
	"time"
)

// Filter selects records; empty fields match everything.
type Filter struct {
	// Key matches a resource ARN, a key id / alias named in the request
	// parameters (keyId, sourceKeyId, destinationKeyId, targetKeyId), or
	// the key a CreateKey or ReplicateKey response describes. A bare key
	// id matches the ARN ending in it.
	Key string
	// Principal matches userIdentity.arn, the user name, the principal id
	// or the access key id.
	Principal string
	// EventName matches eventName, without regard to case.
	EventName string
	// Start and End bound eventTime (inclusive, exclusive).
	Start, End time.Time
}

// Match reports whether the raw record r passes f.
func (f *Filter) Match(r map[string]any) bool {
	if f.EventName != "" && !strings.EqualFold(str(r["eventName"]), f.EventName) {
		return false
	}
	if !f.Start.IsZero() || !f.End.IsZero() {
		t, err := time.Parse(time.RFC3339, str(r["eventTime"]))
		if err != nil || (!f.Start.IsZero() && t.Before(f.Start)) || (!f.End.IsZero() && !t.Before(f.End)) {
			return false
		}
	}
	if f.Principal != "" {
		ui, _ := r["userIdentity"].(map[string]any)
		ok := false
		for _, k := range []string{"arn", "userName", "principalId", "accessKeyId"} {
			if v := str(ui[k]); v != "" && v == f.Principal {
				ok = true
			}
		}
		if !ok {
			return false
		}
	}
	if f.Key != "" {
		return f.matchKey(r)
	}
	return true
}

func (f *Filter) matchKey(r map[string]any) bool {
	res, _ := r["resources"].([]any)
	for _, x := range res {
		m, _ := x.(map[string]any)
		arn := str(m["ARN"])
		if arn == f.Key || strings.HasSuffix(arn, "/"+f.Key) {
			return true
		}
	}
	params, _ := r["requestParameters"].(map[string]any)
	for _, k := range []string{"keyId", "sourceKeyId", "destinationKeyId", "targetKeyId", "aliasName"} {
		if v := str(params[k]); v != "" && (v == f.Key || strings.HasSuffix(v, "/"+f.Key)) {
			return true
		}
	}
	// The key a CreateKey (or ReplicateKey) made is only in its response.
	resp, _ := r["responseElements"].(map[string]any)
	for _, m := range []string{"keyMetadata", "replicaKeyMetadata"} {
		md, _ := resp[m].(map[string]any)
		if id := str(md["keyId"]); id != "" && id == f.Key {
			return true
		}
		if arn := str(md["arn"]); arn != "" && (arn == f.Key || strings.HasSuffix(arn, "/"+f.Key)) {
			return true
		}
	}
	return false
}

func str(v any) string {
	s, _ := v.(string)
	return s
}

// Search reads JSON lines from r and calls fn with each matching line
// (without its newline). Lines that are not JSON objects are skipped.
func Search(r io.Reader, f *Filter, fn func(line []byte) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var rec map[string]any
		if json.Unmarshal(line, &rec) != nil {
			continue
		}
		if f.Match(rec) {
			if err := fn(line); err != nil {
				return err
			}
		}
	}
	return sc.Err()
}
