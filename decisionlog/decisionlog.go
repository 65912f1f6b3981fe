// Package decisionlog records policy decisions as JSON lines in the shape of
// OPA's decision logs, so every deny can be explained afterwards and traced
// from the enforcement point's own log line (which shows the decision_id) to
// its entry.
//
// A Logger wraps a policy.Decider. Denies (and failed evaluations) are always
// logged; allows are sampled at a configured rate. Repeated denies of one
// session are aggregated (see Config.AggregateInterval): the first of each
// kind in an interval is written in full, the others are counted in one
// aggregate entry. Entries go to a file that is rotated by size
// (lumberjack) or to standard output.
//
// Logging never waits for the disk on the decision path: an entry is handed
// to a bounded buffer that one goroutine encodes and writes in batches. When
// the buffer is full, a sampled allow is dropped and counted, but a deny is
// written synchronously on the caller's goroutine, so a deny is never lost to
// back-pressure; under a sustained flood of denies of many kinds the
// enforcement points slow down to the speed of the log instead.
package decisionlog

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"gopkg.in/natefinch/lumberjack.v2"

	"github.com/ztgate/ztgate/policy"
)

// Path is the decision-log "path" of every entry: the policy package the
// gateway queries, data.ztgate.authz.
const Path = "ztgate/authz"

// DefaultBufferSize is the number of entries that may wait for the writer
// when Config.BufferSize is zero.
const DefaultBufferSize = 4096

// maxBatch bounds how many bytes the writer collects before one Write. It
// stays far below lumberjack's smallest MaxSize (1 MB) so a batch always fits
// in one file, and lines are never split across a rotation.
const maxBatch = 64 << 10

// Config says where and what to log.
type Config struct {
	// Path is the log file; "" or "-" means standard output. The file is
	// created with mode 0600 (entries carry identities and topics).
	Path string
	// MaxSizeMB is the size in megabytes at which the file is rotated;
	// 0 means lumberjack's default (100).
	MaxSizeMB int
	// MaxBackups is how many rotated files are kept; 0 keeps them all.
	MaxBackups int
	// SampleAllow is the fraction, 0 to 1, of allows that are logged.
	// Denies are always logged.
	SampleAllow float64
	// BufferSize is how many entries may wait for the writer; 0 means
	// DefaultBufferSize.
	BufferSize int
	// Labels are added to every entry's labels, beside "app": "ztgate".
	Labels map[string]string
	// Writer, when set, receives the entries instead of Path. The Logger
	// does not close it.
	Writer io.Writer
	// ErrorLog receives write failures; nil means slog.Default().
	ErrorLog *slog.Logger
	// AggregateInterval is how long the repeated denies of one kind (one
	// session, action, revision and reasons) are aggregated: the first in
	// an interval is written in full, the next ones are counted in one
	// aggregate entry written when the interval ends. Zero means
	// DefaultAggregateInterval; a negative value writes every deny in full.
	AggregateInterval time.Duration
}

// Stats counts what happened to the entries of a Logger.
type Stats struct {
	// Written is the number of entries written to the log.
	Written uint64
	// Dropped is the number of sampled allows not logged because the
	// buffer was full.
	Dropped uint64
	// Synchronous is the number of denies written on the deciding
	// goroutine because the buffer was full.
	Synchronous uint64
	// Failed is the number of entries lost to a write or encoding error,
	// or logged after Close.
	Failed uint64
	// Aggregated is the number of denies counted in aggregate entries
	// instead of written in entries of their own.
	Aggregated uint64
}

// Logger writes decision-log entries. Its methods are safe for concurrent use.
type Logger struct {
	labels []byte // encoded once
	errLog *slog.Logger

	// Sampling: an allow is logged when rnd() < threshold, or always.
	sampleAll bool
	threshold uint64
	rnd       func() uint64

	// mu guards closed against the channel being closed under a sender:
	// senders hold it shared, Close exclusively.
	mu     sync.RWMutex
	closed bool
	ch     chan entry
	done   chan struct{}

	// wmu serializes writes to out (the writer goroutine and synchronous
	// denies).
	wmu     sync.Mutex
	out     io.Writer
	closer  io.Closer // the file, when the Logger opened it
	failing bool      // the last write failed; guarded by wmu

	// agg folds deny floods; nil when aggregation is off. tick ends its
	// intervals until stop is closed, then closes ticked.
	agg          *aggregator
	aggInterval  time.Duration
	stop, ticked chan struct{}

	written, dropped, sync, failed, aggregated atomic.Uint64

	// subs are the deny subscribers (subscribe.go); nsubs counts them so
	// the decision path skips publishing with one atomic load when there
	// are none.
	subs       subscribers
	nsubs      atomic.Int32
	subDropped atomic.Uint64
}

