// Package audit records one event per request in the shape of a
// CloudTrail record (eventVersion, userIdentity, eventTime, eventSource,
// eventName, …, recipientAccountId) as JSON lines, and searches such logs.
//
// Records are handed to a Logger, which queues them and writes them from
// one goroutine through a buffer, so that encoding and I/O stay off the
// request path. The buffer is flushed every 100 ms and on Close, which the
// server calls before it acknowledges a shutdown; a crash (kill -9, power
// loss) can lose at most the records still queued or buffered at that
// moment — the last 100 ms or so — except records logged with LogSync,
// which returns only once its record is written and synced to stable
// storage (several waiting records share one fsync).
//
// With several kmsd nodes each node keeps its own log; a Logger given a
// node id writes it and a per-node sequence number (1, 2, … continued
// across restarts from the log's last record) into every record's
// additionalEventData as kmsdNode and kmsdSeq, so that the logs of all
// nodes merge into one order (Merge) and a missing record shows as a gap.
//
// Nothing secret is recorded: request and response parameters are copied
// through Sanitize, which drops every binary field (plaintext, ciphertext,
// key material, signatures) and every field named like a secret
// (passwords, secret keys, session and grant tokens).
package audit

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// EventVersion is the CloudTrail record version kmsd writes.
const EventVersion = "1.08"

// Record is one CloudTrail-shaped event.
type Record struct {
	EventVersion        string         `json:"eventVersion"`
	UserIdentity        UserIdentity   `json:"userIdentity"`
	EventTime           string         `json:"eventTime"`
	EventSource         string         `json:"eventSource"`
	EventName           string         `json:"eventName"`
	AWSRegion           string         `json:"awsRegion"`
	SourceIPAddress     string         `json:"sourceIPAddress"`
	UserAgent           string         `json:"userAgent"`
	ErrorCode           string         `json:"errorCode,omitempty"`
	ErrorMessage        string         `json:"errorMessage,omitempty"`
	RequestParameters   any            `json:"requestParameters"`
	ResponseElements    any            `json:"responseElements"`
	AdditionalEventData map[string]any `json:"additionalEventData,omitempty"`
	RequestID           string         `json:"requestID"`
	EventID             string         `json:"eventID"`
	ReadOnly            bool           `json:"readOnly"`
	Resources           []Resource     `json:"resources,omitempty"`
	EventType           string         `json:"eventType"`
	ManagementEvent     bool           `json:"managementEvent"`
	RecipientAccountID  string         `json:"recipientAccountId"`
	EventCategory       string         `json:"eventCategory"`
	ServiceEventDetails map[string]any `json:"serviceEventDetails,omitempty"`

	// Time is when the request arrived; EventTime is formatted from it by
	// the writer when left empty.
	Time time.Time `json:"-"`
	// Params and Response, when set, are the raw request and response
	// shapes: the writer turns them into RequestParameters and
	// ResponseElements through Sanitize, off the request path.
	Params, Response any `json:"-"`
	// Node and Seq are set by the Logger (Options.Node) and written as
	// additionalEventData's kmsdNode and kmsdSeq.
	Node string `json:"-"`
	Seq  uint64 `json:"-"`
}

// UserIdentity is CloudTrail's userIdentity element.
type UserIdentity struct {
	Type           string          `json:"type,omitempty"`
	PrincipalID    string          `json:"principalId,omitempty"`
	ARN            string          `json:"arn,omitempty"`
	AccountID      string          `json:"accountId,omitempty"`
	AccessKeyID    string          `json:"accessKeyId,omitempty"`
	UserName       string          `json:"userName,omitempty"`
	SessionContext *SessionContext `json:"sessionContext,omitempty"`
	InvokedBy      string          `json:"invokedBy,omitempty"`
}

// SessionContext describes the role behind an assumed-role session.
type SessionContext struct {
	SessionIssuer struct {
		Type        string `json:"type"`
		PrincipalID string `json:"principalId"`
		ARN         string `json:"arn"`
		AccountID   string `json:"accountId"`
		UserName    string `json:"userName"`
	} `json:"sessionIssuer"`
	Attributes struct {
		CreationDate     string `json:"creationDate,omitempty"`
		MFAAuthenticated string `json:"mfaAuthenticated"`
	} `json:"attributes"`
	// SourceIdentity is the source identity set on the session.
	SourceIdentity string `json:"sourceIdentity,omitempty"`
}

