package audit

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// decode reads JSON lines.
func decode(t *testing.T, b []byte) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

func extra(m map[string]any) (string, float64) {
	x, _ := m["additionalEventData"].(map[string]any)
	n, _ := x["kmsdNode"].(string)
	s, _ := x["kmsdSeq"].(float64)
	return n, s
}

// TestNodeAndSequence: a Logger with a node id numbers its records from
// LastSeq+1 in the order it writes them, beside a record's own additional
// data, and continues from the log after a restart; LastSeq passes over a
// record cut short and reads rotated files when the newest is empty.
func TestNodeAndSequence(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	run := func(n int) {
		f, err := OpenFile(path, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		last, err := LastSeq(path, "node-a")
		if err != nil {
			t.Fatal(err)
		}
		l := NewWith(f, Options{Node: "node-a", LastSeq: last})
		shared := map[string]any{"keyMaterialId": "abc"}
		for i := 0; i < n; i++ {
			l.Log(&Record{EventName: fmt.Sprint("Op", i), AdditionalEventData: shared})
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		f.Close()
		if len(shared) != 1 {
			t.Errorf("the record's own additionalEventData was changed: %v", shared)
		}
	}
	run(3)
	run(2)
	b, _ := os.ReadFile(path)
	recs := decode(t, b)
	if len(recs) != 5 {
		t.Fatalf("%d records, want 5", len(recs))
	}
	for i, r := range recs {
		node, seq := extra(r)
		if node != "node-a" || seq != float64(i+1) {
			t.Errorf("record %d: kmsdNode %q kmsdSeq %v, want node-a %d", i, node, seq, i+1)
		}
		if x := r["additionalEventData"].(map[string]any); x["keyMaterialId"] != "abc" {
			t.Errorf("record %d lost its own additional data: %v", i, x)
		}
	}

	// A crash cut the last record short: its number is given again.
	f, _ := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString(`{"eventVersion":"1.08","additionalEventData":{"kmsdNode":"node-a","kmsdSeq":6`)
	f.Close()
	if got, err := LastSeq(path, "node-a"); err != nil || got != 5 {
		t.Errorf("LastSeq after a torn record = %d, %v; want 5", got, err)
	}
	if got, _ := LastSeq(path, "node-b"); got != 0 {
		t.Errorf("LastSeq of another node id = %d, want 0", got)
	}
	// Rotated away, with an empty new file: the rotated one answers.
	os.Rename(path, path+".1")
	os.WriteFile(path, nil, 0o600)
	if got, _ := LastSeq(path, "node-a"); got != 5 {
		t.Errorf("LastSeq after rotation = %d, want 5", got)
	}
	if got, _ := LastSeq(filepath.Join(t.TempDir(), "none.log"), "node-a"); got != 0 {
		t.Errorf("LastSeq of no log = %d, want 0", got)
	}
}

// syncWriter records what had been written when each Sync came.
type syncWriter struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	synced []int // len(buf) at each Sync
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

func (w *syncWriter) Sync() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.synced = append(w.synced, w.buf.Len())
	return nil
}

func (w *syncWriter) state() (string, []int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String(), append([]int(nil), w.synced...)
}

// TestLogSync: LogSync returns once its record, and every record queued
// before it, is written and synced; Log alone does not sync; concurrent
// LogSync calls share syncs.
func TestLogSync(t *testing.T) {
	w := &syncWriter{}
	l := NewWith(w, Options{Node: "n1"})
	defer l.Close()
	l.Log(&Record{EventName: "Encrypt", RequestID: "async-1"})
	if err := l.LogSync(&Record{EventName: "CreateKey", RequestID: "sync-1"}); err != nil {
		t.Fatal(err)
	}
	content, synced := w.state()
	if len(synced) != 1 || synced[0] != len(content) {
		t.Fatalf("after LogSync: syncs at %v with %d bytes written; want one sync covering everything", synced, len(content))
	}
	if !strings.Contains(content, "async-1") || !strings.Contains(content, "sync-1") {
		t.Fatalf("after LogSync the log holds %q", content)
	}

	const n = 64
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if err := l.LogSync(&Record{EventName: "CreateKey", RequestID: fmt.Sprint("group-", i)}); err != nil {
				t.Error(err)
			}
		}(i)
	}
	wg.Wait()
	content, synced = w.state()
	if synced[len(synced)-1] != len(content) {
		t.Errorf("the last sync (at %d bytes) does not cover the %d bytes written", synced[len(synced)-1], len(content))
	}
	if got := len(synced) - 1; got > n {
		t.Errorf("%d syncs for %d LogSync calls", got, n)
	}
	t.Logf("%d concurrent LogSync calls took %d syncs", n, len(synced)-1)
	recs := decode(t, []byte(content))
	for i, r := range recs {
		if _, seq := extra(r); seq != float64(i+1) {
			t.Fatalf("record %d has kmsdSeq %v", i, seq)
		}
	}
	l.Close()
	if err := l.LogSync(&Record{EventName: "CreateKey"}); err != ErrClosed {
		t.Errorf("LogSync after Close = %v, want ErrClosed", err)
	}
}