// entry is what the decision path hands to the writer: copies of everything
// the caller might reuse after Decide returns.
type entry struct {
	id     string
	ts     time.Time
	in     policy.Input
	nilIn  bool
	req    policy.Request
	hasReq bool
	d      policy.Decision
	agg    *tally // set for an aggregate entry, which has nothing else but id and ts
}

// New returns a Logger for cfg. It opens (creating it if needed) the log file
// at once, so a path that cannot be written is an error here rather than a
// silent loss later.
func New(cfg Config) (*Logger, error) {
	switch {
	case math.IsNaN(cfg.SampleAllow) || cfg.SampleAllow < 0 || cfg.SampleAllow > 1:
		return nil, fmt.Errorf("decisionlog: sample rate %v is not between 0 and 1", cfg.SampleAllow)
	case cfg.MaxSizeMB < 0:
		return nil, fmt.Errorf("decisionlog: negative max size %d", cfg.MaxSizeMB)
	case cfg.MaxBackups < 0:
		return nil, fmt.Errorf("decisionlog: negative max backups %d", cfg.MaxBackups)
	case cfg.BufferSize < 0:
		return nil, fmt.Errorf("decisionlog: negative buffer size %d", cfg.BufferSize)
	}
	labels := map[string]string{"app": "ztgate"}
	for k, v := range cfg.Labels {
		if k != "app" {
			labels[k] = v
		}
	}
	encLabels, err := json.Marshal(labels)
	if err != nil {
		return nil, fmt.Errorf("decisionlog: labels: %w", err)
	}
	l := &Logger{
		labels:    encLabels,
		errLog:    cfg.ErrorLog,
		sampleAll: cfg.SampleAllow == 1,
		rnd:       rand.Uint64,
		done:      make(chan struct{}),
	}
	if !l.sampleAll {
		// 0 gives 0 (never); below 1 the product is below 2^64.
		l.threshold = uint64(cfg.SampleAllow * (1 << 64))
	}
	if l.errLog == nil {
		l.errLog = slog.Default()
	}
	switch {
	case cfg.Writer != nil:
		l.out = cfg.Writer
	case cfg.Path == "" || cfg.Path == "-":
		l.out = os.Stdout
	default:
		// Create the file (and its directory) now: lumberjack would only
		// do so on the first write, turning a bad path into lost entries.
		if err := os.MkdirAll(filepath.Dir(cfg.Path), 0o750); err != nil {
			return nil, fmt.Errorf("decisionlog: open log: %w", err)
		}
		f, err := os.OpenFile(cfg.Path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			return nil, fmt.Errorf("decisionlog: open log: %w", err)
		}
		if err := f.Close(); err != nil {
			return nil, fmt.Errorf("decisionlog: open log: %w", err)
		}
		lj := &lumberjack.Logger{Filename: cfg.Path, MaxSize: cfg.MaxSizeMB, MaxBackups: cfg.MaxBackups}
		l.out, l.closer = lj, lj
	}
	size := cfg.BufferSize
	if size == 0 {
		size = DefaultBufferSize
	}
	l.ch = make(chan entry, size)
	go l.run()
	if cfg.AggregateInterval >= 0 {
		l.aggInterval = cfg.AggregateInterval
		if l.aggInterval == 0 {
			l.aggInterval = DefaultAggregateInterval
		}
		l.agg = newAggregator(l.aggInterval)
		l.stop, l.ticked = make(chan struct{}), make(chan struct{})
		go l.tick()
	}
	return l, nil
}

var errNilDecider = errors.New("decisionlog: no decider")

// Wrap returns a Decider that decides with d and logs the decision. The
// returned Decision carries the entry's decision_id in its ID field whenever
// an entry is written for it (always for a deny, for a sampled allow unless
// the buffer was full); for a deny counted in an aggregate, the decision_id
// of the full entry of its kind (empty for an overflow); an empty ID
// otherwise. The entry is encoded after Decide returns: the caller may
// reuse the Input, but must not modify the Decision's Reasons. A nil Logger
// returns d unchanged.
func (l *Logger) Wrap(d policy.Decider) policy.Decider {
	if l == nil {
		return d
	}
	return &decider{l: l, next: d}
}

type decider struct {
	l    *Logger
	next policy.Decider
}

func (w *decider) Decide(ctx context.Context, in *policy.Input) policy.Decision {
	var d policy.Decision
	if w.next == nil {
		d = policy.Decision{Err: errNilDecider}
	} else {
		d = w.next.Decide(ctx, in)
	}
	deny := !d.Allow || d.Err != nil
	if !deny && !w.l.sampled() {
		return d
	}
	d.ID = w.l.log(in, d, deny)
	if deny && w.l.nsubs.Load() > 0 {
		w.l.publish(in, &d)
	}
	return d
}

