package audit

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// tailSize is how much of a log's end LastSeq reads to find its last
// record; records are far smaller.
const tailSize = 1 << 20

// LastSeq returns the sequence number of the last record node wrote to
// the log at path (rotated files included): the kmsdSeq of the last
// complete record of the newest non-empty file, if its kmsdNode is node;
// 0 when there is none (a new log, or a log written under another node
// id). A record cut short by a crash is passed over: it was never whole,
// so its number is given again.
func LastSeq(path, node string) (uint64, error) {
	files := Files(path)
	for i := len(files) - 1; i >= 0; i-- {
		seq, found, err := lastSeqIn(files[i], node)
		if err != nil || found {
			return seq, err
		}
	}
	return 0, nil
}

// lastSeqIn reads the last complete record of one file; found is false
// when the file holds none.
func lastSeqIn(name, node string) (seq uint64, found bool, err error) {
	f, err := os.Open(name)
	if err != nil {
		return 0, false, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, false, err
	}
	off := max(st.Size()-tailSize, 0)
	buf := make([]byte, st.Size()-off)
	if _, err := f.ReadAt(buf, off); err != nil && err != io.EOF {
		return 0, false, err
	}
	for len(buf) > 0 {
		end := bytes.LastIndexByte(buf, '\n')
		if end < 0 {
			break
		}
		line := buf[:end]
		start := bytes.LastIndexByte(line, '\n') + 1
		line, buf = line[start:], buf[:start]
		var r struct {
			Extra struct {
				Node string `json:"kmsdNode"`
				Seq  uint64 `json:"kmsdSeq"`
			} `json:"additionalEventData"`
		}
		if json.Unmarshal(line, &r) != nil {
			continue
		}
		if r.Extra.Node != node {
			return 0, true, nil
		}
		return r.Extra.Seq, true, nil
	}
	return 0, false, nil
}

// rotated matches the name of a rotated file (PATH.N).
var rotated = regexp.MustCompile(`^(.*)\.[1-9][0-9]*$`)

// Sources expands what a user names as audit logs into the logs' paths,
// each to be read with its rotated files (Files): a path names one log
// (it need not exist yet if a rotated file of it does); a directory names
// every *.log in it; a pattern with *, ? or [ names the logs whose files
// it matches. Several are given as separate arguments or separated by
// commas. A rotated file matched on its own (audit.log.1) stands for its
// log. The result is sorted and without duplicates.
func Sources(specs []string) ([]string, error) {
	set := map[string]bool{}
	add := func(name string) {
		if m := rotated.FindStringSubmatch(name); m != nil {
			name = m[1]
		}
		set[filepath.Clean(name)] = true
	}
	for _, spec := range specs {
		for _, s := range strings.Split(spec, ",") {
			s = strings.TrimSpace(s)
			if s == "" {
				continue
			}
			if st, err := os.Stat(s); err == nil && st.IsDir() {
				names, err := filepath.Glob(filepath.Join(s, "*.log"))
				if err != nil {
					return nil, err
				}
				if len(names) == 0 {
					return nil, fmt.Errorf("no audit log (*.log) in directory %s", s)
				}
				for _, n := range names {
					add(n)
				}
				continue
			}
			if strings.ContainsAny(s, "*?[") {
				names, err := filepath.Glob(s)
				if err != nil {
					return nil, fmt.Errorf("pattern %q: %w", s, err)
				}
				if len(names) == 0 {
					return nil, fmt.Errorf("no audit log matches %s", s)
				}
				for _, n := range names {
					add(n)
				}
				continue
			}
			add(s)
		}
	}
	out := make([]string, 0, len(set))
	for n := range set {
		if len(Files(n)) == 0 {
			return nil, fmt.Errorf("no audit log at %s", n)
		}
		out = append(out, n)
	}
	sort.Strings(out)
	return out, nil
}

// SearchLogs calls fn with each record of the logs (each with its rotated
// files, oldest first) that passes f. One log is read as it is written.
// Several logs — one per kmsd node — are merged: their matching records
// are ordered by eventTime, then kmsdNode, then kmsdSeq (records without
// them keep their order within their log), which holds the matching
// records in memory.
func SearchLogs(logs []string, f *Filter, fn func(line []byte) error) error {
	if len(logs) == 1 {
		return searchFiles(Files(logs[0]), f, fn)
	}
	type rec struct {
		time, node string
		seq        uint64
		line       []byte
	}
	var recs []rec
	for _, l := range logs {
		err := searchFiles(Files(l), f, func(line []byte) error {
			var r struct {
				Time  string `json:"eventTime"`
				Extra struct {
					Node string `json:"kmsdNode"`
					Seq  uint64 `json:"kmsdSeq"`
				} `json:"additionalEventData"`
			}
			json.Unmarshal(line, &r)
			recs = append(recs, rec{r.Time, r.Extra.Node, r.Extra.Seq, bytes.Clone(line)})
			return nil
		})
		if err != nil {
			return err
		}
	}
	// eventTime is always "2006-01-02T15:04:05Z" (UTC, whole seconds),
	// so its text sorts as its time.
	sort.SliceStable(recs, func(i, j int) bool {
		a, b := &recs[i], &recs[j]
		if a.time != b.time {
			return a.time < b.time
		}
		if a.node != b.node {
			return a.node < b.node
		}
		return a.seq < b.seq
	})
	for _, r := range recs {
		if err := fn(r.line); err != nil {
			return err
		}
	}
	return nil
}

func searchFiles(names []string, f *Filter, fn func(line []byte) error) error {
	for _, name := range names {
		fh, err := os.Open(name)
		if err != nil {
			return err
		}
		err = Search(fh, f, fn)
		fh.Close()
		if err != nil {
			return err
		}
	}
	return nil
}