// Resource is one entry of a record's resources.
type Resource struct {
	AccountID string `json:"accountId"`
	Type      string `json:"type"`
	ARN       string `json:"ARN"`
}

// Logger queues records and writes them as JSON lines to one writer.
//
// The queue is a slice under a mutex rather than a channel: a channel
// send to a writer parked on it wakes the writer's goroutine, and often
// an idle thread to run it, for every record: a futex wake-up and a park
// on each request. In BenchmarkServe with two threads that was ~1.5 µs
// of a 10 µs Encrypt, and ~13 µs of a Verify, whose writer had always
// gone to sleep while the signature was checked. The writer is woken only
// by a record that waits for its sync, by each wakeEvery-th record queued,
// by its flushEvery tick and by Close.
type Logger struct {
	mu      sync.Mutex // guards pending and shut
	room    sync.Cond  // signalled when the writer takes pending, and on Close
	pending []item
	shut    bool
	wake    chan struct{} // capacity 1: the writer has something to do now
	done    chan struct{}
	w       io.Writer
	bw      *bufio.Writer
	onErr   func(error)
	node    string
	seq     uint64 // of the last record written; owned by run
	closed  sync.Once
	buf     []byte       // the record being written; owned by run
	rounds  atomic.Int64 // batches of records the writer has taken (tests)
}

// item is a queued record; ack, when not nil, receives the outcome of
// writing and syncing it (LogSync).
type item struct {
	r   *Record
	ack chan error
}

// Options configure a Logger.
type Options struct {
	// OnErr, if not nil, is told of write errors (the records are then
	// lost, and LogSync returns the error).
	OnErr func(error)
	// Node is the node id written into every record; "" for none (and
	// then no sequence number either).
	Node string
	// LastSeq is the sequence number of the last record this node wrote
	// before (LastSeq reads it from a log); the first record gets
	// LastSeq+1.
	LastSeq uint64
}

// ErrClosed is returned by LogSync after Close.
var ErrClosed = errors.New("audit: logger closed")

// QueueSize bounds the records waiting to be written; a full queue makes
// requests wait rather than lose records.
const QueueSize = 8192

// wakeEvery is the number of queued records that wakes the writer before
// its tick: under load the writer encodes a batch of records still warm
// in the caches, rather than a tick's worth of them at once.
const wakeEvery = 64

// flushEvery bounds how long a record waits in memory before it is written.
const flushEvery = 100 * time.Millisecond

// New starts a Logger writing to w (a *File, os.Stdout, …). onErr, if not
// nil, is told of write errors (the records are then lost).
func New(w io.Writer, onErr func(error)) *Logger {
	return NewWith(w, Options{OnErr: onErr})
}

// NewWith starts a Logger writing to w with the options o.
func NewWith(w io.Writer, o Options) *Logger {
	l := &Logger{wake: make(chan struct{}, 1), done: make(chan struct{}), w: w, bw: bufio.NewWriterSize(w, 64<<10),
		onErr: o.OnErr, node: o.Node, seq: o.LastSeq}
	l.room.L = &l.mu
	go l.run()
	return l
}

// Log queues r. It never blocks on I/O, only on a full queue. r must not
// be changed afterwards.
func (l *Logger) Log(r *Record) {
	l.enqueue(item{r: r})
}

// LogSync queues r and waits until it is written and the writer synced
// (when it can sync: a *File fsyncs), so that a crash after LogSync
// returns nil cannot lose r. Records queued meanwhile share the sync. r
// must not be changed afterwards.
func (l *Logger) LogSync(r *Record) error {
	if l == nil {
		return nil
	}
	ack := make(chan error, 1)
	if !l.enqueue(item{r: r, ack: ack}) {
		return ErrClosed
	}
	return <-ack
}

func (l *Logger) enqueue(it item) bool {
	if l == nil {
		return false
	}
	l.mu.Lock()
	for !l.shut && len(l.pending) >= QueueSize {
		l.room.Wait()
	}
	if l.shut {
		l.mu.Unlock()
		return false
	}
	l.pending = append(l.pending, it)
	n := len(l.pending)
	l.mu.Unlock()
	if it.ack != nil || n%wakeEvery == 0 {
		l.signal()
	}
	return true
}