func (l *Logger) sampled() bool {
	return l.sampleAll || l.rnd() < l.threshold
}

// log hands the decision to the writer, or folds a deny into its kind's
// aggregate. It returns the decision_id of the entry written (or to be
// written) for it, or of the full entry of its kind when it was folded; ""
// when none.
func (l *Logger) log(in *policy.Input, d policy.Decision, deny bool) string {
	ts := time.Now()
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		l.failed.Add(1)
		return ""
	}
	if deny && l.agg != nil && in != nil && in.Subject != nil {
		id, full := l.agg.observe(in, &d, ts, newID)
		if !full {
			l.aggregated.Add(1)
			return id
		}
		d.ID = id
	} else {
		d.ID = newID()
	}
	e := entry{id: d.ID, ts: ts, d: d, nilIn: in == nil}
	if in != nil {
		e.in = *in
		if in.Request != nil {
			e.req, e.hasReq = *in.Request, true
		}
		e.in.Request = nil
		if e.in.Time.IsZero() {
			// The engine evaluated with "now"; pin it before the entry waits.
			e.in.Time = e.ts
		}
	}
	if !l.send(&e, deny) {
		return ""
	}
	return d.ID
}

// send hands e to the writer. When the buffer is full, e is dropped (and
// counted) unless it must be kept, in which case it is written on the
// caller's goroutine. It reports whether e was (or will be) written. l.mu
// is held shared.
func (l *Logger) send(e *entry, keep bool) bool {
	select {
	case l.ch <- *e:
		return true
	default:
	}
	if !keep {
		l.dropped.Add(1)
		return false
	}
	l.sync.Add(1)
	var buf bytes.Buffer
	if !l.encode(&buf, e) {
		return false
	}
	return l.write(buf.Bytes(), 1)
}

// tick ends an aggregation interval every aggInterval, until stop.
func (l *Logger) tick() {
	defer close(l.ticked)
	t := time.NewTicker(l.aggInterval)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			l.flushAggregates()
		}
	}
}

// flushAggregates writes the aggregate entries of the interval that ends.
// They are evidence: like denies, they are never dropped. After Close, the
// aggregates are Close's to write.
func (l *Logger) flushAggregates() {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return
	}
	for _, e := range l.agg.flush() {
		l.send(&e, true)
	}
}

// run is the writer goroutine: it encodes entries in batches and writes each
// batch with one Write, so a line is never split across a rotation.
func (l *Logger) run() {
	defer close(l.done)
	var buf bytes.Buffer
	for e := range l.ch {
		n := 0
		if l.encode(&buf, &e) {
			n++
		}
	batch:
		for buf.Len() < maxBatch {
			select {
			case e, ok := <-l.ch:
				if !ok {
					break batch
				}
				if l.encode(&buf, &e) {
					n++
				}
			default:
				break batch
			}
		}
		if n > 0 {
			l.write(buf.Bytes(), n)
		}
		buf.Reset()
	}
}

// record is the JSON form of an entry, in OPA's decision-log field names,
// without the input: encoding/json would re-scan (compact) the input's own
// encoding, which costs more than encoding it, so the input is appended to
// the encoded record instead.
type record struct {
	DecisionID string `json:"decision_id"`
	Path       string `json:"path"`
	Result     Result `json:"result"`
	Timestamp  string `json:"timestamp"`
	Revision   string `json:"revision"`
	Error      string `json:"error,omitempty"`
}

// encode appends e's line to buf; on failure buf is left as it was.
func (l *Logger) encode(buf *bytes.Buffer, e *entry) bool {
	if e.agg != nil {
		return l.encodeAggregate(buf, e)
	}
	r := record{
		DecisionID: e.id,
		Path:       Path,
		Result:     Result{Allow: e.d.Allow && e.d.Err == nil, Reasons: e.d.Reasons},
		Timestamp:  e.ts.UTC().Format(time.RFC3339Nano),
		Revision:   e.d.Revision,
	}
	if r.Result.Reasons == nil {
		r.Result.Reasons = []string{}
	}
	if e.d.Err != nil {
		r.Error = e.d.Err.Error()
	}
	input := []byte("null")
	var err error
	if !e.nilIn {
		if e.hasReq {
			e.in.Request = &e.req
		}
		input, err = e.in.MarshalJSON()
	}
	var head []byte
	if err == nil {
		head, err = json.Marshal(r)
	}
	if err != nil {
		l.failed.Add(1)
		l.errLog.Error("decisionlog: cannot encode entry", "decision_id", e.id, "err", err)
		return false
	}
	l.appendLine(buf, head, input, nil)
	return true
}

