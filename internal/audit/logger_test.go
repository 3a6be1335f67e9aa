package audit

import (
	"bytes"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestLoggerWakesPerBatch: records logged one at a time, with pauses in
// which a woken writer would have written each and gone back to sleep,
// are written in order, each once, by a writer woken about once per
// wakeEvery records — not once per record, which costs every request a
// thread wake-up.
func TestLoggerWakesPerBatch(t *testing.T) {
	var out bytes.Buffer
	l := NewWith(&out, Options{Node: "n1"})
	const n = 4 * wakeEvery
	start := time.Now()
	for i := range n {
		l.Log(&Record{EventName: "Encrypt", RequestID: fmt.Sprint("r-", i)})
		time.Sleep(100 * time.Microsecond)
	}
	took := time.Since(start)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	recs := decode(t, out.Bytes())
	if len(recs) != n {
		t.Fatalf("%d records written, want %d", len(recs), n)
	}
	for i, r := range recs {
		if _, seq := extra(r); seq != float64(i+1) || r["requestID"] != fmt.Sprint("r-", i) {
			t.Fatalf("record %d: kmsdSeq %v, requestID %v", i, seq, r["requestID"])
		}
	}
	// One round per wakeEvery records, one for Close and one per tick
	// that fell inside the burst.
	limit := n/wakeEvery + 2 + int(took/flushEvery)
	if got := int(l.rounds.Load()); got > limit {
		t.Errorf("the writer took %d batches for %d records logged in %v; want at most %d", got, n, took, limit)
	}
	t.Logf("%d records, %d batches, logged in %v", n, l.rounds.Load(), took)
}

// blockingWriter blocks every Write until release is closed.
type blockingWriter struct {
	release chan struct{}
	mu      sync.Mutex
	b       bytes.Buffer
}

func (w *blockingWriter) Write(p []byte) (int, error) {
	<-w.release
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// TestLoggerFullQueueWaits: with the writer stuck, a full queue makes Log
// wait rather than drop or grow past QueueSize; once the writer moves on
// every record is written, in order.
func TestLoggerFullQueueWaits(t *testing.T) {
	w := &blockingWriter{release: make(chan struct{})}
	l := NewWith(w, Options{Node: "n1"})
	const n = 3 * QueueSize
	var logged atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range n {
			l.Log(&Record{EventName: "Encrypt", RequestID: fmt.Sprint("r-", i)})
			logged.Add(1)
		}
	}()
	// The writer's buffer fills, its Write blocks, and the queue behind
	// it fills: Log must stop.
	var last int64 = -1
	for {
		time.Sleep(200 * time.Millisecond)
		cur := logged.Load()
		if cur == last {
			break
		}
		last = cur
	}
	select {
	case <-done:
		t.Fatalf("all %d records were queued while the writer was stuck", n)
	default:
	}
	l.mu.Lock()
	queued := len(l.pending)
	l.mu.Unlock()
	if queued > QueueSize {
		t.Fatalf("%d records queued, more than QueueSize %d", queued, QueueSize)
	}
	close(w.release)
	<-done
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	recs := decode(t, w.b.Bytes())
	if len(recs) != n {
		t.Fatalf("%d records written, want %d", len(recs), n)
	}
	for i, r := range recs {
		if _, seq := extra(r); seq != float64(i+1) {
			t.Fatalf("record %d has kmsdSeq %v", i, seq)
		}
	}
	t.Logf("Log stopped at %d records with %d queued", last, queued)
}

// TestLoggerCloseReleasesWaiters: Close while Log waits on a full queue
// makes Log return (its record dropped, as any logged after Close), and
// what was written before is whole and in order. The queue was once a
// channel, and a Log waiting on it when Close closed it panicked.
func TestLoggerCloseReleasesWaiters(t *testing.T) {
	w := &blockingWriter{release: make(chan struct{})}
	l := NewWith(w, Options{Node: "n1"})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 3 * QueueSize {
			l.Log(&Record{EventName: "Encrypt", RequestID: fmt.Sprint("r-", i)})
		}
	}()
	for {
		time.Sleep(50 * time.Millisecond)
		l.mu.Lock()
		full := len(l.pending) >= QueueSize
		l.mu.Unlock()
		if full {
			break
		}
	}
	closed := make(chan error)
	go func() { closed <- l.Close() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Log still waits 10 s after Close")
	}
	close(w.release)
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	recs := decode(t, w.b.Bytes())
	if len(recs) < QueueSize {
		t.Fatalf("%d records written, want at least the %d queued before Close", len(recs), QueueSize)
	}
	for i, r := range recs {
		if _, seq := extra(r); seq != float64(i+1) {
			t.Fatalf("record %d has kmsdSeq %v", i, seq)
		}
	}
}