// signal wakes the writer, or leaves it a wake-up if it is busy.
func (l *Logger) signal() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

func (l *Logger) run() {
	defer close(l.done)
	// Records are flushed every flushEvery, not when the queue runs
	// empty: under load the queue is empty after almost every record, and
	// a write system call per request would sit on the hot path. A record
	// that waits for its sync is the exception: it is flushed and synced
	// at once, with every record queued before and behind it (group
	// commit).
	tick := time.NewTicker(flushEvery)
	defer tick.Stop()
	dirty := false
	var batch []item
	var acks []chan error
	for {
		ticked := false
		select {
		case <-l.wake:
		case <-tick.C:
			ticked = true
		}
		l.mu.Lock()
		batch, l.pending = l.pending, batch[:0]
		shut := l.shut
		l.room.Broadcast()
		l.mu.Unlock()
		var werr error
		acks = acks[:0]
		for _, it := range batch {
			if err := l.write(it.r); err != nil && werr == nil {
				werr = err
			}
			dirty = true
			if it.ack != nil {
				acks = append(acks, it.ack)
			}
		}
		if len(batch) > 0 {
			l.rounds.Add(1)
		}
		clear(batch) // the records are garbage now
		switch {
		case len(acks) > 0:
			if err := l.sync(); werr == nil {
				werr = err
			}
			dirty = false
			for _, a := range acks {
				a <- werr
			}
		case (ticked || shut) && dirty:
			l.flush()
			dirty = false
		}
		if shut {
			return
		}
	}
}

func (l *Logger) write(r *Record) error {
	Fill(r)
	if l.node != "" {
		l.seq++
		r.Node, r.Seq = l.node, l.seq
	}
	l.buf = append(appendRecord(l.buf[:0], r), '\n')
	_, err := l.bw.Write(l.buf)
	if err != nil && l.onErr != nil {
		l.onErr(err)
	}
	return err
}

func (l *Logger) flush() error {
	err := l.bw.Flush()
	if err != nil && l.onErr != nil {
		l.onErr(err)
	}
	if f, ok := l.w.(interface{ Flushed() }); ok {
		f.Flushed()
	}
	return err
}

// sync flushes and, when the writer can, syncs it to stable storage.
func (l *Logger) sync() error {
	if err := l.flush(); err != nil {
		return err
	}
	if s, ok := l.w.(interface{ Sync() error }); ok {
		if err := s.Sync(); err != nil {
			if l.onErr != nil {
				l.onErr(err)
			}
			return err
		}
	}
	return nil
}

// Close writes every queued record, flushes and syncs the writer (if it
// can sync), and stops the Logger. Records logged afterwards are dropped.
func (l *Logger) Close() error {
	if l == nil {
		return nil
	}
	l.closed.Do(func() {
		l.mu.Lock()
		l.shut = true
		l.room.Broadcast()
		l.mu.Unlock()
		l.signal()
	})
	<-l.done
	if s, ok := l.w.(interface{ Sync() error }); ok {
		return s.Sync()
	}
	return nil
}

// Fill completes a record: defaults, event time, and the sanitized
// request parameters and response elements.
func Fill(r *Record) {
	if r.EventVersion == "" {
		r.EventVersion = EventVersion
	}
	if r.EventTime == "" {
		t := r.Time
		if t.IsZero() {
			t = time.Now()
		}
		r.EventTime = t.UTC().Format("2006-01-02T15:04:05Z")
	}
	if r.EventType == "" {
		r.EventType = "AwsApiCall"
	}
	if r.EventCategory == "" {
		r.EventCategory = "Management"
	}
	if r.Params != nil {
		if b, ok := AppendSanitized(nil, r.Params); ok {
			r.RequestParameters = json.RawMessage(b)
		}
		r.Params = nil
	}
	if r.Response != nil {
		if b, ok := AppendSanitized(nil, r.Response); ok {
			r.ResponseElements = json.RawMessage(b)
		}
		r.Response = nil
	}
}