// appendLine appends an entry's line: the encoded record, the labels, the
// input and, for an aggregate entry, the aggregate.
func (l *Logger) appendLine(buf *bytes.Buffer, head, input, agg []byte) {
	buf.Write(head[:len(head)-1]) // without the closing brace
	buf.WriteString(`,"labels":`)
	buf.Write(l.labels)
	buf.WriteString(`,"input":`)
	buf.Write(input)
	if agg != nil {
		buf.WriteString(`,"aggregate":`)
		buf.Write(agg)
	}
	buf.WriteString("}\n")
}

// encodeAggregate appends the line of an aggregate entry to buf.
func (l *Logger) encodeAggregate(buf *bytes.Buffer, e *entry) bool {
	t := e.agg
	r := record{
		DecisionID: e.id,
		Path:       Path,
		Result:     Result{Reasons: t.reasons},
		Timestamp:  e.ts.UTC().Format(time.RFC3339Nano),
		Revision:   t.rev,
		Error:      t.err,
	}
	if r.Result.Reasons == nil {
		r.Result.Reasons = []string{}
	}
	head, err := json.Marshal(r)
	var input, agg []byte
	if err == nil {
		input, err = json.Marshal(t.input())
	}
	if err == nil {
		agg, err = json.Marshal(t.agg)
	}
	if err != nil {
		l.failed.Add(1)
		l.errLog.Error("decisionlog: cannot encode aggregate entry", "decision_id", e.id, "err", err)
		return false
	}
	l.appendLine(buf, head, input, agg)
	return true
}

// write writes n encoded entries with one Write.
func (l *Logger) write(p []byte, n int) bool {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	if _, err := l.out.Write(p); err != nil {
		l.failed.Add(uint64(n))
		if !l.failing {
			l.errLog.Error("decisionlog: write failed; entries lost", "entries", n, "err", err)
		}
		l.failing = true
		return false
	}
	if l.failing {
		l.errLog.Info("decisionlog: writing again")
	}
	l.failing = false
	l.written.Add(uint64(n))
	return true
}

// Stats returns the Logger's counters.
func (l *Logger) Stats() Stats {
	return Stats{
		Written:     l.written.Load(),
		Dropped:     l.dropped.Load(),
		Synchronous: l.sync.Load(),
		Failed:      l.failed.Load(),
		Aggregated:  l.aggregated.Load(),
	}
}

// Close writes every buffered entry, then the aggregates of the interval
// under way, and closes the file the Logger opened. Decisions made through
// a wrapped Decider after Close are still returned, but not logged (they
// count as Failed). Close is idempotent.
func (l *Logger) Close() error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	close(l.ch)
	l.mu.Unlock()
	l.closeSubscribers()

	if l.agg != nil {
		close(l.stop)
		<-l.ticked
	}
	<-l.done
	if l.agg != nil {
		// No deny is folded any more (closed is set): the last
		// interval's aggregates are complete, and come after the entries
		// of the denies they count. Written in batches, as run does.
		var buf bytes.Buffer
		n := 0
		for _, e := range l.agg.flush() {
			if l.encode(&buf, &e) {
				n++
			}
			if buf.Len() >= maxBatch {
				l.write(buf.Bytes(), n)
				buf.Reset()
				n = 0
			}
		}
		if n > 0 {
			l.write(buf.Bytes(), n)
		}
	}
	if l.closer != nil {
		l.wmu.Lock()
		defer l.wmu.Unlock()
		if err := l.closer.Close(); err != nil {
			return fmt.Errorf("decisionlog: close: %w", err)
		}
	}
	return nil
}

// newID returns a random (version 4) UUID.
func newID() string {
	id, err := uuid.NewRandom()
	if err != nil {
		// crypto/rand does not fail on supported platforms; fall back to
		// the runtime's generator rather than log without an id.
		id, _ = uuid.NewRandomFromReader(fastReader{})
	}
	return id.String()
}

// fastReader reads from math/rand/v2's per-thread generator.
type fastReader struct{}

func (fastReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(rand.Uint32())
	}
	return len(p), nil
}

// Entry is one decision-log line as read back (by tests, tools, or anyone
// tracing a decision_id).
type Entry struct {
	DecisionID string            `json:"decision_id"`
	Path       string            `json:"path"`
	Input      json.RawMessage   `json:"input"`
	Result     Result            `json:"result"`
	Timestamp  time.Time         `json:"timestamp"`
	Revision   string            `json:"revision"`
	Error      string            `json:"error,omitempty"`
	Labels     map[string]string `json:"labels"`
	// Aggregate is set on an aggregate entry, which sums up denies folded
	// during an interval (see Config.AggregateInterval).
	Aggregate *Aggregate `json:"aggregate,omitempty"`
}

// Result is the decision of an entry: data.ztgate.authz's allow and reasons.
type Result struct {
	Allow   bool     `json:"allow"`
	Reasons []string `json:"reasons"`
}