// TestSourcesAndMerge: logs named as files, comma lists, directories and
// patterns, rotated files standing for their log; the records of several
// logs come out ordered by eventTime, then node, then sequence number,
// filtered like one log's.
func TestSourcesAndMerge(t *testing.T) {
	dir := t.TempDir()
	t0 := time.Date(2026, 12, 4, 21, 0, 0, 0, time.UTC)
	write := func(name, node string, seqStart int, times ...int) {
		var b []byte
		for i, s := range times {
			r := &Record{EventName: "CreateKey", Time: t0.Add(time.Duration(s) * time.Second), Node: node, Seq: uint64(seqStart + i), RequestID: fmt.Sprintf("%s-%d", node, seqStart+i)}
			Fill(r)
			b = append(appendRecord(b, r), '\n')
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// Node a's log was rotated once; node b's and c's were not.
	write("a.log.1", "a", 1, 0, 2)
	write("a.log", "a", 3, 2, 5)
	write("b.log", "b", 1, 1, 2, 2, 6)
	write("c.log", "c", 1, 2)
	os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("not a log"), 0o600)

	want := []string{"a.log", "b.log", "c.log"}
	for _, c := range []struct {
		name  string
		specs []string
	}{
		{"files", []string{filepath.Join(dir, "a.log"), filepath.Join(dir, "b.log"), filepath.Join(dir, "c.log")}},
		{"comma list", []string{filepath.Join(dir, "a.log") + "," + filepath.Join(dir, "b.log"), filepath.Join(dir, "c.log")}},
		{"directory", []string{dir}},
		{"pattern", []string{filepath.Join(dir, "*.log*")}},
		{"rotated file and duplicates", []string{filepath.Join(dir, "a.log.1"), dir}},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := Sources(c.specs)
			if err != nil {
				t.Fatal(err)
			}
			for i := range got {
				got[i] = filepath.Base(got[i])
			}
			if strings.Join(got, " ") != strings.Join(want, " ") {
				t.Errorf("Sources = %v, want %v", got, want)
			}
		})
	}
	for _, bad := range [][]string{{filepath.Join(dir, "none.log")}, {filepath.Join(dir, "*.nothing")}, {t.TempDir()}} {
		if _, err := Sources(bad); err == nil {
			t.Errorf("Sources(%v): no error", bad)
		}
	}

	logs, _ := Sources([]string{dir})
	var order []string
	err := SearchLogs(logs, &Filter{}, func(line []byte) error {
		var r map[string]any
		json.Unmarshal(line, &r)
		order = append(order, r["requestID"].(string))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	wantOrder := "a-1 b-1 a-2 a-3 b-2 b-3 c-1 a-4 b-4"
	if got := strings.Join(order, " "); got != wantOrder {
		t.Errorf("merged order\n %s\nwant\n %s", got, wantOrder)
	}
	// A filter applies to every log.
	order = order[:0]
	SearchLogs(logs, &Filter{Start: t0.Add(2 * time.Second), End: t0.Add(3 * time.Second)}, func(line []byte) error {
		var r map[string]any
		json.Unmarshal(line, &r)
		order = append(order, r["requestID"].(string))
		return nil
	})
	if got := strings.Join(order, " "); got != "a-2 a-3 b-2 b-3 c-1" {
		t.Errorf("merged and filtered: %s", got)
	}
}
